"""Prediction sets with a coverage guarantee, and recall@5, on grocery81's held-out test photos.

Run from the repository root (figures are coverages and sizes; nothing here is timed):

    python benchmarks/sets.py --store /work/stores/grocery81-plain
    python benchmarks/sets.py --store S --runs benchmarks/out/sets-runs --levels 0.8 0.9 0.95

The store holds efficientnet-lite0 embeddings of grocery81 split into 5 folds over its training
part with the test part held out (``embedstore split --use-split``). Two fold ensembles of the
default recipe (``heads.train(fold="all", head="mlp")``) are trained (or reused from ``--runs``):

- **oof**: on the whole training part; its sets are calibrated on its out-of-fold predictions
  (what ``heads predict --coverage`` does by default).
- **val**: on the training part without the dataset's official validation photos
  (``train/*/val_*``, 296 photos taken apart from the training ones); its sets are calibrated
  on those photos (``--calibrate-on "path LIKE '%/val_%'"``), which the run never saw.

For each, at each coverage level, the sets' empirical coverage and mean size on the 2,485 test
photos (read once), with the ``lac`` score (default) and ``aps``. Beside them, in the same
process: the **fixed top-k list** with the smallest k whose test coverage reaches the level (a
baseline that is told the test answer: conformal sets must do as well without it), and
split conformal on random halves of the test part itself (exchangeable by construction: 200
draws, mean and spread), which shows what the method gives when its assumption holds. Recall@5
and top-1 of both runs and of scikit-learn ``LogisticRegression`` (C by CV over the folds) on
test. With ``--unknown``: an MLP with the default unknown detector, its fold ensemble with one
threshold and with per-class thresholds (``class_thresholds=20``), and how often each rejects
the (all known) test photos, per class. Results: printed, ``benchmarks/out/sets.json`` and
``sets.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import OUT_DIR, machine_info, print_table, write_json  # noqa: E402

VAL_FILES = "path LIKE '%/val_%'"


def train_runs(store: Path, runs: Path, device: str) -> dict[str, Path]:
    """The two fold ensembles (trained unless already in ``runs``)."""
    import heads

    out = {"oof": runs / "mlp", "val": runs / "mlp-without-val"}
    where = {"oof": None, "val": f"NOT ({VAL_FILES})"}
    for name, path in out.items():
        if not (path / "config.json").is_file():
            heads.train(
                store,
                fold="all",
                head="mlp",
                where=where[name],
                out=path,
                device=device,
                progress=False,
            )
    return out


def test_rows(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities ``(N, C)`` and true classes of the held-out test photos."""
    import heads
    from heads.evaluation._evaluate import holdout_rows
    from heads.runs._loaded import log_softmax

    model = heads.load(run, "cpu")
    rows = holdout_rows(model)
    assert rows is not None, f"{run}: its store has no held-out part"
    index = {c: i for i, c in enumerate(model.classes)}
    y = np.array([index[str(v)] for v in rows["label"]])
    p = np.exp(log_softmax(np.asarray(rows["logits"], np.float64)))
    return p, y, model.classes


def conformal_rows(
    runs: dict[str, Path], levels: list[float], scores: list[str]
) -> list[dict[str, Any]]:
    import heads
    from heads.prediction import set_scores

    out = []
    for name, run in runs.items():
        p, y, _ = test_rows(run)
        for score in scores:
            for level in levels:
                cal = heads.prediction.calibrate_sets(
                    run, level, score=score, calibrate_on=VAL_FILES if name == "val" else None
                )
                s = set_scores(cal.sets(p), y)
                out.append(
                    {
                        "run": name,
                        "calibrated on": cal.source,
                        "n_cal": cal.n,
                        "per-class": sum(cal.own),
                        "score": score,
                        "target": level,
                        "coverage": round(s["coverage"], 4),
                        "mean_size": round(s["mean_set_size"], 3),
                        "singletons": round(s["singletons"], 3),
                        "class_cov_min": round(s["class_coverage_min"], 3),
                    }
                )
    return out


def topk_rows(run: Path, levels: list[float]) -> list[dict[str, Any]]:
    """The fixed top-k list whose test coverage first reaches each level (told the answer)."""
    p, y, _ = test_rows(run)
    rank = (p > p[np.arange(len(y)), y][:, None]).sum(1)  # 0: the true label is the best
    out = []
    for level in levels:
        k = next(k for k in range(1, p.shape[1] + 1) if np.mean(rank < k) >= level)
        out.append({"target": level, "k": k, "coverage": round(float(np.mean(rank < k)), 4)})
    return out


def half_rows(run: Path, levels: list[float], draws: int) -> list[dict[str, Any]]:
    """Split conformal on random halves of the test part (exchangeable): mean and sd."""
    from heads.prediction import calibrate_probs, set_scores

    p, y, classes = test_rows(run)
    rng = np.random.default_rng(0)
    out = []
    for level in levels:
        cov, size = [], []
        for _ in range(draws):
            perm = rng.permutation(len(y))
            a, b = perm[: len(y) // 2], perm[len(y) // 2 :]
            cal = calibrate_probs(p[a], y[a], classes, coverage=level)
            s = set_scores(cal.sets(p[b]), y[b])
            cov.append(s["coverage"])
            size.append(s["mean_set_size"])
        out.append(
            {
                "target": level,
                "coverage": round(float(np.mean(cov)), 4),
                "coverage_sd": round(float(np.std(cov)), 4),
                "mean_size": round(float(np.mean(size)), 3),
            }
        )
    return out


def recall_rows(store: Path, runs: dict[str, Path]) -> list[dict[str, Any]]:
    """Top-1 and recall@5 on test: both runs and LogisticRegression (C by CV over the folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    import embedstore
    import heads
    from heads._metrics import recall_at_k, topk_accuracy

    out = []
    for name, run in runs.items():
        h = heads.evaluate(run, plots=False).holdout or {}
        out.append(
            {"model": f"mlp fold ensemble ({name})", "top1": h["top1"], "recall@5": h["recall@5"]}
        )
    X, cols = embedstore.connect(store).embeddings(columns=("label", "fold"), labelled=True)
    y, fold = np.asarray(cols["label"]), np.asarray(cols["fold"])
    train, test = fold >= 0, fold == -1
    lr = GridSearchCV(
        LogisticRegression(max_iter=2000),
        {"C": [0.1, 0.3, 1, 3, 10]},
        cv=PredefinedSplit(fold[train]),
        scoring="f1_macro",
    ).fit(X[train], y[train])
    p = lr.predict_proba(X[test])
    yi = np.searchsorted(lr.classes_, y[test])
    out.append(
        {
            "model": f"LogisticRegression (C = {lr.best_params_['C']} by CV)",
            "top1": round(topk_accuracy(yi, p, 1), 4),
            "recall@5": round(recall_at_k(yi, p, 5), 4),
        }
    )
    return out


def threshold_rows(store: Path, runs: Path, device: str) -> list[dict[str, Any]]:
    """An MLP with the default unknown detector; its folds' ensemble with one threshold and
    with per-class ones (min count 20): rejection of the (all known) test photos."""
    import heads
    from heads.evaluation._evaluate import holdout_rows

    base = runs / "mlp-unknown"
    if not (base / "config.json").is_file():
        heads.train(
            store,
            fold="all",
            head="mlp",
            unknown="default",
            out=base,
            device=device,
            progress=False,
        )
    folds = sorted(str(p) for p in base.glob("fold*"))
    out = []
    for name, ct in (("one threshold", None), ("per class, min count 20", 20)):
        ens = runs / f"unknown-{'per-class' if ct else 'global'}"
        heads.ensemble(folds, ens, class_thresholds=ct, overwrite=True)
        model = heads.load(ens, "cpu")
        rows = holdout_rows(model)
        assert rows is not None
        index = {c: i for i, c in enumerate(model.classes)}
        y = np.array([index[str(v)] for v in rows["label"]])
        pred = rows["logits"].argmax(1)
        unknown = model.is_unknown(rows["unknown_score"], pred)
        rate = np.array([unknown[y == c].mean() for c in range(len(model.classes))])
        out.append(
            {
                "thresholds": name,
                "own": sum((model.config.class_thresholds or {}).get("own", [])),
                "rejected": round(float(unknown.mean()), 4),
                "class_rate_sd": round(float(rate.std()), 4),
                "class_rate_max": round(float(rate.max()), 4),
                "acc_on_accepted": round(float(np.mean(pred[~unknown] == y[~unknown])), 4),
            }
        )
    return out


def plot(rows: list[dict[str, Any]], topk: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.6))
    for (run, score), style in (
        (("oof", "lac"), "o--"),
        (("val", "lac"), "o-"),
        (("val", "aps"), "s:"),
    ):
        r = [x for x in rows if x["run"] == run and x["score"] == score]
        label = f"{score}, calibrated {'out-of-fold' if run == 'oof' else 'on the val_ photos'}"
        a.plot([x["target"] for x in r], [x["coverage"] for x in r], style, label=label)
        b.plot([x["target"] for x in r], [x["mean_size"] for x in r], style, label=label)
    lv = [x["target"] for x in topk]
    a.plot(lv, lv, "k-", lw=0.8, label="asked for")
    b.plot(lv, [x["k"] for x in topk], "k^", label="top-k list reaching it (told the answer)")
    a.set(xlabel="coverage asked for", ylabel="coverage on the 2,485 test photos")
    b.set(xlabel="coverage asked for", ylabel="labels per set (mean)")
    handles = [*a.get_legend_handles_labels()[0], b.get_legend_handles_labels()[0][-1]]
    labels = [*a.get_legend_handles_labels()[1], b.get_legend_handles_labels()[1][-1]]
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("grocery81: conformal prediction sets on the held-out test photos")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--runs", type=Path, default=OUT_DIR / "sets-runs")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out's JSON")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "sets.json")
    ap.add_argument(
        "--unknown", action="store_true", help="also per-class unknown thresholds vs one"
    )
    args = ap.parse_args(argv)
    if args.plot_only:
        import json

        saved = json.loads(args.out.read_text())
        plot(saved["sets"], saved["topk"], args.out.with_suffix(".png"))
        return saved
    runs = train_runs(args.store, args.runs, args.device)
    rows = conformal_rows(runs, args.levels, ["lac", "aps"])
    cols = ["run", "score", "target", "coverage", "mean_size", "singletons", "class_cov_min"]
    print_table(rows, [*cols, "n_cal", "per-class"], "conformal sets on the test photos")
    topk = topk_rows(runs["val"], args.levels)
    print_table(topk, ["target", "k", "coverage"], "fixed top-k lists (val run), told the answer")
    halves = half_rows(runs["val"], args.levels, args.draws)
    print_table(halves, ["target", "coverage", "coverage_sd", "mean_size"], "test halves (val run)")
    recall = recall_rows(args.store, runs)
    print_table(recall, ["model", "top1", "recall@5"], "top-1 and recall@5 on the test photos")
    thresholds = threshold_rows(args.store, args.runs, args.device) if args.unknown else []
    if thresholds:
        print_table(
            thresholds,
            ["thresholds", "own", "rejected", "class_rate_sd", "class_rate_max", "acc_on_accepted"],
            "unknown decision on the (all known) test photos",
        )
    res = {
        "machine": machine_info(),
        "unknown_thresholds": thresholds,
        "store": str(args.store),
        "sets": rows,
        "topk": topk,
        "test_halves": halves,
        "recall": recall,
    }
    write_json(res, args.out)
    plot(rows, topk, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return res


if __name__ == "__main__":
    main()
