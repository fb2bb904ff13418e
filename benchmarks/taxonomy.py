"""Answers at every rank on grocery81: 81 fine classes under 43 coarse ones (``coarse_class``).

Run from the repository root (figures are accuracies; seconds are only comparable on a quiet
machine):

    python benchmarks/taxonomy.py --store /work/stores/grocery81-plain
    python benchmarks/taxonomy.py --store S --head linear --device cuda

The store (efficientnet-lite0 embeddings, 5 folds over the training part, the test part held
out with ``split --use-split``) is copied, never changed, and given its taxonomy from the
``coarse_class`` metadata column. Nothing is chosen on the test part, which is read once per
model. What it measures:

- **per-rank top-1 on the test part**: the fine head's probabilities summed up the tree
  (roll-up) against a head trained on the coarse labels (``heads train --rank coarse_class``),
  and which of the two ``heads hierarchy --rank-run`` chose out-of-fold; beside the baseline,
  scikit-learn ``LogisticRegression`` (C = 3, the value cross-validation over the same folds
  chose in ``benchmarks/quality.py``) rolled up and trained on coarse labels;
- **mistake severity** (the rank at which a wrong answer and the truth meet; 1: right coarse
  class, 2: wrong coarse class);
- **the fallback** (target 90% right at each rank): the share of test photos answered at each
  rank and how often those answers were right, with its thresholds fitted (a) out-of-fold over
  the store's random folds, (b) on grocery81's official validation files (``val_*``,
  photographed apart from the training ones) held out as fold 0, (c) as (b) with the one-sided
  95% Wilson lower bound of each threshold's share right asked to reach the target
  (``heads hierarchy --bound wilson``).

Figures are printed, written as JSON (``--out``, default ``benchmarks/out/taxonomy.json``) with
the machine they ran on, and plotted (``taxonomy.png``: where the fallback answered and how
often it was right).
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

TARGET = 0.9


def copy_store(src: Path, dest: Path, official_val: bool) -> Path:
    """A copy of ``src`` with its taxonomy from ``coarse_class``; with ``official_val`` the
    ``val_*`` files are the validation fold (fold 0) and the rest trains in every fold."""
    import embedstore

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("write.lock"))
    st = embedstore.connect(dest, create=False)
    if official_val:
        t = st.read(["id", "path"], where="split = 'train'").to_pydict()
        ids = [i for i, p in zip(t["id"], t["path"], strict=True) if "/val_" in p]
        st.update_columns(ids, {"split": ["val"] * len(ids)})
        embedstore.split(st, folds=5, seed=0, use_split_column=True)
    embedstore.store.set_taxonomy(st, ranks=["coarse_class"])
    return dest


def baseline(store: Path) -> dict[str, Any]:
    """LogisticRegression (C = 3) on the fine labels, rolled up, and on the coarse labels."""
    from sklearn.linear_model import LogisticRegression

    import embedstore
    from heads.taxonomy import Tree

    st = embedstore.connect(store, create=False)
    X, cols = st.embeddings(columns=("label", "coarse_class", "fold"), labelled=True)
    y, yc, fold = (np.asarray(cols[c]) for c in ("label", "coarse_class", "fold"))
    train, test = fold >= 0, fold == -1
    t0 = time.perf_counter()
    fine = LogisticRegression(C=3, max_iter=2000).fit(X[train], y[train])
    tree = Tree.from_taxonomy(embedstore.store.read_taxonomy(st), list(fine.classes_))
    P = tree.rollup(fine.predict_proba(X[test]))
    truth = tree.rank_index(y[test])
    pred = np.stack([p.argmax(axis=1) for p in P], axis=1)
    coarse = LogisticRegression(C=3, max_iter=2000).fit(X[train], yc[train])
    h = tree.lca_height(truth[:, 0], pred[:, 0])
    return {
        "model": "LogisticRegression C=3",
        "test_top1_label": float(np.mean(pred[:, 0] == truth[:, 0])),
        "test_top1_coarse_rollup": float(np.mean(pred[:, 1] == truth[:, 1])),
        "test_top1_coarse_head": float(np.mean(coarse.predict(X[test]) == yc[test])),
        "test_mistake_severity": float(h[h > 0].mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def scored(run: Path, name: str, seconds: float) -> dict[str, Any]:
    """A run's per-rank, severity and fallback figures, out-of-fold and on the test part."""
    import heads

    ev = heads.evaluate(run, plots=False)
    out: dict[str, Any] = {"model": name, "seconds": round(seconds, 1)}
    for part, d in (("oof", ev.metrics), ("test", ev.holdout or {})):
        out[f"{part}_top1"] = d.get("top1")
        h = d.get("hierarchy")
        if not h:
            continue
        for rank, v in h["ranks"].items():
            out[f"{part}_top1_{rank}"] = v["top1"]
            out[f"{part}_source_{rank}"] = v["source"]
        out[f"{part}_mistake_severity"] = h["mistake_severity"]
        out[f"{part}_hierarchical_distance"] = h["hierarchical_distance"]
        if h.get("fallback"):
            out[f"{part}_fallback"] = h["fallback"]
    return out


def train(store: Path, out: Path, head: str, device: str, **kw: Any) -> tuple[Path, float]:
    import heads

    t0 = time.perf_counter()
    heads.train(store, out=out, head=head, device=device, progress=False, overwrite=True, **kw)
    return out, time.perf_counter() - t0


def plot(results: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Stacked bars per model and part: answered at the fine rank (right / wrong), at the coarse
    rank (right / wrong), not answered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    colours = [("#2b8a3e", "#a5d8a5"), ("#1c6fb3", "#a9cbea")]
    names = []
    for i, (name, fb) in enumerate(results):
        left = 0.0
        for k, rank in enumerate(("label", "coarse_class")):
            share, acc = fb["answered"][rank], fb["accuracy"].get(rank) or 0.0
            for part, c, lab in (
                (share * acc, colours[k][0], "right"),
                (share * (1 - acc), colours[k][1], "wrong"),
            ):
                ax.barh(i, part, left=left, color=c, label=f"{rank}: {lab}" if i == 0 else None)
                left += part
        ax.barh(
            i,
            fb["answered"]["none"],
            left=left,
            color="#cccccc",
            label="no rank confident" if i == 0 else None,
        )
        ax.text(1.01, i, f"{fb['answer_accuracy']:.1%} right", va="center", fontsize=9)
        names.append(name)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of photos")
    ax.set_title(f"grocery81: where the fallback answered (target {TARGET:.0%} right per rank)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("/work/stores/grocery81-plain"))
    ap.add_argument("--head", default="mlp")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "taxonomy.json")
    args = ap.parse_args()
    import heads

    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="taxonomy-") as tmp:
        work = Path(tmp)
        folds = copy_store(args.store, work / "folds", official_val=False)
        val = copy_store(args.store, work / "val", official_val=True)
        base = baseline(folds)
        fine, s_fine = train(folds, work / "fine", args.head, args.device, fold="all")
        a = scored(fine, f"{args.head}, thresholds out-of-fold (random folds)", s_fine)
        coarse, s_coarse = train(
            folds, work / "coarse", args.head, args.device, fold="all", rank="coarse_class"
        )
        c = scored(coarse, f"{args.head} on coarse labels", s_coarse)
        chosen = heads.taxonomy.fit_hierarchy(
            fine, rank_runs={"coarse_class": coarse}, target=TARGET
        )
        a_choice = scored(fine, f"{args.head} + coarse run where chosen", 0.0)
        heads.taxonomy.fit_hierarchy(fine, target=TARGET)  # back to the roll-up only
        official, s_val = train(val, work / "official", args.head, args.device, fold=0)
        b = scored(official, f"{args.head}, thresholds on the official val files", s_val)
        heads.taxonomy.fit_hierarchy(official, target=TARGET, bound="wilson")
        bw = scored(official, f"{args.head}, official val, Wilson bound", 0.0)
    source = chosen.sources[0]
    rows = [
        {
            "model": base["model"],
            "fine top-1": base["test_top1_label"],
            "coarse top-1 (roll-up)": base["test_top1_coarse_rollup"],
            "coarse top-1 (coarse head)": base["test_top1_coarse_head"],
            "mistake severity": base["test_mistake_severity"],
        },
        {
            "model": a["model"].split(",")[0] + " (5 random folds)",
            "fine top-1": a["test_top1_label"],
            "coarse top-1 (roll-up)": a["test_top1_coarse_class"],
            "coarse top-1 (coarse head)": c["test_top1"],
            "mistake severity": a["test_mistake_severity"],
        },
        {
            "model": b["model"].split(",")[0] + " (fold 0 = official val)",
            "fine top-1": b["test_top1_label"],
            "coarse top-1 (roll-up)": b["test_top1_coarse_class"],
            "coarse top-1 (coarse head)": None,
            "mistake severity": b["test_mistake_severity"],
        },
    ]
    print_table(rows, list(rows[0]), "grocery81 test part, per rank")
    print(
        f"out-of-fold choice for coarse_class: roll-up {source['oof_top1']['rollup']:.4f} vs "
        f"coarse run {source['oof_top1']['run']:.4f} -> {source['source']}"
    )
    fallbacks = [
        ("thresholds out-of-fold, OOF (fitted rows)", a["oof_fallback"]),
        ("thresholds out-of-fold, test", a["test_fallback"]),
        ("thresholds on official val, val (fitted rows)", b["oof_fallback"]),
        ("thresholds on official val, test", b["test_fallback"]),
        ("official val + Wilson 95% bound, val (fitted)", bw["oof_fallback"]),
        ("official val + Wilson 95% bound, test", bw["test_fallback"]),
    ]
    fb_rows = [
        {
            "fallback": name,
            "answered label": fb["answered"]["label"],
            "right": fb["accuracy"]["label"],
            "answered coarse": fb["answered"]["coarse_class"],
            "right ": fb["accuracy"]["coarse_class"],
            "none": fb["answered"]["none"],
            "answers right": fb["answer_accuracy"],
        }
        for name, fb in fallbacks
    ]
    print_table(fb_rows, list(fb_rows[0]), f"fallback (target {TARGET:.0%} right at each rank)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(fallbacks, png)
    write_json(
        {
            "machine": machine,
            "baseline": base,
            "fine": a,
            "coarse": c,
            "fine_with_coarse_run": a_choice,
            "coarse_choice": source,
            "official_val": b,
            "official_val_wilson": bw,
            "png": str(png),
        },
        args.out,
    )
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
