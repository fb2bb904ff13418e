"""A fold's work in small steps, shared by :func:`heads.train` and :func:`heads.tune`: build the
head once (``build_head``), then per fold ``prepare_fold``, ``fit_fold``, ``calibrate_fold`` and
``save_fold`` (the run directory through :class:`heads.runs.RunConfig`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heads._base import EpochBar, Head, head_tags
from heads._data import FoldData, Unlabelled, aux_matrix, fold_rows, meta_table
from heads._errors import HeadsError
from heads._registry import HEADS
from heads.estimators._encoders import MetadataEncoder
from heads.estimators._unknown import DETECTORS, UnknownDetector
from heads.evaluation._plots import plot_training_curves
from heads.runs._config import RunConfig, StoreRef, write_run_config
from heads.runs._rundir import save_tensors, write_history, write_val

_NOT_HEAD_OPTIONS = ("seed", "device")  # options every head may ignore
# With views stored (``embedstore ingest --views``) and no --views/--tta given: train on them
# as augmentation and predict with test-time augmentation (measured: benchmarks/RESULTS.md).
DEFAULT_VIEWS = True
DEFAULT_TTA = True


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


@dataclass
class ExtraRows:
    """Rows trained on beside a fold's labelled ones (pseudo-labelled rows): their embeddings,
    the labels they are given, their views, and the loss weight of each (a labelled row: 1)."""

    X: np.ndarray  # (M, D) float32
    y: np.ndarray  # (M,) str
    weight: float = 1.0
    views: np.ndarray | None = None  # (M, V, D): the views of FoldData.view_names


@dataclass
class _Job:
    """What every fold of one :func:`train` call shares: its settings, the unfitted head and
    detector, the store's data, and where the run goes (``base``) through ``work``."""

    head: str
    metadata: list[str]
    aux_targets: list[str]
    unknown: str | None
    unknown_label: str
    where: str | None
    progress: bool = True
    class_thresholds: int | None = None  # per-class unknown thresholds: their minimum count
    estimator: Any = None
    detector: UnknownDetector | None = None
    data: FoldData | None = None
    base: Path = Path()
    work: Path = Path()
    unlabelled: Unlabelled | None = None  # rows to pseudo-label (ids and embeddings only)
    extra: ExtraRows | None = None  # pseudo-labelled rows every fold (and the refit) trains on
    record: dict[str, Any] | None = None  # what a run's config records of them ("pseudo")
    taxonomy: dict[str, Any] | None = None  # the store's (embedstore.store.Taxonomy.to_dict)
    label_rank: str | None = None  # --rank: the labels are the taxonomy's names at that rank


def _backbone_ref(info: Any) -> dict[str, Any]:
    """A backbone as a run's config records it."""
    return {
        "name": info.backbone,
        "column": info.column,
        "dim": info.dim,
        "describe": info.describe,
    }


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
            f"option(s) {', '.join('--' + u.replace('_', '-') for u in unused)} "
            "do not apply to head "
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
            f"{data.store_path}: the store has no folds; "
            f"run `embedstore split --store {data.store_path} --folds 5` first"
        )
    if fold == "all":
        return present
    try:
        k = int(fold)
    except (TypeError, ValueError):
        raise HeadsError(f"--fold must be a fold number or 'all', not {fold!r}") from None
    if k not in present:
        raise HeadsError(
            f"fold {k} does not exist; the store has folds {', '.join(map(str, present))} "
            "(or use --fold all)"
        )
    return [k]


# ---------------------------------------------------------------------------- fold steps


def prepare_fold(
    data: FoldData, k: int | None, metadata: list[str], aux_targets: list[str], unknown_label: str
) -> _Fold:
    """Rows, labels, encoded metadata (encoder fitted on the training part) and aux targets."""
    train_rows, val_rows = fold_rows(data, k, unknown_label)
    y_tr = data.labels[train_rows].astype(str)
    # a text prior names every class, images or not; else the training part's labels
    classes = np.unique(y_tr if data.text is None else np.asarray(data.text.classes, dtype=str))
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


def fit_fold(
    model: Head,
    data: FoldData,
    f: _Fold,
    progress: str | None = None,
    extra: ExtraRows | None = None,
) -> float:
    """Fit ``model`` on the fold's training part (validation rows of known classes for early
    stopping) and the ``extra`` rows of the fold's classes; returns the seconds it took.
    ``progress``: a progress bar's title (None: none)."""
    bar = EpochBar(progress) if progress else None
    fit_kw: dict[str, Any] = {} if bar is None else {"progress": bar}
    if f.fields_train is not None:
        fit_kw["fields"] = f.fields_train
        assert f.fields_val is not None  # prepared with fields_train
        fit_kw["fields_val"] = [v[f.known_val] for v in f.fields_val]
    if f.aux_train is not None:
        fit_kw["aux"] = f.aux_train
    if data.text is not None and head_tags(model).text_prior:
        fit_kw["text"] = data.text  # the class text weights the labelled images move
    if f.known_val.any():
        fit_kw["X_val"], fit_kw["y_val"] = data.X[f.val_rows][f.known_val], f.y_val[f.known_val]
    X, y = data.X[f.train_rows], f.y_train
    V = None
    if data.train_views:  # augmentation by the stored views of each image
        assert data.views is not None  # use_views sets train_views only with views read
        V = data.views[f.train_rows]  # (n, V, D)
    if extra is not None:
        X, y, V, weight = _with_extra(X, y, V, extra, f.classes)
        if weight is not None and head_tags(model).sample_weight:
            fit_kw["sample_weight"] = weight
    if V is not None:
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


def _with_extra(
    X: np.ndarray, y: np.ndarray, V: np.ndarray | None, extra: ExtraRows, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The training rows followed by the ``extra`` rows of ``classes``: ``X``, ``y``, views and
    the weight of each row (None when every row weighs 1)."""
    keep = np.isin(extra.y, classes)  # a class the fold never trained on stays out
    X = np.concatenate([X, extra.X[keep]])
    y = np.concatenate([y, extra.y[keep]])
    if V is not None:
        assert extra.views is not None  # read with the views when training uses them
        V = np.concatenate([V, extra.views[keep]])
    if extra.weight == 1.0:
        return X, y, V, None
    w = np.ones(len(y), np.float32)
    w[len(y) - int(keep.sum()) :] = extra.weight
    return X, y, V, w


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
    V = None
    if data.tta_views:
        assert data.views is not None  # use_views sets tta_views only with views read
        V = data.views[rows]  # (n, V, D)
    return view_logits(model, data.X[rows], V, **kw)


def view_logits(model: Any, X: np.ndarray, V: np.ndarray | None, **kw: Any) -> np.ndarray:
    """Logits ``(n, C)`` of embeddings ``X`` ``(n, D)``; with views ``V`` ``(n, V, D)`` the mean
    of the main embedding's and each view's logits."""
    parts = [X] + ([] if V is None else list(V.transpose(1, 0, 2)))  # 1 + V of (n, D)
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
    if "sample_weight" in kw:
        kw["sample_weight"] = np.tile(kw["sample_weight"], reps)
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


def _poisonous_of_class(data: FoldData, f: _Fold) -> list[bool] | None:
    """Per class: are most of its training images poisonous (None without that column)."""
    if not data.poison_column:
        return None
    pv = _flag(data.table, data.poison_column, f.train_rows)
    return [
        bool(np.nanmean(pv[f.y_train == c]) > 0.5)
        if np.isfinite(pv[f.y_train == c]).any()
        else False
        for c in f.classes
    ]


def _save_history(run_dir: Path, model: Head, what: str, f: _Fold) -> None:
    """``history.json`` and, for an iterative head, ``curves.png``."""
    record = model.training_record()
    write_history(run_dir, record.history)
    if record.history:
        part = "refit on all folds" if f.k is None else f"fold {f.k}"
        plot_training_curves(
            record.history,
            run_dir / "curves.png",
            best_epoch=record.best_epoch,
            title=f"{what}, {part}: training curves",
        )


def save_fold(
    run_dir: Path,
    model: Any,
    detector: UnknownDetector | None,
    data: FoldData,
    f: _Fold,
    val_logits: np.ndarray,
    val_scores: np.ndarray | None,
    fit_s: float,
    job: _Job,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the run directory (weights, detector, history, validation logits, config last);
    ``extra`` adds keys to its config (a refit's epochs and temperature)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_h, tensors = model.get_state()
    sha = {"head.safetensors": save_tensors(run_dir, "head.safetensors", tensors)}
    counts = dict(zip(*np.unique(f.y_train, return_counts=True), strict=True))
    poison_col = data.poison_column
    det_config = None
    if detector is not None:
        dconf, dtens = detector.get_state()
        sha["detector.safetensors"] = save_tensors(run_dir, "detector.safetensors", dtens)
        det_config = {"name": job.unknown, "config": dconf}
    _save_history(run_dir, model, f"{job.head} on {data.backbone.backbone}", f)
    obs_col = data.obs_column
    write_val(
        run_dir,
        data.ids[f.val_rows],
        data.labels[f.val_rows],
        val_logits,
        val_scores,
        observation=data.table[obs_col][f.val_rows] if obs_col else None,
        poisonous=_flag(data.table, poison_col, f.val_rows) if poison_col else None,
    )
    config = RunConfig(
        classes=f.classes.tolist(),
        store=StoreRef(str(Path(data.store_path).resolve()), data.store_version, job.where),
        unknown_label=job.unknown_label,
        observation_column=obs_col,
        poison_column=poison_col,
        poisonous_of_class=_poisonous_of_class(data, f),
        head=job.head,
        head_config=config_h,
        train_counts=[int(counts.get(c, 0)) for c in f.classes],  # 0: a class of words only
        backbone=_backbone_ref(data.backbone),
        backbones=[_backbone_ref(i) for i in data.backbones] if len(data.backbones) > 1 else None,
        fold=f.k,
        metadata=job.metadata,
        metadata_encoder=f.encoder.get_state() if f.encoder is not None else None,
        aux_targets=job.aux_targets,
        n_train=int(len(f.train_rows)),
        n_val=int(len(f.val_rows)),
        fit_seconds=round(fit_s, 3),
        knn_top1_by_k=f.knn_top1_by_k,
        weights_sha256=sha,
        detector=det_config,
        # augmented views (``ingest --views``): those trained on, those averaged at prediction
        views={"train": list(data.train_views), "tta": list(data.tta_views)},
        pseudo=job.record,
        taxonomy=job.taxonomy,
        label_rank=job.label_rank,
        **(extra or {}),
    )
    write_run_config(run_dir, config)


def _flag(table: dict[str, np.ndarray], column: str, rows: np.ndarray) -> np.ndarray:
    """One flag column ``(n,)`` as :func:`aux_matrix` reads it (1.0, 0.0 or nan)."""
    m = aux_matrix(table, [column], rows)
    assert m is not None  # one column asked for
    return m[:, 0]
