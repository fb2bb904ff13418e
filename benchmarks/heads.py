"""Head training speed and accuracy: on-device minibatches vs a DataLoader loop vs scikit-learn.

Run from the repository root:

    python benchmarks/heads.py                                  # DF20-sized, on the GPU if any
    python benchmarks/heads.py --scale 0.05 --device cpu        # 1/20 of the rows and classes
    python benchmarks/heads.py --scale 0.005 --epochs 3         # a quick check that it works
    python benchmarks/heads.py --parts d --flowers-store flowers-store

The synthetic problem has the shape of DF20 (Danish Fungi 2020): 400,000 embeddings of 1,024
dims, 1,604 classes with long-tailed sizes (about 1,550 down to 3 images, an exponential decay
over the class rank), 10 % of each class held out for validation. Classes are Gaussian clusters
in a 256-dim subspace, grouped in "genera" of about 8 similar species, with noise inside and
outside the subspace, tuned so that a nearest-class-mean classifier gets roughly 60-80 %: hard
enough that the heads differ, easy enough that they learn. ``--scale`` multiplies the rows and
the classes (so the class sizes keep their shape); the embedding width stays 1,024.

Parts (``--parts``, default ``abcd``):

- **a** ``heads`` MLP (hidden 4,096, batch 4,096, AdamW, the library's on-device trainer: every
  tensor on the device, minibatches sliced from one permutation per epoch): median seconds per
  epoch (``history_``; each epoch includes its validation pass), seconds to the best validation
  macro-F1 and total fit seconds (``patience=None``: every epoch runs), validation accuracy.
- **b** the same network (LayerNorm -> Linear -> GELU -> Dropout -> Linear, AdamW, same width and
  batch) trained with a ``torch.utils.data.DataLoader`` loop, data on the CPU, each batch moved to
  the device, as most training scripts do (the FungiCLEF 2024 entry this project follows trained
  its head this way at 67 s per epoch on its GPU). Variants: ``TensorDataset``; a ``Dataset``
  whose ``__getitem__`` returns one sample (the per-sample path either way, collated by
  ``default_collate``); and a ``BatchSampler`` with a batched ``__getitem__`` (the cheap fix).
  Seconds per epoch training, and for the loader alone (iterating it, no model).
- **c** scikit-learn ``LogisticRegression`` (lbfgs, ``--sk-iter`` iterations) and
  ``SGDClassifier`` (log loss, one-vs-rest, ``--sgd-epochs`` epochs, all cores) on a stratified
  subsample of the training rows (``--sk-rows``, every class kept), scored on the full validation
  part.
- **d** accuracy on flowers12 embeddings already in a store (``--flowers-store``; skipped with a
  note without one): linear, MLP and transformer heads and their ensemble. With
  ``heads.train`` / ``heads.ensemble`` (the project's own path) the store is copied to a temporary
  folder, given folds from its train/test ``split`` column when it has none (test = held out), and
  each head is trained on every fold; the table shows out-of-fold validation and held-out test
  scores. Without them (or with ``--flowers-direct``) each head is fitted on ``split = 'train'`` and
  scored on ``split = 'test'`` with ``create_head``.

Prints tables and writes ``--out`` (default ``benchmarks/out/heads.json``, per-epoch histories
included) with the machine's description (``machine_info()``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python benchmarks/heads.py` puts benchmarks/ first on sys.path, where this very file would
# shadow the `heads` package: import from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import embedstore  # noqa: E402
import heads  # noqa: E402
from benchmarks._common import OUT_DIR, machine_info, print_table, write_json  # noqa: E402
from heads._metrics import macro_f1  # noqa: E402

DF20 = {"rows": 400_000, "dim": 1024, "classes": 1604}


# --------------------------------------------------------------------------- synthetic data


@dataclass
class Problem:
    """Train / validation embeddings and integer labels of the synthetic problem."""

    X: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64
    X_val: np.ndarray  # (M, D) float32
    y_val: np.ndarray  # (M,) int64
    sizes: np.ndarray  # (C,) images per class, train + val
    seconds: float


def class_sizes(classes: int, rows: int, imbalance: float) -> np.ndarray:
    """Long-tailed sizes ``(C,)``: exponential decay over the rank, largest/smallest about
    ``imbalance``."""
    rank = np.arange(classes) / max(1, classes - 1)
    w = imbalance ** (-rank)
    return np.maximum(3, np.round(w / w.sum() * rows)).astype(np.int64)


def make_problem(
    scale: float = 1.0,
    *,
    dim: int = DF20["dim"],
    imbalance: float = 500.0,
    val_frac: float = 0.1,
    latent: int = 256,
    noise: float = 5.0,
    seed: int = 0,
) -> Problem:
    """The DF20-shaped Gaussian-cluster problem, ``scale`` x the rows and classes.

    Class centres: genus centre (std 1) + species offset (std 0.6) in a ``latent``-dim subspace;
    samples: centre + ``noise`` (std, in the subspace) mapped to ``dim`` dims + isotropic noise
    (std 1); scaled to unit variance per dimension.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    c = max(4, round(DF20["classes"] * scale))
    n = max(3 * c, round(DF20["rows"] * scale))
    sizes = class_sizes(c, n, imbalance)
    genus = rng.integers(0, max(2, c // 8), c)
    centres = rng.standard_normal((max(2, c // 8), latent), dtype=np.float32)[genus]
    centres += 0.6 * rng.standard_normal((c, latent), dtype=np.float32)  # (C, L)
    q, _ = np.linalg.qr(rng.standard_normal((dim, latent)).astype(np.float32))  # (D, L)
    proj = q.T * np.float32(np.sqrt(dim / latent))  # (L, D), unit gain per output dim
    unit = np.float32(1.0 / np.sqrt(1.0 + 0.36 + noise**2 + 1.0))
    y = np.repeat(np.arange(c), sizes)
    rng.shuffle(y)
    X = np.empty((len(y), dim), dtype=np.float32)
    for s in range(0, len(y), 50_000):
        yy = y[s : s + 50_000]
        z = centres[yy] + noise * rng.standard_normal((len(yy), latent), dtype=np.float32)
        X[s : s + 50_000] = (
            z @ proj + rng.standard_normal((len(yy), dim), dtype=np.float32)
        ) * unit
    # stratified validation part: val_frac of each class, at least 1
    is_val = np.zeros(len(y), dtype=bool)
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_val = np.maximum(1, np.round(val_frac * sizes)).astype(np.int64)
    for k in range(c):
        is_val[order[starts[k] : starts[k] + n_val[k]]] = True  # rows were shuffled: a random pick
    return Problem(X[~is_val], y[~is_val], X[is_val], y[is_val], sizes, time.perf_counter() - t0)


def stratified_subsample(y: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """Row indices: about ``rows`` in all, the same fraction of every class, at least one each."""
    if rows >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    frac = rows / len(y)
    out = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        out.append(rng.choice(idx, max(1, round(frac * len(idx))), replace=False))
    return np.sort(np.concatenate(out))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"val_top1": float((pred == y).mean()), "val_macro_f1": float(macro_f1(y, pred))}


# --------------------------------------------------------------------------- (a) heads MLP


def part_heads_mlp(p: Problem, args: argparse.Namespace) -> dict[str, Any]:
    """The library's MLP head: seconds per epoch, to the best epoch, in all; accuracy."""
    # warm-up on a few rows: one-time costs (CUDA context, lazy imports, allocator) are not the
    # head's
    warm = slice(0, min(len(p.y), 256))
    heads.create_head("mlp", hidden=args.hidden, epochs=1, device=args.device).fit(
        p.X[warm], p.y[warm]
    )
    head = heads.create_head(
        "mlp",
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=None,
        device=args.device,
        verbose=args.verbose,
    )
    t0 = time.perf_counter()
    head.fit(p.X, p.y, X_val=p.X_val, y_val=p.y_val)
    fit_s = time.perf_counter() - t0
    hist = head.history_
    per_epoch = [h["seconds"] for h in hist]
    best = int(head.best_epoch_)
    return {
        "method": "heads MLP (on-device minibatches)",
        "device": str(head.device_),
        "train_rows": len(p.y),
        "epochs": len(hist),
        "s_per_epoch": statistics.median(per_epoch),
        "first_epoch_s": per_epoch[0],
        "best_epoch": best,
        "to_best_s": sum(per_epoch[:best]),
        "fit_s": fit_s,
        "setup_s": fit_s - sum(per_epoch),  # copying X to the device, building, restoring best
        "val_top1": hist[best - 1]["val_top1"],
        "val_macro_f1": hist[best - 1]["val_macro_f1"],
        "history": hist,
    }


# --------------------------------------------------------------------------- (b) DataLoader


class PerSampleDataset(torch.utils.data.Dataset):
    """The usual training-script Dataset: one ``(embedding, label)`` per ``__getitem__``."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.X[i]), int(self.y[i])


class BatchedDataset(torch.utils.data.Dataset):
    """``__getitem__`` takes a list of indices (from a ``BatchSampler``) and returns a batch."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx)
        return self.X[i], self.y[i]  # (B, D), (B,)


def make_loader(
    variant: str, X: np.ndarray, y: np.ndarray, batch: int, pin: bool, seed: int
) -> Any:
    gen = torch.Generator().manual_seed(seed)
    if variant == "tensordataset":
        ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
        return torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=True, pin_memory=pin, generator=gen
        )
    if variant == "per-sample":
        ds = PerSampleDataset(X, y)
        return torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=True, pin_memory=pin, generator=gen
        )
    ds = BatchedDataset(torch.from_numpy(X), torch.from_numpy(y))
    sampler = torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(ds, generator=gen), batch_size=batch, drop_last=False
    )
    return torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, pin_memory=pin)


DL_VARIANTS = {
    "tensordataset": "DataLoader(TensorDataset)",
    "per-sample": "DataLoader(Dataset, one sample per __getitem__)",
    "batched": "DataLoader(BatchSampler, batched __getitem__)",
}


def part_dataloader(p: Problem, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """The same network in a DataLoader loop: seconds per epoch (training, and loader alone)."""
    device = _device(args.device)
    pin = device.type == "cuda"
    n_classes = int(p.sizes.shape[0])
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.LayerNorm(p.X.shape[1]),
        nn.Linear(p.X.shape[1], args.hidden),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(args.hidden, n_classes),
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    loader = make_loader(variant, p.X, p.y, args.batch_size, pin, args.seed)

    loader_s = float("inf")
    for _ in range(2):  # the loader alone (index, collate, pin); best of two passes
        t0 = time.perf_counter()
        for _ in loader:
            pass
        loader_s = min(loader_s, time.perf_counter() - t0)

    epochs: list[float] = []
    for _ in range(args.dl_epochs):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True)  # (B, D)
            yb = yb.to(device, non_blocking=True)  # (B,)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        epochs.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        xv = torch.from_numpy(p.X_val)
        pred = torch.cat(
            [model(xv[s : s + 8192].to(device)).argmax(1).cpu() for s in range(0, len(xv), 8192)]
        )
    return {
        "method": DL_VARIANTS[variant],
        "device": str(device),
        "train_rows": len(p.y),
        "epochs": len(epochs),
        "s_per_epoch": statistics.median(epochs),
        "loader_only_s": loader_s,
        "fit_s": sum(epochs),
        **{k: v for k, v in _scores(pred.numpy(), p.y_val).items()},
        "note": f"accuracy after {len(epochs)} epoch(s), constant lr",
    }


def _device(device: str) -> torch.device:
    return embedstore.resolve_device(device)


# --------------------------------------------------------------------------- (c) scikit-learn


def part_sklearn(p: Problem, args: argparse.Namespace) -> list[dict[str, Any]]:
    """LogisticRegression (lbfgs) and SGDClassifier on a stratified subsample; CPU."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    idx = stratified_subsample(p.y, args.sk_rows, args.seed)
    X, y = p.X[idx], p.y[idx]
    sub = (
        "all training rows"
        if len(idx) == len(p.y)
        else f"stratified subsample {len(idx):,} of {len(p.y):,} rows"
    )
    out = []
    models = {
        f"sklearn LogisticRegression lbfgs, {args.sk_iter} iter": LogisticRegression(
            solver="lbfgs", max_iter=args.sk_iter, C=1.0
        ),
        f"sklearn SGDClassifier log-loss OvR, {args.sgd_epochs} epochs": SGDClassifier(
            loss="log_loss", max_iter=args.sgd_epochs, tol=None, n_jobs=-1, random_state=args.seed
        ),
    }
    for name, model in models.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            model.fit(X, y)
            fit_s = time.perf_counter() - t0
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        pred = model.predict(p.X_val)
        out.append(
            {
                "method": name,
                "device": "cpu",
                "train_rows": len(idx),
                "fit_s": fit_s,
                **_scores(pred, p.y_val),
                "note": sub + ("" if converged else "; stopped at max_iter (not converged)"),
            }
        )
    return out


# --------------------------------------------------------------------------- (d) flowers12


FLOWER_HEADS = ("linear", "mlp", "transformer")


def _flowers_with_runs(store: Path, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """``heads.train`` on every fold of a copy of the store, then ``heads.ensemble`` of the
    three."""
    import embedstore

    copy = tmp / "store"
    shutil.copytree(store, copy)
    st = embedstore.connect(copy, create=False)
    folds_note = "the store's own folds"
    if "fold" not in st.schema().names:
        embedstore.split(st, folds=args.flowers_folds, use_split_column=True, seed=args.seed)
        folds_note = f"{args.flowers_folds} folds of split=train, split=test held out (on a copy)"
    rows, paths = [], []
    for name in FLOWER_HEADS:
        t0 = time.perf_counter()
        res = heads.train(
            copy,
            fold=args.flowers_fold,
            backbone=args.flowers_backbone,
            head=name,
            out=tmp / "runs" / name,
            progress=False,
            epochs=args.flowers_epochs,
            device=args.device,
        )
        seconds = time.perf_counter() - t0
        path = res["ensemble"] or res["runs"][0]
        ev = heads.evaluate(path, plots=False)
        paths.append(path)
        rows.append(_flowers_row(name, ev, seconds, len(res["runs"]), folds_note))
        rows[-1]["fit_s"] = sum(m["fit_seconds"] for m in res["metrics"])  # the heads' fit alone
    t0 = time.perf_counter()
    ev = heads.ensemble(paths, tmp / "runs" / "ensemble")
    rows.append(
        _flowers_row(
            "ensemble (linear+mlp+transformer)", ev, time.perf_counter() - t0, 3, "heads.ensemble"
        )
    )
    return rows


def _flowers_row(
    name: str, ev: dict[str, Any], seconds: float, runs: int, note: str
) -> dict[str, Any]:
    ho = ev.get("holdout") or {}
    return {
        "head": name,
        "path": "heads.train",
        "runs": runs,
        "train_s": seconds,
        "val_top1": ev.get("top1"),
        "val_macro_f1": ev.get("macro_f1"),
        "test_top1": ho.get("top1"),
        "test_macro_f1": ho.get("macro_f1"),
        "n_test": ho.get("n"),
        "note": note,
    }


def _flowers_direct(store: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``create_head`` fitted on ``split = 'train'``, scored on ``split = 'test'``; mean of
    probabilities."""
    import embedstore

    st = embedstore.connect(store, create=False)
    X, cols = st.embeddings(
        args.flowers_backbone, where="label IS NOT NULL", columns=("label", "split")
    )
    labels = cols["label"].astype(str)
    tr, te = cols["split"] == "train", cols["split"] == "test"
    if not tr.any() or not te.any():
        raise SystemExit(
            f"{store}: needs images with split 'train' and 'test' (from train/ and test/ folders)"
        )
    rows, probas, classes = [], [], np.unique(labels[tr])
    te = te & np.isin(labels, classes)  # test images of classes seen in training
    y_te = np.searchsorted(classes, labels[te])  # (M,) class indices
    for name in FLOWER_HEADS:
        head = heads.create_head(
            name, epochs=args.flowers_epochs, device=args.device, seed=args.seed
        )
        t0 = time.perf_counter()
        head.fit(X[tr], labels[tr])
        seconds = time.perf_counter() - t0
        proba = head.predict_proba(X[te])  # (M, C), columns follow classes (sorted)
        probas.append(proba)
        rows.append(
            {
                "head": name,
                "path": "create_head",
                "runs": 1,
                "train_s": seconds,
                "fit_s": seconds,
                **_test_scores(proba.argmax(1), y_te),
                "note": f"fit on split=train ({int(tr.sum())}), {args.flowers_epochs} epochs",
            }
        )
    rows.append(
        {
            "head": "ensemble (mean probabilities)",
            "path": "create_head",
            "runs": 3,
            "train_s": None,
            **_test_scores(np.mean(probas, axis=0).argmax(1), y_te),
        }
    )
    return rows


def _test_scores(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "test_top1": float((pred == y).mean()),
        "test_macro_f1": float(macro_f1(y, pred)),
        "n_test": len(y),
    }


def part_flowers(args: argparse.Namespace) -> dict[str, Any]:
    if args.flowers_store is None:
        return {
            "skipped": "no --flowers-store given; ingest flowers12 first: "
            "embedstore ingest ../shared/data/flowers12 --store flowers-store"
        }
    store = Path(args.flowers_store)
    # warm-up: one-time costs (CUDA context, torch._dynamo imported by the first AdamW) are not a
    # head's
    rng = np.random.default_rng(0)
    heads.create_head("linear", epochs=1, device=args.device).fit(
        rng.standard_normal((8, 4)).astype(np.float32), np.arange(8) % 2
    )
    use_runs = hasattr(heads, "train") and hasattr(heads, "ensemble") and not args.flowers_direct
    if not use_runs:
        return {"rows": _flowers_direct(store, args), "path": "create_head"}
    with tempfile.TemporaryDirectory(prefix="embedstore-bench-heads-") as tmp:
        return {"rows": _flowers_with_runs(store, args, Path(tmp)), "path": "heads.train"}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--scale", type=float, default=1.0, help="x rows and classes of DF20 (default 1)"
    )
    ap.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    ap.add_argument("--epochs", type=int, default=30, help="MLP epochs in part a (default 30)")
    ap.add_argument(
        "--dl-epochs", type=int, default=2, help="epochs per DataLoader variant (default 2)"
    )
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--sk-rows", type=int, default=50_000, help="training rows for part c (default 50,000)"
    )
    ap.add_argument("--sk-iter", type=int, default=30, help="LogisticRegression lbfgs iterations")
    ap.add_argument("--sgd-epochs", type=int, default=5, help="SGDClassifier epochs")
    ap.add_argument(
        "--flowers-store", type=Path, default=None, help="a store holding flowers12 (part d)"
    )
    ap.add_argument("--flowers-backbone", default=None, help="its backbone (default: the only one)")
    ap.add_argument("--flowers-epochs", type=int, default=30)
    ap.add_argument("--flowers-fold", default="all", help="fold for heads.train (default all)")
    ap.add_argument(
        "--flowers-folds", type=int, default=5, help="folds to make when the store has none"
    )
    ap.add_argument(
        "--flowers-direct", action="store_true", help="use create_head even if heads.train exists"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="progress bar over the MLP's epochs")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "heads.json")
    args = ap.parse_args(argv)
    parts = set(args.parts.lower())

    info = machine_info()
    device = _device(args.device)
    print(
        f"device {device}; torch threads {torch.get_num_threads()}; load {info['load_avg']}; "
        f"float32 matmul precision {torch.get_float32_matmul_precision()}"
    )
    report: dict[str, Any] = {
        "benchmark": "heads",
        "machine": info,
        "settings": vars(args)
        | {"device": str(device), "float32_matmul_precision": torch.get_float32_matmul_precision()},
    }
    rows: list[dict[str, Any]] = []
    if parts & set("abc"):
        p = make_problem(args.scale, seed=args.seed)
        report["problem"] = {
            "train_rows": len(p.y),
            "val_rows": len(p.y_val),
            "dim": p.X.shape[1],
            "classes": len(p.sizes),
            "largest_class": int(p.sizes.max()),
            "smallest_class": int(p.sizes.min()),
            "median_class": float(np.median(p.sizes)),
            "generate_seconds": p.seconds,
        }
        print(
            f"problem: {len(p.y):,} train + {len(p.y_val):,} val rows x {p.X.shape[1]}, "
            f"{len(p.sizes):,} classes ({p.sizes.max()} .. {p.sizes.min()} per class), "
            f"made in {p.seconds:.1f} s"
        )
        if "a" in parts:
            r = part_heads_mlp(p, args)
            print(
                f"[a] heads MLP: {r['s_per_epoch']:.2f} s/epoch, best epoch {r['best_epoch']} "
                f"after {r['to_best_s']:.1f} s, fit {r['fit_s']:.1f} s, "
                f"val top-1 {r['val_top1']:.3f}"
            )
            rows.append(r)
        if "b" in parts:
            for variant in DL_VARIANTS:
                r = part_dataloader(p, args, variant)
                print(
                    f"[b] {r['method']}: {r['s_per_epoch']:.2f} s/epoch "
                    f"(loader alone {r['loader_only_s']:.2f} s)"
                )
                rows.append(r)
        if "c" in parts:
            for r in part_sklearn(p, args):
                print(f"[c] {r['method']}: fit {r['fit_s']:.1f} s, val top-1 {r['val_top1']:.3f}")
                rows.append(r)
        del p
    report["results"] = rows
    if rows:
        print_table(
            rows,
            [
                "method",
                "device",
                "train_rows",
                "s_per_epoch",
                "loader_only_s",
                "to_best_s",
                "fit_s",
                "val_top1",
                "val_macro_f1",
            ],
            title=f"heads benchmark, DF20-shaped problem x {args.scale}",
        )
        for r in rows:
            if r.get("note"):
                print(f"  {r['method']}: {r['note']}")
    if "d" in parts:
        fl = part_flowers(args)
        report["flowers12"] = fl
        if "skipped" in fl:
            print(f"\n[d] flowers12 skipped: {fl['skipped']}")
        else:
            print_table(
                fl["rows"],
                [
                    "head",
                    "path",
                    "runs",
                    "train_s",
                    "fit_s",
                    "val_top1",
                    "val_macro_f1",
                    "test_top1",
                    "test_macro_f1",
                    "n_test",
                ],
                title=f"flowers12 accuracy ({fl['path']})",
            )
    path = write_json(report, args.out)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
