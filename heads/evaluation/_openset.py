"""Measuring unknown-class detectors without labelled unknowns: hold out classes as unknown.

Each draw picks a random share of the labelled classes and treats their images as unknown. The
other (known) classes' images are split 80/20, stratified per class; a head is trained on the
known training images (for the detectors that read logits), every detector is fitted on them,
and the known test images plus all unknown images are scored. AUROC and FPR@95%TPR (known =
positive, :func:`heads._metrics.openset_scores`) are averaged over draws.

>>> table = openset("flowers", holdout_classes=0.25, draws=3)
>>> table[0]
{'detector': 'mahalanobis', 'auroc': 0.93, 'fpr95': 0.31, 'auroc_std': 0.02, ...}
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import embedstore
from embedstore import resolve_device
from heads._errors import HeadsError
from heads._metrics import openset_scores
from heads._registry import create_head
from heads.estimators._unknown import DEFAULT_DETECTOR, create_detector, list_detectors
from heads.evaluation._plots import plot_roc

TEST_FRACTION = 0.2  # share of each known class's images scored as known test images
DEFAULT_HEAD_KW = {"epochs": 30}  # applied when the head takes these settings


def openset(
    store: Any,
    *,
    backbone: str | None = None,
    where: str | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`openset_arrays` on a store's labelled embeddings of one backbone.

    ``store``: an ``embedstore.Store`` or its path; ``where``: an optional SQL filter on the rows
    (unlabelled rows are always left out); ``options``: those of :func:`openset_arrays`
    (``holdout_classes``, ``draws``, ``detectors``, ``head``, ``head_kwargs``, ``seed``,
    ``device``, ``roc_png``).
    """
    st = store if isinstance(store, embedstore.Store) else embedstore.connect(store, create=False)
    X, cols = st.embeddings(backbone, where=where, labelled=True, columns=("label",))  # (N, d)
    return openset_arrays(X, cols["label"], **options)


def openset_arrays(
    X: Any,
    y: Any,
    *,
    holdout_classes: float = 0.25,
    draws: int = 3,
    detectors: list[str] | None = None,
    head: str = "linear",
    head_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    roc_png: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """AUROC / FPR@95 of unknown detectors with held-out classes as the unknowns.

    ``X`` ``(N, d)`` embeddings, ``y`` ``(N,)`` labels (``None`` rows are left out).
    ``holdout_classes``: fraction of the classes held out per draw (at least 1, and at least 2
    classes stay known). ``detectors``: names (default: every registered detector). ``head``:
    the head whose ``logits`` feed the logit detectors, built with ``head_kwargs``
    (``epochs=30``, ``seed`` and ``device`` by default when it takes them); it is only trained
    when a detector that reads logits is asked for. ``roc_png``: ROC curves of the last draw, the
    legend giving that draw's scores and the means over draws (as the table) in brackets.
    ``progress``: a bar over the draws.

    Returns one dict per detector, best AUROC first: ``detector``, ``needs``, ``auroc``,
    ``fpr95`` (means over draws), ``auroc_std``, ``fpr95_std`` (population std), ``draws``.
    """
    X, y = _check_inputs(X, y)
    classes = np.unique(y)
    names = _check_settings(classes, holdout_classes, draws, detectors)
    dev = resolve_device(device)
    n_hold = min(max(1, round(float(holdout_classes) * classes.size)), classes.size - 2)
    rng = np.random.default_rng(seed)
    per_draw: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    needs: dict[str, str] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for draw in tqdm(range(int(draws)), desc="openset draws", unit="draw", disable=not progress):
        held = rng.choice(classes, n_hold, replace=False)
        is_unknown = np.isin(y, held)  # (N,)
        train, test_known = _stratified_split(y, ~is_unknown, rng)
        test = np.concatenate([test_known, np.flatnonzero(is_unknown)])  # (Nt,)
        is_known = np.zeros(test.size, dtype=bool)
        is_known[: test_known.size] = True
        if test_known.size == 0:
            raise HeadsError("no known class has 2 or more images: nothing to test the knowns on")
        dets = {n: _with_defaults(create_detector(n), {"device": dev}) for n in names}
        logits_train = logits_test = None
        if any(d.needs != "embeddings" for d in dets.values()):
            head_kw = {**DEFAULT_HEAD_KW, "seed": seed + draw, "device": str(dev)}
            h = _with_defaults(
                create_head(head, **(head_kwargs or {})), head_kw, keep=set(head_kwargs or {})
            )
            h.fit(X[train], y[train])
            logits_train = h.logits(X[train])  # (Ntr, C)
            logits_test = h.logits(X[test])  # (Nt, C)
        for n, det in dets.items():
            needs[n] = det.needs
            det.fit(X[train], y[train], logits=logits_train)
            scores = det.score_samples(X[test], logits=logits_test)  # (Nt,)
            per_draw[n].append(openset_scores(is_known, scores))
            curves[n] = (is_known, scores)
    rows = [_summary(n, needs[n], per_draw[n], int(draws)) for n in names]
    if roc_png is not None:
        plot_roc(curves, roc_png, **_roc_labels(rows, int(draws), held))
    return sorted(rows, key=lambda r: (-r["auroc"], r["detector"]))


def _check_settings(
    classes: np.ndarray, holdout_classes: float, draws: int, detectors: list[str] | None
) -> list[str]:
    """The detectors to measure; errors for too few classes or bad settings."""
    if classes.size < 3:
        raise HeadsError(
            f"openset needs at least 3 labelled classes (some held out as unknown, at least 2 "
            f"kept known); got {classes.size}"
        )
    frac = float(holdout_classes)
    if isinstance(holdout_classes, bool) or not 0.0 < frac < 1.0:
        raise HeadsError(
            f"holdout_classes must be a fraction in (0, 1) of the classes to hold out as "
            f"unknown; got {holdout_classes!r}"
        )
    if int(draws) != draws or draws < 1:
        raise HeadsError(f"draws must be a whole number >= 1; got {draws!r}")
    names = list(detectors) if detectors is not None else list_detectors()
    valid = list_detectors()
    unknown = [d for d in names if d not in valid]
    if unknown or not names:
        raise HeadsError(
            f"unknown detector(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid detectors: {', '.join(valid)}"
        )
    return names


def _roc_labels(rows: list[dict[str, Any]], draws: int, held: np.ndarray) -> dict[str, Any]:
    """Title (and legend means) of the ROC figure, which draws the last draw's curves."""
    names = sorted(str(c) for c in held)
    unknown = ", ".join(names) if len(names) <= 4 else f"{len(names)} classes"
    if draws == 1:
        return {"title": f"one draw (unknown: {unknown})"}
    return {
        "summaries": {r["detector"]: (r["auroc"], r["fpr95"]) for r in rows},
        "title": f"curves and scores: draw {draws} of {draws} (unknown: {unknown})\n"
        f"in brackets: means over the {draws} draws",
    }


def _summary(name: str, needs: str, draws: list[dict[str, float]], n: int) -> dict[str, Any]:
    """One detector's row: means and population stds of AUROC and FPR@95 over the draws."""
    au = np.array([r["auroc"] for r in draws])
    fp = np.array([r["fpr95"] for r in draws])
    return {
        "detector": name,
        "needs": needs,
        "auroc": float(au.mean()),
        "fpr95": float(fp.mean()),
        "auroc_std": float(au.std()),
        "fpr95_std": float(fp.std()),
        "draws": n,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The :func:`openset` rows as an aligned text table; ``*`` marks the default detector."""
    lines = [f"{'detector':<22} {'needs':<10} {'AUROC':>14} {'FPR@95':>14}"]
    for r in rows:
        name = r["detector"] + (" *" if r["detector"] == DEFAULT_DETECTOR else "")
        lines.append(
            f"{name:<22} {r['needs']:<10} {r['auroc']:>7.3f} ± {r['auroc_std']:.3f}"
            f" {r['fpr95']:>7.3f} ± {r['fpr95_std']:.3f}"
        )
    if any(r["detector"] == DEFAULT_DETECTOR for r in rows):
        lines.append("* the default detector (heads train --unknown)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _check_inputs(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().float().numpy()
    X = np.asarray(X, dtype=np.float32)
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise HeadsError(f"need X (N, d) and y (N,); got {X.shape} and {y.shape}")
    labelled = np.array([v is not None for v in y.tolist()], dtype=bool)
    X, y = X[labelled], y[labelled]
    if y.dtype == object:
        y = np.asarray(y.tolist())  # plain str / int array once the Nones are gone
    return X, y


def _stratified_split(
    y: np.ndarray, keep: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices of the ``keep`` rows, ``TEST_FRACTION`` of each class in test.

    A class with one image goes to train; any other class keeps at least one image on each side.
    """
    train, test = [], []
    for c in np.unique(y[keep]):
        rows = rng.permutation(np.flatnonzero(keep & (y == c)))
        n_test = (
            0 if rows.size < 2 else min(max(1, round(TEST_FRACTION * rows.size)), rows.size - 1)
        )
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _with_defaults(
    est: Any, defaults: dict[str, Any], keep: set[str] | frozenset = frozenset()
) -> Any:
    """Set those ``defaults`` the estimator takes (per ``get_params``), except ``keep``."""
    params = est.get_params()
    est.set_params(**{k: v for k, v in defaults.items() if k in params and k not in keep})
    return est


__all__ = ["format_table", "openset", "openset_arrays"]
