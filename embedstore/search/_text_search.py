"""Stored images found by words: a text (and, if given, an image) searched against one image
column, in the space its text tower shares with its image tower.

The text is embedded by the column's text tower through the store's text cache
(:mod:`embedstore.search._texts`: a text searched before is never embedded again); the stored
image embeddings are mapped into the same space by ``TextTower.project_images`` (CLIP: its
visual projection, since the column holds the vision tower's output before it; SigLIP: only a
normalisation), once per call, or once per store version when a ``Resident`` is given (what the
service keeps). An image given with the text ("like this photo, but ...": a file, bytes or a
stored row id) becomes a vector as lookup's queries do, is projected the same way, and the two
unit vectors are blended: ``weight`` for the text, ``1 - weight`` for the image, renormalised.
The search is exact (the cosine of every candidate); ``where`` selects the candidates first.

>>> res = search_text("flowers", "a photo of a daisy", k=5)
>>> res.results[0].neighbors[0]["label"]                     # 'daisy'
>>> res = search_text("flowers", "but pink", image="photo.jpg", weight=0.3)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore.backbones._text import TextTower
from embedstore.errors import BadInput
from embedstore.search._embed import Input, embed_inputs, read_inputs
from embedstore.search._indexes import open_store
from embedstore.search._lookup import (
    LookupResult,
    QueryResult,
    _metadata_columns,
    _query_result,
    _rows_by_id,
)
from embedstore.search._resident import Resident
from embedstore.search._texts import _tower_for, text_embeddings
from embedstore.store._meta import EmbeddingInfo
from embedstore.store._store import Store, StoreError
from embedstore.store._text_cache import text_sha256
from embedstore.types import RUNTIMES, TEXT_WEIGHT, Runtime


@dataclass
class TextQuery(QueryResult):
    """A text search's query, shaped as lookup's: ``query`` is the text, ``query_id`` the
    SHA-256 of its UTF-8 bytes, ``in_store`` whether the blended image is a stored one; and
    ``image`` (its file name or row id; None for words alone) and ``weight`` (the text's share
    of the query: 1.0 for words alone)."""

    image: str | None = None
    weight: float = 1.0


def search_text(
    store: Store | str | os.PathLike,
    text: str,
    *,
    image: str | os.PathLike | bytes | None = None,
    weight: float = TEXT_WEIGHT,
    k: int = 10,
    backbone: str | None = None,
    where: str | None = None,
    columns: list[str] | None = None,
    device: str | torch.device = "auto",
    runtime: Runtime = "auto",
    temperature: float = 0.07,
    resident: Resident | None = None,
    tower: TextTower | None = None,
    backbones: dict[str, Any] | None = None,
) -> LookupResult:
    """The ``k`` stored images most similar (cosine, in the image-text space) to ``text``, or
    to ``text`` blended with ``image``, and a kNN vote on their labels: a
    :class:`~embedstore.search.LookupResult` whose one result is a :class:`TextQuery`.

    ``backbone``: the image column (a backbone name or column; None: the store's only one);
    one without a text tower raises ``BackboneError`` naming the backbones that have one.
    ``image``: a file, image bytes or a stored row id; ``weight``: the text's share of the
    query, from 0 (the image alone) to 1 (the text alone). ``where``, ``columns``, ``device``,
    ``runtime``, ``temperature`` and ``backbones`` are lookup's; ``k`` larger than the
    candidates returns them all, with a warning. ``resident`` keeps the projected vectors
    between calls (one projection per store version); ``tower``: the column's text tower,
    already built (kept by a caller such as the service).

    >>> res = search_text("flowers", "a photo of a daisy", where="split = 'train'", k=5)
    """
    st = open_store(store)
    text, weight, k = _checked(text, image, weight, k, runtime, temperature)
    dev = resolve_device(device)
    info = st.resolve_backbone(backbone)
    _, tower = _tower_for(info, tower, dev)  # no text tower: one line, before any work
    meta_cols = _metadata_columns(st, columns)
    if where is not None:
        st.count(where)  # a bad predicate fails here, before any heavy work
    query = _read_image(image)
    ids, P = _candidates(st, info, tower, where, resident)  # (N, D), unit rows
    notes: list[str] = []
    q, in_store = _query_vector(
        st, info, tower, text, query, weight, dev, runtime, resident, backbones, notes
    )
    if k > len(ids):
        notes.append(
            f"k={k} but {len(ids)} image(s) with {info.backbone} embeddings"
            + (f" match --where {where!r}" if where else "")
            + f": all {len(ids)} returned"
        )
        k = len(ids)
    sims, idx = _top_k(P, q, k)
    rows_by_id = _rows_by_id(st, sorted({ids[j] for j in idx.tolist()}), meta_cols)
    found = _query_result(
        Input(text, text_sha256(text)), in_store, sims, idx, ids, rows_by_id, meta_cols,
        temperature,
    )  # fmt: skip
    result = TextQuery(
        **{f.name: getattr(found, f.name) for f in fields(QueryResult)},
        image=None if query is None else query.name,
        weight=1.0 if query is None else weight,
    )
    return LookupResult(
        store=str(st.path),
        backbone=info.backbone,
        column=info.column,
        k=k,
        where=where,
        store_version=st.version,
        used_index=False,
        index_kind="exact",
        index_stale=False,
        warnings=notes,
        results=[result],
    )


def _checked(
    text: Any, image: Any, weight: Any, k: Any, runtime: str, temperature: float
) -> tuple[str, float, int]:
    """The text, the weight and ``k``, after the checks of every argument."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput(
            "give the words to search for (e.g. 'a photo of a daisy'), not an empty text"
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise BadInput(f"weight must be a number from 0 to 1, not {weight!r}")
    if not (math.isfinite(weight) and 0 <= weight <= 1):
        raise BadInput(
            f"weight must be from 0 (the image alone) to 1 (the text alone), not {weight}"
        )
    if weight == 0 and image is None:
        raise BadInput("weight 0 searches with the image alone: give an image, or a weight > 0")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadInput(f"k must be at least 1, not {k}")
    if runtime not in RUNTIMES:
        raise BadInput(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if not temperature > 0:
        raise BadInput(f"temperature must be > 0, not {temperature}")
    return text, float(weight), k


def _read_image(image: str | os.PathLike | bytes | None) -> Input | None:
    """The image blended with the text, read and hashed first (cheap errors before heavy work)."""
    if image is None:
        return None
    item = image if isinstance(image, bytes) else str(image)
    query = read_inputs([item], allow_ids=True)[0]
    if query.error:
        raise StoreError(f"{query.name}: {query.error}")
    return query


def _candidates(
    st: Store, info: EmbeddingInfo, tower: TextTower, where: str | None, resident: Resident | None
) -> tuple[list[str], np.ndarray]:
    """The candidates' ids and their embeddings in the text space ``(N, D)``: the resident
    projection (computed once per store version), else the (filtered) rows read and projected."""
    if resident is not None and info.column in resident.columns:
        P, rows = resident.projected(info.column, tower.identity, tower.project_images)
        if where is not None:
            wanted = st.read(["id"], where=where).column("id").to_pylist()
            keep = np.isin(rows, [resident.row[i] for i in wanted if i in resident.row])
            P, rows = P[keep], rows[keep]
        ids = resident.ids[rows].tolist()
    else:
        X, cols = st.embeddings(info.backbone, where=where, columns=("id",))
        ids = list(cols["id"])
        P = tower.project_images(X) if ids else np.zeros((0, 0), np.float32)
    if not ids:
        raise StoreError(
            f"{st.path}: no images with {info.backbone} embeddings"
            + (f" match --where {where!r}" if where else "")
        )
    return ids, P


def _query_vector(
    st: Store,
    info: EmbeddingInfo,
    tower: TextTower,
    text: str,
    query: Input | None,
    weight: float,
    dev: torch.device,
    runtime: Runtime,
    resident: Resident | None,
    backbones: dict[str, Any] | None,
    notes: list[str],
) -> tuple[np.ndarray, bool]:
    """The unit query vector ``(D,)``: ``weight`` x the text's embedding + ``(1 - weight)`` x the
    image's projected embedding, renormalised; and whether the image came from the store."""
    if query is None:
        weight = 1.0
    parts, in_store = [], False
    if weight > 0:
        T = text_embeddings(st, [text], info.column, device=dev, tower=tower).embeddings  # (1, D)
        parts.append(weight * T[0])
    if query is not None and weight < 1:
        batch = embed_inputs(
            st,
            [query],
            {info.column: {**info.describe, "dim": info.dim}},
            device=dev,
            runtime=runtime,
            backbones=backbones,
            resident=resident,
        )  # a stored row reused by id or content hash, a new file embedded
        if batch.errors:
            raise StoreError(f"{query.name}: {batch.errors[0]}")
        notes += batch.warnings
        in_store = bool(batch.in_store[0])
        parts.append((1 - weight) * tower.project_images(batch.embeddings[info.column])[0])
    q = np.sum(parts, axis=0, dtype=np.float32)  # (D,)
    norm = float(np.linalg.norm(q))
    if not norm > 1e-6:
        raise BadInput(
            "the text and the image cancel out at this weight (opposite directions): "
            "choose another weight"
        )
    return (q / norm).astype(np.float32), in_store


def _top_k(P: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, positions)``, each ``(k,)``, best first (ties: the earlier row)."""
    sims = P @ q  # (N,)
    top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
    order = top[np.lexsort((top, -sims[top]))]
    return sims[order].astype(np.float32), order


__all__ = ["TextQuery", "search_text"]
