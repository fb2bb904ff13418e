"""``heads predict --fallback``: each image answered at the finest rank of the taxonomy whose
confidence clears its threshold ("genus Amanita, species uncertain"), with every rank's top-1.

The decision itself is the run's hierarchy (heads.taxonomy: calibrated probabilities per rank,
thresholds fitted out-of-fold); this fills the predictions' ``rank``, ``answer`` and ``ranks``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heads.taxonomy._hierarchy import Hierarchy


def answer_ranks(
    results: list[Any],
    hierarchy: Hierarchy,
    logits: np.ndarray,
    rank_logits: dict[str, np.ndarray],
    unknown: np.ndarray | None,
) -> None:
    """Set ``rank``, ``answer`` and ``ranks`` of ``results`` (one per row of ``logits``, the
    run's (prior-adjusted) logits; ``rank_logits`` the rank runs'). An image the unknown
    detector rejects answers at no rank (its ``label`` says unknown)."""
    P = hierarchy.rank_probs(logits, rank_logits or None)
    answered, pred, conf = hierarchy.decide(P)
    tree = hierarchy.tree
    for i, r in enumerate(results):
        r.ranks = []
        for k, rank in enumerate(tree.ranks):
            t = hierarchy.thresholds[k].of(tree.names[k], pred[i : i + 1, k])[0]
            r.ranks.append(
                {
                    "rank": rank,
                    "label": tree.names[k][int(pred[i, k])],
                    "confidence": float(conf[i, k]),
                    "threshold": None if not np.isfinite(t) else float(t),
                }
            )
        if unknown is not None and bool(unknown[i]):
            r.rank, r.answer = None, None
        elif answered[i] >= 0:
            k = int(answered[i])
            r.rank, r.answer = tree.ranks[k], tree.names[k][int(pred[i, k])]
        else:
            r.rank, r.answer = None, None
