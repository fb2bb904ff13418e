"""The training-free heads (LDA, SimpleShot-centred centroids) against a tuned logistic regression
and the MLP, on stores built once with efficientnet-lite0 embeddings.

Run from the repository root (accuracies are one measurement; seconds only compare on a quiet
machine, so the load average is printed and recorded):

    python benchmarks/lda.py                                  # the four prebuilt stores
    python benchmarks/lda.py --stores ../stores/grocery81-views --skip mlp
    python benchmarks/lda.py --stores ../stores/flowers12-plain --fit-only

Each store (``--stores``, default ``../stores/{grocery81,flowers12}-{plain,views}``: 5 folds,
the data's test part held out with ``--use-split``; ``-views`` also holds the flip and 5-crop
views) gets

- **fit**: one ``LDAHead`` fitted on the whole training part (every stored view as one more row,
  as ``heads train`` does) and timed (wall and CPU seconds: ``--threads 1`` and the CPU
  seconds give a figure other jobs on the machine barely move), beside scikit-learn's
  ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")`` on the same centred,
  L2-normalised rows: seconds, the share of test predictions on which they agree, test top-1;
- **baseline**: ``benchmarks/quality.py``'s ``LogisticRegression``, ``C`` by cross-validation on
  the store's own folds, refit on the training part;
- **recipes**: ``heads.train(fold="all", ...)`` calls from ``quality.RECIPES`` (what ``heads
  train`` runs), scored out-of-fold and once on the held-out test part, with each fold's fit
  seconds (the head's ``fit`` alone) beside the whole call's.

Writes ``benchmarks/out/lda.json`` with the machine it ran on.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import OUT_DIR, REPO, machine_info, print_table, write_json  # noqa: E402
from benchmarks.quality import RECIPES, baseline, scores  # noqa: E402

STORES = [
    REPO.parent / "stores" / f"{data}-{kind}"
    for data in ("grocery81", "flowers12")
    for kind in ("plain", "views")
]
DEFAULT_RECIPES = [
    "lda",
    "lda, no views",
    "lda refit",
    "centroid",
    "centroid, no centring",
    "default",
]


def training_rows(store: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training part with every stored view as one more row, and the test part (main)."""
    import embedstore

    st = embedstore.connect(store)
    X, cols = st.embeddings(columns=("id", "label", "fold"), labelled=True)
    y, fold = np.asarray(cols["label"]).astype(str), np.asarray(cols["fold"])
    tr, te = fold >= 0, fold == -1
    _, V = st.view_embeddings(None, cols["id"][tr])  # (n, V, d)
    V = V[:, np.isfinite(V).all(axis=(0, 2))]  # the views every image has
    Xtr = np.concatenate([X[tr], V.transpose(1, 0, 2).reshape(-1, X.shape[1])])
    return Xtr, np.tile(y[tr], 1 + V.shape[1]), X[te], y[te]


def fit_once(store: Path, sklearn: bool) -> dict[str, Any]:
    """One LDA fit on the training part (views as rows), timed; scikit-learn's beside it."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from heads.estimators import LDAHead

    X, y, Xt, yt = training_rows(store)
    t0, c0 = time.perf_counter(), time.process_time()
    head = LDAHead(device="cpu").fit(X, y)
    out: dict[str, Any] = {"rows": X.shape[0], "dim": X.shape[1], "classes": len(head.classes_)}
    out["fit_s"] = round(time.perf_counter() - t0, 2)
    out["fit_cpu_s"] = round(time.process_time() - c0, 2)  # what a busy machine does not inflate
    pred = head.predict(Xt)
    out["test_top1"] = round(float(np.mean(pred == yt)), 4)
    if sklearn:

        def cl2n(a: np.ndarray) -> np.ndarray:
            z = a.astype(np.float64) - head.centre_
            return z / np.linalg.norm(z, axis=1, keepdims=True)

        Z = cl2n(X)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Z, y)
        out["sklearn_fit_s"] = round(time.perf_counter() - t0, 2)
        out["sklearn_fit_cpu_s"] = round(time.process_time() - c0, 2)
        ref_pred = ref.predict(cl2n(Xt))
        out["sklearn_test_top1"] = round(float(np.mean(ref_pred == yt)), 4)
        out["agreement"] = round(float(np.mean(ref_pred == pred)), 4)
        P, ref_P = head.predict_proba(Xt), ref.predict_proba(cl2n(Xt))
        out["max_abs_proba_diff"] = float(np.abs(P - ref_P).max())
    return out


def run_recipe(store: Path, name: str, runs: Path) -> dict[str, Any] | None:
    """``heads.train(fold="all", **RECIPES[name])``, scored; None where it needs absent views."""
    import embedstore
    import heads

    options = RECIPES[name]
    has_views = bool(embedstore.connect(store).resolve_backbone(None).view_columns)
    if options.get("views") is False and not has_views:
        return None  # "no views" on a store without views is the plain recipe again
    out = runs / name.replace(" ", "_").replace(",", "")
    t0 = time.perf_counter()
    res = heads.train(
        store, fold="all", out=out, progress=False, device="cpu", overwrite=True, **options
    )
    row = scores(name, out, time.perf_counter() - t0)
    row["fold_fit_s"] = round(float(np.mean([m.fit_seconds for m in res.metrics])), 2)
    row["views"] = "+".join(res.views["train"]) or "-"
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stores", type=Path, nargs="+", default=STORES)
    p.add_argument(
        "--recipes", nargs="+", default=DEFAULT_RECIPES, help=f"of: {', '.join(RECIPES)}"
    )
    p.add_argument("--skip", nargs="*", default=[], help="recipes to leave out (e.g. default)")
    p.add_argument("--fit-only", action="store_true", help="only the one-fit comparison")
    p.add_argument("--no-sklearn", action="store_true", help="no scikit-learn LDA beside ours")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--C", type=float, nargs="+", default=[0.1, 0.3, 1, 3, 10], dest="Cs")
    p.add_argument("--out", type=Path, default=OUT_DIR / "lda.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    recipes = [r for r in args.recipes if r not in args.skip]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; valid: {', '.join(RECIPES)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine_info(), "stores": {}}
    print(f"load {result['machine']['load_avg']} on {result['machine']['cores']} cores")
    for store in args.stores:
        if not store.exists():
            print(f"{store}: not found; skipped")
            continue
        fit = fit_once(store, sklearn=not args.no_sklearn)
        print(f"{store.name} one fit: {fit}", flush=True)
        entry: dict[str, Any] = {"fit": fit}
        if not args.fit_only:
            entry["baseline"] = base = baseline(store, args.Cs)
            print(f"{store.name} baseline: {base}", flush=True)
            rows = []
            with tempfile.TemporaryDirectory(prefix="embedstore-lda-") as tmp:
                for name in recipes:
                    row = run_recipe(store, name, Path(tmp))
                    if row is not None:
                        rows.append(row)
                        print(row, flush=True)
            for r in rows:
                r["test_top1_vs_lr"] = round(r["test_top1"] - base["test_top1"], 4)
            cols = ["recipe", "views", "oof_top1", "test_top1", "test_macro_f1"]
            cols += ["test_top1_vs_lr", "fold_fit_s", "seconds"]
            print_table([base, *rows], cols, title=f"{store.name}: held-out test, one measurement")
            entry["rows"] = rows
        result["stores"][store.name] = entry
        write_json(result, args.out)  # after each store: a long run keeps what it measured
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
