"""Answering at the finest rank one can trust: a confidence threshold per rank (and per
predicted class where it has the rows for one), fitted out-of-fold so that the answers given at
each rank are right at least ``target`` of the time.

The thresholds are fitted rank by rank on the rows the finer ranks left unanswered: the
species threshold on every row, the genus threshold on the rows whose species was not
confident enough, and so on; so each rank's answers, as the fallback gives them, meet the
target on the rows it was fitted on. A predicted class with at least ``min_count`` such rows
gets its own threshold; one with fewer takes its rank's (shrunk to the global one below it).
The threshold is the lowest confidence whose answers, from the most confident down, are still
right ``target`` of the time (the largest coverage at that precision); None when no
threshold reaches it (that rank, or class, never answers).

>>> th = fit_thresholds(conf, pred, right, names, ranks, target=0.9, min_count=20)
>>> answered_rank(conf, pred, th)      # (N,): 0 species, 1 genus, ..., -1 none confident
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore.types import check_choice
from heads._errors import HeadsError
from heads.types import BOUNDS, DEFAULT_MIN_COUNT, DEFAULT_TARGET, Bound

_Z95 = 1.6449  # one-sided 95% normal quantile (the Wilson bound)


@dataclass
class RankThresholds:
    """One rank's thresholds: ``threshold`` (the rank's, None: it never answers) and
    ``classes`` (predicted class name -> its own, for classes with ``min_count`` rows)."""

    rank: str
    threshold: float | None
    classes: dict[str, float | None] = field(default_factory=dict)
    rows: int = 0  # rows that reached this rank when fitting

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "threshold": self.threshold,
            "classes": self.classes,
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankThresholds:
        return cls(d["rank"], d["threshold"], dict(d.get("classes") or {}), int(d.get("rows", 0)))

    def of(self, names: list[str], pred: np.ndarray) -> np.ndarray:
        """``(N,)`` thresholds of predicted classes ``pred`` (indices into ``names``); inf
        where none reaches the target."""
        out = np.full(len(pred), _inf(self.threshold))
        for name, t in self.classes.items():
            try:
                k = names.index(name)
            except ValueError:
                continue
            out[pred == k] = _inf(t)
        return out


def _inf(t: float | None) -> float:
    return np.inf if t is None else float(t)


def threshold_for(
    conf: np.ndarray, right: np.ndarray, target: float, bound: Bound = "none"
) -> float | None:
    """The lowest confidence ``t`` such that the rows with ``conf >= t`` are right at least
    ``target`` of the time (None when no ``t`` is); with ``bound="wilson"``, such that the
    one-sided 95% Wilson lower bound of that share is (a margin that shrinks with the rows)."""
    if not len(conf):
        return None
    order = np.argsort(-conf, kind="stable")
    q, ok = conf[order], right[order].astype(np.float64)
    n = np.arange(1, len(q) + 1)
    precision = np.cumsum(ok) / n
    if bound == "wilson":
        z2 = _Z95**2
        centre = precision + z2 / (2 * n)
        margin = _Z95 * np.sqrt(precision * (1 - precision) / n + z2 / (4 * n**2))
        precision = (centre - margin) / (1 + z2 / n)
    ends = np.r_[q[:-1] > q[1:], True]  # a cut between tied confidences is not a threshold
    good = np.flatnonzero(ends & (precision >= target))
    return None if not len(good) else float(q[good[-1]])


def fit_thresholds(
    conf: np.ndarray,
    pred: np.ndarray,
    right: np.ndarray,
    names: list[list[str]],
    ranks: list[str],
    *,
    target: float = DEFAULT_TARGET,
    min_count: int = DEFAULT_MIN_COUNT,
    bound: Bound = "none",
) -> list[RankThresholds]:
    """Thresholds for every rank from out-of-fold rows: ``conf``, ``pred`` and ``right`` are
    ``(N, R)`` (each rank's top confidence, its class index into ``names[r]``, whether it is
    right), finest rank first; ``bound`` as in :func:`threshold_for`."""
    try:
        check_choice(bound, BOUNDS, "bound")
    except ValueError as e:
        raise HeadsError(f"--bound: {e}") from None
    if not 0.0 < target <= 1.0:
        raise HeadsError(f"--target must be in (0, 1], not {target}")
    if min_count < 1:
        raise HeadsError(f"--min-count must be at least 1, not {min_count}")
    out = []
    left = np.arange(len(conf))
    for r, rank in enumerate(ranks):
        q, p, ok = conf[left, r], pred[left, r], right[left, r]
        th = RankThresholds(rank, threshold_for(q, ok, target, bound), rows=int(len(left)))
        ks, counts = np.unique(p, return_counts=True)
        for k, n in zip(ks, counts, strict=True):
            if n >= min_count:
                own = p == k
                th.classes[names[r][int(k)]] = threshold_for(q[own], ok[own], target, bound)
        out.append(th)
        left = left[q < th.of(names[r], p)]  # the rows this rank leaves unanswered
    return out


def answered_rank(
    conf: np.ndarray, pred: np.ndarray, thresholds: list[RankThresholds], names: list[list[str]]
) -> np.ndarray:
    """``(N,)``: the finest rank whose confidence clears its threshold (-1: none does)."""
    out = np.full(len(conf), -1, dtype=np.int64)
    for r in reversed(range(len(thresholds))):  # the finest clearing rank wins
        clears = conf[:, r] >= thresholds[r].of(names[r], pred[:, r])
        out[clears] = r
    return out


def fallback_summary(
    answered: np.ndarray, right: np.ndarray | None, ranks: list[str]
) -> dict[str, Any]:
    """How the fallback answered rows: the share at each rank (and ``none``) and, given
    ``right`` ``(N, R)``, how often each rank's answers were right and all answers together."""
    n = max(len(answered), 1)
    out: dict[str, Any] = {
        "answered": {rank: float(np.sum(answered == r) / n) for r, rank in enumerate(ranks)}
    }
    out["answered"]["none"] = float(np.sum(answered < 0) / n)
    if right is None:
        return out
    acc: dict[str, float | None] = {}
    for r, rank in enumerate(ranks):
        rows = answered == r
        acc[rank] = float(right[rows, r].mean()) if rows.any() else None
    out["accuracy"] = acc
    given = answered >= 0
    ok = right[np.flatnonzero(given), answered[given]]
    out["answer_accuracy"] = float(ok.mean()) if given.any() else None
    out["rows"] = int(len(answered))
    return out
