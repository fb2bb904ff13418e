"""Pseudo-labelling (``heads train --pseudo-label``): fit as usual, score the unlabelled rows with
the fold ensemble, give the most confident ones their predicted class, train again.

The SnakeCLEF 2022 winners added the test photos their model scored highest, with the predicted
class as the label, and trained again (public-test macro-F1 0.8774 -> 0.8877 with +30%). Here:

- **which rows**: per predicted class of the fold ensemble (so that rare classes are not crowded
  out by common ones), the ``fraction`` of the rows predicted as that class with the largest
  margin (top-1 minus top-2 of the folds' mean probability, each fold's logits at its fitted
  temperature), among the rows every fold predicts as that class (:func:`select_confident`);
- **how much they count**: a loss weight (a labelled row weighs 1), for heads that take
  ``sample_weight`` (``HeadTags.sample_weight``);
- **chosen out-of-fold** (:func:`choose`), never on test: for every fold, its own model (which
  never saw that fold's labels) pseudo-labels the unlabelled rows, a copy of the head trains on
  the fold's training part plus those rows for each (fraction, weight) of a small grid, and the
  fold's labelled rows score it; the best mean macro-F1 wins, no pseudo-labels at all (the plain
  fit) included unless ``--fraction`` is given, ties kept plain;
- **rounds**: each round scores the unlabelled rows again with the last round's folds and
  replaces the pseudo-labelled set (:class:`PseudoPlan`).

The unlabelled rows are read by :func:`heads._data.load_unlabelled` (ids and embeddings: their
stored labels, if any, are never read). ``pseudo.parquet`` in the run records every round's rows,
labels, margins and agreement; each fold run's config its round (``"pseudo"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from embedstore import Result
from heads._base import head_tags
from heads._data import Unlabelled
from heads._errors import HeadsError
from heads._metrics import macro_f1
from heads.runs._rundir import PSEUDO_FILE, write_pseudo
from heads.training._folds import (
    ExtraRows,
    _Fold,
    _Job,
    fit_fold,
    prepare_fold,
    tta_logits,
    view_logits,
)

# The grid chosen from out-of-fold when --fraction / --pseudo-weight are not given: 6 fits per
# fold (a plain training's cost 6 times over), so the grid stays small.
PSEUDO_FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5)
PSEUDO_WEIGHTS: tuple[float, ...] = (0.5, 1.0)
NO_LABEL = "label IS NULL"  # how the record names the default unlabelled rows


@dataclass(frozen=True)
class PseudoOptions:
    """``heads.train``'s pseudo-labelling keywords (declared in ``heads.settings``); None:
    chosen out-of-fold."""

    unlabelled: str | None = None
    fraction: float | None = None
    weight: float | None = None
    rounds: int = 1

    @property
    def described(self) -> str:
        return self.unlabelled if self.unlabelled is not None else NO_LABEL


def pseudo_options(
    pseudo_label: bool,
    unlabelled: str | None,
    fraction: float | None,
    pseudo_weight: float | None,
    rounds: int | None,
) -> PseudoOptions | None:
    """The checked options (None without ``pseudo_label``); HeadsError for options given
    without it or out of range."""
    given = {"--unlabelled": unlabelled, "--fraction": fraction, "--pseudo-weight": pseudo_weight}
    if rounds is not None and rounds != 1:
        given["--rounds"] = rounds
    named = [k for k, v in given.items() if v is not None]
    if not pseudo_label:
        if named:
            raise HeadsError(f"{', '.join(named)}: only with --pseudo-label")
        return None
    for name, v in (("--fraction", fraction), ("--pseudo-weight", pseudo_weight)):
        if v is not None and not 0 < v <= 1:
            raise HeadsError(f"{name} {v}: give a number in (0, 1]")
    if rounds is not None and (int(rounds) != rounds or not 1 <= rounds <= 10):
        raise HeadsError(f"--rounds {rounds}: give a whole number from 1 to 10")
    return PseudoOptions(unlabelled, fraction, pseudo_weight, int(rounds or 1))


@dataclass
class PseudoResult(Result):
    """What ``--pseudo-label`` did: the unlabelled rows, the fraction and weight (and how they
    were chosen: ``choice`` holds the out-of-fold score of every candidate, the plain fit first),
    and each round's pseudo-labelled rows (``labels``: the file recording them)."""

    unlabelled: str
    n_unlabelled: int
    fraction: float  # 0: no fraction helped out-of-fold, the run is the plain fit
    weight: float
    chosen: str  # "given" or "out-of-fold"
    choice: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    labels: str | None = None


# ---------------------------------------------------------------------------- scoring folds


@dataclass
class FoldScores:
    """What pseudo-labelling takes from one trained fold: its classes and temperature, its
    logits on the unlabelled rows, its scores on its labelled validation rows."""

    k: int
    classes: np.ndarray  # (C_k,)
    temperature: float
    logits: np.ndarray  # (M, C_k): the unlabelled rows, with TTA as the run predicts
    top1: float
    macro_f1: float


def fold_scores(
    model: Any, job: _Job, f: _Fold, val_logits: np.ndarray, temperature: float
) -> FoldScores | None:
    """The fold's :class:`FoldScores` (None when the training has no unlabelled rows)."""
    U, data = job.unlabelled, job.data
    if U is None or data is None or f.k is None:
        return None
    z = view_logits(model, U.X, U.views if data.tta_views else None)  # (M, C_k)
    top1, f1 = val_scores(f, val_logits)
    return FoldScores(f.k, f.classes, temperature, z, top1, f1)


def val_scores(f: _Fold, logits: np.ndarray) -> tuple[float, float]:
    """Top-1 and macro-F1 of ``logits`` ``(n_val, C)`` on the fold's known validation rows."""
    known = f.known_val
    if not known.any():
        return float("nan"), float("nan")
    y = np.searchsorted(f.classes, f.y_val[known])  # (n,) class indices
    pred = logits[known].argmax(axis=1)
    return float(np.mean(pred == y)), macro_f1(y, pred)


def fold_probabilities(scores: list[FoldScores]) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (C,), probabilities (K, M, C))``: each fold's ``softmax(logits / T)`` in the
    columns of every fold's classes (0 for a class a fold never trained on)."""
    classes = np.unique(np.concatenate([s.classes for s in scores]))
    P = np.zeros((len(scores), len(scores[0].logits), len(classes)))
    for i, s in enumerate(scores):
        z = s.logits.astype(np.float64) / s.temperature  # (M, C_k)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        P[i][:, np.searchsorted(classes, s.classes)] = p / p.sum(axis=1, keepdims=True)
    return classes, P


@dataclass
class Selection:
    """Rows chosen for pseudo-labels: indices into the unlabelled rows, their predicted labels,
    margins and the share of the folds that agreed."""

    rows: np.ndarray  # (S,)
    labels: np.ndarray  # (S,) str
    margin: np.ndarray  # (S,)
    agreement: np.ndarray  # (S,)


def select_confident(P: np.ndarray, classes: np.ndarray, fraction: float) -> Selection:
    """Per class ``c`` predicted by the folds' mean probability (``P``: ``(K, M, C)``), the
    ``ceil(fraction * n_c)`` rows predicted ``c`` with the largest margin (top-1 minus top-2 of
    the mean), taken only among the rows every fold predicts as ``c``.

    >>> select_confident(P, classes, 0.3).labels   # at most ~30% of the rows, every class kept
    """
    mean = P.mean(axis=0)  # (M, C)
    pred = mean.argmax(axis=1)  # (M,)
    top2 = np.sort(mean, axis=1)[:, -2:]  # (M, 2): a classifier has at least 2 classes
    margin = top2[:, 1] - top2[:, 0]  # (M,)
    agreement = (P.argmax(axis=2) == pred[None]).mean(axis=0)  # (M,): share of the folds
    chosen = [np.zeros(0, np.int64)]
    for c in np.unique(pred):
        members = np.flatnonzero(pred == c)
        quota = math.ceil(fraction * len(members))
        agreed = members[agreement[members] == 1.0]
        chosen.append(agreed[np.argsort(-margin[agreed], kind="stable")][:quota])
    rows = np.sort(np.concatenate(chosen))
    return Selection(rows, classes[pred[rows]], margin[rows], agreement[rows])


def extra_rows(U: Unlabelled, sel: Selection, weight: float) -> ExtraRows:
    """The selected unlabelled rows as training rows with their predicted labels."""
    views = None if U.views is None else U.views[sel.rows]
    return ExtraRows(U.X[sel.rows], np.asarray(sel.labels).astype(str), weight, views)


# ---------------------------------------------------------------------------- choosing


def choose(
    job: _Job, scores: list[FoldScores], options: PseudoOptions, checkpoint: Callable[[], None]
) -> tuple[float, float, str, list[dict[str, Any]]]:
    """``(fraction, weight, how, table)``: the given ones, or the best mean out-of-fold macro-F1
    over the grid (``table``: every candidate's out-of-fold top-1 and macro-F1, the plain fit
    first as fraction 0). ``checkpoint()`` is called before each fit (a cancelled job stops)."""
    weighted = head_tags(job.estimator).sample_weight
    fractions = (options.fraction,) if options.fraction is not None else PSEUDO_FRACTIONS
    weights = (options.weight,) if options.weight is not None else PSEUDO_WEIGHTS
    if not weighted:  # the head takes no sample weights: every row weighs 1
        weights = (1.0,)
    if len(fractions) == 1 and len(weights) == 1:
        return fractions[0], weights[0], "given", []
    data, U = job.data, job.unlabelled
    assert data is not None and U is not None  # train reads both before choosing
    got: dict[tuple[float, float], list[tuple[float, float]]] = {}
    for s in scores:
        f = prepare_fold(data, s.k, job.metadata, job.aux_targets, job.unknown_label)
        classes, P = fold_probabilities([s])  # the fold's own model: it never saw its labels
        for fr in fractions:
            sel = select_confident(P, classes, fr)
            for w in weights:
                checkpoint()
                model = clone(job.estimator)
                tags = head_tags(model)
                if tags.needs_refit:
                    model.set_params(**tags.fold_settings)
                fit_fold(model, data, f, None, extra_rows(U, sel, w))
                z = tta_logits(model, data, f.val_rows, **f.fields("val"))
                got.setdefault((fr, w), []).append(val_scores(f, z))
    table = [_row(0.0, None, [(s.top1, s.macro_f1) for s in scores])]
    table += [_row(fr, w, v) for (fr, w), v in got.items()]
    # the plain fit may win (ties too: it comes first) unless a fraction was asked for
    candidates = table if options.fraction is None else table[1:]
    best = max(candidates, key=lambda r: (r["oof_macro_f1"], r["oof_top1"]))
    return best["fraction"], best["weight"] or 1.0, "out-of-fold", table


def _row(fraction: float, weight: float | None, pairs: list[tuple[float, float]]) -> dict:
    return {
        "fraction": fraction,
        "weight": weight,
        "oof_top1": round(float(np.nanmean([p[0] for p in pairs])), 4),
        "oof_macro_f1": round(float(np.nanmean([p[1] for p in pairs])), 4),
    }


# ---------------------------------------------------------------------------- rounds


class PseudoPlan:
    """One ``heads.train --pseudo-label`` call: the fraction and weight chosen once (from the
    plain folds), then per round the rows selected with the last round's folds, handed to the
    job (``job.extra``, ``job.record``) for every fold (and the refit) to train on.

    >>> plan = PseudoPlan(job, options, scores, checkpoint)
    >>> while plan.start_round(job, scores): scores = retrain_the_folds()
    """

    def __init__(
        self,
        job: _Job,
        options: PseudoOptions,
        scores: list[FoldScores],
        checkpoint: Callable[[], None],
    ) -> None:
        self.options = options
        self.fraction, self.weight, self.chosen, self.choice = choose(
            job, scores, options, checkpoint
        )
        self.rows: list[dict[str, np.ndarray]] = []
        self.rounds: list[dict[str, Any]] = []

    def start_round(self, job: _Job, scores: list[FoldScores]) -> bool:
        """Select the next round's rows from ``scores`` (the last round's folds) and give them
        to ``job``; False when the rounds are done or the chosen fraction is 0."""
        r = len(self.rounds) + 1
        if r > self.options.rounds or self.fraction == 0:
            return False
        U = job.unlabelled
        assert U is not None  # a pseudo-labelling job has unlabelled rows
        classes, P = fold_probabilities(scores)
        sel = select_confident(P, classes, self.fraction)
        job.extra = extra_rows(U, sel, self.weight)
        n = len(sel.rows)
        self.rows.append(
            {
                "id": U.ids[sel.rows],
                "label": sel.labels,
                "round": np.full(n, r),
                "margin": sel.margin,
                "agreement": sel.agreement,
            }
        )
        self.rounds.append(
            {"round": r, "rows": n, "classes": int(len(np.unique(sel.labels))), "of": len(U.ids)}
        )
        job.record = {
            "round": r,
            "rounds": self.options.rounds,
            "rows": n,
            "fraction": self.fraction,
            "weight": self.weight,
            "chosen": self.chosen,
            "unlabelled": self.options.described,
            "labels": f"../{PSEUDO_FILE}",  # the fold ensemble's folder, beside the folds
        }
        return True

    def finish(self, job: _Job, run_dir: Path, shown: Path) -> PseudoResult:
        """Write ``pseudo.parquet`` into ``run_dir`` (the fold ensemble's folder; ``shown``: the
        path it will have) and say what was done."""
        labels = None
        if self.rows:
            write_pseudo(
                run_dir, {k: np.concatenate([r[k] for r in self.rows]) for k in self.rows[0]}
            )
            labels = str(shown / PSEUDO_FILE)
        U = job.unlabelled
        return PseudoResult(
            self.options.described,
            0 if U is None else len(U.ids),
            self.fraction,
            self.weight,
            self.chosen,
            self.choice,
            self.rounds,
            labels,
        )
