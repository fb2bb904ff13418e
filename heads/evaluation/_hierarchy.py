"""Scores at every rank of the taxonomy (``heads eval`` on a run whose store has one):
top-1 per rank, the severity of the mistakes (how high in the tree a wrong answer and the
truth meet), and how the fallback answered (share and accuracy at each rank).

Mistake severity follows Bertinetto et al., "Making Better Mistakes" (CVPR 2020): a wrong
species in the right genus costs 1, a wrong genus in the right family 2, and so on up to the
number of ranks when nothing is shared. ``mistake_severity`` is its mean over the mistakes,
``hierarchical_distance`` its mean over every image (0 for a right one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import embedstore
from embedstore.store import read_taxonomy
from heads._errors import HeadsError
from heads.runs._loaded import Predictor
from heads.runs._rundir import read_val
from heads.taxonomy._fallback import fallback_summary
from heads.taxonomy._hierarchy import Hierarchy, load_hierarchy, softmax
from heads.taxonomy._tree import Tree, cut, run_taxonomy

# What the hierarchy scores mean (``heads eval --help``)
HIERARCHY_MEASURES: dict[str, str] = {
    "ranks.<rank>.top1": "top-1 at each rank of the taxonomy (the fine probabilities summed up "
    "the tree, or the rank's own run when that was more accurate out-of-fold)",
    "mistake_severity": "mean rank at which a wrong label and the truth meet in the tree "
    "(1: right parent; the number of ranks: nothing shared)",
    "hierarchical_distance": "the same over every image, a right one counting 0",
    "fallback": "share of images answered at each rank (the finest whose confidence clears its "
    "threshold; none: no rank does) and the accuracy of those answers",
}


def hierarchy_tree(model: Predictor) -> tuple[Tree | None, Hierarchy | None]:
    """The tree of ``model``'s classes and its fitted hierarchy (None, None: no taxonomy)."""
    hier = load_hierarchy(model, required=False)
    if hier is not None:
        return hier.tree, hier
    tax, rank = run_taxonomy(model)
    if tax is None:
        try:
            tax = read_taxonomy(model.store_path)
        except embedstore.StoreError:
            return None, None
    if tax is None or (rank or tax.ranks[0]) == tax.ranks[-1]:
        return None, None
    try:
        return Tree.from_taxonomy(cut(tax, rank), model.classes), None
    except HeadsError:
        return None, None  # classes outside the taxonomy: no hierarchy scores


def hierarchy_scores(
    model: Predictor,
    rows: dict[str, Any],
    part: str,
    store: Any = None,
) -> dict[str, Any] | None:
    """Per-rank top-1, mistake severity and the fallback's answers for ``rows`` (``{"id",
    "label", "logits"}``; ``part`` ``"val"`` or ``"holdout"`` says where a rank run's logits of
    the same images are read); None when the run has no taxonomy."""
    tree, hier = hierarchy_tree(model)
    if tree is None:
        return None
    truth = tree.rank_index(rows["label"])
    known = truth[:, 0] >= 0
    if not known.any():
        return None
    truth, logits = truth[known], np.asarray(rows["logits"])[known]
    if hier is None:
        P = tree.rollup(softmax(logits))
    else:
        ids = np.asarray(rows["id"], dtype=object)[known]
        P = hier.rank_probs(logits, _rank_logits(hier, ids, part, store))
    pred = np.stack([p.argmax(axis=1) for p in P], axis=1)
    right = pred == truth
    sources = {s.rank: s.source for s in hier.sources} if hier is not None else {}
    out: dict[str, Any] = {
        "ranks": {
            rank: {
                "top1": float(right[:, r].mean()),
                "names": len(tree.names[r]),
                "source": "head" if r == 0 else sources.get(rank, "rollup"),
            }
            for r, rank in enumerate(tree.ranks)
        },
        "n": int(known.sum()),
    }
    h = tree.lca_height(truth[:, 0], pred[:, 0])
    wrong = h > 0
    out["mistake_severity"] = float(h[wrong].mean()) if wrong.any() else None
    out["hierarchical_distance"] = float(h.mean())
    out["mistakes_by_meeting_rank"] = {
        (tree.ranks[r] if r < tree.depth else "none"): int(np.sum(h == r))
        for r in range(1, tree.depth + 1)
    }
    if hier is not None and hier.thresholds:
        answered, _, _ = hier.decide(P)
        out["fallback"] = fallback_summary(answered, right, tree.ranks)
        out["fallback"]["target"] = hier.target
    return out


def _rank_logits(
    hier: Hierarchy, ids: np.ndarray, part: str, store: Any
) -> dict[str, np.ndarray] | None:
    """The rank runs' logits for images ``ids``: their validation predictions (``part="val"``)
    or predictions from the store's stored embeddings."""
    models = hier.rank_runs("cpu")
    if not models:
        return None
    out = {}
    for rank, m in models.items():
        if part == "val":
            v = read_val(m.path)
            got_ids, logits = v["id"], v["logits"]
        else:
            st = embedstore.connect(store or m.store_path, create=False)
            dims = {c: b["dim"] for c, b in m.backbone_columns().items()}
            embs, t = st.embedding_rows(dims, ["id", *m.columns], ids=[str(i) for i in ids])
            table = {c: np.asarray(t[c], dtype=object) for c in m.columns}
            got_ids, logits = t["id"], m.logits(embs, table)
        pos = {str(i): k for k, i in enumerate(got_ids)}
        missing = [i for i in ids if str(i) not in pos]
        if missing:
            raise HeadsError(
                f"{m.path}: the {rank} run has no prediction for {len(missing)} of the images "
                f"(e.g. {missing[0]}); train it on the same store and folds"
            )
        out[rank] = logits[[pos[str(i)] for i in ids]]
    return out
