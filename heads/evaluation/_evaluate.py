"""Evaluating a run or an ensemble: closed-set, long-tail, open-set and FungiCLEF scores.

The validation part (the run's saved logits; for a fold ensemble, every image predicted by the
model that did not train on it) is always scored; the store's held-out part (fold -1) too
when it has one. A per-class PNG (F1 against class frequency) and the most-confused pairs are
written next to the run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import embedstore
from embedstore import Result
from heads._errors import HeadsError
from heads._metrics import (
    aggregate_by_observation,
    classification_report,
    fungiclef_scores,
    most_confused,
    openset_accuracy,
    openset_scores,
    per_class_f1,
    recall_at_k,
)
from heads.evaluation._hierarchy import HIERARCHY_MEASURES, hierarchy_scores
from heads.evaluation._plots import plot_confusion, plot_per_class
from heads.prediction._sets import (
    SetCalibration,
    calibrate_sets,
    check_set_options,
    set_scores,
)
from heads.runs._config import EnsembleConfig, RunConfig, read_run_config
from heads.runs._loaded import Predictor, load, log_softmax, resolve_member
from heads.runs._rundir import read_val
from heads.taxonomy._tree import map_labels
from heads.types import SetScore

# What each score means (``heads eval --help`` and the README print these).
MEASURES: dict[str, str] = {
    "top1": "share of known-class images whose best label is right (no rejection)",
    "top3": "share of known-class images whose label is among the best three",
    "recall@k": "FungiCLEF 2025: share of observations (images without an observation column) "
    "whose true label is among the best k (k = 5 unless --recall-k)",
    "macro_f1": "F1 per class, averaged over classes (each class counts the same)",
    "mean_class_acc": "recall per class, averaged over classes",
    "many_shot/medium_shot/few_shot": "top-1 on classes with >100 / 20-100 / <20 training images",
    "unknown_rate": "share of all images the unknown detector rejects",
    "acc_without_rejection": "top-1 on known-class images, the detector ignored",
    "acceptance_rate": "share of all images the detector accepts (coverage)",
    "acc_on_accepted": "share of accepted images labelled right (an accepted unknown is wrong)",
    "open_set_acc": "share of all images right with 'unknown' as one more class",
    "auroc/fpr95": "known vs unknown separation of the detector's score (needs unknown images)",
    "track1..track4": "FungiCLEF 2024 scores per observation (with unknown and poisonous labels)",
    **HIERARCHY_MEASURES,  # with a taxonomy: under "hierarchy"
    "set_coverage": "with --coverage: share of images whose prediction set holds the true label "
    "(images not used to calibrate the sets)",
    "mean_set_size": "with --coverage: labels per prediction set, on average",
}


@dataclass
class EvalResult(Result):
    """Scores of a run or ensemble: ``metrics`` on the validation part (out-of-fold for a fold
    ensemble) and ``holdout`` on the store's held-out part (None without one).

    ``to_dict()`` puts the metrics at the top level: ``{"run", "kind", "head", "top1", ...,
    "holdout": {...}}``.
    """

    run: str
    kind: str
    head: str | None
    metrics: dict[str, Any]
    holdout: dict[str, Any] | None = None
    per_class_png: str | None = None
    holdout_per_class_png: str | None = None
    confusion_png: str | None = None
    most_confused: list[dict[str, Any]] | None = None
    sets: dict[str, Any] | None = None  # with coverage: how the sets were calibrated

    def items_(self) -> dict[str, Any]:
        out = {"run": self.run, "kind": self.kind, "head": self.head, **self.metrics}
        for k in (
            "sets",
            "per_class_png",
            "holdout_per_class_png",
            "confusion_png",
            "most_confused",
            "holdout",
        ):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


def score_rows(model: Predictor, rows: dict[str, Any], recall_k: int = 5) -> dict[str, Any]:
    """Metrics for rows ``{"label", "logits", ["unknown_score", "observation", "poisonous"]}``
    (``recall@{recall_k}``: per observation where rows have one)."""
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
        obs = rows.get("observation")
        out[f"recall@{recall_k}"] = recall_at_k(
            y_true[known],
            logits[known],
            recall_k,
            None if obs is None else _observation_ids(obs, rows["id"])[known],
        )
        out["n"] = int(len(y_true))
    pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    out["_pred_closed"] = pred  # species confusions, before any unknown decision
    scores = rows.get("unknown_score")
    thr = model.threshold
    if scores is not None and thr is not None and len(scores):
        s = np.asarray(scores, dtype=np.float64)
        closed = pred
        pred = np.where(model.is_unknown(s, closed), -1, pred)
        accepted = pred != -1
        out["unknown_rate"] = float(np.mean(~accepted))
        if known.any():
            out["acc_without_rejection"] = float(np.mean(closed[known] == y_true[known]))
        out["acceptance_rate"] = float(np.mean(accepted))
        if accepted.any():
            out["acc_on_accepted"] = float(np.mean(pred[accepted] == y_true[accepted]))
        out["open_set_acc"] = openset_accuracy(y_true, pred)
        if known.any() and (~known).any():
            out.update(openset_scores(known, s))
    poison = rows.get("poisonous")
    poc = model.config.poisonous_of_class
    unknown_label = model.unknown_label
    has_unknown = any(str(v) == unknown_label for v in labels if v is not None)
    if poison is not None and poc is not None and has_unknown and len(labels):
        obs = rows.get("observation")
        obs_ids = (
            _observation_ids(obs, rows["id"])
            if obs is not None
            else np.array([str(i) for i in rows["id"]], dtype=object)
        )
        uniq, mean_logits, first = aggregate_by_observation(obs_ids, logits)
        y_obs = y_true[first]
        p_obs = mean_logits.argmax(axis=1)
        if scores is not None and thr is not None:
            s = np.asarray(scores, dtype=np.float64)
            inv = np.searchsorted(uniq, obs_ids)
            mean_s = np.bincount(inv, weights=s, minlength=len(uniq)) / np.bincount(
                inv, minlength=len(uniq)
            )
            p_obs = np.where(model.is_unknown(mean_s, p_obs), -1, p_obs)
        pt = np.array(
            [bool(p) if p is not None else False for p in np.asarray(poison, dtype=object)[first]]
        )
        pt = pt & (y_obs >= 0)  # unknown observations are not poisonous by definition
        out.update(fungiclef_scores(y_obs, p_obs, pt, np.asarray(poc, dtype=bool)))
        out["observations"] = int(len(uniq))
    out["_pred"], out["_true"] = pred, y_true
    return out


def _observation_ids(obs: Any, ids: Any) -> np.ndarray:
    """Each row's observation (a row without one is an observation of its own)."""
    return np.array(
        [str(o) if o is not None else f"id:{i}" for i, o in zip(ids, obs, strict=True)],
        dtype=object,
    )


def _public(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def evaluate(
    path: str | os.PathLike,
    *,
    holdout: bool = True,
    plots: bool = True,
    store: str | os.PathLike | None = None,
    device: str = "auto",
    recall_k: int = 5,
    coverage: float | None = None,
    set_score: SetScore = "lac",
    calibrate_on: str | None = None,
) -> EvalResult:
    """Scores of a run or ensemble directory (``top1``, ``top3``, ``recall@5``, ``macro_f1``,
    ``mean_class_acc``, shot buckets; open-set and ``track1``..``track4`` when defined), plus
    ``holdout`` scores.

    ``coverage`` (e.g. 0.9) calibrates conformal prediction sets as :func:`heads.predict` makes
    them (out-of-fold, or on the store rows ``calibrate_on`` selects) and reports
    ``set_coverage`` and ``mean_set_size`` on every part's images not used to calibrate them.

    >>> heads.evaluate("runs/mlp").metrics["macro_f1"]
    >>> heads.evaluate("runs/mlp", coverage=0.9).holdout["set_coverage"]
    """
    if recall_k < 1:
        raise HeadsError(f"--recall-k must be at least 1, not {recall_k}")
    check_set_options(coverage, set_score, calibrate_on)
    path = Path(path)
    model = load(path, device)
    cal = None
    if coverage is not None:
        cal = calibrate_sets(
            model, coverage, score=set_score, calibrate_on=calibrate_on, store=store
        )
    val = read_val(path)
    res = score_rows(model, val, recall_k)
    cfg = model.config
    out = EvalResult(
        str(path), cfg.kind, cfg.head if isinstance(cfg, RunConfig) else None, _public(res)
    )
    ranks = hierarchy_scores(model, val, "val")
    if ranks is not None:
        out.metrics["hierarchy"] = ranks
    if cal is not None:
        out.sets = cal.to_dict()
        out.metrics.update(sets_on_rows(model, val, cal))
    name = _plot_name(path, model)
    counts, counted = class_image_counts(path, model) if plots else (model.train_counts, "")
    if plots and res["n_known"]:
        y, p = _known_pairs(res)
        f1 = per_class_f1(y, p, len(model.classes))
        out.per_class_png = str(
            plot_per_class(
                f1,
                counts,
                model.classes,
                path / "per_class.png",
                title=f"{name}, validation part (out-of-fold)",
                counts_label=counted,
            )
        )
        out.confusion_png = str(
            plot_confusion(
                y, p, model.classes, path / "confusion.png", title=f"{name}, validation part"
            )
        )
        out.most_confused = most_confused(y, p, model.classes, top=10)
    if holdout:
        rows = holdout_rows(model, store)
        if rows is not None:
            scored = score_rows(model, rows, recall_k)
            out.holdout = _public(scored)
            ranks = hierarchy_scores(model, rows, "holdout", store)
            if ranks is not None:
                out.holdout["hierarchy"] = ranks
            if cal is not None:
                out.holdout.update(sets_on_rows(model, rows, cal))
            if plots and scored["n_known"]:
                y, p = _known_pairs(scored)
                out.holdout_per_class_png = str(
                    plot_per_class(
                        per_class_f1(y, p, len(model.classes)),
                        counts,
                        model.classes,
                        path / "holdout_per_class.png",
                        title=f"{name}, held-out part",
                        counts_label=counted,
                    )
                )
    if plots:
        (path / "eval.json").write_text(json.dumps(out.to_dict(), indent=2, default=str))
    return out


def sets_on_rows(model: Predictor, rows: dict[str, Any], cal: SetCalibration) -> dict[str, Any]:
    """``set_coverage``, ``mean_set_size``, ``set_singletons``, ``set_class_coverage_min`` and
    ``set_n`` of the prediction sets on the rows of a known class that did not calibrate them
    (``{}`` when none is left: sets calibrated on these very rows)."""
    index = {c: i for i, c in enumerate(model.classes)}
    y = np.array([index.get(str(v), -1) if v is not None else -1 for v in rows["label"]])
    used = set(cal.ids)
    keep = (y >= 0) & np.array([str(i) not in used for i in rows["id"]], dtype=bool)
    if not keep.any():
        return {}
    probs = np.exp(log_softmax(np.asarray(rows["logits"], dtype=np.float64)[keep]))
    found = set_scores(cal.sets(probs), y[keep])
    return {
        "set_coverage": found["coverage"],
        "mean_set_size": found["mean_set_size"],
        "set_singletons": found["singletons"],
        "set_class_coverage_min": found["class_coverage_min"],
        "set_n": found["n"],
    }


def class_image_counts(path: Path, model: Predictor) -> tuple[np.ndarray, str]:
    """Per class, the images the per-class plots count, and what to call them: a run's
    training images; for an ensemble, the class's images in all its members' training folds
    (a fold ensemble of 5 whose folds each trained on 48 of a class's 60 images shows 60)."""
    if not isinstance(model.config, EnsembleConfig):
        return model.train_counts, "training images"
    return _training_part_counts(path, model.classes), "training images (all folds)"


def _training_part_counts(path: Path, classes: list[str]) -> np.ndarray:
    """A run's training plus validation images per class (the folds it was split from); for
    an ensemble, the most over its members."""
    cfg = read_run_config(path)
    if isinstance(cfg, EnsembleConfig):
        members = [resolve_member(path, m) for m in cfg.members]
        return np.max([_training_part_counts(m, classes) for m in members], axis=0)
    index = {c: i for i, c in enumerate(classes)}
    val = [index[lab] for lab in read_val(path)["label"] if lab in index]
    counts = np.asarray(cfg.train_counts, dtype=np.float64)
    return counts + np.bincount(np.asarray(val, dtype=np.int64), minlength=len(classes))


def _known_pairs(res: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    known = res["_true"] >= 0
    return res["_true"][known], res["_pred_closed"][known]


def _plot_name(path: Path, model: Predictor) -> str:
    """``mlp/fold2 (run, fold 2)`` or ``mlp (ensemble of 5)``: what a plot title names."""
    cfg = model.config

    def shown(name: str) -> str:  # a run still in its hidden folder: the name it will have
        return name[1:].split(".partial-")[0] if ".partial-" in name else name

    label = shown(path.name)
    if path.name.startswith("fold"):
        label = f"{shown(path.parent.name)}/{path.name}"
    if isinstance(cfg, EnsembleConfig):
        return f"{label} (ensemble of {len(cfg.members)})"
    if cfg.fold is None:  # the refit on every fold, or a zero-shot run with no folds
        return f"{label} ({cfg.head}, {'refit' if cfg.refit is not None else 'no folds'})"
    return f"{label} ({cfg.head}, fold {cfg.fold})"


def holdout_rows(model: Predictor, store: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Logits for the store's held-out images (fold -1), or None when there are none."""
    try:
        st = embedstore.connect(store or model.store_path, create=False)
    except embedstore.StoreError:
        return None
    if not st.has_column("fold"):
        return None
    return rows_from_store(model, st, part="holdout")


def rows_from_store(model: Predictor, st: embedstore.Store, **select: Any) -> dict[str, Any] | None:
    """Logits (and unknown scores) of the rows ``select``-ed (as :meth:`Store.read` takes) that
    hold every embedding column the model needs."""
    cols = model.backbone_columns()
    obs, poison = model.config.observation_column, model.config.poison_column
    meta = list(dict.fromkeys([*model.columns, *(c for c in (obs, poison) if c)]))
    embs, t = st.embedding_rows(
        {c: b["dim"] for c, b in cols.items()}, ["id", "label", *meta], **select
    )
    if len(t["id"]) == 0:
        return None
    table = {c: np.asarray(t[c], dtype=object) for c in meta}
    logits = model.logits(embs, table)
    rows: dict[str, Any] = {
        "id": np.asarray(t["id"], dtype=object),
        # a run trained at a coarser rank (heads train --rank) names the labels at that rank
        "label": map_labels(model, np.asarray(t["label"], dtype=object)),
        "logits": logits,
    }
    s = model.unknown_scores(embs, logits, table)
    if s is not None:
        rows["unknown_score"] = s
    if obs:
        rows["observation"] = table[obs]
    if poison:
        rows["poisonous"] = table[poison]
    return rows
