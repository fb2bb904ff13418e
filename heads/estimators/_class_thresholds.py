"""Per-class thresholds for the unknown decision, fitted out-of-fold with a minimum count.

One detector threshold rejects the images of hard classes far more often than those of easy
ones: their scores are lower even when the label is right, so "unknown" ends up meaning "a
hard species". A threshold per *predicted* class (what is known when deciding) fitted like the
global one on the validation rows predicted as that class (keep ``target_tpr`` of them; with
unknown images in validation, the least Track-3 cost: :func:`threshold_min_cost`) rejects each
class's images at the same rate. A class predicted fewer than ``min_count`` times out-of-fold
has too few rows for a threshold of its own and keeps the global one (with unknowns, a class
also needs both kinds among its rows).

>>> th = fit_class_thresholds(scores, pred, is_known, n_classes=81, global_threshold=t)
>>> unknown = scores < th.for_pred(pred)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from heads.estimators._unknown import threshold_at_tpr, threshold_min_cost

# A predicted class needs this many validation rows for a threshold of its own.
DEFAULT_MIN_COUNT = 20


@dataclass
class ClassThresholds:
    """``per_class[c]``: the threshold for images predicted as class ``c`` (``own[c]``: fitted
    on its rows, else ``global_threshold``); ``counts[c]``: its validation rows."""

    global_threshold: float
    per_class: list[float]
    own: list[bool]
    counts: list[int]
    min_count: int
    method: str

    def for_pred(self, pred: np.ndarray) -> np.ndarray:
        """``(N,)`` the threshold of each image's predicted class (global for none)."""
        p = np.asarray(pred, dtype=np.int64)
        t = np.asarray(self.per_class, dtype=np.float64)
        ok = (p >= 0) & (p < len(t))
        return np.where(ok, t[np.where(ok, p, 0)], self.global_threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassThresholds:
        return cls(**d)


def fit_class_thresholds(
    scores: np.ndarray,
    pred: np.ndarray,
    is_known: np.ndarray,
    n_classes: int,
    *,
    global_threshold: float,
    min_count: int = DEFAULT_MIN_COUNT,
    target_tpr: float = 0.95,
    cost_unknown_as_known: float = 10.0,
    cost_known_as_unknown: float = 0.1,
) -> ClassThresholds:
    """Thresholds per predicted class from validation ``scores`` ``(N,)`` (higher: more
    known), the predicted classes ``pred`` ``(N,)`` and ``is_known`` ``(N,)``; classes with
    fewer than ``min_count`` rows (or, with unknowns, lacking either kind) keep
    ``global_threshold``."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, not {min_count}")
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(pred, dtype=np.int64)
    known = np.asarray(is_known, dtype=bool)
    fine = np.isfinite(s)
    s, p, known = s[fine], p[fine], known[fine]
    with_unknowns = bool((~known).any())
    per = np.full(n_classes, float(global_threshold))
    own = np.zeros(n_classes, dtype=bool)
    counts = np.bincount(p[(p >= 0) & (p < n_classes)], minlength=n_classes)
    for c in np.flatnonzero(counts >= min_count):
        rows = p == c
        k, u = s[rows & known], s[rows & ~known]
        if with_unknowns:
            if not len(k) or not len(u):
                continue
            t, _ = threshold_min_cost(k, u, cost_unknown_as_known, cost_known_as_unknown)
        else:
            t = threshold_at_tpr(k, target_tpr)
        per[c], own[c] = t, True
    return ClassThresholds(
        float(global_threshold),
        per.tolist(),
        own.tolist(),
        counts.tolist(),
        int(min_count),
        "min-cost" if with_unknowns else f"tpr {target_tpr}",
    )
