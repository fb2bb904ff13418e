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
from pathlib import Path
from typing import Any

import numpy as np

from heads._ensemble import _log_softmax
from heads._errors import HeadsError


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


def predict(
    run: str | os.PathLike,
    images: list[str | os.PathLike] | None = None,
    *,
    images_dir: str | os.PathLike | None = None,
    top_k: int = 5,
    prior: str | None = None,
    cost_matrix: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for each image; one dict per image.

    Each dict: ``path``, ``label`` (top-1, or the least-cost label with ``cost_matrix``, or
    ``"unknown"`` where the run's detector fires), ``top_k`` (``[{label, probability}]``),
    ``unknown`` (bool, or None without a detector); ``error`` instead for an unusable file.

    >>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)
    """
    import embedstore
    from heads._runs import load

    model = load(run)
    paths = [str(p) for p in (images or [])]
    if images_dir is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise HeadsError(f"{root}: --images folder not found")
        paths += [str(f.path) for f in embedstore.find_images(root) if f.supported]
    if not paths:
        raise HeadsError("no images given; name image files or use --images DIR")
    if top_k < 1:
        raise HeadsError(f"--top-k must be at least 1, not {top_k}")
    classes = model.classes
    pri = read_prior(prior, classes) if prior else None
    cost = read_cost_matrix(cost_matrix, classes) if cost_matrix else None
    cols = model.backbone_columns()
    # 1. read and hash every file; decode errors become per-image errors
    results: list[dict[str, Any]] = [{"path": p} for p in paths]
    ids: list[str | None] = []
    blobs: list[bytes | None] = []
    for r in results:
        try:
            data = embedstore._images.read_bytes(r["path"]) if os.path.exists(r["path"]) else None
            if data is None:
                raise embedstore.ImageError("file not found")
            ids.append(embedstore.hash_bytes(data))
            blobs.append(data)
        except embedstore.ImageError as e:
            r["error"] = str(e)
            ids.append(None)
            blobs.append(None)
    # 2. stored embeddings and metadata for files already in the store
    n = len(paths)
    embs = {c: np.zeros((n, b["dim"]), np.float32) for c, b in cols.items()}
    have = {c: np.zeros(n, bool) for c in cols}
    meta_cols = model.columns
    table = {c: np.array([None] * n, dtype=object) for c in meta_cols}
    try:
        st = embedstore.connect(model.store_path, create=False)
        present = [i for i in ids if i]
        if present and st.schema() is not None:
            names = st.schema().names
            want = [c for c in cols if c in names]
            mc = [c for c in meta_cols if c in names]
            where = "id IN (" + ", ".join("'" + i + "'" for i in sorted(set(present))) + ")"
            t = st.read(columns=["id", *mc, *want], where=where)
            pos = {i: k for k, i in enumerate(t.column("id").to_pylist())}
            for c in want:
                vals = t.column(c).to_pylist()
                for j, i in enumerate(ids):
                    if i in pos and vals[pos[i]] is not None:
                        embs[c][j] = np.asarray(vals[pos[i]], dtype=np.float32)
                        have[c][j] = True
            for c in mc:
                vals = t.column(c).to_pylist()
                for j, i in enumerate(ids):
                    if i in pos:
                        table[c][j] = vals[pos[i]]
    except embedstore.StoreError:
        pass
    # 3. embed the rest with each recorded backbone
    dev = embedstore.resolve_device(device)
    for c, b in cols.items():
        todo = [j for j in range(n) if not have[c][j] and blobs[j] is not None]
        if not todo:
            continue
        bb = embedstore.backbone_from_description(b["describe"]).to(dev)
        import torch

        for s in range(0, len(todo), batch_size):
            chunk, arrays = [], []
            for j in todo[s : s + batch_size]:
                try:
                    im = embedstore.decode_image(blobs[j])
                except embedstore.ImageError as e:
                    results[j]["error"] = str(e)
                    continue
                chunk.append(j)
                arrays.append(bb.preprocess(im))
            if chunk:
                e = bb.embed(torch.from_numpy(np.stack(arrays))).cpu().numpy()
                if b["describe"].get("dtype", "float16") == "float16":
                    e = e.astype(np.float16).astype(np.float32)  # as the store would hold it
                embs[c][chunk] = e
                for j in chunk:
                    have[c][j] = True
    ok = np.array(
        [("error" not in r) and all(have[c][j] for c in cols) for j, r in enumerate(results)]
    )
    if ok.any():
        sel = np.flatnonzero(ok)
        sub = {c: v[sel] for c, v in embs.items()}
        subt = {c: v[sel] for c, v in table.items()}
        logits = model.logits(sub, subt).astype(np.float64)
        scores = model.unknown_scores(sub, logits.astype(np.float32))
        if pri is not None:
            train_prior = model.train_counts / model.train_counts.sum()
            logits = (
                logits + np.log(np.maximum(pri, 1e-12)) - np.log(np.maximum(train_prior, 1e-12))
            )
        probs = np.exp(_log_softmax(logits))
        k = min(top_k, len(classes))
        top = np.argsort(-probs, axis=1)[:, :k]
        for row, j in enumerate(sel):
            r = results[j]
            r["top_k"] = [
                {"label": classes[t], "probability": float(probs[row, t])} for t in top[row]
            ]
            best = int(top[row, 0]) if cost is None else int(np.argmin(probs[row] @ cost))
            r["label"] = classes[best]
            if cost is not None:
                r["expected_cost"] = float((probs[row] @ cost)[best])
            r["unknown"] = None
            if scores is not None:
                r["unknown"] = bool(scores[row] < model.threshold)
                r["unknown_score"] = float(scores[row])
                if r["unknown"]:
                    r["label"] = "unknown"
            r["id"] = ids[j]
    return results
