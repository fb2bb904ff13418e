"""The kNN unknown detectors of an ensemble's members as one product (``compile_predictor``).

Each member of a k-fold ensemble keeps its own kNN detector over its own training rows, and
those rows overlap: five folds' detectors hold each image four times. Scoring one image then
reads every copy (five searches, ~20 MB for flowers12's 1280-d embeddings). Here the members'
training rows are stored once, a request is one product against them, and each member reads its
own rows' similarities: the k-th largest is its kNN score, fused with its energy as
``energy-knn`` does. The scores are the detectors' own to float32 rounding; each stack is
checked against them on random rows when it is built and not used where they differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedstore.search import l2_normalize
from heads.estimators._unknown_embedding import EnergyKNNDetector, KNNDetector
from heads.runs._loaded import Run
from heads.runs._matmul import MatMul

_CHECK_ROWS = 4
_CHECK_TOL = 1e-5


class StackedKNN:
    """The ``knn`` / ``energy-knn`` detectors (exact search) of ``runs``, which read the same
    head input. ``scores(X, logits)`` gives each run's detector scores, as ``score_samples``."""

    def __init__(self, index: list[int], runs: list[Run]) -> None:
        self.index, self.runs = index, runs
        dets: list[Any] = [r.detector for r in runs]
        rows16 = [np.ascontiguousarray(d.embeddings_) for d in dets]  # (N_m, D) float16 each
        width = rows16[0].shape[1]
        flat = np.concatenate(rows16)  # (sum N_m, D)
        keys = flat.view(np.dtype((np.void, flat.dtype.itemsize * width))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        # every distinct training row once, as each member's index holds it: (U, D) -> by (D, U)
        self.product = MatMul(l2_normalize(flat[first].astype(np.float32)).T)
        self.n_distinct = len(first)
        bounds = np.cumsum([0, *(len(r) for r in rows16)])
        self.rows = [inverse.ravel()[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.k = [int(d.k) for d in dets]
        self.fused = [isinstance(d, EnergyKNNDetector) for d in dets]
        pairs = list(zip(dets, self.fused, strict=True))
        self.temperature = [float(d.temperature) if f else 1.0 for d, f in pairs]
        self.weight = [float(d.weight) if f else 0.0 for d, f in pairs]
        self.standardize = [np.asarray(d.standardize_, np.float64) if f else None for d, f in pairs]

    def scores(self, X: np.ndarray, logits: list[np.ndarray]) -> list[np.ndarray]:
        """Each run's detector scores ``(N,)`` float64 for head inputs ``X`` ``(N, D)`` and the
        runs' own ``logits`` (in order)."""
        sims = self.product(l2_normalize(X))  # (N, U)
        out = []
        for m, rows in enumerate(self.rows):
            s = sims[:, rows]  # (N, N_m): this member's training rows, repeats included
            k = self.k[m]
            kth = s.max(axis=1) if k == 1 else -np.partition(-s, k - 1, axis=1)[:, k - 1]
            kth = kth.astype(np.float64)
            if not self.fused[m]:
                out.append(kth)
                continue
            t = self.temperature[m]
            z = np.asarray(logits[m], np.float64) / t  # (N, C)
            top = z.max(axis=1)
            energy = t * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))  # T logsumexp(z/T)
            me, se, ms, ss = self.standardize[m]  # type: ignore[misc]
            w = self.weight[m]
            out.append(w * (energy - me) / se + (1 - w) * (kth - ms) / ss)
        return out


def stackable(run: Run) -> tuple | None:
    """What runs must share for their detectors to be stacked; None for a detector that keeps
    its own search (another kind, or an approximate index)."""
    det = run.detector
    if not isinstance(det, KNNDetector) or det.index_.used_ann:
        return None
    return (tuple(b["column"] for b in run.backbones), det.embeddings_.shape[1])


def stack_detectors(index: list[int], runs: list[Run]) -> StackedKNN | None:
    """The detectors of ``runs`` stacked, or None where the stack's scores differ from theirs
    (on random rows and logits)."""
    stack = StackedKNN(index, runs)
    rng = np.random.default_rng(0)
    first = runs[0].detector
    assert first is not None  # stackable runs have one
    train = np.asarray(first.embeddings_, np.float32)  # type: ignore[attr-defined]
    c = len(runs[0].classes)
    X = rng.standard_normal((_CHECK_ROWS, train.shape[1])).astype(np.float32)
    X[0] = train[0] * 3.0  # a training row itself: the nearest at similarity 1
    logits = [rng.standard_normal((_CHECK_ROWS, c)).astype(np.float32) * 4 for _ in runs]
    got = stack.scores(X, logits)
    for run, z, s in zip(runs, logits, got, strict=True):
        assert run.detector is not None  # stackable runs have one
        want = np.asarray(run.detector.score_samples(X, logits=z), np.float64)
        if s.shape != want.shape or not np.allclose(s, want, rtol=_CHECK_TOL, atol=_CHECK_TOL):
            return None
    return stack
