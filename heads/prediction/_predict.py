"""Predicting labels for image files with a run or an ensemble.

An image whose bytes are already in the run's store uses its stored embedding (and metadata);
any other image is decoded and embedded with the backbone recorded in the run. Test-time
decisions: ``prior`` adjusts logits to a test label distribution (logit adjustment: add
log p_test - log p_train), ``cost_matrix`` picks the label of least expected cost.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import embedstore
from embedstore import Result
from embedstore.types import Runtime
from heads._errors import HeadsError
from heads.runs._loaded import Predictor, load, log_softmax


def read_prior(spec: str, classes: list[str]) -> np.ndarray:
    """``"uniform"`` or a CSV/JSON file of label -> probability (missing labels get 0 mass)."""
    if spec == "uniform":
        return np.full(len(classes), 1.0 / len(classes))
    p = Path(spec)
    if not p.is_file():
        raise HeadsError(
            f"{p}: prior file not found; give 'uniform', a CSV (label,probability) or a JSON object"
        )
    try:
        if p.suffix.lower() == ".json":
            d = {str(k): float(v) for k, v in json.loads(p.read_text()).items()}
        else:
            with open(p, newline="") as f:
                rows = [r for r in csv.reader(f) if r]
            if rows and not _is_number(rows[0][-1]):
                rows = rows[1:]
            d = {r[0]: float(r[1]) for r in rows}
    except (ValueError, IndexError, json.JSONDecodeError) as e:
        raise HeadsError(
            f"{p}: cannot read the prior ({e}); expected label,probability rows"
        ) from e
    unknown = sorted(set(d) - set(classes))
    if unknown:
        raise HeadsError(f"{p}: label(s) not known to the run: {', '.join(unknown[:5])}")
    v = np.array([max(d.get(c, 0.0), 0.0) for c in classes])
    if v.sum() <= 0:
        raise HeadsError(f"{p}: the prior has no positive probability")
    return v / v.sum()


def read_cost_matrix(path: str, classes: list[str]) -> np.ndarray:
    """CSV with a header of predicted labels and one row per true label: cost[true, predicted]."""
    p = Path(path)
    if not p.is_file():
        raise HeadsError(f"{p}: cost matrix file not found")
    with open(p, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise HeadsError(
            f"{p}: a cost matrix needs a header row of predicted labels and one row per true label"
        )
    header = rows[0][1:]
    idx = {c: i for i, c in enumerate(classes)}
    missing = [c for c in classes if c not in header or c not in {r[0] for r in rows[1:]}]
    if missing:
        raise HeadsError(f"{p}: cost matrix lacks row/column for {', '.join(missing[:5])}")
    m = np.zeros((len(classes), len(classes)))
    for r in rows[1:]:
        if r[0] not in idx:
            continue
        for j, c in enumerate(header):
            if c in idx:
                try:
                    m[idx[r[0]], idx[c]] = float(r[j + 1])
                except (ValueError, IndexError) as e:
                    raise HeadsError(f"{p}: bad cost for true {r[0]!r}, predicted {c!r}") from e
    return m


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@dataclass
class Prediction(Result):
    """One image's answer: ``label`` (top-1, or the least-cost label with a cost matrix, or the
    run's unknown label where its detector fires), ``top_k`` (``[{label, probability}]``),
    ``unknown`` (None without a detector); ``error`` instead for an unusable file."""

    path: str
    id: str | None = None
    label: str | None = None
    top_k: list[dict[str, Any]] | None = None
    unknown: bool | None = None
    unknown_score: float | None = None
    expected_cost: float | None = None
    group: str | None = None
    error: str | None = None

    def items_(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {
            "path": self.path,
            "top_k": self.top_k,
            "label": self.label,
            "unknown": self.unknown,
            "id": self.id,
        }
        for k in ("unknown_score", "expected_cost", "group"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


def predict(
    run: str | os.PathLike | Predictor,
    images: list[str | os.PathLike | bytes] | None = None,
    *,
    ids: list[str] | None = None,
    images_dir: str | os.PathLike | None = None,
    top_k: int = 5,
    prior: str | None = None,
    cost_matrix: str | None = None,
    device: str = "auto",
    runtime: Runtime = "auto",
    batch_size: int = 32,
    backbones: dict[str, Any] | None = None,
    resident: embedstore.Resident | None = None,
    group_by: str | None = None,
) -> list[Prediction]:
    """Top-k labels with probabilities for each image (a file, or bytes) and each stored row id
    in ``ids``; one result per input, files first.

    ``run`` is a run or ensemble directory, or one already loaded (``heads.load``).
    Stored images reuse their stored embeddings; new ones are embedded with the run's recorded
    backbone(s). ``backbones`` (a ``{column: Backbone}`` cache kept across calls) and
    ``resident`` (the store's embeddings held in memory) are what a long-lived caller (the
    service) passes to skip loading. ``runtime`` embeds new images (``auto``: ONNX Runtime on
    the CPU where it is faster, else torch; ``torch`` or ``onnx`` to choose). ``group_by`` gives
    every image of a group one answer from their mean logits (FungiCLEF style: several photos of
    one specimen): a store column (for stored images), or ``"folder"`` (the image file's folder).

    >>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)[0].label
    """
    model = load(run, device) if isinstance(run, str | os.PathLike) else run  # else a Predictor
    paths: list[str | os.PathLike | bytes] = [
        p if isinstance(p, bytes) else str(p) for p in (images or [])
    ]
    if images_dir is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise HeadsError(f"{root}: --images folder not found")
        paths += [str(f.path) for f in embedstore.ingestion.find_images(root) if f.supported]
    if not paths and not ids:
        raise HeadsError("no images given; name image files or use --images DIR")
    if top_k < 1:
        raise HeadsError(f"--top-k must be at least 1, not {top_k}")
    pri = read_prior(prior, model.classes) if prior else None
    cost = read_cost_matrix(cost_matrix, model.classes) if cost_matrix else None
    st = None
    if resident is None:
        try:
            st = embedstore.connect(model.store_path, create=False)
        except embedstore.StoreError:
            st = None  # the run's store is gone: every image is embedded anew
    inputs = embedstore.read_inputs(paths)
    inputs += [
        embedstore.search.Input(
            i,
            i.lower() if _is_id(i) else None,
            error=None if _is_id(i) else "not a stored row id (64 hex digits)",
        )
        for i in (ids or [])
    ]
    columns = {c: {**b["describe"], "dim": b["dim"]} for c, b in model.backbone_columns().items()}
    meta = [*model.columns, *([group_by] if group_by not in (None, "folder") else [])]
    batch = embedstore.embed_inputs(
        st,
        inputs,
        columns,
        meta_columns=meta,
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        backbones=backbones,
        resident=resident,
    )
    groups = None
    if group_by == "folder":
        groups = [
            str(Path(q.name).parent)
            if q.data is not None and not q.name.startswith("upload ")
            else None
            for q in inputs
        ]
    elif group_by is not None:
        groups = [None if v is None else str(v) for v in batch.table[group_by]]
    return predict_embeddings(model, batch, top_k=top_k, prior=pri, cost=cost, groups=groups)


def predict_embeddings(
    model: Predictor,
    batch: embedstore.search.EmbeddedInputs,
    *,
    top_k: int = 5,
    prior: np.ndarray | None = None,
    cost: np.ndarray | None = None,
    groups: list[str | None] | None = None,
) -> list[Prediction]:
    """Predictions for inputs already embedded (``embedstore.embed_inputs``): top-k, the
    ``prior`` adjustment, the least-cost label, the unknown decision. Inputs sharing a
    ``groups`` key (None: a group of its own) get one answer from their mean logits and scores."""
    classes = model.classes
    results = [
        Prediction(q.name, q.id, error=batch.errors.get(j)) for j, q in enumerate(batch.inputs)
    ]
    sel = np.flatnonzero(batch.ok)
    if not len(sel):
        return results
    sub = {c: v[sel] for c, v in batch.embeddings.items()}
    subt = {c: v[sel] for c, v in batch.table.items()}
    logits, scores = model.logits_and_scores(sub, subt)  # each head run once
    if groups is not None:  # one answer per group: mean logits (and scores) over its images
        keys = np.array(
            [groups[j] if groups[j] is not None else f"\0{j}" for j in sel], dtype=object
        )
        _, inv = np.unique(keys, return_inverse=True)
        counts = np.bincount(inv)[:, None]
        mean = np.zeros((inv.max() + 1, logits.shape[1]))
        np.add.at(mean, inv, logits)
        logits = (mean / counts)[inv].astype(np.float32)
        if scores is not None:
            scores = (np.bincount(inv, weights=scores) / counts[:, 0])[inv]
        for j in sel:
            results[j].group = groups[j]
    unknown = model.is_unknown(scores) if scores is not None else None
    logits = logits.astype(np.float64)
    if prior is not None:
        train_prior = model.train_counts / model.train_counts.sum()
        logits = logits + np.log(np.maximum(prior, 1e-12)) - np.log(np.maximum(train_prior, 1e-12))
    probs = np.exp(log_softmax(logits))
    k = min(top_k, len(classes))
    top = np.argsort(-probs, axis=1)[:, :k]
    for row, j in enumerate(sel):
        r = results[j]
        r.top_k = [{"label": classes[t], "probability": float(probs[row, t])} for t in top[row]]
        best = int(top[row, 0]) if cost is None else int(np.argmin(probs[row] @ cost))
        r.label = classes[best]
        if cost is not None:
            r.expected_cost = float((probs[row] @ cost)[best])
        if unknown is not None:
            assert scores is not None  # unknown was decided from them
            r.unknown = bool(unknown[row])
            r.unknown_score = float(scores[row])
            if r.unknown:
                r.label = model.unknown_label
    return results


def write_predictions_csv(predictions: list[Prediction], path: str | os.PathLike) -> Path:
    """A CSV of predictions: ``path, id, label, probability`` (of the top label), ``unknown``,
    ``unknown_score``, ``group``, ``top_k`` (``label:probability`` joined by ``;``), ``error``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "path",
                "id",
                "label",
                "probability",
                "unknown",
                "unknown_score",
                "group",
                "top_k",
                "error",
            ]
        )
        for p in predictions:
            top = p.top_k or []
            w.writerow(
                [
                    p.path,
                    p.id or "",
                    p.label or "",
                    f"{top[0]['probability']:.6f}" if top else "",
                    "" if p.unknown is None else str(p.unknown).lower(),
                    "" if p.unknown_score is None else f"{p.unknown_score:.6f}",
                    p.group or "",
                    ";".join(f"{t['label']}:{t['probability']:.6f}" for t in top),
                    p.error or "",
                ]
            )
    os.replace(tmp, path)
    return path


def _is_id(s: str) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s)
