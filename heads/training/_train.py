"""Training on store folds: build the estimator once from the registry, clone it per fold, and do
each fold's work in small steps (prepare, fit, calibrate, save: ``heads.training._folds``); the
refit on every fold and the folds' ensemble.

``heads.train(store, fold=0, head="mlp")`` is the library call behind ``heads train``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from embedstore import Result
from embedstore.store import read_taxonomy, unlabelled_predicates
from heads._base import Head, head_tags
from heads._data import (
    FoldData,
    check_finite,
    holdout_leakage,
    load_fold_data,
    load_unlabelled,
)
from heads._errors import HeadsError
from heads.estimators._class_thresholds import fit_class_thresholds
from heads.estimators._unknown import DEFAULT_DETECTOR, UnknownDetector
from heads.evaluation._evaluate import EvalResult, evaluate
from heads.runs._folder import collect_partial_runs, work_dir
from heads.runs._rundir import replace_dir
from heads.taxonomy._fit import HierarchyResult, fit_hierarchy
from heads.taxonomy._tree import relabel, restrict
from heads.training._ensemble import ensemble as write_ensemble
from heads.training._ensemble import fit_temperature
from heads.training._folds import (
    _Fold,
    _folds_to_train,
    _Job,
    build_detector,
    build_head,
    calibrate_fold,
    fit_fold,
    prepare_fold,
    save_fold,
    use_views,
)
from heads.training._pseudo import (
    FoldScores,
    PseudoOptions,
    PseudoPlan,
    PseudoResult,
    fold_scores,
    pseudo_options,
)
from heads.training._text_prior import (
    attach_class_texts,
    check_zero_shot_options,
    text_columns,
    train_zero_shot,
    unused_labels_warning,
    zero_shot_only,
)
from heads.types import ENSEMBLE_MEMBERS, EnsembleMembers


@dataclass
class FoldResult(Result):
    """One fold's run: where it went, how long it fitted, and its validation scores."""

    run: str
    fold: int | None  # None: the refit on every fold
    fit_seconds: float
    epochs: int
    metrics: dict[str, Any]
    knn_top1_by_k: dict[str, float] | None = None
    # what the head chose out-of-fold on its training part (the zero-shot head's blend)
    chosen: dict[str, Any] | None = None

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
        if self.chosen is not None:
            out["chosen"] = self.chosen
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
    # the stored views the heads trained on and predict with (test-time augmentation)
    views: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "tta": []})
    pseudo: PseudoResult | None = None  # --pseudo-label: what was chosen, each round's rows
    # with a taxonomy on the store: the hierarchy fitted on the validation part
    hierarchy: HierarchyResult | None = None


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
    class_thresholds: int | None = None,
    where: str | None = None,
    refit: bool = False,
    ensemble: EnsembleMembers | None = None,
    progress: bool = True,
    on_fold: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    views: bool | None = None,
    tta: bool | None = None,
    pseudo_label: bool = False,
    unlabelled: str | None = None,
    fraction: float | None = None,
    pseudo_weight: float | None = None,
    rounds: int | None = None,
    rank: str | None = None,
    **head_options: Any,
) -> TrainResult:
    """Train ``head`` with fold ``fold`` as validation (``"all"``: every fold, then their ensemble).

    ``head_options`` are the head's settings (``hidden``, ``dropout``, ``loss``, ``class_weights``,
    ``sampler``, ``epochs``, ``lr``, ``batch_size``, ``seed``, ``device``, ``k`` ...).
    ``metadata`` columns are encoded (fitted on the training part only) and fed to the head;
    ``aux_targets`` are binary columns learned as auxiliary outputs (e.g. poisonous).
    ``unknown`` attaches an unknown-class detector calibrated on the validation fold (a name
    from ``heads.list_detectors()``, or ``"default"`` for ``heads.DEFAULT_DETECTOR``);
    ``class_thresholds`` (a minimum count, e.g. 20) gives it a threshold per predicted class,
    fitted out-of-fold on each fold and on the fold ensemble, for the classes predicted that
    many times there (the others keep the global one).
    An existing ``out`` is refused unless ``overwrite`` (then replaced whole, once the new run is
    complete). ``on_fold(done, total)`` is called before each fold and at the end (a caller that
    raises from it stops the training between folds: how the service cancels a job).

    ``refit`` (with ``fold="all"``) also trains one model on every fold's rows (the held-out part
    stays out) for the median of the folds' best epochs, saved as ``<out>/refit``; it has no
    validation rows, so its temperature is the mean of the folds' and its unknown threshold the
    mean of the folds' thresholds. ``ensemble`` says what ``<out>`` predicts with: ``"folds"``,
    ``"refit"`` or ``"both"`` (default with ``refit``: :data:`DEFAULT_REFIT_ENSEMBLE`); its
    validation part stays the folds' out-of-fold predictions, the refit having none.
    A centroid head with ``reference="train+val"`` implies ``refit`` (and by default
    ``ensemble="refit"``): the folds are scored with prototypes of their training part, and
    the refit's prototypes, which ``<out>`` predicts with, use every fold.

    ``pseudo_label`` (with ``fold="all"``): after the folds, the rows with no label (or those
    ``unlabelled`` selects, e.g. ``"split = 'test'"``, whose labels are then never read) are
    scored by the fold ensemble; the most confident ``fraction`` of them per predicted class
    join every fold's training part with their predicted label and a loss weight
    ``pseudo_weight``, and the folds train again, ``rounds`` times. ``fraction`` and
    ``pseudo_weight`` not given are chosen out-of-fold (:mod:`heads.training._pseudo`); the
    run records the rows in ``<out>/pseudo.parquet``.

    A head with a text prior (``head="zeroshot"``: ``classes``, ``templates``, ``names``,
    ``name_columns``, ``coarse_column``, ``blend``) gets class weights from the column's text
    tower first (``heads.training._text_prior``); on a store with no labelled training image
    (labels only on the held-out part, or none) it makes one run with no folds (``fold``
    None), scored on the held-out part.

    With a taxonomy on the store (``embedstore taxonomy``) the run records it and its
    hierarchy is fitted on the validation part (``RUN/hierarchy.json``: answers at every rank,
    ``heads predict --fallback``; heads.taxonomy.fit_hierarchy). ``rank`` (``"genus"``) trains
    on the labels' names at that rank of the taxonomy instead of the labels themselves.

    >>> heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30).ensemble
    >>> heads.train("birds", head="zeroshot", classes=["Turdus merula", "Erithacus rubecula"])
    >>> heads.train("flowers", fold="all", head="mlp", out="runs/mlp", refit=True).refit.epochs
    >>> heads.train("grocery", fold="all", pseudo_label=True, unlabelled="split = 'test'")
    """
    estimator = build_head(head, head_options, progress)
    unknown = DEFAULT_DETECTOR if unknown == "default" else unknown
    detector = build_detector(unknown, head_options.get("device"))
    refit, members = _refit_settings(estimator, fold, refit, ensemble)
    pseudo = pseudo_options(pseudo_label, unlabelled, fraction, pseudo_weight, rounds)
    _check_pseudo(pseudo, fold, [*metadata, *aux_targets])
    columns = [*metadata, *aux_targets, *text_columns(estimator)]
    data, unlabelled_rows = _read_data(
        store, backbone, columns, where, views, tta, estimator, pseudo
    )
    job = _Job(head, list(metadata), list(aux_targets), unknown, unknown_label, where, progress)
    taxonomy = _use_taxonomy(data, rank, unknown_label)
    zero = _text_prior(job, data, estimator, refit, head_options.get("device"))
    if zero and pseudo is not None:
        raise HeadsError(
            "--pseudo-label needs labelled training images to score the unlabelled rows; "
            "this store has none (a zero-shot run): drop --pseudo-label"
        )
    folds = [] if zero else _folds_to_train(data, fold)
    leaks = holdout_leakage(data) + (unused_labels_warning(data, unknown_label) if zero else [])
    base = _out_dir(out, head, data, overwrite)
    # Train into a hidden folder beside --out and swap it in whole when complete: a run killed or
    # failed half-way never leaves a mixed run, and --overwrite leaves nothing of the old one.
    collect_partial_runs(base.parent)  # what killed trainings left beside it
    work = work_dir(base)
    if class_thresholds is not None and unknown is None:
        raise HeadsError("--class-thresholds sets the unknown detector's thresholds: add --unknown")
    job.class_thresholds = class_thresholds
    job.estimator, job.detector, job.data, job.base, job.work = (
        estimator,
        detector,
        data,
        base,
        work,
    )
    job.taxonomy, job.label_rank = taxonomy, rank
    job.unlabelled = unlabelled_rows
    tick = _Ticker(on_fold, len(folds) * (1 + (pseudo.rounds if pseudo else 0)) + int(refit))
    refit_res, ens, ens_metrics, pseudo_res = None, None, None, None
    try:
        stats: list[_FoldStats] = []
        if zero:  # no labelled image to train on: one run of the class texts
            metrics = [_zero_shot_run(job)]
        else:
            metrics, stats = _train_folds(job, folds, fold, tick)
        if pseudo is not None:
            metrics, stats, pseudo_res = _pseudo_rounds(
                job, pseudo, folds, fold, tick, stats, metrics
            )
        runs = [str(work / Path(m.run).relative_to(base)) for m in metrics]
        if refit:
            tick()
            refit_res = fit_refit(job, stats, work / "refit")
            refit_res.run = str(base / "refit")
        if fold == "all" and (len(runs) > 1 or refit):
            ens, ens_metrics = _fold_ensemble(job, members, runs, refit)
        hierarchy = _fit_hierarchy(job, leaks)
        replace_dir(work, base)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # a failed or cancelled run leaves nothing
        raise
    if on_fold is not None:
        on_fold(tick.total, tick.total)
    used_views = {"train": list(data.train_views), "tta": list(data.tta_views)}
    if hierarchy is not None:
        hierarchy.run, hierarchy.file = str(base), str(base / Path(hierarchy.file).name)
    return TrainResult(
        [m.run for m in metrics],
        ens,
        metrics,
        ens_metrics,
        leaks,
        refit_res,
        used_views,
        pseudo_res,
        hierarchy,
    )


@dataclass
class _Ticker:
    """``on_fold(done, total)`` before each fit; ``advance=False``: a checkpoint between the
    fits that choose the pseudo-labels (a caller that raises from it stops the training)."""

    on_fold: Callable[[int, int], None] | None
    total: int
    done: int = 0

    def __call__(self, advance: bool = True) -> None:
        if self.on_fold is not None:
            self.on_fold(self.done, self.total)
        self.done += int(advance)


def _train_folds(
    job: _Job, folds: list[int], fold: int | str, tick: _Ticker
) -> tuple[list[FoldResult], list[_FoldStats]]:
    """Train every fold of ``folds`` into the work folder (again, in a pseudo-labelling
    round: ``job.extra`` holds its rows)."""
    metrics, stats = [], []
    what = "" if job.record is None else f", pseudo-label round {job.record['round']}"
    for i, k in enumerate(folds):
        tick()
        run_dir = job.work / f"fold{k}" if fold == "all" else job.work
        desc = f"{job.head} fold {k} ({i + 1}/{len(folds)}){what}"
        res, st = _train_fold(job, k, desc, run_dir)
        metrics.append(res)
        stats.append(st)
    return metrics, stats


def _pseudo_rounds(
    job: _Job,
    pseudo: PseudoOptions,
    folds: list[int],
    fold: int | str,
    tick: _Ticker,
    stats: list[_FoldStats],
    metrics: list[FoldResult],
) -> tuple[list[FoldResult], list[_FoldStats], PseudoResult]:
    """Choose the fraction and weight from the plain folds (``stats``, ``metrics``), then each
    round: select the rows with the last round's folds and train every fold again with them
    (none when the plain fit won out-of-fold: its folds stay as written)."""
    plan = PseudoPlan(job, pseudo, _scores(stats), lambda: tick(advance=False))
    while plan.start_round(job, _scores(stats)):
        metrics, stats = _train_folds(job, folds, fold, tick)
    return metrics, stats, plan.finish(job, job.work, job.base)


def _scores(stats: list[_FoldStats]) -> list[FoldScores]:
    out = [s.scores for s in stats]
    assert all(s is not None for s in out)  # scored when the job has unlabelled rows
    return [s for s in out if s is not None]


def _check_pseudo(pseudo: PseudoOptions | None, fold: int | str, columns: list[str]) -> None:
    if pseudo is None:
        return
    if fold != "all":
        raise HeadsError(
            "--pseudo-label needs --fold all: the fold ensemble scores the unlabelled rows and "
            "the fraction is chosen out-of-fold"
        )
    if columns:
        raise HeadsError(
            "--pseudo-label does not take --metadata or --aux-target yet (the unlabelled rows "
            "are read as embeddings only); drop them"
        )


def _read_data(
    store: Any,
    backbone: str | list[str] | None,
    columns: list[str],
    where: str | None,
    views: bool | None,
    tta: bool | None,
    estimator: Head,
    pseudo: PseudoOptions | None = None,
) -> tuple[FoldData, Any]:
    """The store's rows for training, checked (finite, labelled), views decided; a head that
    fuses tokens gets one token per backbone. With ``pseudo``: the labelled rows only, and the
    unlabelled ones apart (ids and embeddings: their labels are never read)."""
    several = isinstance(backbone, list | tuple) and len(backbone) > 1
    unl_where = None
    if pseudo is not None:
        where, unl_where = unlabelled_predicates(where, pseudo.unlabelled)
    data = load_fold_data(store, backbone, columns, where, views=views is not False or bool(tta))
    sk: Any = estimator  # heads are scikit-learn estimators: get_params / set_params
    if several and head_tags(estimator).token_fusion and not sk.get_params()["token_dims"]:
        sk.set_params(token_dims=[i.dim for i in data.backbones])
    use_views(data, views, tta)
    check_finite(data.X, data.ids, data.backbone.column)
    if not head_tags(estimator).text_prior and not any(v is not None for v in data.labels):
        raise HeadsError(
            f"{data.store_path}: no labelled images; label them by class folders or "
            "`embedstore ingest --label-column`"
        )
    if unl_where is None or pseudo is None:
        return data, None
    rows = load_unlabelled(data, unl_where)
    if not len(rows.ids):
        raise HeadsError(
            f"{data.store_path}: --pseudo-label found no unlabelled rows ({pseudo.described}); "
            "give --unlabelled WHERE (e.g. \"split = 'test'\") or add images without labels"
        )
    return data, rows


def _text_prior(job: _Job, data: FoldData, estimator: Any, refit: bool, device: str | None) -> bool:
    """For a head with a text prior: its class texts built into ``data``; whether the store
    has no labelled training image (then one zero-shot run, no folds)."""
    if not head_tags(estimator).text_prior:
        return False
    attach_class_texts(data, estimator, job.unknown_label, device)
    zero = zero_shot_only(data, estimator, job.unknown_label)
    if zero:
        check_zero_shot_options(job, refit)
    return zero


def _zero_shot_run(job: _Job) -> FoldResult:
    """The zero-shot run into the work folder (``fold`` None: no folds), with its held-out
    scores."""
    model, metrics = train_zero_shot(job, job.work)
    fit_s = metrics.pop("fit_seconds")
    chosen = model.training_record().chosen or None
    return FoldResult(str(job.base), None, fit_s, 0, metrics, chosen=chosen)


def _use_taxonomy(data: FoldData, rank: str | None, unknown_label: str) -> dict[str, Any] | None:
    """The store's taxonomy as the run records it (None without one); with ``rank``, the
    labels become their names at that rank."""
    tax = read_taxonomy(data.store_path)
    if tax is None:
        if rank is not None:
            raise HeadsError(
                f"--rank {rank}: the store {data.store_path} has no taxonomy; set one with "
                f"`embedstore taxonomy FILE --store {data.store_path}` (or --rank COLUMN)"
            )
        return None
    recorded = restrict(tax, data.labels)
    if rank is not None and tax.rank_index(rank) > 0:  # the labels' own rank: as they are
        data.labels = relabel(data.labels, tax, rank, unknown_label)
    return recorded


def _fit_hierarchy(job: _Job, warnings: list[str]) -> HierarchyResult | None:
    """The run's hierarchy fitted on its validation part, when the store has a taxonomy with a
    rank above the run's classes (a warning instead when it cannot be fitted)."""
    if (
        job.taxonomy is None
        or (job.label_rank or job.taxonomy["ranks"][0]) == job.taxonomy["ranks"][-1]
        or not (job.work / "config.json").is_file()  # --fold all over one fold: no ensemble
    ):
        return None
    try:
        return fit_hierarchy(job.work, device="cpu")
    except HeadsError as e:
        warnings.append(f"no hierarchy fitted: {e}")
        return None


def _out_dir(out: Any, head: str, data: FoldData, overwrite: bool) -> Path:
    """``--out`` (default ``runs/<head>-<backbones>-<time>``), refused if a run is there."""
    names = "+".join(i.backbone for i in data.backbones)
    base = (
        Path(out)
        if out is not None
        else Path("runs") / f"{head}-{names}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if base.exists() and not base.is_dir():
        raise HeadsError(f"{base}: --out is a file; give a directory")
    if base.exists() and any(base.iterdir()) and not overwrite:
        raise HeadsError(
            f"{base}: a run is there already; give --overwrite to replace it whole, "
            "or another --out"
        )
    return base


def _train_fold(job: _Job, k: int, desc: str, run_dir: Path) -> tuple[FoldResult, _FoldStats]:
    """One fold: prepare, fit, calibrate, save, score; what the refit takes from it."""
    data = job.data
    assert data is not None  # train sets it before any fold
    f = prepare_fold(data, k, job.metadata, job.aux_targets, job.unknown_label)
    model = clone(job.estimator)
    tags = head_tags(model)
    if tags.needs_refit:  # e.g. centroids: the folds score with their training part only
        model.set_params(**tags.fold_settings)
    fit_s = fit_fold(model, data, f, desc if job.progress else None, job.extra)
    det = None if job.detector is None else clone(job.detector)
    val_logits, det, val_scores = calibrate_fold(model, det, data, f)
    stats = _fold_stats(model, det, f, val_logits)
    extra = None
    if job.class_thresholds is not None and det is not None and val_scores is not None:
        assert det.threshold_ is not None  # calibrated on the validation rows
        ct = fit_class_thresholds(
            val_scores,
            val_logits.argmax(axis=1),
            f.known_val,
            len(f.classes),
            global_threshold=float(det.threshold_),
            min_count=job.class_thresholds,
        )
        extra = {"class_thresholds": ct.to_dict()}
    stats.scores = fold_scores(model, job, f, val_logits, stats.temperature)
    save_fold(run_dir, model, det, data, f, val_logits, val_scores, fit_s, job, extra)
    res = evaluate(run_dir, holdout=False, plots=False, device="cpu")
    shown = job.base / run_dir.relative_to(job.work) if run_dir != job.work else job.base
    record = model.training_record()
    result = FoldResult(
        str(shown),
        k,
        round(fit_s, 3),
        len(record.history),
        res.metrics,
        f.knn_top1_by_k,
        chosen=record.chosen or None,
    )
    return result, stats


def _fold_ensemble(job: _Job, members: str, runs: list[str], refit: bool) -> tuple[str, EvalResult]:
    """Write the ensemble of the fold runs (and the refit) into the work folder; its scores."""
    paths, weights = _ensemble_members(members, runs, job.work / "refit", refit)
    validation = runs if members == "refit" else None
    ens_metrics = write_ensemble(
        paths,
        job.work,
        weights=weights,
        validation=validation,
        class_thresholds=job.class_thresholds,
    )
    ens_metrics.run = str(job.base)
    for png in ("per_class_png", "holdout_per_class_png", "confusion_png"):
        if getattr(ens_metrics, png):
            setattr(ens_metrics, png, str(job.base / Path(getattr(ens_metrics, png)).name))
    if (job.work / "eval.json").is_file():  # what it records: the run's place, not the work's
        (job.work / "eval.json").write_text(
            json.dumps(ens_metrics.to_dict(), indent=2, default=str)
        )
    return str(job.base), ens_metrics


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
    scores: FoldScores | None = None  # with unlabelled rows: what pseudo-labelling reads


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


def fit_refit(job: _Job, stats: list[_FoldStats], run_dir: Path) -> FoldResult:
    """Train the head on every fold's rows for the folds' median best epoch and save it as a
    run in ``run_dir`` (no validation rows: temperature and unknown threshold from the folds)."""
    data, detector = job.data, job.detector
    assert data is not None  # train sets it before the refit
    f = prepare_fold(data, None, job.metadata, job.aux_targets, job.unknown_label)
    model = clone(job.estimator)
    best = [s.best_epoch for s in stats if s.best_epoch is not None]
    epochs = None
    if best and head_tags(model).iterative:
        epochs = refit_epochs(best)
        model.set_params(epochs=epochs)
    desc = f"{job.head} refit on all folds"
    fit_s = fit_fold(model, data, f, desc if job.progress else None, job.extra)
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
    save_fold(run_dir, model, det, data, f, val_logits, None, fit_s, job, extra)
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
