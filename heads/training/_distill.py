"""Self-distillation (``heads distill RUN --out R2``): one head trained to match a fold
ensemble's probabilities, for the ensemble's accuracy at one model's predict cost.

The teacher (a run folder, usually ``heads train --fold all``'s ensemble) scores the labelled
training rows and the unlabelled rows (the rows with no label, or those ``unlabelled`` selects,
by default the teacher's own ``--unlabelled``; their labels are never read); the student learns
``softmax(teacher logits / T)`` at temperature ``T`` (Hinton et al. 2015), on labelled rows
mixed with the true label (``label_weight``). It trains on every training fold at once, so
there is no validation part: its epochs are the teacher folds' median best epoch (as a refit's),
and its scores are the held-out part's, beside the teacher's and their agreement.

>>> heads.distill("runs/mlp", out="runs/mlp-distilled").holdout_agreement
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import Result, connect
from embedstore.store import unlabelled_predicates
from heads._base import EpochBar, head_tags
from heads._data import FoldData, Unlabelled, fold_rows, load_fold_data, load_unlabelled
from heads._errors import HeadsError
from heads.evaluation._evaluate import evaluate
from heads.runs._config import RunConfig, read_run_config
from heads.runs._folder import collect_partial_runs, work_dir
from heads.runs._loaded import Ensemble, Predictor, load
from heads.runs._rundir import replace_dir
from heads.settings import DISTILL_BY_NAME
from heads.training._folds import _Fold, _Job, build_head, save_fold, use_views
from heads.training._pseudo import NO_LABEL
from heads.training._train import _out_dir, refit_epochs


@dataclass
class DistillResult(Result):
    """The student run, what it learned from, and how it compares with its teacher on the
    held-out part (``holdout_agreement``: the share of rows where both predict the same class;
    ``predict_seconds``: each one's logits over those rows, measured once)."""

    run: str
    teacher: str
    head: str
    n_labelled: int
    n_unlabelled: int
    unlabelled: str
    temperature: float
    label_weight: float
    epochs: int | None
    fit_seconds: float
    holdout: dict[str, Any] | None = None
    teacher_holdout: dict[str, Any] | None = None
    holdout_agreement: float | None = None
    predict_seconds: dict[str, float] = field(default_factory=dict)


def distill(
    run: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    unlabelled: str | None = None,
    head: str = "mlp",
    temperature: float | None = None,
    label_weight: float | None = None,
    views: bool | None = None,
    tta: bool | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **head_options: Any,
) -> DistillResult:
    """Train one ``head`` on the store ``run`` was trained on, to match ``run``'s probabilities
    at ``temperature``, and save it as a run in ``out`` (default ``<run>-distilled``).

    ``unlabelled``: SQL filter on the rows to learn the teacher's answers on without reading
    their labels (default: the teacher's ``--unlabelled``, else the rows with no label).
    ``head_options``: the student's settings (``epochs`` default: the teacher folds' median
    best epoch). ``views`` / ``tta`` as in :func:`heads.train`. ``temperature`` and
    ``label_weight`` None: their defaults in ``heads.settings.DISTILL_SETTINGS``.
    """
    temperature = _setting("temperature", temperature)
    label_weight = _setting("label_weight", label_weight)
    device = head_options.get("device") or "auto"
    teacher = load(run, device)
    first = _member_config(teacher)
    student = build_head(head, head_options, progress)
    if not head_tags(student).soft_targets:
        raise HeadsError(
            f"--head {head}: cannot learn soft targets; give linear, mlp or transformer"
        )
    if teacher.columns:
        raise HeadsError(
            f"{run}: the teacher reads metadata ({', '.join(teacher.columns)}); "
            "distilling such a run is not supported yet"
        )
    given = unlabelled if unlabelled is not None else (first.pseudo or {}).get("unlabelled")
    unl = None if given in (None, NO_LABEL) else given
    lab_where, unl_where = unlabelled_predicates(first.store.where, unl)
    names = [b["name"] for b in first.backbone_list]
    data = load_fold_data(
        first.store.path,
        names if len(names) > 1 else names[0],
        [],
        lab_where,
        views=views is not False or bool(tta),
    )
    use_views(data, views, tta)
    base = _out_dir(out if out is not None else f"{run}-distilled", head, data, overwrite)
    U = load_unlabelled(data, unl_where)
    rows, y_lab = _labelled_rows(data, first.unknown_label, teacher.classes)
    t = _targets(teacher, data, rows, y_lab, U, temperature, label_weight)
    epochs = _epochs(student, head_options, teacher)
    collect_partial_runs(base.parent)
    work = work_dir(base)
    try:
        fit_s = _fit(student, t, temperature, f"distilling {run}" if progress else None)
        record = {
            "teacher": str(Path(run).resolve()),
            "teacher_sha256": read_run_config(run).config_sha256,
            "temperature": temperature,
            "label_weight": label_weight,
            "unlabelled": unl if unl is not None else NO_LABEL,
            "n_labelled": int(len(t.rows)),
            "n_unlabelled": t.n_unlabelled,
        }
        _save(work, student, data, t, teacher, first, head, fit_s, record)
        replace_dir(work, base)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    res = DistillResult(
        run=str(base),
        teacher=str(run),
        head=head,
        n_labelled=len(t.rows),
        n_unlabelled=t.n_unlabelled,
        unlabelled=unl if unl is not None else NO_LABEL,
        temperature=temperature,
        label_weight=label_weight,
        epochs=epochs,
        fit_seconds=round(fit_s, 3),
    )
    _compare(res, base, teacher, device)
    return res


def _setting(name: str, value: float | None) -> float:
    """``value`` (None: the declared default), checked against the declared bounds."""
    s = DISTILL_BY_NAME[name]
    v = float(s.default if value is None else value)
    low_ok = s.min is None or (v > s.min if s.min_exclusive else v >= s.min)
    if not (np.isfinite(v) and low_ok and (s.max is None or v <= s.max)):
        low = "(" if s.min_exclusive else "["
        raise HeadsError(
            f"--{name.replace('_', '-')} {value}: give a number in {low}{s.min}, {s.max}]"
        )
    return v


def _member_config(teacher: Predictor) -> RunConfig:
    """The config of the teacher's first member (the teacher's own when it is one run)."""
    first: Any = teacher.members[0] if isinstance(teacher, Ensemble) else teacher
    while isinstance(first, Ensemble):
        first = first.members[0]
    return first.config


def _labelled_rows(
    data: FoldData, unknown_label: str, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Every training fold's labelled rows of the teacher's classes, and their labels."""
    rows, _ = fold_rows(data, None, unknown_label)
    y = data.labels[rows].astype(str)
    keep = np.isin(y, classes)
    return rows[keep], y[keep]


def _teacher_logits(
    teacher: Predictor, store: str, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's logits ``(n, C)`` for the rows ``ids`` it can read (every embedding column
    it needs stored; ids and embeddings only), and which of ``ids`` those are ``(n,)``."""
    cols = teacher.backbone_columns()
    embs, t = connect(store, create=False).embedding_rows(
        {c: b["dim"] for c, b in cols.items()}, ["id"], ids=[str(i) for i in ids]
    )
    z = teacher.logits(embs) if len(t["id"]) else np.zeros((0, len(teacher.classes)), np.float32)
    at = {str(i): k for k, i in enumerate(t["id"])}
    have = np.array([str(i) in at for i in ids], dtype=bool)
    return z[[at[str(i)] for i in ids[have]]], np.flatnonzero(have)


def _softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z.astype(np.float64) / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class _Rows:
    """The student's training rows: embeddings, hard labels (the teacher's class on unlabelled
    rows), soft targets ``(N, C)``, views (None: without them); which labelled rows of the
    data they start with, and their labels."""

    X: np.ndarray
    y: np.ndarray
    q: np.ndarray
    V: np.ndarray | None
    rows: np.ndarray
    y_lab: np.ndarray
    n_unlabelled: int


def _targets(
    teacher: Predictor,
    data: FoldData,
    rows: np.ndarray,
    y_lab: np.ndarray,
    U: Unlabelled,
    temperature: float,
    label_weight: float,
) -> _Rows:
    """The student's rows: the labelled training rows and the unlabelled ones the teacher
    scores, with their targets."""
    classes = np.asarray(teacher.classes)
    zl, got = _teacher_logits(teacher, data.store_path, data.ids[rows])
    rows, y_lab = rows[got], y_lab[got]
    zu, got_u = _teacher_logits(teacher, data.store_path, U.ids)
    onehot = (y_lab[:, None] == classes[None, :]).astype(np.float64)  # (n, C)
    q_lab = label_weight * onehot + (1 - label_weight) * _softmax(zl, temperature)
    q_unl = _softmax(zu, temperature)
    X = np.concatenate([data.X[rows], U.X[got_u]])
    y = np.concatenate([y_lab, classes[q_unl.argmax(axis=1)].astype(str)])
    q = np.concatenate([q_lab, q_unl]).astype(np.float32)
    V = None
    if data.train_views:
        assert data.views is not None and U.views is not None  # read with the views
        V = np.concatenate([data.views[rows], U.views[got_u]])
    if not np.array_equal(np.unique(y), classes):
        raise HeadsError(
            "the teacher's classes are not all among the labelled training rows; "
            "distil from a run trained on this store as it is"
        )
    return _Rows(X, y, q, V, rows, y_lab, int(len(got_u)))


def _epochs(student: Any, head_options: dict[str, Any], teacher: Predictor) -> int | None:
    """The student's epochs: given, else the teacher folds' median best epoch."""
    if not head_tags(student).iterative:
        return None
    if head_options.get("epochs") is not None:
        return int(head_options["epochs"])
    members = teacher.members if isinstance(teacher, Ensemble) else [teacher]
    best = [
        int(m.config.head_config["best_epoch"])
        for m in members
        if isinstance(m.config, RunConfig) and m.config.head_config.get("best_epoch")
    ]
    if not best:
        return None
    epochs = refit_epochs(best)
    student.set_params(epochs=epochs)
    return epochs


def _fit(student: Any, t: _Rows, temperature: float, desc: str | None) -> float:
    bar = EpochBar(desc) if desc else None
    kw: dict[str, Any] = {"soft_targets": t.q, "soft_temperature": temperature}
    if bar is not None:
        kw["progress"] = bar
    if t.V is not None:
        kw["X_views"] = t.V
    t0 = time.perf_counter()
    try:
        student.fit(t.X, t.y, **kw)
    except ValueError as e:
        raise HeadsError(f"distilling: {e}") from e
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - t0


def _save(
    work: Path,
    student: Any,
    data: FoldData,
    t: _Rows,
    teacher: Predictor,
    first: RunConfig,
    head: str,
    fit_s: float,
    record: dict[str, Any],
) -> None:
    """The student as a run folder (no validation rows: it trained on every fold)."""
    classes = np.asarray(teacher.classes)
    none = np.zeros(0, np.int64)
    f = _Fold(None, t.rows, none, t.y_lab, classes, np.zeros(0, str), np.zeros(0, bool))
    job = _Job(head, [], [], None, first.unknown_label, first.store.where, False)
    empty = np.zeros((0, len(classes)), np.float32)
    save_fold(work, student, None, data, f, empty, None, fit_s, job, {"distilled": record})


def _compare(res: DistillResult, base: Path, teacher: Predictor, device: str) -> None:
    """The student's and the teacher's held-out scores, their agreement, and the seconds each
    takes to compute its logits over the held-out embeddings (read once, beforehand)."""
    student = load(base, device)
    st = connect(student.store_path, create=False)
    if not st.has_column("fold"):
        return
    cols = {**teacher.backbone_columns(), **student.backbone_columns()}
    embs, t = st.embedding_rows({c: b["dim"] for c, b in cols.items()}, ["id"], part="holdout")
    if not len(t["id"]):
        return
    z_student, res.predict_seconds["student"] = _timed(student, embs)
    z_teacher, res.predict_seconds["teacher"] = _timed(teacher, embs)
    same = z_student.argmax(axis=1) == z_teacher.argmax(axis=1)
    res.holdout_agreement = round(float(np.mean(same)), 4)
    res.holdout = evaluate(base, plots=False, device=device).holdout
    res.teacher_holdout = evaluate(teacher.path, plots=False, device=device).holdout


def _timed(model: Predictor, embs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """``model``'s logits and the seconds they take (the best of 3, after a warm-up call)."""
    z = model.logits(embs)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.logits(embs)
        best = min(best, time.perf_counter() - t0)
    return z, round(best, 4)
