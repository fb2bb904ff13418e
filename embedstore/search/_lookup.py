"""Nearest stored images for query images or row ids.

A query is an image file or a row id (the 64-hex SHA-256 of a stored image's bytes). Queries
become vectors through :func:`embedstore.search._embed.embed_inputs` (stored rows reused by content
hash, so an exact duplicate comes back first with similarity 1.0; other files embedded with the
backbone recorded in the column's metadata). Lookups read no file but the ones the user named,
and write nothing. Search runs over one backbone's stored embeddings (optionally filtered by a
``where`` predicate) with :class:`embedstore.search._search.NeighborIndex`, or a fresh saved index
(:mod:`embedstore.search._indexes`).

>>> res = lookup("flowers", ["photo.jpg"], k=5)
>>> res.results[0].vote
{'label': 'daisy', 'score': 0.97, 'votes': [...]}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore._results import Result, jsonable
from embedstore.search._embed import Input, embed_inputs, read_inputs
from embedstore.search._indexes import open_store, saved_index
from embedstore.search._resident import Resident
from embedstore.search._search import NeighborIndex, l2_normalize
from embedstore.store._store import EMB_PREFIX, Store, StoreError
from embedstore.types import LOOKUP_INDEXES, RUNTIMES, LookupIndex, Runtime

TOP_VOTES = 5  # labels listed under "votes"
# Columns every ingest writes; not returned as metadata by default.
BOOKKEEPING = frozenset(
    {"id", "path", "paths", "root", "label", "width", "height", "bytes", "added_at"}
)


@dataclass
class QueryResult(Result):
    """One query's answer: ``neighbors`` best first (``id``, ``path``, ``label``,
    ``similarity`` and the metadata columns) and the neighbours' ``vote``."""

    query: str
    query_id: str
    in_store: bool
    neighbors: list[dict[str, Any]]
    vote: dict[str, Any]


@dataclass
class LookupResult(Result):
    store: str
    backbone: str
    column: str
    k: int
    where: str | None
    store_version: int
    used_index: bool
    index_kind: str
    index_stale: bool
    warnings: list[str] = field(default_factory=list)
    results: list[QueryResult] = field(default_factory=list)


def lookup(
    store: Store | str | os.PathLike,
    queries: list[str | bytes],
    *,
    k: int = 10,
    backbone: str | None = None,
    where: str | None = None,
    columns: list[str] | None = None,
    index: LookupIndex = "auto",
    device: str | torch.device = "auto",
    runtime: Runtime = "auto",
    temperature: float = 0.07,
    resident: Resident | None = None,
    backbones: dict[str, Any] | None = None,
) -> LookupResult:
    """The ``k`` stored images most similar (cosine) to each query, and a kNN vote on their labels.

    ``queries``: image file paths, image bytes (uploads) or stored row ids. ``where``: a predicate
    on the candidates (``"split = 'train'"``). ``columns``: metadata columns returned per neighbour
    (default: every column that is not an embedding or ingest bookkeeping, e.g. ``split``, ``fold``
    and the metadata file's columns). ``index``: ``"auto"`` uses a fresh saved index when there is
    one (and no ``where``), else exact search in memory; ``"exact"``/``"ivf"``/``"hnsw"`` use a
    fresh saved index of that kind, else build one of that kind in memory.

    Each :class:`QueryResult` has ``query``, ``query_id`` (SHA-256 of the file, or the id
    given), ``in_store`` (the query's embedding came from the store), ``neighbors`` (``path`` is
    root joined with the stored relative path) and ``vote`` (``{"label", "score", "votes"}``:
    neighbours vote with weight ``exp(sim / temperature)``, DINOv2 style; unlabelled neighbours
    do not vote; scores are shares of the labelled votes). Raises :class:`StoreError` with a
    message for bad input. ``resident`` (the store's embeddings held in memory, as the service
    keeps them) and ``backbones`` (a ``{column: Backbone}`` cache) spare the reads and the
    model loading. ``runtime`` embeds new query files (``auto``: ONNX Runtime on the CPU where it
    is faster, else torch).
    """
    st = open_store(store)
    queries, k = _checked(queries, k, index, runtime, temperature)
    info = st.resolve_backbone(backbone)
    meta_cols = _metadata_columns(st, columns)
    if where is not None:
        st.count(where)  # a bad predicate fails here, before any heavy work
    dev = resolve_device(device)
    notes: list[str] = []
    inputs = _read_queries(queries)
    cands = _candidates(st, info, index, where, dev, notes, resident, k)
    batch = embed_inputs(
        st,
        inputs,
        {info.column: {**info.describe, "dim": info.dim}},
        device=dev,
        runtime=runtime,
        backbones=backbones,
        resident=resident,
    )  # query vectors: stored rows reused, new files embedded
    for j, reason in sorted(batch.errors.items()):
        raise StoreError(f"{inputs[j].name}: {reason}")
    notes += batch.warnings
    Qn = l2_normalize(batch.embeddings[info.column], "queries")  # (Nq, D)
    sims, idx = _search(cands, Qn, k, index, dev)
    rows_by_id = _rows_by_id(st, sorted({cands.ids[j] for j in idx[idx >= 0].tolist()}), meta_cols)
    results = [
        _query_result(
            q,
            bool(batch.in_store[qi]),
            sims[qi],
            idx[qi],
            cands.ids,
            rows_by_id,
            meta_cols,
            temperature,
        )
        for qi, q in enumerate(inputs)
    ]
    return LookupResult(
        store=str(st.path),
        backbone=info.backbone,
        column=info.column,
        k=k,
        where=where,
        store_version=st.version,
        used_index=cands.saved,
        index_kind=cands.index.kind_,
        index_stale=cands.stale,
        warnings=notes,
        results=results,
    )


def _checked(
    queries: list[str | bytes], k: int, index: str, runtime: str, temperature: float
) -> tuple[list[str | bytes], int]:
    """The queries (paths as text) and ``k``, after the checks of every argument."""
    queries = [q if isinstance(q, bytes) else str(q) for q in queries]
    if not queries:
        raise StoreError("no queries given: name image files or stored row ids")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise StoreError(f"k must be at least 1, not {k}")
    if index not in LOOKUP_INDEXES:
        raise StoreError(f"unknown index {index!r}; valid: {', '.join(LOOKUP_INDEXES)}")
    if runtime not in RUNTIMES:
        raise StoreError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if not temperature > 0:
        raise StoreError(f"temperature must be > 0, not {temperature}")
    return queries, int(k)


def _read_queries(queries: list[str | bytes]) -> list[Input]:
    """Read and hash every file first: cheap errors before any heavy work."""
    inputs = read_inputs(queries, allow_ids=True)
    for q in inputs:
        if q.error:
            raise StoreError(f"{q.name}: {q.error}")
    return inputs


@dataclass
class _Candidates:
    """What the queries are searched against: an index (None: exact search over ``Xn``, built
    in :func:`_search`), the row ids it returns positions in, and whether it was saved."""

    index: Any
    ids: list[str]
    Xn: np.ndarray | None  # the normalised stored vectors, when read here
    saved: bool = False
    stale: bool = False


def _candidates(
    st: Store,
    info: Any,
    index: LookupIndex,
    where: str | None,
    dev: torch.device,
    notes: list[str],
    resident: Resident | None,
    k: int,
) -> _Candidates:
    """The resident embeddings, a fresh saved index, or the (filtered) stored embeddings."""
    use_resident = resident is not None and where is None and info.column in resident.columns
    saved, stale = (
        (None, False) if use_resident else saved_index(st, info, index, where, dev, notes)
    )
    if use_resident:
        assert resident is not None  # use_resident checked it
        search_index, rows = resident.index(info.column)
        cands = _Candidates(search_index, resident.ids[rows].tolist(), None)
    elif saved is not None:
        cands = _Candidates(saved[0], saved[1], None, saved=True, stale=stale)
    else:
        X, cols = st.embeddings(info.backbone, where=where, columns=("id",))
        cands = _Candidates(None, list(cols["id"]), l2_normalize(X), stale=stale)  # (N, d)
    n = len(cands.ids)
    if n == 0:
        raise StoreError(
            f"{st.path}: no images with {info.backbone} embeddings"
            + (f" match --where {where!r}" if where else "")
        )
    if k > n:
        raise StoreError(
            f"k={k} but the store has {n} images with {info.backbone} embeddings"
            + (" matching --where" if where else "")
        )
    return cands


def _search(
    cands: _Candidates, Qn: np.ndarray, k: int, index: LookupIndex, dev: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, positions)``, each ``(Nq, k)``; exact float32 cosines when the stored
    vectors were read here (the torch path on CUDA searches in float16)."""
    if cands.index is None:
        kind = "exact" if index in ("auto", "exact") else index
        cands.index = NeighborIndex(kind=kind, device=dev).build(cands.Xn)
    sims, idx = cands.index.search(Qn, k)
    if cands.Xn is not None:
        safe = np.where(idx >= 0, idx, 0)
        exact = np.einsum("qd,qkd->qk", Qn, cands.Xn[safe])  # (Nq, k)
        sims = np.where(idx >= 0, exact, -np.inf).astype(np.float32)
        order = np.argsort(-sims, axis=1, kind="stable")
        sims, idx = np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)
    return sims, idx


def _query_result(
    q: Input,
    in_store: bool,
    sims: np.ndarray,
    idx: np.ndarray,
    ids: list[str],
    rows_by_id: dict[str, dict[str, Any]],
    meta_cols: list[str],
    temperature: float,
) -> QueryResult:
    """One query's neighbours (with their metadata) and the vote on their labels."""
    neighbors = []
    for s, j in zip(sims.tolist(), idx.tolist(), strict=True):
        if j < 0:
            continue
        row = rows_by_id[ids[j]]
        nb = {"id": ids[j], "path": row["path"], "label": row["label"], "similarity": float(s)}
        nb.update({c: row[c] for c in meta_cols if c not in nb})
        neighbors.append(nb)
    v = vote([nb["label"] for nb in neighbors], [nb["similarity"] for nb in neighbors], temperature)
    assert q.id is not None  # _read_queries let through only inputs read without an error
    return QueryResult(q.name, q.id, in_store, neighbors, v)


def vote(
    labels: list[Any], similarities: list[float], temperature: float = 0.07, top: int = TOP_VOTES
) -> dict[str, Any]:
    """DINOv2-style vote: each labelled neighbour adds ``exp(sim / T)`` to its label.

    Scores are shares of the labelled votes (they sum to 1); ``None`` labels do not vote.
    Returns ``{"label", "score", "votes": [{"label", "score"}, ...]}`` (``top`` labels, best
    first; ties broken by label); ``label``/``score`` are None when no neighbour has a label.
    """
    pairs = [(lab, s) for lab, s in zip(labels, similarities, strict=True) if lab is not None]
    if not pairs:
        return {"label": None, "score": None, "votes": []}
    best = max(s for _, s in pairs)
    totals: dict[Any, float] = {}
    for lab, s in pairs:  # relative to the best neighbour: same shares, no overflow for small T
        totals[lab] = totals.get(lab, 0.0) + math.exp((s - best) / temperature)
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], str(kv[0])))
    votes = [{"label": lab, "score": w / total} for lab, w in ranked[:top]]
    return {"label": votes[0]["label"], "score": votes[0]["score"], "votes": votes}


# --------------------------------------------------------------------------- store rows


def _metadata_columns(st: Store, columns: list[str] | None) -> list[str]:
    schema = st.schema()
    names = [] if schema is None else schema.names
    if columns is None:
        return [c for c in names if not c.startswith(EMB_PREFIX) and c not in BOOKKEEPING]
    columns = list(dict.fromkeys(columns))
    emb = [c for c in columns if c.startswith(EMB_PREFIX)]
    if emb:
        raise StoreError(f"column(s) {', '.join(emb)} hold embeddings; give metadata columns")
    unknown = [c for c in columns if c not in names]
    if unknown:
        valid = ", ".join(c for c in names if not c.startswith(EMB_PREFIX))
        raise StoreError(f"{st.path}: no column(s) {', '.join(unknown)}; columns: {valid}")
    return columns


def _rows_by_id(st: Store, ids: list[str], meta_cols: list[str]) -> dict[str, dict[str, Any]]:
    """``id -> {"path", "label", *meta_cols}`` (JSON-able values) for the neighbours."""
    schema = st.schema()
    assert schema is not None  # the store has the embeddings searched
    names = schema.names
    cols = [c for c in dict.fromkeys(["id", "path", "root", "label", *meta_cols]) if c in names]
    out: dict[str, dict[str, Any]] = {}
    for row in st.read(cols, ids=ids).to_pylist():
        rel, root = row.get("path"), row.get("root")
        full = os.path.join(root, rel) if root and rel else rel
        out[row["id"]] = {
            **{c: jsonable(row[c]) for c in meta_cols},
            "path": full,
            "label": row.get("label"),
        }
    return out


__all__ = ["BOOKKEEPING", "LookupResult", "QueryResult", "lookup", "vote"]
