"""Evaluating a run or an ensemble: closed-set, long-tail, open-set and FungiCLEF scores.

The validation part (the run's saved logits; for a fold ensemble, every image predicted by the
model that did not train on it) is always scored; the store's held-out part (fold -1) too
when it has one. A per-class PNG (F1 against class frequency) and the most-confused pairs are
written next to the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from heads._metrics import (
    aggregate_by_observation,
    classification_report,
    closed_set_accuracy,
    fungiclef_scores,
    most_confused,
    openset_accuracy,
    openset_scores,
    per_class_f1,
)


def score_rows(model: Any, rows: dict[str, Any]) -> dict[str, Any]:
    """Metrics for rows ``{"label", "logits", ["unknown_score", "observation", "poisonous"]}``."""
    classes = model.classes
    index = {c: i for i, c in enumerate(classes)}
    labels = rows["label"]
    logits = np.asarray(rows["logits"], dtype=np.float64)
    y_true = np.array(
        [index.get(str(v), -1) if v is not None else -1 for v in labels], dtype=np.int64
    )
    known = y_true >= 0
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "n_known": int(known.sum()),
        "n_unknown": int((~known).sum()),
    }
    if known.any():
        out.update(
            classification_report(y_true[known], logits[known], train_counts=model.train_counts)
        )
        out["n"] = int(len(y_true))
    pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    out["_pred_closed"] = pred  # species confusions, before any unknown decision
    scores = rows.get("unknown_score")
    thr = getattr(model, "threshold", None)
    if scores is not None and thr is not None and len(scores):
        s = np.asarray(scores, dtype=np.float64)
        pred = np.where(s >= thr, pred, -1)
        out["unknown_rate"] = float(np.mean(pred == -1))
        out["open_set_acc"] = openset_accuracy(y_true, pred)
        out["closed_set_acc"] = closed_set_accuracy(y_true, pred)
        if known.any() and (~known).any():
            out.update(openset_scores(known, s))
    poison = rows.get("poisonous")
    poc = model.config.get("poisonous_of_class") if hasattr(model, "config") else None
    unknown_label = (
        model.config.get("unknown_label", "unknown") if hasattr(model, "config") else "unknown"
    )
    has_unknown = any(str(v) == unknown_label for v in labels if v is not None)
    if poison is not None and poc is not None and has_unknown and len(labels):
        obs = rows.get("observation")
        obs_ids = np.array([str(o) if o is not None else f"id:{i}" for i, o in enumerate(obs)] if obs is not None
                           else [str(i) for i in rows["id"]], dtype=object)  # fmt: skip
        uniq, mean_logits, first = aggregate_by_observation(obs_ids, logits)
        y_obs = y_true[first]
        p_obs = mean_logits.argmax(axis=1)
        if scores is not None and thr is not None:
            s = np.asarray(scores, dtype=np.float64)
            inv = np.searchsorted(uniq, obs_ids)
            mean_s = np.bincount(inv, weights=s, minlength=len(uniq)) / np.bincount(
                inv, minlength=len(uniq)
            )
            p_obs = np.where(mean_s >= thr, p_obs, -1)
        pt = np.array(
            [bool(p) if p is not None else False for p in np.asarray(poison, dtype=object)[first]]
        )
        pt = pt & (y_obs >= 0)  # unknown observations are not poisonous by definition
        out.update(fungiclef_scores(y_obs, p_obs, pt, np.asarray(poc, dtype=bool)))
        out["observations"] = int(len(uniq))
    out["_pred"], out["_true"] = pred, y_true
    return out


def _public(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def evaluate(path: str | os.PathLike, *, holdout: bool = True, plots: bool = True,
             store: str | os.PathLike | None = None) -> dict[str, Any]:  # fmt: skip
    """Scores of a run or ensemble directory (``top1``, ``top3``, ``macro_f1``, ``mean_class_acc``,
    shot buckets; open-set and ``track1``..``track4`` when defined), plus ``holdout`` scores.

    >>> heads.evaluate("runs/mlp")["macro_f1"]
    """
    from heads._runs import load, read_val

    path = Path(path)
    model = load(path)
    res = score_rows(model, read_val(path))
    out = {
        "run": str(path),
        "kind": model.config["kind"],
        "head": model.config.get("head"),
        **_public(res),
    }
    if plots and res["n_known"]:
        from heads._plots import plot_per_class

        known = res["_true"] >= 0
        y, p = res["_true"][known], res["_pred_closed"][known]
        f1 = per_class_f1(y, p, len(model.classes))
        out["per_class_png"] = str(
            plot_per_class(f1, model.train_counts, model.classes, path / "per_class.png")
        )
        out["most_confused"] = most_confused(y, p, model.classes, top=10)
    if holdout:
        rows = holdout_rows(model, store)
        if rows is not None:
            out["holdout"] = _public(score_rows(model, rows))
    if plots:
        (path / "eval.json").write_text(json.dumps(out, indent=2, default=str))
    return out


def holdout_rows(model: Any, store: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Logits for the store's held-out images (fold -1), or None when there are none."""
    import embedstore

    spath = store or model.store_path
    try:
        st = embedstore.connect(spath, create=False)
    except embedstore.StoreError:
        return None
    schema = st.schema()
    if schema is None or "fold" not in schema.names:
        return None
    return rows_from_store(model, st, "fold = -1")


def rows_from_store(model: Any, st: Any, where: str) -> dict[str, Any] | None:
    """Embeddings of every column the model needs for rows matching ``where``, and its logits."""
    cols = model.backbone_columns()
    extra = [
        c for c in (model.config.get("observation_column"), model.config.get("poison_column")) if c
    ]
    meta = list(dict.fromkeys([*model.columns, *extra]))
    t = st.read(
        columns=["id", "label", *meta, *cols],
        where=where + "".join(f" AND {c} IS NOT NULL" for c in cols),
    )
    if t.num_rows == 0:
        return None
    embs = {}
    for c, b in cols.items():
        arr = t.column(c).combine_chunks()
        embs[c] = (
            arr.values.to_numpy(zero_copy_only=False)
            .reshape(t.num_rows, b["dim"])
            .astype(np.float32)
        )
    table = {c: np.array(t.column(c).to_pylist(), dtype=object) for c in meta}
    logits = model.logits(embs, table)
    rows: dict[str, Any] = {"id": np.array(t.column("id").to_pylist(), dtype=object),
                            "label": np.array(t.column("label").to_pylist(), dtype=object), "logits": logits}  # fmt: skip
    s = model.unknown_scores(embs, logits)
    if s is not None:
        rows["unknown_score"] = s
    if model.config.get("observation_column"):
        rows["observation"] = table[model.config["observation_column"]]
    if model.config.get("poison_column"):
        rows["poisonous"] = table[model.config["poison_column"]]
    return rows
