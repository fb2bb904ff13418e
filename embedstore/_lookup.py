"""Nearest stored images for query images or row ids, and the saved ANN indexes behind them.

A query is an image file or a row id (the 64-hex SHA-256 of a stored image's bytes). A file whose
bytes are already stored uses the stored embedding, so an exact duplicate comes back first with
similarity 1.0; any other file is decoded and embedded with the backbone recorded in the
embedding column's metadata (rebuilt once per call, only when needed). Lookups read no file but
the ones the user named, and write nothing.

Search runs over the stored embeddings of one backbone (optionally filtered by a SQL ``where``)
with :class:`heads._search.NeighborIndex`. :func:`build_index` saves an index to
``<store>/indexes/<column>.faiss`` with:

- ``<column>.faiss.json``: the :class:`NeighborIndex` sidecar plus a ``"store"`` entry (store
  version, backbone, column, ids file, build id, time);
- ``<column>.ids.parquet``: the row ids in index order (column ``id``; the build id in the
  schema metadata, checked against the sidecar).

``lookup`` uses a saved index when it was built at the store's current version and no ``where``
is given; an index from an older version is *stale*: ignored (``"index_stale": true`` in the
result) until :func:`build_index` rebuilds it.

>>> res = lookup("flowers", ["photo.jpg"], k=5)
>>> res["results"][0]["vote"]
{'label': 'daisy', 'score': 0.97, 'votes': [...]}
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
import uuid
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import torch

from embedstore._backbones import (
    Backbone,
    BackboneError,
    backbone_from_description,
    weights_mismatch,
)
from embedstore._images import ImageError, decode_image, hash_bytes, read_bytes
from embedstore._store import EMB_PREFIX, EmbeddingInfo, Store, StoreError, _sql_str, connect
from heads._device import resolve_device
from heads._search import AUTO_ANN_MIN_VECTORS, NeighborIndex, l2_normalize, sidecar_path

LookupIndex = Literal["auto", "exact", "ivf", "hnsw"]
LOOKUP_INDEXES: tuple[str, ...] = get_args(LookupIndex)
INDEX_DIR = "indexes"
TOP_VOTES = 5  # labels listed under "votes"
EMBED_BATCH = 32  # query images per forward pass
_ID_CHUNK = 2000  # ids per "id IN (...)" read
# Columns every ingest writes; not returned as metadata by default.
BOOKKEEPING = frozenset(
    {"id", "path", "paths", "root", "label", "width", "height", "bytes", "added_at"}
)
_HEX_ID = re.compile(r"^[0-9a-fA-F]{64}$")
_RUST_LOCATION = re.compile(r",\s*\S+\.rs:\d+:\d+\s*$")


# --------------------------------------------------------------------------- public API


def lookup(
    store: Store | str | os.PathLike,
    queries: list[str],
    *,
    k: int = 10,
    backbone: str | None = None,
    where: str | None = None,
    columns: list[str] | None = None,
    index: LookupIndex = "auto",
    device: str | torch.device = "auto",
    temperature: float = 0.07,
) -> dict[str, Any]:
    """The ``k`` stored images most similar (cosine) to each query, and a kNN vote on their labels.

    ``queries``: image file paths or stored row ids. ``where``: SQL filter on the candidates
    (``"split = 'train'"``). ``columns``: metadata columns returned per neighbour (default: every
    column that is not an embedding or ingest bookkeeping, e.g. ``split``, ``fold`` and the
    metadata file's columns). ``index``: ``"auto"`` uses a fresh saved index when there is one
    (and no ``where``), else exact search in memory; ``"exact"``/``"ivf"``/``"hnsw"`` use a
    fresh saved index of that kind, else build one of that kind in memory.

    Returns ``{"backbone", "column", "k", "store_version", "used_index", "index_kind",
    "index_stale", "warnings", "results"}``; ``results`` has one entry per query: ``query``,
    ``query_id`` (SHA-256 of the file, or the id given), ``in_store`` (the query's embedding came
    from the store), ``neighbors`` (``id``, ``path`` (root joined with the stored relative path),
    ``label``, ``similarity`` and the metadata columns, best first) and ``vote``
    (``{"label", "score", "votes": [{"label", "score"}, ...]}``: neighbours vote with weight
    ``exp(sim / temperature)``, DINOv2 style; unlabelled neighbours do not vote; scores are
    shares of the labelled votes). Raises :class:`StoreError` with a message for bad input.
    """
    st = _open_store(store)
    queries = [str(q) for q in queries]
    if not queries:
        raise StoreError("no queries given: name image files or stored row ids")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise StoreError(f"k must be at least 1, not {k}")
    k = int(k)
    if index not in LOOKUP_INDEXES:
        raise StoreError(f"unknown index {index!r}; valid: {', '.join(LOOKUP_INDEXES)}")
    if not temperature > 0:
        raise StoreError(f"temperature must be > 0, not {temperature}")
    info = st.resolve_backbone(backbone)
    meta_cols = _metadata_columns(st, columns)
    if where is not None:
        _check_where(st, where)
    dev = resolve_device(device)
    notes: list[str] = []

    # Queries: read and hash every file first (cheap errors before any heavy work).
    parsed = [_parse_query(q) for q in queries]  # (query, id, bytes or None)
    stored_q = _stored_vectors(st, info, {qid for _, qid, _ in parsed})  # id -> (d,) float32
    for q, qid, data in parsed:
        if data is None and qid not in stored_q:
            _missing_id(st, info, q, qid)
    to_embed = {
        i: _decode(q, data) for i, (q, qid, data) in enumerate(parsed) if qid not in stored_q
    }

    # Candidates: a fresh saved index, or the (filtered) stored embeddings.
    saved, stale = _saved_index(st, info, index, where, dev, notes)
    if saved is not None:
        search_index, ids = saved
        Xn = None
    else:
        X, cols = st.embeddings(info.backbone, where=where, columns=("id",))
        Xn = l2_normalize(X)  # (N, d) float32
        ids = list(cols["id"])
        del X
    n = len(ids)
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

    # Query vectors (D = dim).
    Q = np.zeros((len(parsed), info.dim), dtype=np.float32)  # (Nq, D)
    for i, (_, qid, _) in enumerate(parsed):
        if qid in stored_q:
            Q[i] = stored_q[qid]
    if to_embed:
        bb = _rebuild_backbone(info, dev, parsed[next(iter(to_embed))][0], notes)
        rows = sorted(to_embed)
        Q[rows] = _embed_images(bb, [to_embed[i] for i in rows])
    Qn = l2_normalize(Q, "queries")  # (Nq, D)

    # Search.
    if saved is None:
        kind = "exact" if index in ("auto", "exact") else index
        search_index = NeighborIndex(kind=kind, device=dev).build(Xn)
    sims, idx = search_index.search(Qn, k)  # (Nq, k), (Nq, k)
    if Xn is not None:  # exact float32 cosines (the torch path on CUDA searches in float16)
        safe = np.where(idx >= 0, idx, 0)
        exact = np.einsum("qd,qkd->qk", Qn, Xn[safe])  # (Nq, k)
        sims = np.where(idx >= 0, exact, -np.inf).astype(np.float32)
        order = np.argsort(-sims, axis=1, kind="stable")
        sims, idx = np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)

    wanted = sorted({ids[j] for j in idx[idx >= 0].tolist()})
    rows_by_id = _rows_by_id(st, wanted, meta_cols)
    results = []
    for qi, (q, qid, _) in enumerate(parsed):
        neighbors = []
        for s, j in zip(sims[qi].tolist(), idx[qi].tolist(), strict=True):
            if j < 0:
                continue
            row = rows_by_id[ids[j]]
            nb = {"id": ids[j], "path": row["path"], "label": row["label"], "similarity": float(s)}
            nb.update({c: row[c] for c in meta_cols if c not in nb})
            neighbors.append(nb)
        results.append(
            {
                "query": q,
                "query_id": qid,
                "in_store": qid in stored_q,
                "neighbors": neighbors,
                "vote": vote(
                    [nb["label"] for nb in neighbors],
                    [nb["similarity"] for nb in neighbors],
                    temperature,
                ),
            }
        )
    return {
        "store": str(st.path),
        "backbone": info.backbone,
        "column": info.column,
        "k": k,
        "where": where,
        "store_version": st.version,
        "used_index": saved is not None,
        "index_kind": search_index.kind_,
        "index_stale": stale,
        "warnings": notes,
        "results": results,
    }


def build_index(
    store: Store | str | os.PathLike,
    *,
    backbone: str | None = None,
    kind: LookupIndex = "auto",
    nlist: int | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> dict[str, Any]:
    """Build and save an index over every stored embedding of one backbone.

    ``kind``: ``"auto"`` is IVF-flat from :data:`~heads._search.AUTO_ANN_MIN_VECTORS` (200,000)
    vectors up and an exact flat index below (a saved flat index still spares ``lookup`` the
    normalisation of the store; below 200k brute force is as fast as an ANN search and exact).
    ``"ivf"`` (``nlist`` lists, default ``4 sqrt(N)``), ``"hnsw"`` or ``"exact"``. An index
    already built at the current store version with the same kind is kept unless ``force``.

    Returns ``{"backbone", "column", "kind", "ntotal", "dim", "nlist", "store_version", "path",
    "built", "seconds"}`` (``built`` False when the existing index was up to date).
    """
    t0 = time.perf_counter()
    st = _open_store(store)
    if kind not in LOOKUP_INDEXES:
        raise StoreError(f"unknown index kind {kind!r}; valid: {', '.join(LOOKUP_INDEXES)}")
    info = st.resolve_backbone(backbone)
    if nlist is not None and kind not in ("ivf", "auto"):
        raise StoreError(f"nlist only applies to kind 'ivf', not {kind!r}")
    version = st.version  # read first: a write during the build leaves the index stale, not wrong
    faiss_path, ids_path = index_paths(st, info)
    n = st.count(f"{info.column} IS NOT NULL")
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
        and manifest["store"]["version"] == version
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
        import pyarrow.parquet as pq

        ids_table = pa.table({"id": pa.array(list(cols["id"]), pa.string())})
        ids_table = ids_table.replace_schema_metadata({"embedstore.build_id": build_id})
        pq.write_table(ids_table, tmp_ids)
        tmp_sidecar = idx.save(tmp)
        meta = json.loads(tmp_sidecar.read_text())
        meta["store"] = {
            "version": version,
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


# --------------------------------------------------------------------------- queries


def _open_store(store: Store | str | os.PathLike) -> Store:
    st = store if isinstance(store, Store) else connect(store, create=False)
    if not st.exists:
        raise StoreError(
            f"{st.path}: the store is empty; run `embedstore ingest IMAGES_DIR --store {st.path}`"
        )
    return st


def _parse_query(q: str) -> tuple[str, str, bytes | None]:
    """``(query, id, file bytes)``: a file is read and hashed; a 64-hex string is a row id."""
    if os.path.isfile(q):
        try:
            data = read_bytes(q)
        except ImageError as e:
            raise StoreError(f"{q}: cannot read the query file: {e}") from e
        return q, hash_bytes(data), data
    if _HEX_ID.match(q) and not os.path.exists(q):
        return q, q.lower(), None
    if os.path.isdir(q):
        raise StoreError(f"{q}: is a folder; give image files or stored row ids")
    raise StoreError(f"{q}: query file not found (give an image file or a 64-hex stored row id)")


def _missing_id(st: Store, info: EmbeddingInfo, q: str, qid: str) -> None:
    if st.count(f"id = {_sql_str(qid)}"):
        raise StoreError(f"{q}: the stored image has no {info.backbone} embedding")
    raise StoreError(f"{q}: no stored image has this id (and no such file)")


def _decode(q: str, data: bytes | None) -> Any:
    try:
        return decode_image(data or b"")
    except ImageError as e:
        raise StoreError(f"{q}: cannot use as a query image: {e}") from e


def _stored_vectors(st: Store, info: EmbeddingInfo, ids: set[str]) -> dict[str, np.ndarray]:
    """Stored embeddings (float32 ``(d,)``) of those ``ids`` that have one."""
    out: dict[str, np.ndarray] = {}
    ids_l = sorted(ids)
    for s in range(0, len(ids_l), _ID_CHUNK):
        chunk = ids_l[s : s + _ID_CHUNK]
        X, cols = st.embeddings(info.backbone, where=_id_filter(chunk), columns=("id",))
        out.update(zip(cols["id"].tolist(), X, strict=True))
    return out


def _rebuild_backbone(
    info: EmbeddingInfo, dev: torch.device, first: str, notes: list[str]
) -> Backbone:
    """The backbone recorded in the column's metadata; warns when its weights differ."""
    try:
        bb = backbone_from_description(info.describe, warn=False)
    except BackboneError as e:
        raise StoreError(
            f"{first}: not in the store, and backbone {info.backbone!r} (source "
            f"{info.describe.get('source')}) cannot be rebuilt to embed it: {e}. Query stored "
            "images by row id instead"
        ) from e
    msg = weights_mismatch(bb, info.describe)
    if msg:
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
    return bb.to(dev)


def _embed_images(bb: Backbone, images: list[Any]) -> np.ndarray:
    """PIL RGB images -> ``(n, dim)`` float32 embeddings, in batches."""
    out = []
    for s in range(0, len(images), EMBED_BATCH):
        x = torch.from_numpy(np.stack([bb.preprocess(im) for im in images[s : s + EMBED_BATCH]]))
        out.append(bb.embed(x).cpu().numpy())  # (B, dim)
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------- store helpers


def _check_where(st: Store, where: str) -> None:
    try:
        st.count(where)
    except (ValueError, OSError) as e:
        reason = _RUST_LOCATION.sub("", str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise StoreError(f"invalid --where expression {where!r}: {reason}") from e


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


def _id_filter(ids: list[str]) -> str:
    return "id IN (" + ", ".join(_sql_str(i) for i in ids) + ")"


def _rows_by_id(st: Store, ids: list[str], meta_cols: list[str]) -> dict[str, dict[str, Any]]:
    """``id -> {"path", "label", *meta_cols}`` (JSON-able values) for the neighbours."""
    cols = list(dict.fromkeys(["id", "path", "root", "label", *meta_cols]))
    out: dict[str, dict[str, Any]] = {}
    for s in range(0, len(ids), _ID_CHUNK):
        for row in st.read(columns=cols, where=_id_filter(ids[s : s + _ID_CHUNK])).to_pylist():
            rel, root = row.get("path"), row.get("root")
            full = os.path.join(root, rel) if root and rel else rel
            out[row["id"]] = {
                **{c: jsonable(row[c]) for c in meta_cols},
                "path": full,
                "label": row["label"],
            }
    return out


def jsonable(value: Any) -> Any:
    """An Arrow/Python value as JSON: dates as ISO strings, NaN as None, bytes as hex."""
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- saved indexes


def _saved_index(
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
    if built_at != now:
        notes.append(
            f"the saved {manifest.get('kind')} index for {info.backbone} is stale (built at store "
            f"version {built_at}, the store is at {now}); searched without it. Rebuild it with "
            "`embedstore index`"
        )
        return None, True
    if where is not None or index not in ("auto", manifest.get("kind")):
        return None, False
    import pyarrow.parquet as pq

    faiss_path, ids_path = index_paths(st, info)
    try:
        ids_table = pq.read_table(ids_path)
        build_id = (ids_table.schema.metadata or {}).get(b"embedstore.build_id", b"").decode()
        loaded = NeighborIndex.load(faiss_path, device=dev)
    except (OSError, ValueError, RuntimeError) as e:
        notes.append(f"the saved index {faiss_path} cannot be read ({e}); searched without it")
        return None, False
    ids = ids_table.column("id").to_pylist()
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


def _build_summary(
    st: Store, info: EmbeddingInfo, meta: dict[str, Any], path: Path, *, built: bool, t0: float
) -> dict[str, Any]:
    return {
        "backbone": info.backbone,
        "column": info.column,
        "kind": meta["kind"],
        "ntotal": meta["ntotal"],
        "dim": meta["dim"],
        "nlist": meta.get("nlist"),
        "store_version": meta["store"]["version"],
        "path": str(path),
        "built": built,
        "seconds": round(time.perf_counter() - t0, 3),
    }


__all__ = [
    "BOOKKEEPING",
    "LOOKUP_INDEXES",
    "build_index",
    "index_paths",
    "jsonable",
    "lookup",
    "read_index_manifest",
    "vote",
]
