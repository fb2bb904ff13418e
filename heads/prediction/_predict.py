"""Predicting labels for image files with a run or an ensemble.

An image whose bytes are already in the run's store uses its stored embedding (and metadata);
any other image is decoded and embedded with the backbone recorded in the run. Test-time
decisions: ``prior`` adjusts logits to a test label distribution (logit adjustment: add
log p_test - log p_train), ``cost_matrix`` picks the label of least expected cost; local priors
(a species list, a prior by a metadata column: ``heads.prediction._priors``) weigh the labels
the same way, and ``coverage`` adds a conformal prediction set (``heads.prediction._sets``).
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
from heads.prediction._fallback import answer_ranks
from heads.prediction._priors import LocalPriors, SpeciesList, local_priors
from heads.prediction._sets import SetCalibration, calibrate_sets, check_set_options
from heads.runs._loaded import Predictor, load, log_softmax
from heads.taxonomy._hierarchy import Hierarchy, load_hierarchy
from heads.types import SetScore


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
    ``unknown`` (None without a detector); ``error`` instead for an unusable file.

    With local priors (a species list, ``prior_by``) ``label`` and ``top_k`` are constrained,
    ``unconstrained`` is the image alone's top-1 ``{label, probability}`` and ``unusual_here``
    says whether this place makes that top-1 unlikely; with ``coverage``, ``set`` lists the
    labels of the conformal prediction set, most probable first."""

    path: str
    id: str | None = None
    label: str | None = None
    top_k: list[dict[str, Any]] | None = None
    unknown: bool | None = None
    unknown_score: float | None = None
    expected_cost: float | None = None
    group: str | None = None
    error: str | None = None
    # with ``fallback``: the finest rank of the taxonomy whose confidence clears its threshold
    # (None: none does, or the image is unknown), the answer there, and every rank's top-1
    rank: str | None = None
    answer: str | None = None
    ranks: list[dict[str, Any]] | None = None
    set: list[str] | None = None
    unconstrained: dict[str, Any] | None = None
    unusual_here: bool | None = None

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
        for k in (
            "unknown_score",
            "expected_cost",
            "group",
            "set",
            "unconstrained",
            "unusual_here",
        ):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.ranks is not None:
            out.update(rank=self.rank, answer=self.answer, ranks=self.ranks)
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
    species_list: SpeciesList | None = None,
    prior_by: str | None = None,
    place: str | None = None,
    coverage: float | None = None,
    set_score: SetScore = "lac",
    calibrate_on: str | None = None,
    fallback: bool = False,
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
    ``fallback`` (a run with a hierarchy: its store has a taxonomy) also answers at the finest
    rank whose confidence clears its threshold: ``rank``, ``answer`` and every rank's top-1 in
    ``ranks`` ("genus Amanita, species uncertain"; heads.taxonomy).

    Local priors: ``species_list`` (a file, a list of labels or a ``{label: weight}`` mapping)
    allows only the listed labels; ``prior_by`` (a metadata column, e.g. ``"country"``) weighs
    labels by how common each was at the image's value in the training rows: ``place`` gives
    that value for every image, else a stored image's own value is used. The answer keeps the
    unconstrained top-1 and flags ``unusual_here``. ``coverage`` (e.g. 0.9) adds the conformal
    prediction set that holds the true label that often (``set_score`` ``lac`` or ``aps``;
    calibrated on the run's out-of-fold predictions, or on the store rows ``calibrate_on``
    selects: see :func:`heads.prediction.calibrate_sets`).

    >>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)[0].label
    >>> heads.predict("runs/fungi", ["a.jpg"], species_list="dk.txt", coverage=0.9)[0].set
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
    if fallback and cost_matrix is not None:
        raise HeadsError(
            "--fallback answers by confidence, --cost-matrix by expected cost: choose one"
        )
    pri = read_prior(prior, model.classes) if prior else None
    cost = read_cost_matrix(cost_matrix, model.classes) if cost_matrix else None
    check_set_options(coverage, set_score, calibrate_on)
    local = local_priors(model, species_list, prior_by, place)
    sets = None
    if coverage is not None:
        sets = calibrate_sets(model, coverage, score=set_score, calibrate_on=calibrate_on)
    hier = load_hierarchy(model) if fallback else None
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
    cols = {**model.backbone_columns(), **(hier.backbone_columns(device) if hier else {})}
    columns = {c: {**b["describe"], "dim": b["dim"]} for c, b in cols.items()}
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
    places = None
    if prior_by is not None and place is None:
        places = stored_values(model, batch, prior_by)
    return predict_embeddings(
        model,
        batch,
        top_k=top_k,
        prior=pri,
        cost=cost,
        groups=groups,
        local=local,
        places=places,
        sets=sets,
        hierarchy=hier,
    )


def stored_values(
    model: Predictor, batch: embedstore.search.EmbeddedInputs, column: str
) -> list[Any]:
    """Each input's stored value of ``column`` (None for an image not in the run's store)."""
    ids = sorted({q.id for q, s in zip(batch.inputs, batch.in_store, strict=True) if s and q.id})
    if not ids:
        return [None] * len(batch.inputs)
    try:
        st = embedstore.connect(model.store_path, create=False)
        t = st.read(["id", column], ids=ids)
    except embedstore.StoreError as e:
        raise HeadsError(f"--prior-by {column}: {e}") from e
    value = dict(zip(t.column("id").to_pylist(), t.column(column).to_pylist(), strict=True))
    return [value.get(q.id) if q.id else None for q in batch.inputs]


def predict_embeddings(
    model: Predictor,
    batch: embedstore.search.EmbeddedInputs,
    *,
    top_k: int = 5,
    prior: np.ndarray | None = None,
    cost: np.ndarray | None = None,
    groups: list[str | None] | None = None,
    local: LocalPriors | None = None,
    places: list[Any] | None = None,
    sets: SetCalibration | None = None,
    hierarchy: Hierarchy | None = None,
) -> list[Prediction]:
    """Predictions for inputs already embedded (``embedstore.embed_inputs``): top-k, the
    ``prior`` adjustment, the least-cost label, the unknown decision. Inputs sharing a
    ``groups`` key (None: a group of its own) get one answer from their mean logits and scores.
    ``local`` priors (``places``: each input's value of their column) constrain the answer;
    ``sets`` (:func:`heads.prediction.calibrate_sets`) adds each input's prediction set;
    ``hierarchy`` (``heads.taxonomy.load_hierarchy``) the answer at the finest confident rank."""
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
    rank_logits = hierarchy.rank_logits(sub, subt) if hierarchy is not None else {}
    if groups is not None:  # one answer per group: mean logits (and scores) over its images
        keys = [groups[j] for j in sel]
        logits, scores = _group_means(logits, scores, keys, sel)
        rank_logits = {r: _group_means(z, None, keys, sel)[0] for r, z in rank_logits.items()}
        for j in sel:
            results[j].group = groups[j]
    unknown = None if scores is None else model.is_unknown(scores, logits.argmax(axis=1))
    raw = logits.astype(np.float64)  # (n, C) the model's own: what sets are calibrated on
    logits = raw
    if prior is not None:
        # a class with no training image (a zero-shot head's) was not learnt at frequency 0
        counts = np.maximum(model.train_counts, 1.0)
        train_prior = counts / counts.sum()
        logits = logits + np.log(np.maximum(prior, 1e-12)) - np.log(np.maximum(train_prior, 1e-12))
    free = np.exp(log_softmax(logits))  # (n, C) before the local priors
    weights = None
    if local is not None:
        weights = local.weights(None if places is None else [places[j] for j in sel], len(sel))
        logits = logits + np.where(weights > 0, np.log(np.maximum(weights, 1e-300)), -np.inf)
    probs = np.exp(log_softmax(logits))  # (n, C)
    allowed = np.ones_like(probs, bool) if weights is None else weights > 0  # (n, C)
    in_set = None if sets is None else sets.sets(np.exp(log_softmax(raw))) & allowed
    order = np.argsort(-probs, axis=1, kind="stable")  # (n, C)
    for row, j in enumerate(sel):
        r = results[j]
        ranked = [int(t) for t in order[row] if allowed[row, t]]
        r.top_k = [
            {"label": classes[t], "probability": float(probs[row, t])} for t in ranked[:top_k]
        ]
        best = ranked[0]
        if cost is not None:  # the least expected cost among the allowed labels
            best = int(np.argmin(np.where(allowed[row], probs[row] @ cost, np.inf)))
        r.label = classes[best]
        if cost is not None:
            r.expected_cost = float((probs[row] @ cost)[best])
        if in_set is not None:
            in_set[row, ranked[0]] = True  # never empty: the constrained top label is in it
            r.set = [classes[t] for t in ranked if in_set[row, t]]
        if weights is not None:
            assert local is not None  # weights come from it
            top = int(free[row].argmax())
            r.unconstrained = {"label": classes[top], "probability": float(free[row, top])}
            r.unusual_here = local.unusual(None if places is None else places[j], top)
        if unknown is not None:
            assert scores is not None  # unknown was decided from them
            r.unknown = bool(unknown[row])
            r.unknown_score = float(scores[row])
            if r.unknown:
                r.label = model.unknown_label
    if hierarchy is not None:
        answer_ranks([results[j] for j in sel], hierarchy, logits, rank_logits, unknown)
    return results


def _group_means(
    logits: np.ndarray, scores: np.ndarray | None, keys: list[str | None], sel: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's logits (and scores) replaced by the mean over the rows of its group."""
    k = np.array([g if g is not None else f"\0{j}" for g, j in zip(keys, sel, strict=True)])
    _, inv = np.unique(k, return_inverse=True)
    counts = np.bincount(inv)[:, None]
    mean = np.zeros((inv.max() + 1, logits.shape[1]))
    np.add.at(mean, inv, logits)
    out = (mean / counts)[inv].astype(np.float32)
    if scores is not None:
        scores = (np.bincount(inv, weights=scores) / counts[:, 0])[inv]
    return out, scores


def write_predictions_csv(predictions: list[Prediction], path: str | os.PathLike) -> Path:
    """A CSV of predictions: ``path, id, label, probability`` (of the top label), ``unknown``,
    ``unknown_score``, ``group``, ``top_k`` (``label:probability`` joined by ``;``), ``error``;
    with local priors also ``unconstrained`` (the image alone's top-1) and ``unusual_here``, with
    sets ``set`` (labels joined by ``;``), with ``fallback`` the answered ``rank`` and
    ``answer``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    local = any(p.unconstrained is not None for p in predictions)
    sets = any(p.set is not None for p in predictions)
    ranked = any(p.ranks is not None for p in predictions)
    extra = [
        *(["unconstrained", "unusual_here"] if local else []),
        *(["set"] if sets else []),
        *(["rank", "answer"] if ranked else []),
    ]
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
                *extra,
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
                    *(_extra_cells(p, local, sets)),
                    *([p.rank or "", p.answer or ""] if ranked else []),
                ]
            )
    os.replace(tmp, path)
    return path


def _extra_cells(p: Prediction, local: bool, sets: bool) -> list[str]:
    cells = []
    if local:
        u = p.unconstrained or {}
        flag = "" if p.unusual_here is None else str(p.unusual_here).lower()
        cells += [str(u.get("label", "")), flag]
    if sets:
        cells.append(";".join(p.set or []))
    return cells


def _is_id(s: str) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s)
