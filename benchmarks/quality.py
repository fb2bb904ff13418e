"""Accuracy on few-shot fine-grained photos: each head recipe against a tuned logistic regression.

Run from the repository root (figures are accuracies; seconds are only comparable on a quiet
machine):

    python benchmarks/quality.py                                   # grocery81, every recipe
    python benchmarks/quality.py --data ../shared/data/flowers12 --recipes default linear
    python benchmarks/quality.py --tuned runs/mlp-tuned            # add a `heads tune` run

The store (``--store``, default ``benchmarks/out/quality-<data>``) is built once with
efficientnet-lite0 embeddings and the augmented views ``--views`` (flip, 5 crops), then split
into 5 folds with the data's own test part held out (``--use-split``). Nothing is chosen on the
test part: the **baseline** is scikit-learn ``LogisticRegression`` with ``C`` chosen by
cross-validation over the store's own training folds (``GridSearchCV`` with those folds as a
``PredefinedSplit``), refit on the whole training part; every **recipe** is a fixed
``heads.train(fold="all", ...)`` call (what the CLI runs), scored with ``heads.evaluate``: the
out-of-fold figure on the training part and the held-out test figure, once.

**Read the out-of-fold column with care on grocery81**: its training photos come in
near-duplicate series of one item, so random folds put near-twins on both sides (out-of-fold
top-1 ~0.96 against ~0.72 on test). The held-out test part was photographed separately.

Figures are printed, written as JSON (``--out``, default ``benchmarks/out/quality.json``) with
the machine they ran on, and plotted (``quality.png``: test top-1 and macro-F1 per recipe, the
baseline as a line).
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

GROCERY = REPO.parent / "shared" / "data" / "grocery81"

# name -> heads.train options; "default" is the README's recipe
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"head": "mlp"},
    "mlp, no views": {"head": "mlp", "views": False, "tta": False},
    "linear": {"head": "linear"},
    "mlp refit only": {"head": "mlp", "refit": True, "ensemble": "refit"},
    "mlp folds + refit": {"head": "mlp", "refit": True, "ensemble": "both"},
    "centroid": {"head": "centroid"},  # SimpleShot centring (the default)
    "centroid, no centring": {"head": "centroid", "centring": "none"},
    "centroid train+val transductive": {
        "head": "centroid",
        "reference": "train+val",
        "transductive": True,
    },
    "knn": {"head": "knn"},
    "lda": {"head": "lda"},
    "lda, no views": {"head": "lda", "views": False, "tta": False},
    "lda refit": {"head": "lda", "refit": True, "ensemble": "refit"},
}


def build_store(data: Path, store: Path, views: list[str]) -> None:
    import embedstore

    meta = data / "metadata.csv"
    embedstore.ingest(
        data, store, metadata=meta if meta.exists() else None, views=views or None, progress=True
    )
    embedstore.split(store, folds=5, seed=0, use_split_column=True)


def baseline(store: Path, Cs: list[float]) -> dict[str, Any]:
    """LogisticRegression, C by cross-validation over the store's training folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    import embedstore

    X, cols = embedstore.connect(store).embeddings(columns=("label", "fold"), labelled=True)
    y, fold = np.asarray(cols["label"]), np.asarray(cols["fold"])
    train, test = fold >= 0, fold == -1
    t0 = time.perf_counter()
    search = GridSearchCV(
        LogisticRegression(max_iter=2000),
        {"C": Cs},
        cv=PredefinedSplit(fold[train]),
        scoring="f1_macro",
        refit=True,
    ).fit(X[train], y[train])
    pred = search.predict(X[test])
    return {
        "recipe": f"LogisticRegression (C={search.best_params_['C']} by CV)",
        "oof_macro_f1": round(float(search.best_score_), 4),
        "test_top1": round(float(np.mean(pred == y[test])), 4),
        "test_macro_f1": round(float(f1_score(y[test], pred, average="macro")), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def recipe(
    store: Path, name: str, options: dict[str, Any], runs: Path, device: str
) -> dict[str, Any]:
    import heads

    out = runs / name.replace(" ", "_").replace(",", "").replace("+", "and")
    t0 = time.perf_counter()
    heads.train(
        store, fold="all", out=out, progress=False, device=device, overwrite=True, **options
    )
    seconds = time.perf_counter() - t0
    return scores(name, out, seconds)


def scores(name: str, run: Path, seconds: float | None) -> dict[str, Any]:
    import heads

    ev = heads.evaluate(run, plots=False)
    hold = ev.holdout or {}
    return {
        "recipe": name,
        "oof_top1": ev.metrics.get("top1"),
        "oof_macro_f1": ev.metrics.get("macro_f1"),
        "test_top1": hold.get("top1"),
        "test_macro_f1": hold.get("macro_f1"),
        "seconds": None if seconds is None else round(seconds, 1),
    }


def plot(rows: list[dict[str, Any]], base: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["recipe"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    ax.bar(x - 0.2, [r["test_top1"] or 0 for r in rows], 0.4, label="test top-1")
    ax.bar(x + 0.2, [r["test_macro_f1"] or 0 for r in rows], 0.4, label="test macro-F1")
    ax.axhline(base["test_top1"], color="k", ls="--", lw=1, label="logistic regression top-1")
    ax.axhline(
        base["test_macro_f1"], color="grey", ls=":", lw=1, label="logistic regression macro-F1"
    )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out test score")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=GROCERY, help="photos with train/ and test/ folders"
    )
    p.add_argument("--store", type=Path, default=None, help="store (built once if empty)")
    p.add_argument(
        "--views", default="flip,crops5", help="augmented views stored at ingest ('' for none)"
    )
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"of: {', '.join(RECIPES)}")
    p.add_argument(
        "--tuned", type=Path, nargs="*", default=[], help="`heads tune` runs to score as well"
    )
    p.add_argument("--C", type=float, nargs="+", default=[0.1, 0.3, 1, 3, 10], dest="Cs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=OUT_DIR / "quality.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.data.exists():
        print(f"{args.data}: not found (the shared data folder); nothing to measure")
        return {}
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; valid: {', '.join(RECIPES)}")
    store = args.store or OUT_DIR / f"quality-{args.data.name}"
    views = [v for v in args.views.split(",") if v]
    info = machine_info()
    print(f"{args.data.name}: store {store}, views {views or 'none'}; load {info['load_avg']}")
    build_store(args.data, store, views)
    base = baseline(store, args.Cs)
    print(f"baseline: {base}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="embedstore-quality-") as tmp:
        for name in args.recipes:
            rows.append(recipe(store, name, RECIPES[name], Path(tmp), args.device))
            print(rows[-1], flush=True)
    for run in args.tuned:
        rows.append(scores(f"tuned ({run.name})", run, None))
    for r in rows:
        for m in ("top1", "macro_f1"):
            if r[f"test_{m}"] is not None:
                r[f"test_{m}_vs_lr"] = round(r[f"test_{m}"] - base[f"test_{m}"], 4)
    cols = [
        "recipe",
        "oof_top1",
        "oof_macro_f1",
        "test_top1",
        "test_macro_f1",
        "test_top1_vs_lr",
        "test_macro_f1_vs_lr",
        "seconds",
    ]
    print_table([base, *rows], cols, title=f"{args.data.name}: held-out test, one measurement")
    png = args.out.with_suffix(".png")
    plot(
        rows, base, png, f"{args.data.name}, efficientnet-lite0, views {'+'.join(views) or 'none'}"
    )
    result = {
        "data": str(args.data),
        "store": str(store),
        "views": views,
        "baseline": base,
        "rows": rows,
        "machine": info,
    }
    write_json(result, args.out)
    print(f"wrote {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
