"""Prediction sets with a coverage guarantee: split-conformal calibration of a run's probabilities.

Split conformal prediction (Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021, "A gentle
introduction to conformal prediction"): a score ``s(x, y)``, large when label ``y`` fits image
``x`` badly, is measured on ``n`` calibration images of known label; ``q`` is the
``ceil((n + 1)(1 - alpha))``-th smallest of those scores (infinite when that exceeds ``n``), and
the set of a new image is ``{y : s(x, y) <= q}``. When the calibration images and the new ones
are exchangeable, the set holds the true label with probability at least ``1 - alpha`` (the
``coverage``), and below ``1 - alpha + 1/(n + 1)`` without ties.

Scores (:data:`heads.types.SET_SCORES`):

- ``lac`` (default): ``1 - p_y(x)``, the "least ambiguous set-valued classifier" of Sadinle,
  Lei & Wasserman (2019): of all sets with the coverage, the smallest on average. Calibrated per
  class (below) it also adapts where classes differ in difficulty.
- ``aps``: the probability mass of the labels at least as probable as ``y``, ``y`` included
  (adaptive prediction sets, Romano, Sesia & Candès 2020; not randomised, so sets are
  reproducible and cover a little more than asked): sets grow where the model is unsure of
  an image, at the price of larger sets on average.

Class-conditional (Mondrian; Vovk 2003, Sadinle et al. 2019 section 4): a class with at least
``min_class_count`` calibration images gets the quantile of its own images' scores, so that each
such class is covered ``1 - alpha`` of the time on its own (what a species expert asks of a
set: a rare species is not the one always left out); the others use the quantile of all images.
Every set also holds the top label, so no set is empty (that only adds coverage).

The default calibration images are a run's out-of-fold predictions (``val.parquet``). Two
caveats about exchangeability, both measured in ``benchmarks/RESULTS.md``: they were predicted
by fold models while a fold ensemble predicts with all of them (more accurate: sets a little
larger than needed), and where random folds put near-duplicate photos on both sides, out-of-fold
probabilities are optimistic and the sets too small on new photos. ``calibrate_on`` then names a
part of the store the model never trained on, taken apart like the photos to come.

>>> cal = heads.prediction.calibrate_sets("runs/mlp", coverage=0.9)
>>> cal.sets(probs)   # (N, C) bool
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import embedstore
from embedstore import Result
from embedstore.store import ALWAYS_TRAIN
from heads._errors import HeadsError
from heads.runs._loaded import Predictor, load, log_softmax
from heads.runs._rundir import read_val
from heads.types import SET_SCORES, SetScore

# A class needs this many calibration images for a quantile of its own (else: the global one);
# and at least ceil((1 - alpha) / alpha) for the quantile to be finite (9 at 90%, 19 at 95%).
DEFAULT_MIN_CLASS_COUNT = 20
_CACHE: OrderedDict[tuple[Any, ...], SetCalibration] = OrderedDict()
_CACHE_SIZE = 32


# --------------------------------------------------------------------------- scores


def label_scores(probs: np.ndarray, score: SetScore = "lac") -> np.ndarray:
    """``(N, C)`` non-conformity of every label for each row of probabilities (higher: fits
    worse). ``lac``: ``1 - p``; ``aps``: the mass of the labels at least as probable."""
    p = np.asarray(probs, dtype=np.float64)
    if score == "lac":
        return 1.0 - p
    if score == "aps":
        order = np.argsort(-p, axis=1, kind="stable")  # (N, C) labels by falling probability
        cum = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)  # (N, C)
        out = np.empty_like(p)
        np.put_along_axis(out, order, cum, axis=1)
        return out
    raise HeadsError(f"set score {score!r}: valid: {', '.join(SET_SCORES)}")


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest of ``n`` scores: the split-conformal
    threshold (``inf`` when there are too few scores for the coverage)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    k = math.ceil((len(s) + 1) * coverage - 1e-9)  # the tolerance: 0.9 * 10 is 9, not 9.000001
    return float(s[k - 1]) if 0 < k <= len(s) else math.inf


def check_set_options(coverage: float | None, score: str, calibrate_on: str | None) -> None:
    """The set options given make sense together (``score``, ``calibrate_on`` need a
    ``coverage``)."""
    if coverage is None and (calibrate_on is not None or score != "lac"):
        what = "--calibrate-on" if calibrate_on is not None else "--set-score"
        raise HeadsError(f"{what} applies to prediction sets: give --coverage too (e.g. 0.9)")
    if score not in SET_SCORES:
        raise HeadsError(f"--set-score {score!r}: valid: {', '.join(SET_SCORES)}")


def _check_coverage(coverage: float) -> float:
    if not isinstance(coverage, int | float) or not 0.0 < float(coverage) < 1.0:
        raise HeadsError(f"--coverage must be between 0 and 1 (e.g. 0.9), not {coverage!r}")
    return float(coverage)


# --------------------------------------------------------------------------- calibration


@dataclass
class SetCalibration(Result):
    """Conformal thresholds of one run: ``thresholds[c]`` for label ``c`` (its own quantile
    where ``own[c]``, else ``global_threshold``). :meth:`sets` makes the sets."""

    coverage: float
    score: SetScore
    classes: list[str]
    thresholds: list[float]
    own: list[bool]
    class_counts: list[int]
    global_threshold: float
    min_class_count: int
    n: int
    source: str = "out-of-fold"
    ids: list[str] = field(default_factory=list, repr=False)  # the calibration rows

    def items_(self) -> dict[str, Any]:
        return {
            "coverage": self.coverage,
            "score": self.score,
            "n": self.n,
            "source": self.source,
            "min_class_count": self.min_class_count,
            "classes_with_own_threshold": int(sum(self.own)),
            "global_threshold": self.global_threshold,
        }

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """``(N, C)`` bool: the labels in each row's set (the top label always among them)."""
        p = np.asarray(probs, dtype=np.float64)
        inside = label_scores(p, self.score) <= np.asarray(self.thresholds)[None, :]  # (N, C)
        inside[np.arange(len(p)), p.argmax(axis=1)] = True
        return inside


def calibrate_probs(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    coverage: float = 0.9,
    score: SetScore = "lac",
    min_class_count: int = DEFAULT_MIN_CLASS_COUNT,
    source: str = "given",
) -> SetCalibration:
    """Conformal thresholds from calibration probabilities ``(N, C)`` and their true class
    indices ``labels`` ``(N,)``: per class where it has ``min_class_count`` images, else global.

    >>> cal = calibrate_probs(p_val, y_val, classes, coverage=0.9)
    """
    coverage = _check_coverage(coverage)
    if min_class_count < 1:
        raise HeadsError(f"the minimum count per class must be at least 1, not {min_class_count}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(y) != len(p) or p.shape[1] != len(classes):
        raise HeadsError(f"calibration needs probs (N, {len(classes)}) and labels (N,)")
    if not len(y):
        raise HeadsError("no calibration images of a known class")
    s = label_scores(p, score)[np.arange(len(y)), y]  # (N,) the true labels' scores
    glob = conformal_quantile(s, coverage)
    counts = np.bincount(y, minlength=len(classes))
    enough = max(min_class_count, math.ceil(coverage / (1 - coverage) - 1e-9))
    own = counts >= enough
    thr = np.full(len(classes), glob)
    for c in np.flatnonzero(own):
        thr[c] = conformal_quantile(s[y == c], coverage)
    return SetCalibration(
        coverage,
        score,
        list(classes),
        thr.tolist(),
        own.tolist(),
        counts.tolist(),
        glob,
        int(min_class_count),
        int(len(y)),
        source,
    )


def calibrate_sets(
    run: str | os.PathLike | Predictor,
    coverage: float = 0.9,
    *,
    score: SetScore = "lac",
    min_class_count: int = DEFAULT_MIN_CLASS_COUNT,
    calibrate_on: str | None = None,
    store: str | os.PathLike | embedstore.Store | None = None,
    device: str = "auto",
) -> SetCalibration:
    """Conformal thresholds of a run or ensemble for sets that hold the true label ``coverage``
    of the time: calibrated on its out-of-fold predictions, or with ``calibrate_on`` on the
    store rows matching that predicate (rows it never trained on, or out-of-fold ones).
    Results are kept in memory per run, settings and store version.

    >>> heads.prediction.calibrate_sets("runs/mlp", 0.9, calibrate_on="path LIKE '%/val_%'").n
    """
    if score not in SET_SCORES:
        raise HeadsError(f"--set-score {score!r}: valid: {', '.join(SET_SCORES)}")
    coverage = _check_coverage(coverage)
    model = run if isinstance(run, Predictor) else load(run, device)
    st = None
    if calibrate_on is not None:
        st = store if isinstance(store, embedstore.Store) else _open(store or model.store_path)
    key = _cache_key(model, coverage, score, min_class_count, calibrate_on, st)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    logits, y, ids, source = calibration_rows(model, calibrate_on, st)
    probs = np.exp(log_softmax(logits.astype(np.float64)))
    cal = calibrate_probs(
        probs,
        y,
        model.classes,
        coverage=coverage,
        score=score,
        min_class_count=min_class_count,
        source=source,
    )
    cal.ids = ids
    _CACHE[key] = cal
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return cal


def _open(path: str | os.PathLike) -> embedstore.Store:
    try:
        return embedstore.connect(path, create=False)
    except embedstore.StoreError as e:
        raise HeadsError(f"--calibrate-on reads the run's store: {e}") from e


def _cache_key(
    model: Predictor, coverage: float, score: str, m: int, where: str | None, st: Any
) -> tuple[Any, ...]:
    val = Path(model.path) / "val.parquet"
    stamp = val.stat().st_mtime_ns if val.is_file() else None
    at = None if st is None else (str(st.path), st.version)
    return (str(model.path), model.config.config_sha256, stamp, coverage, score, m, where, at)


def calibration_rows(
    model: Predictor, calibrate_on: str | None = None, st: embedstore.Store | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """``(logits (N, C), true class indices (N,), ids, source)`` of the calibration images of a
    known class: the run's out-of-fold rows, or the store rows matching ``calibrate_on`` (their
    out-of-fold logits where the run has them, else the model's; rows it trained on refused)."""
    index = {c: i for i, c in enumerate(model.classes)}
    val = read_val(Path(model.path))
    if calibrate_on is None:
        y = np.array([index.get(str(v), -1) if v is not None else -1 for v in val["label"]])
        known = y >= 0
        if not known.any():
            raise HeadsError(
                f"{model.path}: no out-of-fold predictions to calibrate on (a refit alone has "
                "none); give --calibrate-on WHERE: store rows the run did not train on"
            )
        ids = [str(i) for i in val["id"][known]]
        return val["logits"][known], y[known], ids, "out-of-fold"
    assert st is not None  # calibrate_sets opens the store for calibrate_on
    return _store_rows(model, st, calibrate_on, val, index)


def _store_rows(
    model: Predictor, st: embedstore.Store, where: str, val: dict[str, Any], index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Calibration rows chosen by a store predicate (see :func:`calibration_rows`)."""
    cols = model.backbone_columns()
    try:
        embs, t = st.embedding_rows(
            {c: b["dim"] for c, b in cols.items()}, ["id", "label", *model.columns], where=where
        )
    except embedstore.StoreError as e:
        raise HeadsError(f"--calibrate-on: {e}") from e
    y = np.array([index.get(str(v), -1) if v is not None else -1 for v in t["label"]])
    ids = np.asarray(t["id"], dtype=object)
    oof = {str(i): k for k, i in enumerate(val["id"])}
    in_oof = np.array([str(i) in oof for i in ids], dtype=bool)
    trained = _trained_ids(model, st) if st.has_column("fold") else set()
    seen = np.array([str(i) in trained for i in ids], dtype=bool) & ~in_oof
    if seen.any():
        raise HeadsError(
            f"--calibrate-on {where!r}: {int(seen.sum())} of its {len(ids)} images trained the "
            "run; calibrate on images it never saw (the held-out part, rows outside its --where) "
            "or on its out-of-fold rows"
        )
    keep = y >= 0
    if not keep.any():
        raise HeadsError(f"--calibrate-on {where!r}: no image of a class the run knows")
    logits = np.zeros((len(ids), len(model.classes)), np.float32)
    new = keep & ~in_oof
    if new.any():
        table = {c: np.asarray(t[c], dtype=object)[new] for c in model.columns}
        logits[new] = model.logits({c: X[new] for c, X in embs.items()}, table)
    old = keep & in_oof
    logits[old] = val["logits"][[oof[str(i)] for i in ids[old]]]
    what = f"store rows where {where}"
    if old.any():
        what += f" ({int(old.sum())} of them out-of-fold)"
    return logits[keep], y[keep], [str(i) for i in ids[keep]], what


def _trained_ids(model: Predictor, st: embedstore.Store) -> set[str]:
    """The ids of the labelled rows the run trained on (its ``--where``, in a fold)."""
    t = st.read(["id", "fold"], model.config.store.where, labelled=True)
    fold = np.asarray(t.column("fold").to_numpy(zero_copy_only=False))
    ids = t.column("id").to_pylist()
    return {i for i, f in zip(ids, fold, strict=True) if f >= 0 or f == ALWAYS_TRAIN}


# --------------------------------------------------------------------------- measuring


def set_scores(sets: np.ndarray, y_true: np.ndarray) -> dict[str, float | int]:
    """How sets did on labelled images: ``coverage`` (share holding the true label),
    ``mean_set_size``, ``singletons`` (share of one-label sets), ``class_coverage_min`` (the
    lowest coverage of a class with 10 images or more) and ``n``."""
    s = np.asarray(sets, dtype=bool)
    y = np.asarray(y_true, dtype=np.int64)
    hit = s[np.arange(len(y)), y]  # (N,)
    size = s.sum(axis=1)
    counts = np.bincount(y, minlength=s.shape[1])
    per_class = np.bincount(y, weights=hit, minlength=s.shape[1]) / np.maximum(counts, 1)
    many = counts >= 10
    return {
        "coverage": float(hit.mean()),
        "mean_set_size": float(size.mean()),
        "singletons": float((size == 1).mean()),
        "class_coverage_min": float(per_class[many].min()) if many.any() else math.nan,
        "n": int(len(y)),
    }
