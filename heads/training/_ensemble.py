"""Writing ensembles: average logits (or probabilities, optionally weighted) across folds, heads
and backbones. An ensemble directory is usable wherever a run is (eval, predict, another
ensemble); :class:`heads.Ensemble` loads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from heads._calibration import fit_temperature
from heads._errors import HeadsError
from heads.estimators._class_thresholds import fit_class_thresholds
from heads.evaluation._evaluate import EvalResult, evaluate
from heads.runs._config import EnsembleConfig, RunConfig, read_run_config, write_run_config
from heads.runs._loaded import load, log_softmax
from heads.runs._rundir import read_val
from heads.types import AVERAGES, Average

__all__ = ["ensemble", "fit_temperature", "select_weights"]


def ensemble(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    weights: list[float] | str | None = "auto",
    average: Average = "logits",
    calibrate: bool = True,
    overwrite: bool = False,
    validation: Sequence[str | os.PathLike] | None = None,
    class_thresholds: int | None = None,
) -> EvalResult:
    """Write an ensemble of ``runs`` (runs or ensembles) into ``out``; returns its scores
    (``.run`` is the ensemble's path).

    With ``calibrate`` (the default) each member's logits are first temperature-scaled (the
    temperature that minimises its out-of-fold log-loss) and turned into log-probabilities, so
    members whose scores live on other scales (kNN votes beside an MLP's logits) weigh what
    they should; ``average`` then averages those log-probabilities (``logits``) or the
    probabilities (``probs``). Validation logits are combined per image over the members that
    validated it, so a fold ensemble is scored out-of-fold. The ensemble records each member's
    config checksum and refuses to load once a member changed. An existing ensemble at ``out``
    is refused unless ``overwrite``.

    ``weights``: one per member, or ``"auto"`` (the default): members that validated the same
    images (different heads or backbones over the same folds) are weighted by greedy ensemble
    selection on those out-of-fold predictions (Caruana et al. 2004: start from the best member,
    add members with replacement while top-1 improves, ties to the lower log-loss), so the
    ensemble never scores below its best member out-of-fold (the held-out part then says how
    much of that holds); members that validated different images (the folds of one run) weigh
    the same.

    A member with no validation rows (a refit on every fold) adds nothing to the validation
    part, and is calibrated with the temperature its config records (the folds' mean).
    ``validation``: runs whose out-of-fold predictions make the validation part instead of the
    members' (how ``heads train --refit --ensemble refit`` scores the refit alone).
    ``class_thresholds`` (a minimum count): unknown thresholds per predicted class on the
    members' margins, fitted on the validation part (``heads.estimators._class_thresholds``).

    >>> heads.ensemble(["runs/mlp/fold0", "runs/mlp/fold1"], "runs/mlp")
    """
    w = _check_weights(runs, weights, average)
    out = Path(out)
    if (out / "config.json").is_file() and not overwrite:
        raise HeadsError(
            f"{out}: an ensemble or run is there already; give --overwrite to replace it"
        )
    members = _load_members(runs)
    classes = members[0].classes
    out.mkdir(parents=True, exist_ok=True)
    first_cfg = read_run_config(runs[0])
    vals = [read_val(Path(r)) for r in runs]
    temps = [_temperature(v, m) if calibrate else 1.0 for v, m in zip(vals, members, strict=True)]
    if weights == "auto" and len(runs) > 1:
        w = select_weights(vals, classes, temps, average)
    config = EnsembleConfig(
        classes=classes,
        store=first_cfg.store,
        unknown_label=first_cfg.unknown_label,
        observation_column=first_cfg.observation_column,
        poison_column=first_cfg.poison_column,
        poisonous_of_class=first_cfg.poisonous_of_class,
        members=[_relative(r, out) for r in runs],
        weights=w.tolist(),
        average=average,
        calibrated=bool(calibrate),
        temperatures=temps,
        member_sha256=[read_run_config(r).config_sha256 for r in runs],
    )
    if validation:
        v_members = [load(r, "cpu") for r in validation]
        v_vals = [read_val(Path(r)) for r in validation]
        v_temps = [_temperature(v, m) for v, m in zip(v_vals, v_members, strict=True)]
        config.validation = [os.path.relpath(Path(r).resolve(), out.resolve()) for r in validation]
        _write_val(
            out,
            v_vals,
            v_members,
            np.ones(len(validation)),
            average,
            v_temps if calibrate else None,
        )
    else:
        _write_val(out, vals, members, w, average, temps if calibrate else None)
    if class_thresholds is not None:
        config.class_thresholds = _class_thresholds(out, classes, members, class_thresholds)
    write_run_config(out, config)
    return evaluate(out, holdout=True, plots=True)


def _class_thresholds(
    out: Path, classes: list[str], members: list[Any], min_count: int
) -> dict[str, Any] | None:
    """Per-class thresholds on the margins of the validation part just written (None when no
    member has a detector)."""
    if all(m.threshold is None for m in members):
        raise HeadsError(
            "--class-thresholds: no member has an unknown detector (heads train --unknown)"
        )
    val = read_val(out)
    if "unknown_score" not in val:
        return None
    s = np.asarray(val["unknown_score"], dtype=np.float64)
    index = {c: i for i, c in enumerate(classes)}
    known = np.array([v is not None and str(v) in index for v in val["label"]], dtype=bool)
    labelled = np.array([v is not None for v in val["label"]], dtype=bool)
    ct = fit_class_thresholds(
        s[labelled],
        val["logits"][labelled].argmax(axis=1),
        known[labelled],
        len(classes),
        global_threshold=0.0,
        min_count=min_count,
    )
    return ct.to_dict()


def _check_weights(runs: Sequence[Any], weights: Any, average: str) -> np.ndarray:
    """The members' weights (ones for ``"auto"``, chosen later), checked with ``average``."""
    if not runs:
        raise HeadsError("give at least one run or ensemble directory")
    if average not in AVERAGES:
        raise HeadsError(f"unknown average {average!r}; valid: {', '.join(AVERAGES)}")
    auto = isinstance(weights, str)
    if auto and weights != "auto":
        raise HeadsError(f"weights must be one number per member or 'auto', not {weights!r}")
    w = np.ones(len(runs)) if weights is None or auto else np.asarray(weights, dtype=np.float64)
    if len(w) != len(runs):
        raise HeadsError(
            f"{len(w)} weight(s) for {len(runs)} member(s); give one weight per member"
        )
    if (w < 0).any() or w.sum() <= 0:
        raise HeadsError("weights must be non-negative and not all zero")
    return w


def _load_members(runs: Sequence[Any]) -> list[Any]:
    """The members, loaded on the CPU; they must share their classes."""
    members = [load(r, "cpu") for r in runs]
    for r, m in zip(runs, members, strict=True):
        if m.classes != members[0].classes:
            raise HeadsError(
                f"{r}: its classes differ from {runs[0]}'s; ensemble members must share classes"
            )
    return members


def _relative(run: Any, out: Path) -> str:
    """``run``'s path relative to the ensemble (absolute on another drive)."""
    rp = Path(run).resolve()
    try:
        return os.path.relpath(rp, out.resolve())
    except ValueError:
        return str(rp)


def select_weights(
    vals: list[dict[str, Any]],
    classes: list[str],
    temps: list[float],
    average: str,
    rounds: int = 20,
) -> np.ndarray:
    """Greedy ensemble selection with replacement on the images every member validated; equal
    weights when the members validated (mostly) different images."""
    common = set(vals[0]["id"])
    for v in vals[1:]:
        common &= set(v["id"])
    if len(common) < 0.5 * max(len(v["id"]) for v in vals):
        return np.ones(len(vals))
    ids = sorted(common)
    index = {c: i for i, c in enumerate(classes)}
    parts, y = [], None
    for v, t in zip(vals, temps, strict=True):
        pos = {i: k for k, i in enumerate(v["id"])}
        rows = np.array([pos[i] for i in ids])
        z = log_softmax(v["logits"][rows].astype(np.float64) / t)
        parts.append(np.exp(z) if average == "probs" else z)
        if y is None:
            y = np.array([index.get(str(x), -1) if x is not None else -1 for x in v["label"][rows]])
    assert y is not None  # set by the first member (vals[0] exists)
    known = y >= 0
    if not known.any():
        return np.ones(len(vals))
    parts = [p[known] for p in parts]
    y = y[known]

    def score(total: np.ndarray, n: int) -> tuple[float, float]:
        mean = total / n
        logp = np.log(np.maximum(mean, 1e-30)) if average == "probs" else log_softmax(mean)
        return float((mean.argmax(1) == y).mean()), float(-logp[np.arange(len(y)), y].mean())

    counts = np.zeros(len(vals))
    scores = [score(p, 1) for p in parts]
    first = max(range(len(vals)), key=lambda j: (scores[j][0], -scores[j][1]))
    counts[first], total, best = 1, parts[first].copy(), scores[first]
    best_counts = counts.copy()
    for n in range(2, rounds + 1):
        cand = [score(total + p, n) for p in parts]
        j = max(range(len(vals)), key=lambda k: (cand[k][0], -cand[k][1]))
        counts[j] += 1
        total += parts[j]
        if (cand[j][0], -cand[j][1]) > (best[0], -best[1]):
            best, best_counts = cand[j], counts.copy()
    return best_counts


def _temperature(val: dict[str, Any], member: Any) -> float:
    """A member's temperature: fitted on its validation rows, or its recorded one (a refit)."""
    recorded = member.config.temperature if isinstance(member.config, RunConfig) else None
    if len(val["id"]) == 0 and recorded is not None:
        return float(recorded)
    return fit_temperature(val, member.classes)


def _write_val(
    out: Path, vals: list, members: list, w: np.ndarray, average: str, temps: list[float] | None
) -> None:
    order: dict[str, int] = {}
    for v in vals:
        for i in v["id"]:
            order.setdefault(i, len(order))
    n, c = len(order), len(members[0].classes)
    acc = np.zeros((n, c))
    wsum = np.zeros(n)
    score_acc, score_n = np.zeros(n), np.zeros(n)
    label = np.empty(n, dtype=object)
    obs = np.empty(n, dtype=object)
    poison = np.empty(n, dtype=object)
    for j, (v, wi, m) in enumerate(zip(vals, w, members, strict=True)):
        idx = np.array([order[i] for i in v["id"]], dtype=np.int64)
        z = v["logits"].astype(np.float64)
        if temps is not None:
            z = log_softmax(z / temps[j])
        acc[idx] += wi * (np.exp(log_softmax(z)) if average == "probs" else z)
        wsum[idx] += wi
        label[idx] = v["label"]
        if "observation" in v:
            obs[idx] = v["observation"]
        if "poisonous" in v:
            poison[idx] = v["poisonous"]
        if "unknown_score" in v and m.threshold is not None:
            t = m.thresholds_for(v["logits"].argmax(axis=1))  # its own class's, where it has them
            score_acc[idx] += np.asarray(v["unknown_score"], dtype=np.float64) - t
            score_n[idx] += 1
    acc /= np.maximum(wsum, 1e-12)[:, None]
    logits = np.log(np.maximum(acc, 1e-30)) if average == "probs" else acc
    cols: dict[str, Any] = {
        "id": pa.array(list(order), pa.string()),
        "label": pa.array([None if x is None else str(x) for x in label], pa.string()),
        "logits": pa.FixedSizeListArray.from_arrays(
            pa.array(logits.astype(np.float32).reshape(-1)), c
        ),
    }
    if any("observation" in v for v in vals):
        cols["observation"] = pa.array([None if x is None else str(x) for x in obs], pa.string())
    if any("poisonous" in v for v in vals):
        cols["poisonous"] = pa.array([None if x is None else bool(x) for x in poison], pa.bool_())
    if score_n.any():
        cols["unknown_score"] = pa.array(
            np.where(score_n > 0, score_acc / np.maximum(score_n, 1), np.nan)
        )
    pq.write_table(pa.table(cols), out / "val.parquet")
