"""Pseudo-labels and self-distillation against the plain fold ensemble and logistic regression.

Run from the repository root (figures are accuracies; seconds only mean something on a quiet
machine):

    python benchmarks/pseudo.py --store /work/stores/grocery81-plain            # both settings
    python benchmarks/pseudo.py --store /work/stores/flowers12-plain --settings transductive

Two settings per store (a store built by ``embedstore ingest`` + ``embedstore split --folds 5
--use-split``: 5 folds over the training photos, the test photos held out):

- **transductive** (the SnakeCLEF 2022 winners' setting): the test photos are in the store and
  serve as the unlabelled rows (``--unlabelled "split = 'test'"``; their labels are never read);
  the scores are on those same test photos, with their true labels.
- **semi-supervised**: a copy of the store keeps 20% of each class's training labels (at least
  one photo), the rest of the training photos lose theirs and become the unlabelled rows; the
  folds are made again over the labelled ones; the test part stays held out and unused.

For each: the plain fold ensemble (``heads train --fold all``), ``--pseudo-label`` with the
fraction and weight chosen out-of-fold (the run's own choice; its out-of-fold table is printed),
a test sweep over the fraction at the chosen weight (for information only: nothing is chosen on
test), ``heads distill`` of the chosen pseudo-labelled run and of the plain run (the student sees
the same unlabelled rows), and the baseline: scikit-learn ``LogisticRegression`` with ``C``
chosen by cross-validation on the store's folds (``benchmarks/quality.py``'s ``baseline``).
Every head is the MLP with its defaults except ``--hidden`` (default 1024) and no views (the
stores have none). Written to ``--out`` (JSON, one file per store) with the machine they ran on.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import OUT_DIR, machine_info, print_table, write_json  # noqa: E402
from benchmarks.quality import baseline  # noqa: E402

TEST = "split = 'test'"
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5)


def semi_store(src: Path, dest: Path, keep: float, seed: int = 0) -> Path:
    """A copy of ``src`` keeping ``keep`` of each class's training labels (at least one), the
    other training rows unlabelled, split again into 5 folds (test held out)."""
    import embedstore

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    st = embedstore.connect(dest, create=False)
    t = st.read(["id", "label", "fold"]).to_pydict()
    ids, labels, folds = np.array(t["id"]), np.array(t["label"], object), np.array(t["fold"])
    rng = np.random.default_rng(seed)
    drop = []
    for c in sorted(set(labels[folds >= 0])):
        rows = np.flatnonzero((labels == c) & (folds >= 0))
        n_keep = max(1, int(round(keep * len(rows))))
        drop += list(rng.permutation(rows)[n_keep:])
    st.update_columns(
        [str(i) for i in ids[drop]], {"label": [None] * len(drop), "fold": [None] * len(drop)}
    )
    embedstore.split(dest, folds=5, seed=seed, use_split_column=True)
    return dest


def holdout(run: Path) -> dict[str, Any]:
    import heads

    ev = heads.evaluate(run, plots=False, device="cpu")
    h = ev.holdout or {}
    return {
        "oof_top1": ev.metrics.get("top1"),
        "oof_macro_f1": ev.metrics.get("macro_f1"),
        "test_top1": h.get("top1"),
        "test_macro_f1": h.get("macro_f1"),
    }


def train(store: Path, out: Path, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import heads

    t0 = time.perf_counter()
    res = heads.train(
        store, fold="all", out=out, progress=False, overwrite=True, device="cpu", **options
    )
    return res, {**holdout(out), "seconds": round(time.perf_counter() - t0, 1)}


def distilled(teacher: Path, out: Path, unlabelled: str | None, hidden: int) -> dict[str, Any]:
    import heads

    t0 = time.perf_counter()
    d = heads.distill(
        teacher,
        out=out,
        unlabelled=unlabelled,
        progress=False,
        overwrite=True,
        device="cpu",
        hidden=hidden,
    )
    h = d.holdout or {}
    return {
        "test_top1": h.get("top1"),
        "test_macro_f1": h.get("macro_f1"),
        "teacher_test_top1": (d.teacher_holdout or {}).get("top1"),
        "agreement": d.holdout_agreement,
        "predict_seconds": d.predict_seconds,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def measure(
    store: Path, setting: str, runs: Path, hidden: int, Cs: list[float], epochs: int | None
) -> dict:
    """Every row of one setting's table."""
    unl = TEST if setting == "transductive" else None
    base = {"hidden": hidden, "views": False, "tta": False, "epochs": epochs}
    rows: list[dict[str, Any]] = []
    lr = baseline(store, Cs)
    rows.append({"model": lr["recipe"], **{k: lr[k] for k in ("test_top1", "test_macro_f1")}})
    print(rows[-1], flush=True)
    _, plain = train(store, runs / "plain", base)
    rows.append({"model": "fold ensemble (plain)", **plain})
    print(rows[-1], flush=True)
    pseudo = {**base, "pseudo_label": True, "unlabelled": unl}
    res, chosen = train(store, runs / "chosen", pseudo)
    p = res.pseudo
    rows.append(
        {
            "model": f"--pseudo-label, chosen out-of-fold: fraction {p.fraction:g}, "
            f"weight {p.weight:g}",
            **chosen,
            "pseudo_rows": sum(r["rows"] for r in p.rounds),
        }
    )
    print(rows[-1], flush=True)
    weight = p.weight if p.fraction else 1.0
    sweep = []
    for fr in SWEEP:
        if p.fraction == fr:
            sweep.append({"fraction": fr, **chosen, "pseudo_rows": rows[-1]["pseudo_rows"]})
            continue
        r, s = train(store, runs / f"f{fr}", {**pseudo, "fraction": fr, "pseudo_weight": weight})
        assert r.pseudo is not None
        sweep.append({"fraction": fr, **s, "pseudo_rows": r.pseudo.rounds[0]["rows"]})
        print(sweep[-1], flush=True)
    teacher = runs / "chosen"
    rows.append(
        {"model": "distilled from the chosen run (1 MLP)"}
        | distilled(teacher, runs / "chosen-distilled", unl, hidden)
    )
    print(rows[-1], flush=True)
    rows.append(
        {"model": "distilled from the plain run (1 MLP)"}
        | distilled(runs / "plain", runs / "plain-distilled", unl, hidden)
    )
    print(rows[-1], flush=True)
    return {
        "setting": setting,
        "store": str(store),
        "unlabelled": p.unlabelled,
        "n_unlabelled": p.n_unlabelled,
        "choice": p.choice,
        "choice_fraction": p.fraction,
        "weight_of_sweep": weight,
        "rows": rows,
        "sweep": sweep,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--store", type=Path, required=True, help="a split store (5 folds, test held out)"
    )
    p.add_argument(
        "--settings",
        nargs="+",
        default=["transductive", "semi-supervised"],
        choices=["transductive", "semi-supervised"],
    )
    p.add_argument("--keep", type=float, default=0.2, help="labels kept (semi-supervised)")
    p.add_argument("--hidden", type=int, default=1024, help="the MLP's width (default: its own)")
    p.add_argument("--epochs", type=int, default=None, help="at most (default: the head's)")
    p.add_argument("--C", type=float, nargs="+", default=[0.3, 1, 3, 10], dest="Cs")
    p.add_argument("--out", type=Path, default=None, help="JSON (default out/pseudo-<store>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out or OUT_DIR / f"pseudo-{args.store.name}.json"
    result: dict[str, Any] = {"store": str(args.store), "machine": machine_info(), "settings": []}
    with tempfile.TemporaryDirectory(prefix="embedstore-pseudo-") as tmp:
        for setting in args.settings:
            store = args.store
            if setting == "semi-supervised":
                store = semi_store(args.store, Path(tmp) / "semi-store", args.keep)
            runs = Path(tmp) / setting
            m = measure(store, setting, runs, args.hidden, args.Cs, args.epochs)
            m["keep"] = args.keep if setting == "semi-supervised" else None
            result["settings"].append(m)
            cols = ["model", "test_top1", "test_macro_f1", "oof_top1", "oof_macro_f1", "seconds"]
            print_table(m["rows"], cols, title=f"{args.store.name}, {setting}")
            cols = ["fraction", "pseudo_rows", "test_top1", "test_macro_f1", "oof_macro_f1"]
            title = f"fraction sweep on test, weight {m['weight_of_sweep']}"
            print_table(m["sweep"], cols, title=title)
            write_json(result, out)  # after each setting
    png = out.with_suffix(".png")
    plot(result, png, args.store.name)
    print(f"wrote {out} and {png}")
    return result


def plot(result: dict[str, Any], path: Path, name: str) -> None:
    """Test top-1 against the pseudo-labelled fraction, per setting, beside the plain ensemble,
    the run whose fraction was chosen out-of-fold, the distilled student and the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["settings"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.2), squeeze=False)
    for ax, m in zip(axes[0], sets, strict=True):
        rows = {r["model"].split(":")[0].split(" (")[0]: r for r in m["rows"]}
        fr = [0.0] + [s["fraction"] for s in m["sweep"]]
        plain = rows["fold ensemble"]["test_top1"]
        ax.plot(fr, [plain] + [s["test_top1"] for s in m["sweep"]], "o-", label="pseudo-labelled")
        ax.axhline(plain, color="grey", ls="--", lw=1, label="plain fold ensemble")
        lr = next(r for r in m["rows"] if r["model"].startswith("LogisticRegression"))
        ax.axhline(lr["test_top1"], color="k", ls=":", lw=1, label="logistic regression")
        chosen = next(r for r in m["rows"] if r["model"].startswith("--pseudo-label"))
        ax.plot([m["choice_fraction"]], [chosen["test_top1"]], "r*", ms=12, label="chosen OOF")
        dist = next(r for r in m["rows"] if r["model"].startswith("distilled from the chosen"))
        ax.axhline(dist["test_top1"], color="tab:green", ls="-.", lw=1, label="distilled (1 MLP)")
        ax.set_xlabel(f"fraction pseudo-labelled (weight {m['weight_of_sweep']:g})")
        ax.set_ylabel("test top-1")
        ax.set_title(f"{name}, {m['setting']} ({m['n_unlabelled']} unlabelled)")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
