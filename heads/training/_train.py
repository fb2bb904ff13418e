"""Training on store folds: build the estimator once from the registry, clone it per fold, and do
each fold's work in small steps (prepare, fit, calibrate, save).

``heads.train(store, fold=0, head="mlp")`` is the library call behind ``heads train``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from embedstore import Result
from heads._base import EpochBar, Head, head_tags
from heads._data import (
    FoldData,
    aux_matrix,
    check_finite,
    fold_rows,
    holdout_leakage,
    load_fold_data,
    meta_table,
)
from heads._errors import HeadsError
from heads._registry import HEADS
from heads.estimators._encoders import MetadataEncoder
from heads.estimators._unknown import DEFAULT_DETECTOR, DETECTORS, UnknownDetector
from heads.evaluation._evaluate import EvalResult, evaluate
from heads.evaluation._plots import plot_training_curves
from heads.runs._config import RunConfig, StoreRef, write_run_config
from heads.runs._rundir import replace_dir, save_tensors, write_history, write_val
from heads.training._ensemble import ensemble as write_ensemble
from heads.training._ensemble import fit_temperature
from heads.types import ENSEMBLE_MEMBERS, EnsembleMembers

_NOT_HEAD_OPTIONS = ("seed", "device")  # options every head may ignore
# With views stored (``embedstore ingest --views``) and no --views/--tta given: train on them
# as augmentation and predict with test-time augmentation (measured: benchmarks/RESULTS.md).
DEFAULT_VIEWS = True
DEFAULT_TTA = True


@dataclass
class FoldResult(Result):
    """One fold's run: where it went, how long it fitted, and its validation scores."""

    run: str
    fold: int | None  # None: the refit on every fold
    fit_seconds: float
    epochs: int
    metrics: dict[str, Any]
    knn_top1_by_k: dict[str, float] | None = None

    def items_(self) -> dict[str, Any]:
        out = {
            "run": self.run,
            "fold": self.fold,
            "fit_seconds": self.fit_seconds,
            "epochs": self.epochs,
            **self.metrics,
        }
        if self.knn_top1_by_k is not None:
            out["knn_top1_by_k"] = self.knn_top1_by_k
        return out


@dataclass
class TrainResult(Result):
    """The runs written, the fold ensemble (``--fold all``) and its scores, each fold's scores."""

    runs: list[str]
    ensemble: str | None
    metrics: list[FoldResult]
    ensemble_metrics: EvalResult | None = None
    warnings: list[str] = field(default_factory=list)
    refit: FoldResult | None = None


@dataclass
class _Fold:
    """One fold's prepared inputs (the 'prepare' step); ``k`` None for the refit."""

    k: int | None
    train_rows: np.ndarray
    val_rows: np.ndarray
    y_train: np.ndarray
    classes: np.ndarray
    y_val: np.ndarray
    known_val: np.ndarray
    encoder: MetadataEncoder | None = None
    fields_train: list[np.ndarray] | None = None
    fields_val: list[np.ndarray] | None = None
    aux_train: np.ndarray | None = None
    knn_top1_by_k: dict[str, float] | None = None  # multi-k heads: validation top-1 of each k

    def fields(self, part: str) -> dict[str, Any]:
        f = self.fields_train if part == "train" else self.fields_val
        return {} if f is None else {"fields": f}


def train(
    store: Any = None,
    *,
    fold: int | str = 0,
    backbone: str | list[str] | None = None,
    head: str = "mlp",
    out: str | os.PathLike | None = None,
    metadata: list[str] | tuple[str, ...] = (),
    aux_targets: list[str] | tuple[str, ...] = (),
    unknown: str | None = None,
    unknown_label: str = "unknown",
    where: str | None = None,
    refit: bool = False,
    ensemble: EnsembleMembers | None = None,
    progress: bool = True,
    on_fold: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    views: bool | None = None,
    tta: bool | None = None,
    **head_options: Any,
) -> TrainResult:
    """Train ``head`` with fold ``fold`` as validation (``"all"``: every fold, then their ensemble).

    ``head_options`` are the head's settings (``hidden``, ``dropout``, ``loss``, ``class_weights``,
    ``sampler``, ``epochs``, ``lr``, ``batch_size``, ``seed``, ``device``, ``k`` ...).
    ``metadata`` columns are encoded (fitted on the training part only) and fed to the head;
    ``aux_targets`` are binary columns learned as auxiliary outputs (e.g. poisonous).
    ``unknown`` attaches an unknown-class detector calibrated on the validation fold (a name
    from ``heads.list_detectors()``, or ``"default"`` for ``heads.DEFAULT_DETECTOR``).
    An existing ``out`` is refused unless ``overwrite`` (then replaced whole, once the new run is
    complete). ``on_fold(done, total)`` is called before each fold and at the end (a caller that raises
    from it stops the training between folds: how the service cancels a job).

    ``refit`` (with ``fold="all"``) also trains one model on every fold's rows (the held-out part
    stays out) for the median of the folds' best epochs, saved as ``<out>/refit``; it has no
    validation rows, so its temperature is the mean of the folds' and its unknown threshold the
    mean of the folds' thresholds. ``ensemble`` says what ``<out>`` predicts with: ``"folds"``,
    ``"refit"`` or ``"both"`` (default with ``refit``: :data:`DEFAULT_REFIT_ENSEMBLE`); its
    validation part stays the folds' out-of-fold predictions, the refit having none.
    A centroid head with ``reference="train+val"`` implies ``refit`` (and by default
    ``ensemble="refit"``): the folds are scored with prototypes of their training part, and
    the refit's prototypes, which ``<out>`` predicts with, use every fold.

    >>> heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30).ensemble
    >>> heads.train("flowers", fold="all", head="mlp", out="runs/mlp", refit=True).refit.epochs
    """
    estimator = build_head(head, head_options, progress)
    unknown = DEFAULT_DETECTOR if unknown == "default" else unknown
    detector = build_detector(unknown, head_options.get("device"))
    refit, ensemble = _refit_settings(estimator, fold, refit, ensemble)
    several = isinstance(backbone, list | tuple) and len(backbone) > 1
    data = load_fold_data(
        store, backbone, [*metadata, *aux_targets], where, views=views is not False or bool(tta)
    )
    if several and head_tags(estimator).token_fusion and not estimator.get_params()["token_dims"]:
        estimator.set_params(token_dims=[i.dim for i in data.backbones])  # a token per backbone
    use_views(data, views, tta)
    check_finite(data.X, data.ids, data.backbone.column)
    if not any(v is not None for v in data.labels):
        raise HeadsError(
            f"{data.store_path}: no labelled images; label them by class folders or `embedstore ingest --label-column`"
        )
    folds = _folds_to_train(data, fold)
    leaks = holdout_leakage(data)
    base = (
        Path(out)
        if out is not None
        else Path("runs")
        / f"{head}-{'+'.join(i.backbone for i in data.backbones)}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if base.exists() and not base.is_dir():
        raise HeadsError(f"{base}: --out is a file; give a directory")
    if base.exists() and any(base.iterdir()) and not overwrite:
        raise HeadsError(
            f"{base}: a run is there already; give --overwrite to replace it whole, or another --out"
        )
    # Train into a hidden folder beside --out and swap it in whole when complete: a run killed or
    # failed half-way never leaves a mixed run, and --overwrite leaves nothing of the old one.
    work = base.parent / f".{base.name}.partial-{uuid.uuid4().hex[:8]}"
    runs, metrics, stats = [], [], []
    settings = {
        "head": head,
        "metadata": list(metadata),
        "aux_targets": list(aux_targets),
        "unknown": unknown,
        "unknown_label": unknown_label,
        "where": where,
        "progress": progress,
    }
    steps = len(folds) + int(refit)
    try:
        for done, k in enumerate(folds):
            if on_fold is not None:
                on_fold(done, steps)
            run_dir = work / f"fold{k}" if fold == "all" else work
            f = prepare_fold(data, k, list(metadata), list(aux_targets), unknown_label)
            model = clone(estimator)
            tags = head_tags(model)
            if tags.needs_refit:  # e.g. centroids: the folds score with their training part only
                model.set_params(**tags.fold_settings)
            desc = f"{head} fold {k} ({done + 1}/{len(folds)})"
            fit_s = fit_fold(model, data, f, desc if progress else None)
            val_logits, det, val_scores = calibrate_fold(
                model, None if detector is None else clone(detector), data, f
            )
            stats.append(_fold_stats(model, det, f, val_logits))
            save_fold(run_dir, model, det, data, f, val_logits, val_scores, fit_s, settings)
            res = evaluate(run_dir, holdout=False, plots=False, device="cpu")
            runs.append(str(run_dir))
            metrics.append(
                FoldResult(
                    str(base / run_dir.relative_to(work)) if run_dir != work else str(base),
                    k,
                    round(fit_s, 3),
                    len(model.training_record().history),
                    res.metrics,
                    f.knn_top1_by_k,
                )
            )
        ens, ens_metrics, refit_res = None, None, None
        if refit:
            if on_fold is not None:
                on_fold(len(folds), steps)
            refit_res = fit_refit(
                estimator,
                detector,
                data,
                stats,
                work / "refit",
                settings,
                list(metadata),
                list(aux_targets),
            )
            refit_res.run = str(base / "refit")
        if fold == "all" and (len(runs) > 1 or refit):
            members, weights = _ensemble_members(ensemble, runs, work / "refit", refit)
            ens_metrics = write_ensemble(
                members, work, weights=weights, validation=runs if ensemble == "refit" else None
            )
            ens_metrics.run = ens = str(base)
            for png in ("per_class_png", "holdout_per_class_png", "confusion_png"):
                if getattr(ens_metrics, png):
                    setattr(ens_metrics, png, str(base / Path(getattr(ens_metrics, png)).name))
        replace_dir(work, base)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # a failed or cancelled run leaves nothing
        raise
    runs = [m.run for m in metrics]
    if on_fold is not None:
        on_fold(steps, steps)
    return TrainResult(runs, ens, metrics, ens_metrics, leaks, refit_res)


# ---------------------------------------------------------------------------- refit

# What a refit run's ensemble holds by default, and the refit's weight beside the K folds in
# "both" (K: as much as the folds together); chosen out-of-fold on grocery81 (benchmarks/refit.py).
DEFAULT_REFIT_ENSEMBLE: EnsembleMembers = "both"
REFIT_WEIGHT = "folds"


@dataclass
class _FoldStats:
    """What the refit takes from each fold: best epoch, temperature, unknown threshold."""

    best_epoch: int | None
    temperature: float
    threshold: float | None


def _refit_settings(
    estimator: Any, fold: int | str, refit: bool, members: str | None
) -> tuple[bool, str]:
    if head_tags(estimator).needs_refit:
        if fold != "all":
            raise HeadsError(
                "--reference train+val needs --fold all: the folds are scored on their training "
                "part, and the refit on every fold is the reference set"
            )
        refit, members = True, members or "refit"
    if members is not None and members not in ENSEMBLE_MEMBERS:
        raise HeadsError(f"--ensemble {members!r}: valid: {', '.join(ENSEMBLE_MEMBERS)}")
    if refit and fold != "all":
        raise HeadsError("--refit needs --fold all (its epochs are chosen on the folds)")
    if members in ("refit", "both") and not refit:
        raise HeadsError(f"--ensemble {members} needs --refit")
    return refit, members or (DEFAULT_REFIT_ENSEMBLE if refit else "folds")


def _backbone_ref(info: Any) -> dict[str, Any]:
    """A backbone as a run's config records it."""
    return {
        "name": info.backbone,
        "column": info.column,
        "dim": info.dim,
        "describe": info.describe,
    }


def _fold_stats(
    model: Any, det: UnknownDetector | None, f: _Fold, val_logits: np.ndarray
) -> _FoldStats:
    temp = fit_temperature({"label": f.y_val, "logits": val_logits}, f.classes.tolist())
    best = model.training_record().best_epoch
    thr = None if det is None else getattr(det, "threshold_", None)
    return _FoldStats(None if best is None else int(best), temp, thr)


def refit_epochs(best_epochs: list[int]) -> int:
    """The refit's epoch count: the median of the folds' best epochs (rounded, at least 1).

    The refit sees K/(K-1) times the rows per epoch, so the same epochs already take that many
    more optimiser steps; the count is not scaled further.
    """
    return max(1, int(round(float(np.median(best_epochs)))))


def fit_refit(
    estimator: Any,
    detector: UnknownDetector | None,
    data: FoldData,
    stats: list[_FoldStats],
    run_dir: Path,
    settings: dict[str, Any],
    metadata: list[str],
    aux_targets: list[str],
) -> FoldResult:
    """Train ``estimator`` on every fold's rows for the folds' median best epoch and save it as a
    run in ``run_dir`` (no validation rows: temperature and unknown threshold from the folds)."""
    f = prepare_fold(data, None, metadata, aux_targets, settings["unknown_label"])
    model = clone(estimator)
    best = [s.best_epoch for s in stats if s.best_epoch is not None]
    epochs = None
    if best and head_tags(model).iterative:
        epochs = refit_epochs(best)
        model.set_params(epochs=epochs)
    desc = f"{settings['head']} refit on all folds"
    fit_s = fit_fold(model, data, f, desc if settings.get("progress") else None)
    val_logits, det, _ = calibrate_fold(
        model, None if detector is None else clone(detector), data, f
    )
    thresholds = [s.threshold for s in stats if s.threshold is not None]
    if det is not None and thresholds:
        det.threshold_ = float(np.mean(thresholds))
        det.calibration_ = {"method": "mean of the folds' thresholds", "thresholds": thresholds}
    temperature = float(np.mean([s.temperature for s in stats]))
    extra = {
        "refit": {
            "epochs": epochs,
            "fold_best_epochs": best,
            "fold_temperatures": [s.temperature for s in stats],
        },
        "temperature": temperature,
    }
    save_fold(run_dir, model, det, data, f, val_logits, None, fit_s, settings, extra)
    n = len(model.training_record().history)
    return FoldResult(str(run_dir), None, round(fit_s, 3), n, {"n_train": int(len(f.train_rows))})


def _ensemble_members(
    members: str, runs: list[str], refit_dir: Path, refit: bool
) -> tuple[list[str], list[float] | str]:
    if not refit or members == "folds":
        return runs, "auto"
    if members == "refit":
        return [str(refit_dir)], "auto"
    w_refit = float(len(runs)) if REFIT_WEIGHT == "folds" else 1.0
    return [*runs, str(refit_dir)], [1.0] * len(runs) + [w_refit]


# ---------------------------------------------------------------------------- build once


def build_head(head: str, options: dict[str, Any], progress: bool = True) -> Any:
    """The unfitted head from the registry with ``options``; clear errors for options it lacks."""
    cls = HEADS.get(head)
    params = set(cls.setting_names())
    kwargs, unused = {}, []
    for k, v in options.items():
        if v is None:
            continue
        if k in params:
            kwargs[k] = v
        elif k not in _NOT_HEAD_OPTIONS:
            unused.append(k)
    if unused:
        raise HeadsError(
            f"option(s) {', '.join('--' + u.replace('_', '-') for u in unused)} do not apply to head "
            f"{head!r}; its settings are: {', '.join(sorted(params))}"
        )
    if "verbose" in params:
        kwargs["verbose"] = progress
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise HeadsError(f"--head {head}: {e}") from e


def build_detector(name: str | None, device: str | None) -> UnknownDetector | None:
    """The unfitted unknown detector ``name`` (None for none), on the training ``device``."""
    if name is None:
        return None
    if name not in DETECTORS:
        raise HeadsError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS.list())}")
    cls = DETECTORS.get(name)
    takes_device = "device" in cls._get_param_names()  # a BaseEstimator's settings
    return cls(**({"device": device} if takes_device and device is not None else {}))


def _folds_to_train(data: FoldData, fold: int | str) -> list[int]:
    present = sorted({int(f) for f in data.fold if f >= 0})
    if not present:
        raise HeadsError(
            f"{data.store_path}: the store has no folds; run `embedstore split --store {data.store_path} --folds 5` first"
        )
    if fold == "all":
        return present
    try:
        k = int(fold)
    except (TypeError, ValueError):
        raise HeadsError(f"--fold must be a fold number or 'all', not {fold!r}") from None
    if k not in present:
        raise HeadsError(
            f"fold {k} does not exist; the store has folds {', '.join(map(str, present))} (or use --fold all)"
        )
    return [k]


# ---------------------------------------------------------------------------- fold steps


def prepare_fold(
    data: FoldData, k: int | None, metadata: list[str], aux_targets: list[str], unknown_label: str
) -> _Fold:
    """Rows, labels, encoded metadata (encoder fitted on the training part) and aux targets."""
    train_rows, val_rows = fold_rows(data, k, unknown_label)
    y_tr = data.labels[train_rows].astype(str)
    classes = np.unique(y_tr)
    if len(classes) < 2:
        raise HeadsError(
            f"{'refit' if k is None else f'fold {k}'}: the training part has {len(classes)} "
            "class(es); a classifier needs at least 2"
        )
    y_val = data.labels[val_rows].astype(str)
    f = _Fold(k, train_rows, val_rows, y_tr, classes, y_val, np.isin(y_val, classes))
    if metadata:
        try:
            f.encoder = MetadataEncoder(list(metadata)).fit(
                meta_table(data.table, metadata, train_rows)
            )
        except ValueError as e:
            raise HeadsError(f"--metadata: {e}") from e
        f.fields_train = f.encoder.transform(meta_table(data.table, metadata, train_rows))
        f.fields_val = f.encoder.transform(meta_table(data.table, metadata, val_rows))
    f.aux_train = aux_matrix(data.table, aux_targets, train_rows)
    return f


def fit_fold(model: Head, data: FoldData, f: _Fold, progress: str | None = None) -> float:
    """Fit ``model`` on the fold's training part (validation rows of known classes for early
    stopping); returns the seconds it took. ``progress``: a progress bar's title (None: none)."""
    bar = EpochBar(progress) if progress else None
    fit_kw: dict[str, Any] = {} if bar is None else {"progress": bar}
    if f.fields_train is not None:
        fit_kw["fields"] = f.fields_train
        fit_kw["fields_val"] = [v[f.known_val] for v in f.fields_val]
    if f.aux_train is not None:
        fit_kw["aux"] = f.aux_train
    if f.known_val.any():
        fit_kw["X_val"], fit_kw["y_val"] = data.X[f.val_rows][f.known_val], f.y_val[f.known_val]
    X, y = data.X[f.train_rows], f.y_train
    if data.train_views:  # augmentation by the stored views of each image
        V = data.views[f.train_rows]  # (n, V, D)
        if head_tags(model).takes_views:
            fit_kw["X_views"] = V  # the head draws one of main + views per image and epoch
        else:  # others (kNN, centroids, ...) fit on every view as one more image
            X, y, fit_kw = _stack_views(X, V, y, fit_kw)
    t0 = time.perf_counter()
    try:
        model.fit(X, y, **fit_kw)
    except HeadsError:
        raise
    except ValueError as e:
        raise HeadsError(f"{'refit' if f.k is None else f'fold {f.k}'}: {e}") from e
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - t0


def use_views(data: FoldData, views: bool | None, tta: bool | None) -> None:
    """Decide whether training uses the stored views as augmentation (``views``) and validation
    and prediction average the views' logits (``tta``); None: :data:`DEFAULT_VIEWS` /
    :data:`DEFAULT_TTA` when the store has views for the backbone. Records the view names
    in ``data.train_views`` and ``data.tta_views``."""
    have = bool(data.view_names)
    if (views or tta) and not have:
        names = [i.backbone for i in data.backbones or [data.backbone]]
        what = names[0] if len(names) == 1 else "every one of " + ", ".join(names) + " (the same)"
        raise HeadsError(
            f"{data.store_path}: no views of {what} are stored; add them with "
            f"`embedstore ingest IMAGES_DIR --store {data.store_path} --views flip,crops5` or "
            "drop --views/--tta"
        )
    train_v = have and (DEFAULT_VIEWS if views is None else views)
    tta_v = have and (DEFAULT_TTA if tta is None else tta)
    data.train_views = list(data.view_names) if train_v else []
    data.tta_views = list(data.view_names) if tta_v else []


def tta_logits(model: Any, data: FoldData, rows: np.ndarray, **kw: Any) -> np.ndarray:
    """Logits ``(n, C)`` of ``rows``: with test-time augmentation (``tta_views``) the mean of
    the logits of the main embedding and of each view, as a loaded run predicts."""
    parts = [data.X[rows]]
    if data.tta_views:
        parts += list(data.views[rows].transpose(1, 0, 2))  # V of (n, D)
    z = [np.asarray(model.logits(x, **kw), dtype=np.float64) for x in parts]
    return np.mean(z, axis=0).astype(np.float32)


def _stack_views(
    X: np.ndarray, V: np.ndarray, y: np.ndarray, fit_kw: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Training rows with every view as one more row: ``(n * (1 + V), D)``, labels and
    metadata fields / aux targets repeated to match."""
    reps = 1 + V.shape[1]
    X = np.concatenate([X, V.transpose(1, 0, 2).reshape(-1, X.shape[1])])
    kw = dict(fit_kw)
    if "fields" in kw:
        kw["fields"] = [np.concatenate([a] * reps) for a in kw["fields"]]
    if "aux" in kw:
        kw["aux"] = np.concatenate([kw["aux"]] * reps)
    return X, np.tile(y, reps), kw


def calibrate_fold(
    model: Any, detector: UnknownDetector | None, data: FoldData, f: _Fold
) -> tuple[np.ndarray, UnknownDetector | None, np.ndarray | None]:
    """Validation logits, the detector fitted on the training part and calibrated on validation
    (None without one) and its validation scores; kNN heads also score every k."""
    X_val = data.X[f.val_rows]
    if head_tags(model).multi_k and f.known_val.any():  # every k from one search
        index = {c: i for i, c in enumerate(f.classes)}
        yv = np.array([index[c] for c in f.y_val[f.known_val]])
        multi = model.predict_proba_multi_k(X_val[f.known_val])
        f.knn_top1_by_k = {
            str(kk): float((p.argmax(axis=1) == yv).mean()) for kk, p in sorted(multi.items())
        }
    val_logits = (
        tta_logits(model, data, f.val_rows, **f.fields("val"))
        if len(f.val_rows)
        else np.zeros((0, len(f.classes)), np.float32)
    )
    if detector is None:
        return val_logits, None, None
    X_tr = data.X[f.train_rows]
    tr_logits = np.asarray(model.logits(X_tr, **f.fields("train")), dtype=np.float32)
    detector.fit(X_tr, f.y_train, logits=tr_logits)
    val_scores = None
    if len(f.val_rows):
        val_scores = detector.score_samples(X_val, logits=val_logits)
        detector.calibrate(val_scores, is_known=f.known_val)
    return val_logits, detector, val_scores


def save_fold(
    run_dir: Path,
    model: Any,
    detector: UnknownDetector | None,
    data: FoldData,
    f: _Fold,
    val_logits: np.ndarray,
    val_scores: np.ndarray | None,
    fit_s: float,
    settings: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the run directory (weights, detector, history, validation logits, config last);
    ``extra`` adds keys to its config (a refit's epochs and temperature)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_h, tensors = model.get_state()
    sha = {"head.safetensors": save_tensors(run_dir, "head.safetensors", tensors)}
    counts = dict(zip(*np.unique(f.y_train, return_counts=True), strict=True))
    poison_col = data.poison_column
    poisonous_of_class = None
    if poison_col:
        pv = aux_matrix(data.table, [poison_col], f.train_rows)[:, 0]
        poisonous_of_class = [
            bool(np.nanmean(pv[f.y_train == c]) > 0.5)
            if np.isfinite(pv[f.y_train == c]).any()
            else False
            for c in f.classes
        ]
    det_config = None
    if detector is not None:
        dconf, dtens = detector.get_state()
        sha["detector.safetensors"] = save_tensors(run_dir, "detector.safetensors", dtens)
        det_config = {"name": settings["unknown"], "config": dconf}
    record = model.training_record()
    history = record.history
    write_history(run_dir, history)
    if history:
        plot_training_curves(
            history,
            run_dir / "curves.png",
            best_epoch=record.best_epoch,
            title=f"{settings['head']} on {data.backbone.backbone}, "
            f"{'refit on all folds' if f.k is None else f'fold {f.k}'}: training curves",
        )
    obs_col = data.obs_column
    write_val(
        run_dir,
        data.ids[f.val_rows],
        data.labels[f.val_rows],
        val_logits,
        val_scores,
        observation=data.table[obs_col][f.val_rows] if obs_col else None,
        poisonous=aux_matrix(data.table, [poison_col], f.val_rows)[:, 0] if poison_col else None,
    )
    config = RunConfig(
        classes=f.classes.tolist(),
        store=StoreRef(str(Path(data.store_path).resolve()), data.store_version, settings["where"]),
        unknown_label=settings["unknown_label"],
        observation_column=obs_col,
        poison_column=poison_col,
        poisonous_of_class=poisonous_of_class,
        head=settings["head"],
        head_config=config_h,
        train_counts=[int(counts[c]) for c in f.classes],
        backbone=_backbone_ref(data.backbone),
        backbones=[_backbone_ref(i) for i in data.backbones] if len(data.backbones) > 1 else None,
        fold=f.k,
        metadata=settings["metadata"],
        metadata_encoder=f.encoder.get_state() if f.encoder is not None else None,
        aux_targets=settings["aux_targets"],
        n_train=int(len(f.train_rows)),
        n_val=int(len(f.val_rows)),
        fit_seconds=round(fit_s, 3),
        knn_top1_by_k=f.knn_top1_by_k,
        weights_sha256=sha,
        detector=det_config,
        # augmented views (``ingest --views``): those trained on, those averaged at prediction
        views={"train": list(data.train_views), "tta": list(data.tta_views)},
        **(extra or {}),
    )
    write_run_config(run_dir, config)
