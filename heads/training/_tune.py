"""Hyper-parameter search for a head with Optuna, scored on the out-of-fold macro-F1.

The store is read once (:func:`heads._data.load_fold_data`); every trial trains the head on the
resident embeddings of each fold in turn and predicts that fold's validation part, so a trial
costs what its training costs. After each fold the trial reports its running mean macro-F1 and
the median pruner stops trials that fall behind the others on the same folds. The head's own
defaults are tried first (trial 0), so the best trial is never worse than the default recipe
out-of-fold. The best parameters are then retrained with :func:`heads.train` into an ordinary
run folder, beside ``trials.csv``, ``trials.json`` and ``trials.png``.

A store with augmented views (``embedstore ingest --views``) is used as :func:`heads.train` uses
it, with the same switches (``views``, ``tta``; default: both when the store has views): every
trial trains on the views as augmentation and scores its folds with test-time augmentation, and
the best is retrained the same way; ``trials.json`` and the run's config record the views used.

Searched (each only when the head takes it and it is not fixed by the caller): ``lr`` and
``weight_decay`` (log scale), ``dropout``, ``hidden`` (not for the linear head), ``loss`` (the
losses registry) and ``label_smoothing`` (for the losses that take it).

>>> res = heads.tune("grocery", head="mlp", trials=50, timeout_s=600, out="runs/mlp-tuned")
>>> res.best_params, res.best_macro_f1, res.default_macro_f1
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from tqdm.auto import tqdm

from embedstore import Result, jsonable
from heads._base import head_tags
from heads._data import FoldData, check_finite, load_fold_data
from heads._errors import HeadsError
from heads._metrics import macro_f1
from heads._registry import HEADS
from heads.evaluation._plots import plot_trials
from heads.losses import LOSSES, list_losses
from heads.settings import BY_NAME, DEFAULTS, SETTINGS, head_options
from heads.training._folds import (
    _Fold,
    _folds_to_train,
    build_head,
    fit_fold,
    prepare_fold,
    tta_logits,
    use_views,
)
from heads.training._train import TrainResult
from heads.training._train import train as train_head

__all__ = ["TUNED_PARAMS", "TuneResult", "search_space", "tune"]

# What tune searches, in the order trials draw them: every setting with a ``tune`` range.
TUNED_PARAMS = tuple(s.name for s in SETTINGS if s.tune is not None)


@dataclass
class TuneResult(Result):
    """The best trial, the default recipe's trial, the run retrained with the best parameters
    (``run``; ``train`` its :class:`TrainResult`) and the trial files written beside it."""

    run: str
    best_params: dict[str, Any]
    best_trial: int
    best_macro_f1: float
    best_top1: float
    default_macro_f1: float | None
    default_top1: float | None
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float
    trials_csv: str
    trials_json: str
    trials_png: str
    train: TrainResult | None = None
    warnings: list[str] = field(default_factory=list)
    # augmented views used (``ingest --views``): trained on, and averaged at prediction (TTA)
    views: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "tta": []})
    # ``seconds`` is the search, which ``timeout_s`` bounds; retraining the best comes after it
    timeout_s: float | None = None
    retrain_seconds: float = 0.0


def search_space(
    head: str, fixed: dict[str, Any] | None = None, losses: list[str] | None = None
) -> dict[str, Any]:
    """What :func:`tune` searches for ``head``: ``{name: (low, high, "log"|"linear") or
    [choices]}``, leaving out what the head does not take and what ``fixed`` sets.

    >>> search_space("linear")["lr"]
    (0.001, 0.1, 'log')
    """
    takes, arch = _head_settings(head)
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    space: dict[str, Any] = {}
    for name in TUNED_PARAMS:
        rng = BY_NAME[name].tune_range(arch)
        if rng is None or name not in takes:
            continue
        if rng.registry == "losses":
            space[name] = _loss_names(losses)
        elif name != "label_smoothing":
            space[name] = rng.as_space()
        elif "loss" in space and any(_takes_smoothing(n) for n in space["loss"]):
            space[name] = rng.as_space()  # only beside a searched loss that takes it
    if "loss_kwargs" in fixed:
        space.pop("label_smoothing", None)
    for k in fixed:
        space.pop(k, None)
    if "loss" in fixed and not _takes_smoothing(fixed["loss"]):
        space.pop("label_smoothing", None)
    return space


def _head_settings(head: str) -> tuple[set[str], str | None]:
    """The settings ``head`` takes (``label_smoothing`` through ``loss_kwargs``) and its arch."""
    cls = HEADS.get(head)
    takes = set(cls.setting_names())
    if "loss_kwargs" in takes:
        takes.add("label_smoothing")
    return takes, head_tags(cls()).arch


def _loss_names(losses: list[str] | None) -> list[str]:
    names = list(losses) if losses is not None else list_losses()
    bad = [n for n in names if n not in LOSSES]
    if bad or not names:
        raise HeadsError(
            f"--losses {','.join(bad) or '(none)'}: valid losses: {', '.join(list_losses())}"
        )
    return names


def _takes_smoothing(loss: str) -> bool:
    return "label_smoothing" in inspect.signature(LOSSES.get(loss).__init__).parameters


def _defaults(head: str, space: dict[str, Any]) -> dict[str, Any]:
    """The head's own settings for the searched names (trial 0: the default recipe)."""
    head_defaults = HEADS.get(head)().get_params()
    arch = _head_settings(head)[1]
    out: dict[str, Any] = {}
    for name in space:
        if name == "label_smoothing":
            out[name] = DEFAULTS[name]
        elif head_defaults[name] is None:  # None: the architecture's default (lr)
            assert arch is not None  # only neural heads (which have an arch) default to None
            out[name] = BY_NAME[name].default_by_arch[arch]
        else:
            out[name] = head_defaults[name]
    lo_hi = {k: v for k, v in space.items() if isinstance(v, tuple)}
    for k, (lo, hi, _) in lo_hi.items():  # a default outside its range: do not enqueue it
        if not lo <= out[k] <= hi:
            out.pop(k)
    for k, v in space.items():
        if isinstance(v, list) and out.get(k) not in v:
            out.pop(k, None)
    return out


def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one trial's parameters; label smoothing only for a loss that takes it."""
    p: dict[str, Any] = {}
    for name, dom in space.items():
        if name == "label_smoothing":
            continue
        if isinstance(dom, list):
            p[name] = trial.suggest_categorical(name, dom)
        else:
            lo, hi, scale = dom
            p[name] = trial.suggest_float(name, lo, hi, log=scale == "log")
    if "label_smoothing" in space and _takes_smoothing(p.get("loss", "ce")):
        p["label_smoothing"] = trial.suggest_float("label_smoothing", *space["label_smoothing"][:2])
    return p


def head_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Trial parameters as head settings (``label_smoothing`` goes into ``loss_kwargs``)."""
    return head_options(params)


def tune(
    store: Any = None,
    *,
    head: str = "mlp",
    trials: int = 50,
    timeout_s: float | None = None,
    fold: int | str = "all",
    backbone: str | None = None,
    out: str | os.PathLike | None = None,
    where: str | None = None,
    losses: list[str] | None = None,
    unknown_label: str = "unknown",
    seed: int = 0,
    include_default: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    views: bool | None = None,
    tta: bool | None = None,
    **head_options: Any,
) -> TuneResult:
    """Search ``head``'s learning rate, weight decay, dropout, hidden width, loss and label
    smoothing for the best out-of-fold macro-F1 over the store's folds (``fold="all"``) or on
    one validation fold; then retrain the best with :func:`heads.train` into ``out``.

    ``trials`` at most, stopping once ``timeout_s`` seconds have passed (a trial running then is
    cut short between folds and counted as pruned). ``timeout_s`` bounds the search only: the
    best is retrained after it, which takes about as long as one trial (``retrain_seconds``).
    ``head_options`` are fixed head settings (``epochs``, ``batch_size``, ``device``, ... ; a
    searched name given here is fixed and not searched). ``losses`` limits the losses tried
    (default: every registered loss). ``seed`` seeds the sampler and every head, so the same
    call gives the same trials (on one device).
    ``views`` and ``tta`` are :func:`heads.train`'s: with views stored, trials and the retrained
    run train on them as augmentation and predict with test-time augmentation unless turned off.

    >>> heads.tune(
    ...     "grocery", head="mlp", trials=30, timeout_s=600, out="runs/mlp-tuned"
    ... ).best_params
    """
    if trials < 1:
        raise HeadsError(f"--trials must be >= 1, got {trials}")
    if timeout_s is not None and timeout_s <= 0:
        raise HeadsError(f"--timeout-s must be > 0, got {timeout_s}")
    head_options = {k: v for k, v in head_options.items() if v is not None}
    head_options.setdefault("seed", seed)
    space = search_space(head, head_options, losses)
    if not space:
        raise HeadsError(
            f"--head {head}: nothing to search (it takes none of {', '.join(TUNED_PARAMS)}, "
            "or all are fixed); tune a neural head: linear, mlp or transformer"
        )
    base_est = build_head(head, head_options, progress=False)
    data, folds = _tune_data(store, backbone, where, fold, unknown_label, views, tta)
    base = _tune_out(out, head, data, overwrite)
    classes = np.unique(np.concatenate([np.concatenate([f.classes, f.y_val]) for f in folds]))
    t_start = time.perf_counter()
    deadline = None if timeout_s is None else t_start + float(timeout_s)
    objective = _Objective(base_est, data, folds, space, classes, deadline)
    defaults = _defaults(head, space) if include_default else {}
    study = _run_study(objective, head, trials, timeout_s, seed, defaults, progress)
    seconds = time.perf_counter() - t_start
    t_retrain = time.perf_counter()
    best = study.best_trial
    default = study.trials[0] if defaults and study.trials[0].state.name == "COMPLETE" else None
    res = train_head(
        store,
        fold=fold,
        backbone=backbone,
        head=head,
        out=base,
        where=where,
        unknown_label=unknown_label,
        progress=progress,
        overwrite=overwrite,
        views=views,
        tta=tta,
        **head_options,
        **head_settings(best.params),
    )
    retrain_seconds = time.perf_counter() - t_retrain
    used = _views_used(data)
    rows = _trial_rows(study.trials, space, used)
    settings = (head, head_options, trials, timeout_s, seed, len(folds), seconds, used)
    files = _write_trials(base, rows, space, best, default, data, *settings)
    out_res = _tune_result(base, study, default, res, files, seconds, used)
    out_res.timeout_s, out_res.retrain_seconds = timeout_s, round(retrain_seconds, 2)
    return out_res


def _tune_data(
    store: Any,
    backbone: str | None,
    where: str | None,
    fold: int | str,
    unknown_label: str,
    views: bool | None,
    tta: bool | None,
) -> tuple[FoldData, list[_Fold]]:
    """The store's rows (views decided as :func:`heads.train` does) and the folds with
    validation rows of a known class, which trials are scored on."""
    data = load_fold_data(store, backbone, [], where, views=views is not False or bool(tta))
    use_views(data, views, tta)  # as heads.train: data.train_views / tta_views
    check_finite(data.X, data.ids, data.backbone.column)
    folds = [prepare_fold(data, k, [], [], unknown_label) for k in _folds_to_train(data, fold)]
    folds = [f for f in folds if f.known_val.any()]
    if not folds:
        raise HeadsError(
            f"{data.store_path}: no validation rows of a known class to score trials on"
        )
    return data, folds


def _tune_out(out: Any, head: str, data: FoldData, overwrite: bool) -> Path:
    """``--out`` (default ``runs/<head>-tuned-<backbone>-<time>``), refused if a run is there."""
    when = time.strftime("%Y%m%d-%H%M%S")
    base = (
        Path(out)
        if out is not None
        else Path("runs") / f"{head}-tuned-{data.backbone.backbone}-{when}"
    )
    if base.exists() and (not base.is_dir() or any(base.iterdir())) and not overwrite:
        raise HeadsError(
            f"{base}: a run is there already; give --overwrite to replace it whole, "
            "or another --out"
        )
    return base


def _run_study(
    objective: _Objective,
    head: str,
    trials: int,
    timeout_s: float | None,
    seed: int,
    defaults: dict[str, Any],
    progress: bool,
) -> Any:
    """The optuna study after its trials (TPE sampler, median pruner; the default recipe
    first when ``defaults``); an error when no trial completed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(1, trials // 4))
        ),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    if defaults:
        study.enqueue_trial(defaults)
    bar = tqdm(total=trials, desc=f"tune {head}", unit="trial", disable=not progress)

    def _tick(st: Any, tr: Any) -> None:
        bar.update(1)
        done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if done:
            bar.set_postfix(
                best_f1=f"{st.best_value:.4f}",
                pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in st.trials),
            )

    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout_s,
        callbacks=[_tick],
        catch=(ValueError, RuntimeError),
    )
    bar.total = len(study.trials)
    bar.close()
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
        why = (
            failed[0].user_attrs.get("error", "see the warnings above")
            if failed
            else ("the time limit came before one trial finished; give a larger --timeout-s")
        )
        raise HeadsError(f"no trial completed ({len(study.trials)} started): {why}")
    return study


def _tune_result(
    base: Path,
    study: Any,
    default: Any,
    res: TrainResult,
    files: tuple[Path, Path, Path],
    seconds: float,
    used: dict[str, list[str]],
) -> TuneResult:
    best = study.best_trial
    states = [t.state.name for t in study.trials]
    return TuneResult(
        run=str(base),
        best_params={**best.params},
        best_trial=best.number,
        best_macro_f1=float(best.value),
        best_top1=float(best.user_attrs["top1"]),
        default_macro_f1=None if default is None else float(default.value),
        default_top1=None if default is None else float(default.user_attrs["top1"]),
        n_trials=len(study.trials),
        n_complete=states.count("COMPLETE"),
        n_pruned=states.count("PRUNED"),
        n_failed=states.count("FAIL"),
        seconds=round(seconds, 2),
        trials_csv=str(files[0]),
        trials_json=str(files[1]),
        trials_png=str(files[2]),
        train=res,
        warnings=list(res.warnings),
        views=used,
    )


def _views_used(data: FoldData) -> dict[str, list[str]]:
    """The views trained on and those averaged at prediction, as a run's config records them."""
    return {
        "train": list(data.train_views),
        "tta": list(data.tta_views),
    }


class _Objective:
    """One trial: clone the head with the trial's settings, fit and predict fold by fold."""

    def __init__(
        self,
        estimator: Any,
        data: FoldData,
        folds: list[_Fold],
        space: dict[str, Any],
        classes: np.ndarray,
        deadline: float | None,
    ) -> None:
        self.estimator, self.data, self.folds, self.space = estimator, data, folds, space
        self.classes, self.deadline = classes, deadline

    def _past_deadline(self, trial: Any) -> bool:
        """Past the time limit with a finished trial to show: cut this one between folds."""
        import optuna

        if self.deadline is None or time.perf_counter() <= self.deadline:
            return False
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return bool(done)

    def __call__(self, trial: Any) -> float:
        import optuna

        params = _suggest(trial, self.space)
        t0 = time.perf_counter()
        y_true, y_pred, fold_f1, epochs = [], [], [], []
        for step, f in enumerate(self.folds):
            if step and self._past_deadline(trial):
                trial.set_user_attr("stopped", "time limit")
                raise optuna.TrialPruned()
            model = clone(self.estimator).set_params(**head_settings(params))
            try:
                fit_fold(model, self.data, f)  # trains on the views when data says so
                # scored as the retrained run predicts: with TTA when data says so
                logits = tta_logits(model, self.data, f.val_rows[f.known_val])
                pred = model.classes_[logits.argmax(1)]
            except (ValueError, RuntimeError) as e:
                trial.set_user_attr("error", str(e).splitlines()[0])
                raise
            t = np.searchsorted(self.classes, f.y_val[f.known_val])
            p = np.searchsorted(self.classes, pred)
            y_true.append(t)
            y_pred.append(p)
            fold_f1.append(macro_f1(t, p))
            epochs.append(int(model.training_record().best_epoch or 0))
            trial.report(float(np.mean(fold_f1)), step)
            if step + 1 < len(self.folds) and trial.should_prune():
                trial.set_user_attr("fold_macro_f1", fold_f1)
                raise optuna.TrialPruned()
        t, p = np.concatenate(y_true), np.concatenate(y_pred)
        trial.set_user_attr("top1", float((t == p).mean()))
        trial.set_user_attr("fold_macro_f1", fold_f1)
        trial.set_user_attr("best_epochs", epochs)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        return macro_f1(t, p)


def _trial_rows(
    trials: list[Any], space: dict[str, Any], views: dict[str, list[str]]
) -> list[dict[str, Any]]:
    rows, best = [], -math.inf
    for t in trials:
        value = t.value if t.state.name == "COMPLETE" else None
        if value is not None:
            best = max(best, value)
        last = max(t.intermediate_values.items())[1] if t.intermediate_values else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "macro_f1": value,
                "top1": t.user_attrs.get("top1"),
                "best_so_far": best if best > -math.inf else None,
                "folds_done": len(t.user_attrs.get("fold_macro_f1", []))
                or len(t.intermediate_values),
                "last_mean_fold_macro_f1": last,
                "seconds": t.user_attrs.get("seconds")
                or (None if t.duration is None else round(t.duration.total_seconds(), 2)),
                **{k: t.params.get(k) for k in space},
                "views": bool(views["train"]),
                "tta": bool(views["tta"]),
                "note": t.user_attrs.get("error") or t.user_attrs.get("stopped") or "",
            }
        )
    return rows


def _write_trials(
    base: Path,
    rows: list[dict[str, Any]],
    space: dict[str, Any],
    best: Any,
    default: Any,
    data: FoldData,
    head: str,
    fixed: dict[str, Any],
    trials: int,
    timeout_s: float | None,
    seed: int,
    n_folds: int,
    seconds: float,
    views: dict[str, list[str]],
) -> tuple[Path, Path, Path]:
    """``trials.csv`` (one row per trial), ``trials.json`` (settings, best, every trial) and
    ``trials.png`` (objective per trial and best so far) in the run folder."""
    base.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = base / "trials.csv", base / "trials.json", base / "trials.png"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {
        "head": head,
        "store": {"path": str(Path(data.store_path).resolve()), "version": data.store_version},
        "backbone": data.backbone.backbone,
        "objective": "out-of-fold macro-F1" if n_folds > 1 else "validation macro-F1",
        "folds": n_folds,
        "trials_requested": trials,
        "timeout_s": timeout_s,
        "seed": seed,
        "seconds": round(seconds, 2),
        "search_space": {k: list(v) for k, v in space.items()},
        "fixed": fixed,
        "views": views,
        "best": {
            "trial": best.number,
            "params": best.params,
            "macro_f1": best.value,
            "top1": best.user_attrs.get("top1"),
            "head_settings": head_settings(best.params),
        },
        "default": None
        if default is None
        else {
            "trial": default.number,
            "params": default.params,
            "macro_f1": default.value,
            "top1": default.user_attrs.get("top1"),
        },
        "trials": rows,
    }
    json_path.write_text(json.dumps(jsonable(summary), indent=2, default=str))
    plot_trials(
        [r["number"] for r in rows],
        [r["macro_f1"] for r in rows],
        [r["last_mean_fold_macro_f1"] if r["state"] == "pruned" else None for r in rows],
        png_path,
        default=None if default is None else float(default.value),
        title=f"{head} on {data.backbone.backbone}: {len(rows)} trials, {summary['objective']}",
    )
    return csv_path, json_path, png_path
