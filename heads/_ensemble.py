"""Writing ensembles: average logits (or probabilities, optionally weighted) across folds, heads
and backbones. An ensemble directory is usable wherever a run is (eval, predict, another
ensemble); :class:`heads.Ensemble` loads it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedstore._options import AVERAGES, Average
from heads._errors import HeadsError
from heads._evaluate import EvalResult, evaluate
from heads._loaded import load, log_softmax
from heads._rundir import RUN_FORMAT, read_config, read_val, write_config


def ensemble(runs: list[str | os.PathLike], out: str | os.PathLike, *, weights: list[float] | None = None,
             average: Average = "logits") -> EvalResult:  # fmt: skip
    """Write an ensemble of ``runs`` (runs or ensembles) into ``out``; returns its scores
    (``.run`` is the ensemble's path).

    Validation logits are combined per image over the members that validated it, so a fold
    ensemble is scored out-of-fold.

    >>> heads.ensemble(["runs/mlp/fold0", "runs/mlp/fold1"], "runs/mlp")
    """
    if not runs:
        raise HeadsError("give at least one run or ensemble directory")
    if average not in AVERAGES:
        raise HeadsError(f"unknown average {average!r}; valid: {', '.join(AVERAGES)}")
    w = np.ones(len(runs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(runs):
        raise HeadsError(
            f"{len(w)} weight(s) for {len(runs)} member(s); give one weight per member"
        )
    if (w < 0).any() or w.sum() <= 0:
        raise HeadsError("weights must be non-negative and not all zero")
    out = Path(out)
    members = [load(r, "cpu") for r in runs]
    classes = members[0].classes
    for r, m in zip(runs, members, strict=True):
        if m.classes != classes:
            raise HeadsError(
                f"{r}: its classes differ from {runs[0]}'s; ensemble members must share classes"
            )
    out.mkdir(parents=True, exist_ok=True)
    rels = []
    for r in runs:
        rp = Path(r).resolve()
        try:
            rels.append(os.path.relpath(rp, out.resolve()))
        except ValueError:
            rels.append(str(rp))
    first_cfg = read_config(runs[0])
    store = first_cfg["store"]
    config = {
        "format": RUN_FORMAT, "kind": "ensemble", "members": rels, "weights": w.tolist(), "average": average,
        "classes": classes, "store": store, "unknown_label": first_cfg.get("unknown_label", "unknown"),
        "poisonous_of_class": first_cfg.get("poisonous_of_class"),
        "observation_column": first_cfg.get("observation_column"), "poison_column": first_cfg.get("poison_column"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    _write_val(out, runs, members, w, average)
    write_config(out, config)
    return evaluate(out, holdout=True, plots=True)


def _write_val(out: Path, runs: list, members: list, w: np.ndarray, average: str) -> None:
    vals = [read_val(Path(r)) for r in runs]
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
    for v, wi, m in zip(vals, w, members, strict=True):
        idx = np.array([order[i] for i in v["id"]], dtype=np.int64)
        z = v["logits"].astype(np.float64)
        acc[idx] += wi * (np.exp(log_softmax(z)) if average == "probs" else z)
        wsum[idx] += wi
        label[idx] = v["label"]
        if "observation" in v:
            obs[idx] = v["observation"]
        if "poisonous" in v:
            poison[idx] = v["poisonous"]
        if "unknown_score" in v and m.threshold is not None:
            score_acc[idx] += np.asarray(v["unknown_score"], dtype=np.float64) - m.threshold
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
