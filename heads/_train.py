"""Training on store folds: build the estimator once from the registry, clone it per fold, and do
each fold's work in small steps (prepare, fit, calibrate, save).

``heads.train(store, fold=0, head="mlp")`` is the library call behind ``heads train``.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import clone

from embedstore import Result
from heads._data import (
    FoldData,
    aux_matrix,
    check_finite,
    fold_rows,
    holdout_leakage,
    load_fold_data,
    meta_table,
)
from heads._encoders import MetadataEncoder
from heads._ensemble import ensemble
from heads._errors import HeadsError
from heads._evaluate import EvalResult, evaluate
from heads._plots import plot_training_curves
from heads._registry import HEADS
from heads._rundir import (
    RUN_FORMAT,
    replace_dir,
    save_tensors,
    write_config,
    write_history,
    write_val,
)
from heads._unknown import DETECTORS, UnknownDetector

_NOT_HEAD_OPTIONS = ("seed", "device")  # options every head may ignore


@dataclass
class FoldResult(Result):
    """One fold's run: where it went, how long it fitted, and its validation scores."""

    run: str
    fold: int
    fit_seconds: float
    epochs: int
    metrics: dict[str, Any]
    knn_top1_by_k: dict[str, float] | None = None

    def items_(self) -> dict[str, Any]:
        out = {"run": self.run, "fold": self.fold, "fit_seconds": self.fit_seconds,
               "epochs": self.epochs, **self.metrics}  # fmt: skip
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


@dataclass
class _Fold:
    """One fold's prepared inputs (the 'prepare' step)."""

    k: int
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
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self, part: str) -> dict[str, Any]:
        f = self.fields_train if part == "train" else self.fields_val
        return {} if f is None else {"fields": f}


def train(
    store: Any = None,
    *,
    fold: int | str = 0,
    backbone: str | None = None,
    head: str = "mlp",
    out: str | os.PathLike | None = None,
    metadata: list[str] | tuple[str, ...] = (),
    aux_targets: list[str] | tuple[str, ...] = (),
    unknown: str | None = None,
    unknown_label: str = "unknown",
    where: str | None = None,
    progress: bool = True,
    on_fold: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    **head_options: Any,
) -> TrainResult:
    """Train ``head`` with fold ``fold`` as validation (``"all"``: every fold, then their ensemble).

    ``head_options`` are the head's settings (``hidden``, ``dropout``, ``loss``, ``class_weights``,
    ``sampler``, ``epochs``, ``lr``, ``batch_size``, ``seed``, ``device``, ``k`` ...).
    ``metadata`` columns are encoded (fitted on the training part only) and fed to the head;
    ``aux_targets`` are binary columns learned as auxiliary outputs (e.g. poisonous).
    ``unknown`` attaches an unknown-class detector calibrated on the validation fold.
    An existing ``out`` is refused unless ``overwrite`` (then replaced whole, once the new run is
    complete). ``on_fold(done, total)`` is called before each fold and at the end (a caller that raises
    from it stops the training between folds: how the service cancels a job).

    >>> heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30).ensemble
    """
    estimator = build_head(head, head_options, progress)
    detector = build_detector(unknown, head_options.get("device"))
    data = load_fold_data(store, backbone, [*metadata, *aux_targets], where)
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
        else Path("runs") / f"{head}-{data.backbone.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
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
    runs, metrics = [], []
    settings = {"head": head, "metadata": list(metadata), "aux_targets": list(aux_targets),
                "unknown": unknown, "unknown_label": unknown_label, "where": where}  # fmt: skip
    try:
        for done, k in enumerate(folds):
            if on_fold is not None:
                on_fold(done, len(folds))
            run_dir = work / f"fold{k}" if fold == "all" else work
            f = prepare_fold(data, k, list(metadata), list(aux_targets), unknown_label)
            model = clone(estimator)
            model._progress_desc = f"{head} fold {k} ({done + 1}/{len(folds)})"
            fit_s = fit_fold(model, data, f)
            val_logits, det, val_scores = calibrate_fold(
                model, None if detector is None else clone(detector), data, f
            )
            save_fold(run_dir, model, det, data, f, val_logits, val_scores, fit_s, settings)
            res = evaluate(run_dir, holdout=False, plots=False, device="cpu")
            runs.append(str(run_dir))
            metrics.append(
                FoldResult(
                    str(base / run_dir.relative_to(work)) if run_dir != work else str(base),
                    k,
                    round(fit_s, 3),
                    len(getattr(model, "history_", []) or []),
                    res.metrics,
                    f.extra.get("knn_top1_by_k"),
                )  # fmt: skip
            )
        ens, ens_metrics = None, None
        if fold == "all" and len(runs) > 1:
            ens_metrics = ensemble(runs, work)
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
        on_fold(len(folds), len(folds))
    return TrainResult(runs, ens, metrics, ens_metrics, leaks)


# ---------------------------------------------------------------------------- build once


def build_head(head: str, options: dict[str, Any], progress: bool = True) -> Any:
    """The unfitted head from the registry with ``options``; clear errors for options it lacks."""
    cls = HEADS.get(head)
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
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
    takes_device = "device" in inspect.signature(cls.__init__).parameters
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


def prepare_fold(data: FoldData, k: int, metadata: list[str], aux_targets: list[str],
                 unknown_label: str) -> _Fold:  # fmt: skip
    """Rows, labels, encoded metadata (encoder fitted on the training part) and aux targets."""
    train_rows, val_rows = fold_rows(data, k, unknown_label)
    y_tr = data.labels[train_rows].astype(str)
    classes = np.unique(y_tr)
    if len(classes) < 2:
        raise HeadsError(
            f"fold {k}: the training part has {len(classes)} class(es); a classifier needs at least 2"
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


def fit_fold(model: Any, data: FoldData, f: _Fold) -> float:
    """Fit ``model`` on the fold's training part (validation rows of known classes for early
    stopping); returns the seconds it took."""
    fit_kw: dict[str, Any] = {}
    if f.fields_train is not None:
        fit_kw["fields"] = f.fields_train
        fit_kw["fields_val"] = [v[f.known_val] for v in f.fields_val]
    if f.aux_train is not None:
        fit_kw["aux"] = f.aux_train
    if f.known_val.any():
        fit_kw["X_val"], fit_kw["y_val"] = data.X[f.val_rows][f.known_val], f.y_val[f.known_val]
    t0 = time.perf_counter()
    try:
        model.fit(data.X[f.train_rows], f.y_train, **fit_kw)
    except HeadsError:
        raise
    except ValueError as e:
        raise HeadsError(f"fold {f.k}: {e}") from e
    return time.perf_counter() - t0


def calibrate_fold(model: Any, detector: UnknownDetector | None, data: FoldData,
                   f: _Fold) -> tuple[np.ndarray, UnknownDetector | None, np.ndarray | None]:  # fmt: skip
    """Validation logits, the detector fitted on the training part and calibrated on validation
    (None without one) and its validation scores; kNN heads also score every k."""
    X_val = data.X[f.val_rows]
    if hasattr(model, "predict_proba_multi_k") and f.known_val.any():  # every k from one search
        index = {c: i for i, c in enumerate(f.classes)}
        yv = np.array([index[c] for c in f.y_val[f.known_val]])
        multi = model.predict_proba_multi_k(X_val[f.known_val])
        f.extra["knn_top1_by_k"] = {
            str(kk): float((p.argmax(axis=1) == yv).mean()) for kk, p in sorted(multi.items())
        }
    val_logits = (
        np.asarray(model.decision_function(X_val, **f.fields("val")), dtype=np.float32)
        if len(f.val_rows)
        else np.zeros((0, len(f.classes)), np.float32)
    )
    if detector is None:
        return val_logits, None, None
    X_tr = data.X[f.train_rows]
    tr_logits = np.asarray(model.decision_function(X_tr, **f.fields("train")), dtype=np.float32)
    detector.fit(X_tr, f.y_train, logits=tr_logits)
    val_scores = None
    if len(f.val_rows):
        val_scores = detector.score_samples(X_val, logits=val_logits)
        detector.calibrate(val_scores, is_known=f.known_val)
    return val_logits, detector, val_scores


def save_fold(run_dir: Path, model: Any, detector: UnknownDetector | None, data: FoldData, f: _Fold,
              val_logits: np.ndarray, val_scores: np.ndarray | None, fit_s: float,
              settings: dict[str, Any]) -> None:  # fmt: skip
    """Write the run directory (weights, detector, history, validation logits, config last)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_h, tensors = model.get_state()
    sha = {"head.safetensors": save_tensors(run_dir, "head.safetensors", tensors)}
    counts = dict(zip(*np.unique(f.y_train, return_counts=True), strict=True))
    poison_col = data.extra.get("poison_column")
    poisonous_of_class = None
    if poison_col:
        pv = aux_matrix(data.table, [poison_col], f.train_rows)[:, 0]
        poisonous_of_class = [
            bool(np.nanmean(pv[f.y_train == c]) > 0.5) if np.isfinite(pv[f.y_train == c]).any() else False
            for c in f.classes
        ]  # fmt: skip
    det_config = None
    if detector is not None:
        dconf, dtens = detector.get_state()
        sha["detector.safetensors"] = save_tensors(run_dir, "detector.safetensors", dtens)
        det_config = {"name": settings["unknown"], "config": dconf}
    history = list(getattr(model, "history_", []) or [])
    write_history(run_dir, history)
    if history:
        plot_training_curves(
            history, run_dir / "curves.png", best_epoch=getattr(model, "best_epoch_", None),
            title=f"{settings['head']} on {data.backbone.backbone}, fold {f.k}: training curves",
        )  # fmt: skip
    obs_col = data.extra.get("obs_column")
    write_val(
        run_dir, data.ids[f.val_rows], data.labels[f.val_rows], val_logits, val_scores,
        observation=data.table[obs_col][f.val_rows] if obs_col else None,
        poisonous=aux_matrix(data.table, [poison_col], f.val_rows)[:, 0] if poison_col else None,
    )  # fmt: skip
    config: dict[str, Any] = {
        "format": RUN_FORMAT,
        "kind": "run",
        "head": settings["head"],
        "head_config": config_h,
        "classes": f.classes.tolist(),
        "train_counts": [int(counts[c]) for c in f.classes],
        "backbone": {
            "name": data.backbone.backbone,
            "column": data.backbone.column,
            "dim": data.backbone.dim,
            "describe": data.backbone.describe,
        },
        "store": {
            "path": str(Path(data.store_path).resolve()),
            "version": data.store_version,
            "where": settings["where"],
        },
        "fold": f.k,
        "metadata": settings["metadata"],
        "metadata_encoder": f.encoder.get_state() if f.encoder is not None else None,
        "aux_targets": settings["aux_targets"],
        "unknown_label": settings["unknown_label"],
        "observation_column": obs_col,
        "poison_column": poison_col,
        "poisonous_of_class": poisonous_of_class,
        "n_train": int(len(f.train_rows)),
        "n_val": int(len(f.val_rows)),
        "fit_seconds": round(fit_s, 3),
        "knn_top1_by_k": f.extra.get("knn_top1_by_k"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "weights_sha256": sha,
        "detector": det_config,
    }
    write_config(run_dir, config)
