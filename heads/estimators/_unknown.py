"""Unknown-class detectors (open-set recognition) with scikit-learn ``OutlierMixin`` conventions:
the registry, thresholds, the base class and the logit detectors (the embedding detectors:
``heads.estimators._unknown_embedding``).

Every detector: ``fit(embeddings, labels, logits=None) -> self``; ``score_samples(embeddings,
logits=None)`` ``(N,)`` where **higher means more known**; ``calibrate(...)`` sets ``threshold_``;
``decision_function = score_samples - threshold_``; ``predict`` gives +1 (known) where the
decision is >= 0, else -1 (unknown). The class attribute ``needs`` says whether the detector reads
the head's ``logits`` (``(N, C)``, e.g. ``head.decision_function(X)``), the ``embeddings``, or
``both`` (fit and score then take both).

=========================  ==========  =====================================================
name                       needs       score (higher = more known)
=========================  ==========  =====================================================
``msp``                    logits      max softmax probability (Hendrycks & Gimpel 2017)
``entropy``                logits      negative entropy of the softmax
``energy``                 logits      ``T logsumexp(logits / T)``, T=1 (Liu et al. 2020)
``max-logit``              logits      largest logit (Hendrycks et al. 2022)
``knn``                    embeddings  cosine similarity to the k-th nearest training
                                       embedding, k=10 (deep kNN, Sun et al. 2022)
``mahalanobis``            embeddings  ``-min_c MD_c``, class Gaussians with one shared
                                       covariance (Lee et al. 2018)
``relative-mahalanobis``   embeddings  ``-min_c (MD_c - MD_0)``, MD_0 to one background
                                       Gaussian of all training data (Ren et al. 2021)
``energy-knn`` (default)   both        mean of the standardised energy and deep-kNN (k=1)
                                       scores: a logit score fused with a feature score
=========================  ==========  =====================================================

``DEFAULT_DETECTOR`` (``energy-knn``) is what ``heads train --unknown`` attaches when no name
is given: on grocery81 (81 look-alike classes, ~30 training images each) it had the best
held-out-class AUROC of all detectors, see ``benchmarks/RESULTS.md``.

``fit`` also sets a provisional ``threshold_`` keeping 95% of the training scores (a 10,000-row
sample; leave-one-out for ``knn``; logit detectors only when ``logits`` are given), so ``predict``
works straight away; calibrate on held-out data for a threshold that means something.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError

from embedstore import Registry
from embedstore.search import as_float32

DetectorNeeds = Literal["logits", "embeddings", "both"]
DEFAULT_DETECTOR = "energy-knn"  # chosen on grocery81's training part, see benchmarks/RESULTS.md
FIT_THRESHOLD_SAMPLE = 10_000  # training rows scored for the provisional threshold at fit
DETECTORS: Registry = Registry("detector")


# --------------------------------------------------------------------------- registry
def register_detector(name: str, cls: type | None = None) -> Callable[[type], type] | type:
    """Register a detector class under ``name``; usable as ``@register_detector("msp")``."""

    def _add(c: type) -> type:
        detector: Any = c  # a detector class: ``name`` is its class attribute
        detector.name = name
        return DETECTORS.register(name, c)

    return _add(cls) if cls is not None else _add


def list_detectors(pattern: str = "*") -> list[str]:
    """Names of the registered detectors matching a glob ``pattern``."""
    return DETECTORS.list(pattern)


def create_detector(name: str, **kwargs: Any) -> UnknownDetector:
    """Build the detector registered as ``name`` with keyword settings ``kwargs``."""
    return DETECTORS.create(name, **kwargs)


def detector_from_state(
    config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> UnknownDetector:
    """Rebuild any detector from ``get_state()`` output, dispatching on ``config["detector"]``."""
    # a config without "detector" gets the registry's "unknown detector None" error
    name = cast(str, config.get("detector"))
    return DETECTORS.get(name).from_state(config, tensors)


# --------------------------------------------------------------------------- thresholds
def threshold_at_tpr(scores_known: Any, target_tpr: float = 0.95) -> float:
    """Threshold keeping a ``target_tpr`` fraction of the known scores (score >= threshold)."""
    s = np.asarray(scores_known, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("need at least one known score to calibrate")
    if not 0.0 < target_tpr <= 1.0:
        raise ValueError(f"target_tpr must be in (0, 1]; got {target_tpr}")
    return float(np.quantile(s, 1.0 - target_tpr))


def threshold_min_cost(
    scores_known: Any,
    scores_unknown: Any,
    cost_unknown_as_known: float = 10.0,
    cost_known_as_unknown: float = 0.1,
) -> tuple[float, float]:
    """Threshold minimising the mean cost per image; returns ``(threshold, mean_cost)``.

    Cost = ``cost_unknown_as_known`` per unknown accepted (score >= threshold) plus
    ``cost_known_as_unknown`` per known rejected. Candidates: accept all, every midpoint between
    consecutive distinct scores, reject all; ties go to the lowest threshold (keep more knowns).
    """
    k = np.sort(np.asarray(scores_known, dtype=np.float64).ravel())  # (Nk,)
    u = np.sort(np.asarray(scores_unknown, dtype=np.float64).ravel())  # (Nu,)
    if k.size == 0 or u.size == 0:
        raise ValueError("cost calibration needs both known and unknown scores")
    v = np.unique(np.concatenate([k, u]))  # (M,)
    cands = np.concatenate([v[:1], (v[:-1] + v[1:]) / 2, [np.nextafter(v[-1], np.inf)]])  # (M+1,)
    known_rejected = np.searchsorted(k, cands, side="left")  # known with score < t
    unknown_accepted = u.size - np.searchsorted(u, cands, side="left")  # unknown with score >= t
    cost = cost_unknown_as_known * unknown_accepted + cost_known_as_unknown * known_rejected
    cost = cost / (k.size + u.size)  # (M+1,) mean cost per image
    best = int(np.argmin(cost))
    return float(cands[best]), float(cost[best])


# --------------------------------------------------------------------------- base class
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)
    return value


def _as_logits(logits: Any, name: str) -> np.ndarray:
    if logits is None:
        raise ValueError(f"detector {name!r} needs logits= (N, C), e.g. head.logits(X)")
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C); got shape {z.shape}")
    return z


def _fit_sample(n: int) -> np.ndarray | None:
    """Rows scored for the provisional threshold (None = all of them)."""
    if n <= FIT_THRESHOLD_SAMPLE:
        return None
    return np.sort(np.random.default_rng(0).choice(n, FIT_THRESHOLD_SAMPLE, replace=False))


class UnknownDetector(OutlierMixin, BaseEstimator):
    """Base class: subclasses implement ``_fit``, ``_score`` and, if stateful, the tensor hooks."""

    needs: ClassVar[DetectorNeeds] = "embeddings"
    name: ClassVar[str] = ""

    # subclass hooks ---------------------------------------------------------
    def _fit(self, embeddings: Any, labels: Any, logits: Any) -> None:
        raise NotImplementedError

    def _score(self, embeddings: Any, logits: Any) -> np.ndarray:
        raise NotImplementedError

    def _fit_scores(self, embeddings: Any, logits: Any) -> np.ndarray | None:
        """Training scores for the provisional threshold, or None when there are none."""
        if self.needs == "logits":
            return None if logits is None else self._score(None, logits)
        X = as_float32(embeddings, "embeddings")
        rows = _fit_sample(X.shape[0])
        return self._score(X if rows is None else X[rows], None)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_tensors(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pass

    # public API -------------------------------------------------------------
    def fit(self, embeddings: Any, labels: Any, logits: Any = None) -> UnknownDetector:
        """Learn from the training set (``embeddings`` ``(N, d)``, ``labels`` ``(N,)``)."""
        self._fit(embeddings, labels, logits)
        scores = self._fit_scores(embeddings, logits)
        self.threshold_ = None if scores is None else threshold_at_tpr(scores, 0.95)
        self.calibration_ = (
            {"method": "fit-tpr", "target_tpr": 0.95} if scores is not None else None
        )
        return self

    def score_samples(self, embeddings: Any = None, logits: Any = None) -> np.ndarray:
        """``(N,)`` float64 scores, higher = more likely a known class."""
        if self.needs != "logits" and embeddings is None:
            raise ValueError(f"detector {self.name!r} needs embeddings (N, d)")
        return self._score(embeddings, logits)

    def decision_function(self, embeddings: Any = None, logits: Any = None) -> np.ndarray:
        """``(N,)`` ``score_samples - threshold_``: >= 0 known, < 0 unknown."""
        t = self._check_threshold()
        return self.score_samples(embeddings, logits) - t

    def predict(self, embeddings: Any = None, logits: Any = None) -> np.ndarray:
        """``(N,)`` int: +1 known, -1 unknown."""
        return self.predict_scores(self.score_samples(embeddings, logits))

    def predict_scores(self, scores: Any) -> np.ndarray:
        """``(N,)`` int +1 known / -1 unknown for scores :meth:`score_samples` already gave."""
        t = self._check_threshold()
        return np.where(np.asarray(scores, dtype=np.float64) - t >= 0, 1, -1)

    def _check_threshold(self) -> float:
        """``threshold_``; NotFittedError if there is none yet."""
        t: float | None = getattr(self, "threshold_", None)
        if t is None:
            raise NotFittedError(
                f"detector {self.name!r} has no threshold_: call calibrate(...) on validation data "
                "(or fit with logits=)"
            )
        return t

    def fit_predict(self, embeddings: Any, labels: Any, logits: Any = None) -> np.ndarray:
        """``fit`` then ``predict`` on the same data (with the provisional threshold)."""
        return self.fit(embeddings, labels, logits).predict(embeddings, logits)

    def calibrate(
        self,
        scores_known: Any = None,
        *,
        embeddings: Any = None,
        logits: Any = None,
        is_known: Any = None,
        target_tpr: float = 0.95,
        cost_unknown_as_known: float = 10.0,
        cost_known_as_unknown: float = 0.1,
    ) -> float:
        """Set and return ``threshold_`` from validation scores.

        ``scores_known``: precomputed scores ``(N,)``; if None they are computed from
        ``embeddings``/``logits``. ``is_known`` ``(N,)`` bool (default: all known). With both
        known and unknown examples the threshold minimises the Track-3-style mean cost
        (:func:`threshold_min_cost`); with knowns only it keeps ``target_tpr`` of them
        (:func:`threshold_at_tpr`). ``calibration_`` records the method and its numbers.
        """
        if scores_known is not None:
            scores = np.asarray(scores_known, dtype=np.float64).ravel()
        else:
            scores = self.score_samples(embeddings, logits)
        known = np.ones(scores.shape[0], bool) if is_known is None else np.asarray(is_known, bool)
        if known.shape != scores.shape:
            raise ValueError(f"is_known has shape {known.shape}; the scores have {scores.shape}")
        if not known.any():
            raise ValueError("calibration needs at least one known example")
        if (~known).any():
            t, cost = threshold_min_cost(
                scores[known], scores[~known], cost_unknown_as_known, cost_known_as_unknown
            )
            self.calibration_ = {
                "method": "min-cost",
                "mean_cost": cost,
                "cost_unknown_as_known": float(cost_unknown_as_known),
                "cost_known_as_unknown": float(cost_known_as_unknown),
                "tpr": float(np.mean(scores[known] >= t)),
                "fpr": float(np.mean(scores[~known] >= t)),
            }
        else:
            t = threshold_at_tpr(scores, target_tpr)
            self.calibration_ = {"method": "tpr", "target_tpr": float(target_tpr)}
        self.threshold_ = float(t)
        return self.threshold_

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON config (name, settings, threshold) and the learned tensors; nothing pickled."""
        if self.needs != "logits" and not hasattr(self, "threshold_"):
            raise NotFittedError(f"detector {self.name!r} is not fitted: call fit(...) first")
        config = {
            "detector": self.name,
            "params": {k: _jsonable(v) for k, v in self.get_params().items()},
            "threshold": getattr(self, "threshold_", None),
            "calibration": getattr(self, "calibration_", None),
        }
        return config, self._state_tensors()

    @classmethod
    def from_state(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> UnknownDetector:
        """Rebuild a detector from :meth:`get_state` output."""
        det = cls(**config["params"])
        det._load_tensors(config, tensors)
        det.threshold_ = config.get("threshold")
        det.calibration_ = config.get("calibration")
        return det


# --------------------------------------------------------------------------- logit detectors
class _LogitDetector(UnknownDetector):
    needs: ClassVar[DetectorNeeds] = "logits"

    def _fit(self, embeddings: Any, labels: Any, logits: Any) -> None:
        self.n_classes_ = None if logits is None else _as_logits(logits, self.name).shape[1]

    def _score(self, embeddings: Any, logits: Any) -> np.ndarray:
        return self._score_logits(_as_logits(logits, self.name))

    def _score_logits(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register_detector("msp")
class MSPDetector(_LogitDetector):
    """Maximum softmax probability."""

    def _score_logits(self, z: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(z, axis=1).max(axis=1))


@register_detector("entropy")
class EntropyDetector(_LogitDetector):
    """Negative entropy of the softmax: ``sum_c p_c log p_c``."""

    def _score_logits(self, z: np.ndarray) -> np.ndarray:
        logp = log_softmax(z, axis=1)  # (N, C)
        return (np.exp(logp) * logp).sum(axis=1)


def free_energy(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T logsumexp(z / T)`` of logits ``(N, C)``: ``(N,)``."""
    return temperature * logsumexp(z / temperature, axis=1)


@register_detector("energy")
class EnergyDetector(_LogitDetector):
    """Negative free energy ``T logsumexp(logits / T)``."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score_logits(self, z: np.ndarray) -> np.ndarray:
        return free_energy(z, self.temperature)


@register_detector("max-logit")
class MaxLogitDetector(_LogitDetector):
    """Largest logit."""

    def _score_logits(self, z: np.ndarray) -> np.ndarray:
        return z.max(axis=1)
