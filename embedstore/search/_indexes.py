"""Saved ANN indexes for lookup: build, manifest, freshness.

:func:`build_index` saves an index over one backbone's stored embeddings to
``<store>/indexes/<column>.faiss`` with:

- ``<column>.faiss.json``: the :class:`NeighborIndex` sidecar plus a ``"store"`` entry (the
  embeddings version it was built from, backbone, column, ids file, build id, time);
- ``<column>.ids.parquet``: the row ids in index order (the build id in its metadata, checked
  against the sidecar).

An index is *fresh* while the store's rows and embeddings are those it was built from (the store's
``embeddings_token``; metadata-only writes such as ``split`` keep it). A stale index is ignored
(``"index_stale": true`` in the lookup result) until :func:`build_index` rebuilds it. Why a faiss
side file rather than a Lance vector index inside the dataset: see ``benchmarks/RESULTS.md`` (lookup
index comparison).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedstore._results import Result
from embedstore.search._search import AUTO_ANN_MIN_VECTORS, NeighborIndex, sidecar_path
from embedstore.store._lance import load_ids, save_ids
from embedstore.store._store import EmbeddingInfo, Store, StoreError, connect
from embedstore.types import LOOKUP_INDEXES, LookupIndex

INDEX_DIR = "indexes"


def open_store(store: Store | str | os.PathLike) -> Store:
    """A store with images in it, or StoreError saying how to make one."""
    st = store if isinstance(store, Store) else connect(store, create=False)
    if not st.exists:
        raise StoreError(
            f"{st.path}: the store is empty; run `embedstore ingest IMAGES_DIR --store {st.path}`"
        )
    return st


def build_index(
    store: Store | str | os.PathLike,
    *,
    backbone: str | None = None,
    kind: LookupIndex = "auto",
    nlist: int | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> IndexSummary:
    """Build and save an index over every stored embedding of one backbone.

    ``kind``: ``"auto"`` is IVF-flat from :data:`~embedstore.search._search.AUTO_ANN_MIN_VECTORS`
    (200,000) vectors up and an exact flat index below (a saved flat index still spares ``lookup``
    the normalisation of the store; below 200k brute force is as fast as an ANN search and exact).
    ``"ivf"`` (``nlist`` lists, default ``4 sqrt(N)``), ``"hnsw"`` or ``"exact"``. An index already
    built at the current store version with the same kind is kept unless ``force``.

    """
    t0 = time.perf_counter()
    st = open_store(store)
    if kind not in LOOKUP_INDEXES:
        raise StoreError(f"unknown index kind {kind!r}; valid: {', '.join(LOOKUP_INDEXES)}")
    info = st.resolve_backbone(backbone)
    if nlist is not None and kind not in ("ivf", "auto"):
        raise StoreError(f"nlist only applies to kind 'ivf', not {kind!r}")
    version = st.version  # read first: a write during the build leaves the index stale, not wrong
    token = st.meta.embeddings_token
    faiss_path, ids_path = index_paths(st, info)
    n = st.count(embedded=[info.column])
    if n == 0:
        raise StoreError(f"{st.path}: no images with {info.backbone} embeddings to index")
    resolved = kind if kind != "auto" else ("ivf" if n >= AUTO_ANN_MIN_VECTORS else "exact")
    if nlist is not None and resolved != "ivf":
        raise StoreError(
            f"nlist only applies to an IVF index; kind 'auto' gives an exact index for {n} "
            f"vectors (IVF from {AUTO_ANN_MIN_VECTORS:,}); pass kind='ivf'"
        )
    if nlist is not None and not 1 <= nlist <= n:
        raise StoreError(f"nlist={nlist} must be between 1 and the {n} vectors")
    manifest = read_index_manifest(st, info)
    if (
        not force
        and manifest is not None
        and _fresh(manifest, version, token)
        and manifest["kind"] == resolved
        and (nlist is None or manifest.get("nlist") == nlist)
    ):
        return _build_summary(st, info, manifest, faiss_path, built=False, t0=t0)

    X, cols = st.embeddings(info.backbone, columns=("id",))  # (N, d)
    idx = NeighborIndex(kind=resolved, backend="faiss", device=device, nlist=nlist).build(X)
    del X
    build_id = uuid.uuid4().hex
    faiss_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = faiss_path.with_name(f".{faiss_path.name}.{build_id}")
    tmp_ids = ids_path.with_name(f".{ids_path.name}.{build_id}")
    try:
        save_ids(tmp_ids, list(cols["id"]), build_id)
        tmp_sidecar = idx.save(tmp)
        meta = json.loads(tmp_sidecar.read_text())
        meta["store"] = {
            "version": version,
            "embeddings_token": token,
            "backbone": info.backbone,
            "column": info.column,
            "ids_file": ids_path.name,
            "build_id": build_id,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp_sidecar.write_text(json.dumps(meta, indent=2) + "\n")
        # The sidecar goes last: it is what makes the new index visible to lookup.
        os.replace(tmp_ids, ids_path)
        os.replace(tmp, faiss_path)
        os.replace(tmp_sidecar, sidecar_path(faiss_path))
    finally:
        for p in (tmp, tmp_ids, sidecar_path(tmp)):
            p.unlink(missing_ok=True)
    return _build_summary(st, info, meta, faiss_path, built=True, t0=t0)


def index_paths(store: Store, info: EmbeddingInfo) -> tuple[Path, Path]:
    """``(<store>/indexes/<column>.faiss, <store>/indexes/<column>.ids.parquet)``."""
    d = store.path / INDEX_DIR
    return d / f"{info.column}.faiss", d / f"{info.column}.ids.parquet"


def read_index_manifest(store: Store, info: EmbeddingInfo) -> dict[str, Any] | None:
    """The saved index's sidecar (with its ``"store"`` entry), or None when there is none."""
    faiss_path, _ = index_paths(store, info)
    side = sidecar_path(faiss_path)
    if not side.exists() or not faiss_path.exists():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta.get("store"), dict) else None


def _fresh(manifest: dict[str, Any], version: int, token: str | None) -> bool:
    """Built from the store's current embeddings: the same embeddings token (metadata-only
    writes such as ``split`` keep it), or, for an index without one, the same version."""
    built = manifest["store"]
    if built.get("embeddings_token") and token:
        return built["embeddings_token"] == token
    return built.get("version") == version


def saved_index(
    st: Store,
    info: EmbeddingInfo,
    index: str,
    where: str | None,
    dev: torch.device,
    notes: list[str],
) -> tuple[tuple[NeighborIndex, list[str]] | None, bool]:
    """``((index, ids) or None, stale)``: the saved index when it is fresh and fits the call."""
    manifest = read_index_manifest(st, info)
    if manifest is None:
        return None, False
    built_at, now = manifest["store"].get("version"), st.version
    if not _fresh(manifest, now, st.meta.embeddings_token):
        notes.append(
            f"the saved {manifest.get('kind')} index for {info.backbone} is stale (built at store "
            f"version {built_at}, the store is at {now}); searched without it. Rebuild it with "
            "`embedstore index`"
        )
        return None, True
    if where is not None or index not in ("auto", manifest.get("kind")):
        return None, False
    faiss_path, ids_path = index_paths(st, info)
    try:
        ids, build_id = load_ids(ids_path)
        loaded = NeighborIndex.load(faiss_path, device=dev)
    except (OSError, ValueError, RuntimeError) as e:
        notes.append(f"the saved index {faiss_path} cannot be read ({e}); searched without it")
        return None, False
    if (
        build_id != manifest["store"].get("build_id")
        or len(ids) != loaded.ntotal
        or loaded.dim != info.dim
    ):
        notes.append(
            f"the saved index {faiss_path} does not match its ids file; searched without it"
        )
        return None, False
    return (loaded, ids), False


@dataclass
class IndexSummary(Result):
    """A saved index: ``built`` is False when the existing one was already up to date."""

    backbone: str
    column: str
    kind: str
    ntotal: int
    dim: int
    nlist: int | None
    store_version: int
    path: str
    built: bool
    seconds: float


def _build_summary(
    st: Store, info: EmbeddingInfo, meta: dict[str, Any], path: Path, *, built: bool, t0: float
) -> IndexSummary:
    return IndexSummary(
        backbone=info.backbone,
        column=info.column,
        kind=meta["kind"],
        ntotal=meta["ntotal"],
        dim=meta["dim"],
        nlist=meta.get("nlist"),
        store_version=meta["store"]["version"],
        path=str(path),
        built=built,
        seconds=round(time.perf_counter() - t0, 3),
    )
