"""Refit vs fold ensemble vs both, measured out-of-fold with nested cross-validation.

Run from the repository root (a store split into folds, e.g. grocery81 with efficientnet-lite0):

    python benchmarks/refit.py --store /tmp/g81/store --head mlp --head linear

A refit has no out-of-fold predictions of its own, so each outer fold k is held out in turn:
``heads.train(store, where="fold != k", fold="all", refit=True)`` trains the inner folds and
the refit (epochs: the inner folds' median best epoch), and every member predicts fold k. The
pooled predictions over k are out-of-fold for every training image; the store's held-out part
(fold -1) is never read. Compared: the inner fold ensemble (calibrated log-probabilities,
equal weights, as ``heads train`` writes it), the refit alone, and both (the refit weighted 1,
or K = as much as the K folds together). Top-1 and macro-F1; ``--json`` writes the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python benchmarks/refit.py` puts benchmarks/ first on sys.path; import from the repo root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import embedstore  # noqa: E402
import heads  # noqa: E402
from heads._metrics import macro_f1  # noqa: E402
from heads.runs._loaded import log_softmax  # noqa: E402


def outer_fold(store: str, k: int, head: str, work: Path, options: dict) -> dict[str, np.ndarray]:
    """Logits of fold ``k``'s rows from each member of a refit run trained without fold k."""
    res = heads.train(
        store,
        where=f"fold != {k}",
        fold="all",
        head=head,
        refit=True,
        ensemble="both",
        out=work / f"{head}-outer{k}",
        progress=False,
        overwrite=True,
        **options,
    )
    return member_logits(store, k, res.ensemble)


def member_logits(store: str, k: int, run: str | Path) -> dict[str, np.ndarray]:
    """Calibrated log-probabilities of fold ``k``'s rows from each member of the ensemble
    ``run`` (folds and refit), with the labels, classes and the refit's epochs."""
    st = embedstore.connect(store, create=False)
    out: dict[str, np.ndarray] = {}
    ens = heads.load(run, "cpu")
    for name, m, t in zip(
        [Path(r).name for r in ens.config["members"]], ens.members, ens.temperatures, strict=True
    ):
        embs, tab = st.embedding_rows(
            {c: b["dim"] for c, b in m.backbone_columns().items()},
            ["id", "label"],
            where=f"fold = {k}",
        )
        out[name] = log_softmax(m.logits(embs).astype(np.float64) / t)
        out["label"] = np.asarray(tab["label"], dtype=object)
    out["classes"] = np.asarray(ens.classes, dtype=object)
    out["refit_epochs"] = np.array(ens.members[-1].config["refit"]["epochs"])
    return out


def score(outs: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Top-1 and macro-F1 of each way to predict, pooled over the outer folds ``outs``."""
    y_all, preds = [], {}
    for o in outs:
        index = {c: i for i, c in enumerate(o["classes"])}
        y_all.append(np.array([index[v] for v in o["label"]]))
        inner = [v for n, v in o.items() if n.startswith("fold")]
        fold_mean = np.mean(inner, axis=0)  # (N, C) mean log-probabilities
        K = len(inner)
        variants = {
            "folds": fold_mean,
            "refit": o["refit"],
            "both (refit weight 1)": (K * fold_mean + o["refit"]) / (K + 1),
            "both (refit weight K)": (fold_mean + o["refit"]) / 2,
        }
        for name, z in variants.items():
            preds.setdefault(name, []).append(z.argmax(1))
    y = np.concatenate(y_all)
    return {
        name: {
            "top1": float((np.concatenate(p) == y).mean()),
            "macro_f1": float(macro_f1(y, np.concatenate(p))),
        }
        for name, p in preds.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--head", action="append", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="Write the results here.")
    args = ap.parse_args()
    st = embedstore.connect(args.store, create=False)
    _, t = st.embeddings(None, columns=["fold"])
    folds = sorted({int(f) for f in t["fold"] if f is not None and f >= 0})
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for head in args.head or ["mlp", "linear"]:
            t0 = time.perf_counter()
            outs = [
                outer_fold(args.store, k, head, Path(tmp), {"device": args.device}) for k in folds
            ]
            table[head] = score(outs)
            epochs = [int(o["refit_epochs"]) for o in outs]
            table[head]["refit_epochs"] = epochs
            table[head]["seconds"] = round(time.perf_counter() - t0, 1)
            print(
                f"{head} (nested {len(folds)}-fold, refit epochs {epochs}, "
                f"{table[head]['seconds']} s)"
            )
            for name, s in table[head].items():
                if isinstance(s, dict):
                    print(f"  {name:<24} top1 {s['top1']:.4f}  macro-F1 {s['macro_f1']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
