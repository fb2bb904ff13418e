"""Ingest on a Ray cluster (``ingest(..., engine="ray")``): the local ingest's plan, rows and
commits, with decoding in Ray tasks and the backbones in an actor pool.

- **Driver** (this process): :func:`embedstore.ingestion._ingest.plan_ingest` (scan, labels, metadata, what
  the store holds), then the content hash of every file to read (a thread pool here; Ray tasks
  above ``hash_tasks_over`` files), so every id is known before anything is decoded: files of
  stored images only get their paths and file records, bytes found under several names are
  decoded once, and nothing stored is embedded again.
- **Cluster**: decode tasks (read, check the hash, decode, preprocess: the local ingest's
  :func:`embedstore.ingestion._ingest.decode_file`), then ``map_batches`` over an actor pool: each actor
  builds its backbones once (on its GPU when it holds one), embeds, and writes the new rows as
  uncommitted Lance fragments (:func:`embedstore.store.write_image_fragments`).
- **Driver** again: streams the results and commits every ``commit_every`` images: the chunk's
  fragments appended in one transaction (:meth:`Store.fragments.append_fragments`), then embeddings of
  stored images, paths, file records and skipped files (the local ingest's ``_commit``). A job
  killed at any point leaves the store at its last commit and resumes like the local one: every
  image exactly once, the same schema, field metadata, dtype and ids.

One ingest writes a store at a time (as with the local ingest); a commit that finds another
writer's rows for the same images is refused rather than storing them twice.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from embedstore._images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageError,
    hash_bytes,
    read_bytes,
)
from embedstore._ray import ActorLayout, EngineError, actor_layout, connect_ray, import_ray
from embedstore.backbones._backbones import Backbone, create_backbone
from embedstore.backbones._onnx import with_runtime
from embedstore.backbones._preprocess import Preprocess
from embedstore.backbones._views import expand_views, view_column, view_describe
from embedstore.ingestion._ingest import (
    INGEST_ENGINES,
    IngestError,
    IngestPlan,
    IngestSummary,
    _commit,
    _missing,
    _Pending,
    _slot,
    _StoredPaths,
    check_folder,
    decode_file,
    plan_ingest,
    read_meta,
    summarize,
)
from embedstore.store._fragments import image_table, write_image_fragments
from embedstore.store._store import Store, connect
from embedstore.types import EmbDtype, Pooling, Runtime

HASH_TASKS_OVER = 20_000  # files to hash: above this the cluster hashes them, not the driver
_HASH_THREADS = 8  # reading and SHA-256 release the GIL
_DECODE_WORKER_BYTES = 384 << 20  # a decode task's process before its image (measured ~240 MiB)
# Pipeline columns that are not store columns (metadata columns never start with "__").
_FILE, _KNOWN, _UPDATE, _ERROR, _FRAGS = "__file", "__known", "__update", "__error", "__frags"
_NEED = "__need"  # a stored image's columns still to embed (null: a new image, every column)


def ingest_ray(
    images_dir: str | os.PathLike,
    store: str | os.PathLike | Store | None = None,
    *,
    backbones: list[str] | tuple[str, ...] = ("efficientnet-lite0",),
    pooling: Pooling = "cls",
    metadata: str | os.PathLike | None = None,
    label_column: str | None = None,
    join_column: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    runtime: Runtime = "auto",
    workers: int | None = None,  # unused: the cluster places its decode tasks itself
    dtype: EmbDtype = "float16",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    commit_every: int = 512,
    progress: bool = True,
    backbone_objects: list[Backbone] | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    hash_tasks_over: int = HASH_TASKS_OVER,
    views: list[str] | tuple[str, ...] | str | None = None,
) -> IngestSummary:
    """:func:`embedstore.ingest` with ``engine="ray"``: same arguments, same result.

    ``views`` as in the local ingest: the decode tasks make each image's views beside its main
    array and the actors embed them into their own columns; a stored image gets only the
    columns it lacks (adding views to a store embeds only the views).

    ``ray_address``: None (the cluster this process joined, else a new local one), ``"auto"``
    or ``"HOST:PORT"``; ``actors`` embedding actors (default: one per GPU, or half the CPUs),
    each holding ``gpus_per_actor`` GPUs (default 1 where the cluster has GPUs) and
    ``cpus_per_actor`` CPUs. Backbones are named (``backbones``), as every actor builds its own.
    """
    t0 = time.perf_counter()
    root = check_folder(images_dir, batch_size, dtype)
    if backbone_objects:
        raise IngestError(
            "engine 'ray' builds each backbone on its actors from its name: pass "
            "backbones=[name, ...], not backbone_objects"
        )
    if commit_every < 1:
        raise IngestError(f"--commit-every must be at least 1, not {commit_every}")
    try:
        view_names = expand_views(views)
    except ValueError as e:
        raise IngestError(f"--views: {e}") from None
    try:
        cluster = connect_ray(ray_address, quiet=not progress)
        layout = actor_layout(
            cluster,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
            device=device,
        )
    except EngineError as e:
        raise IngestError(str(e)) from None
    names = list(dict.fromkeys(backbones))
    models = _driver_models(names, pooling, runtime, layout)
    st = store if isinstance(store, Store) else connect(store)
    meta = read_meta(metadata, join_column, label_column)
    plan = plan_ingest(st, root, models, dtype, meta, label_column, view_names)
    columns = embedding_columns(models, plan.views)

    stats: Counter = Counter()
    pending = _Pending()
    ids = _hash(plan, hash_tasks_over)
    rels_of, todo = _sort_work(plan, root, ids, pending, stats, _StoredPaths(st, str(root)))
    if todo:  # the table, with every column the workers will write
        describes = {m.column: m.describe() for m in models}
        schema = image_table(
            [],
            metadata={k: v.slice(0, 0) for k, v in plan.meta_cols.items()},
            embeddings={c: np.zeros((0, m.dim), np.float32) for c, m, _ in columns},
            describes={
                c: describes[m.column]
                if v is None
                else view_describe(describes[m.column], m.column, v)
                for c, m, v in columns
            },
            dtype=dtype,
        )
        st.fragments.prepare_images(schema.schema)
        for m in models:  # a new store: its main columns were made just now
            if plan.views.get(m.name):
                st.meta.record_views(m.column, plan.views[m.name])
    _commit(
        st,
        root,
        pending,
        models,
        dtype,
        plan.meta_cols,
        plan.skipped,
        plan.store_ids,
        plan.have,
        plan.views,
    )  # files of stored images: their paths and records

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(plan.work),
        unit="img",
        desc=f"ingest {root.name} (ray)",
        disable=not progress,
        smoothing=0.1,
    )
    bar.update(len(plan.work) - sum(len(r) for r in rels_of.values()))  # hashed and done
    try:
        if todo:
            rows = _input_rows(plan, root, todo, rels_of, columns)
            results = _pipeline(
                rows,
                st,
                names,
                pooling,
                runtime,
                models,
                layout,
                dtype,
                max_pixels,
                batch_size,
                commit_every,
                plan,
                max_bytes,
            )
            _drain(
                results, st, root, models, dtype, plan, rels_of, pending, stats, commit_every, bar
            )
    finally:
        bar.close()
    st.compact(min_fragments=16)  # merge the many small fragments of a chunked ingest
    return summarize(st, root, t0, plan, stats, models, layout.device, engine="ray")


INGEST_ENGINES.register("ray", ingest_ray)


# ---------------------------------------------------------------------- driver


def embedding_columns(
    models: list[Backbone], views: dict[str, list[str]]
) -> list[tuple[str, Backbone, str | None]]:
    """Every column this ingest fills: ``(column, backbone, view)``, each backbone's main
    column (view None) and then its views'."""
    return [
        (m.column if v is None else view_column(m.column, v), m, v)
        for m in models
        for v in (None, *views.get(m.name, []))
    ]


def _have_key(m: Backbone, column: str, view: str | None) -> str:
    """The key of ``column`` in ``IngestPlan.have``: a backbone's name, or a view's column."""
    return m.name if view is None else column


def _driver_models(
    names: list[str], pooling: Pooling, runtime: Runtime, layout: ActorLayout
) -> list[Backbone]:
    """The backbones as the actors will run them, for their descriptions (the columns'
    provenance). CPU actors run what ``runtime`` chooses on a CPU; building it here exports
    the ONNX graph once into this machine's cache, which actors on it then load."""
    if layout.device == "cpu":
        return [with_runtime(create_backbone(b, pooling), runtime, "cpu") for b in names]
    if runtime in ("onnx", "onnx-int8"):
        raise IngestError(
            f"--runtime {runtime} runs on the CPU and the actors hold GPUs; use --runtime torch (or "
            "auto), or --gpus-per-actor 0"
        )
    return [create_backbone(b, pooling) for b in names]  # torch, as on the actors' GPUs


def _hash_one(path: str) -> tuple[str | None, str | None]:
    """``(id, None)`` or ``(None, reason)`` for one file (the reason a skipped file gets)."""
    try:
        return hash_bytes(read_bytes(path)), None
    except ImageError as e:
        return None, str(e)


def _hash_batch(batch: pa.Table) -> pa.Table:
    out = [_hash_one(p) for p in batch.column(_FILE).to_pylist()]
    return pa.table(
        {
            "rel": batch.column("rel"),
            "id": pa.array([i for i, _ in out], pa.string()),
            _ERROR: pa.array([e for _, e in out], pa.string()),
        }
    )


def _hash(plan: IngestPlan, tasks_over: int) -> dict[str, tuple[str | None, str | None]]:
    """``rel -> (id, error)`` for every file to read (known ids as they are)."""
    out = {w.rel: (w.known_id, None) for w in plan.work if w.known_id is not None}
    todo = [w for w in plan.work if w.known_id is None]
    if len(todo) <= tasks_over:
        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            out.update(
                zip([w.rel for w in todo], pool.map(_hash_one, [w.path for w in todo]), strict=True)
            )
        return out
    ray = import_ray()
    t = pa.table({_FILE: [w.path for w in todo], "rel": [w.rel for w in todo]})
    ds = ray.data.from_arrow([t.slice(s, 1024) for s in range(0, t.num_rows, 1024)])
    for b in ds.map_batches(_hash_batch, batch_format="pyarrow", batch_size=None).iter_batches(
        batch_format="pyarrow", batch_size=None
    ):
        for rel, i, err in zip(
            *(b.column(c).to_pylist() for c in ("rel", "id", _ERROR)), strict=True
        ):
            out[rel] = (i, err)
    return out


class _Todo:
    """One image to decode and embed: its first file, its id, and whether it is stored (and
    only misses a backbone) or new."""

    __slots__ = ("work", "id", "update")

    def __init__(self, work: Any, image_id: str, update: bool) -> None:
        self.work, self.id, self.update = work, image_id, update


def _sort_work(
    plan: IngestPlan, root: Path, ids: dict, pending: _Pending, stats: Counter, known: _StoredPaths
) -> tuple[dict[str, list[str]], list[_Todo]]:
    """Sort the files to read by id, as the local ingest decides per file: unreadable ones are
    skipped; files of images stored with every backbone get their path and record now (a path
    the image already has is a file re-checked after a crash, another path a duplicate name);
    the first file of each other id is decoded, the rest share its result."""
    rels_of: dict[str, list[str]] = {}
    todo: list[_Todo] = []
    for w in plan.work:
        image_id, error = ids[w.rel]
        if image_id is None:
            plan.skipped.append({"root": str(root), "rel": w.rel, "reason": error})
            continue
        if image_id in plan.store_ids and not _missing(image_id, plan.have):
            pending.files.append((w.rel, image_id))
            pending.ok_rels.append(w.rel)
            pending.add_path(image_id, w.rel)  # a renamed or duplicated file of a stored image
            stats["rechecked" if known.has(image_id, w.rel) else "duplicates"] += 1
            continue
        if image_id not in rels_of:
            rels_of[image_id] = []
            todo.append(_Todo(w, image_id, image_id in plan.store_ids))
        rels_of[image_id].append(w.rel)
    return rels_of, todo


def _input_rows(
    plan: IngestPlan,
    root: Path,
    todo: list[_Todo],
    rels_of: dict[str, list[str]],
    columns: list[tuple[str, Backbone, str | None]],
) -> pa.Table:
    """The pipeline's input: one row per image to embed, with every store column that does
    not need the image (ids, paths, labels, metadata) and what the decode task needs."""
    pos = [plan.rel_pos[t.work.rel] for t in todo]
    labels = [plan.labels_split[q] for q in pos]
    need = [
        [c for c, m, v in columns if t.id not in plan.have[_have_key(m, c, v)]]
        if t.update
        else None
        for t in todo
    ]
    cols: dict[str, Any] = {
        _FILE: pa.array([t.work.path for t in todo], pa.string()),
        _KNOWN: pa.array([t.work.known_id is not None for t in todo], pa.bool_()),
        _UPDATE: pa.array([t.update for t in todo], pa.bool_()),
        _NEED: pa.array(need, pa.list_(pa.string())),
        "id": pa.array([t.id for t in todo], pa.string()),
        "path": pa.array([t.work.rel for t in todo], pa.string()),
        "paths": pa.array([rels_of[t.id] for t in todo], pa.list_(pa.string())),
        "root": pa.array([str(root)] * len(todo), pa.string()),
        "label": pa.array([lab for lab, _ in labels], pa.string()),
        "split": pa.array([sp for _, sp in labels], pa.string()),
    }
    take = pa.array(pos, pa.int64())
    for name, col in plan.meta_cols.items():
        cols[name] = col.take(take)
    return pa.table(cols)


def _pipeline(
    rows: pa.Table,
    st: Store,
    names: list[str],
    pooling: Pooling,
    runtime: Runtime,
    models: list[Backbone],
    layout: ActorLayout,
    dtype: EmbDtype,
    max_pixels: int,
    batch_size: int,
    commit_every: int,
    plan: IngestPlan,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """The Ray Dataset of results: decode tasks, then the embedding actors that write fragments."""
    ray = import_ray()
    preprocs = list(dict.fromkeys(m.preprocess for m in models))
    pre_of = [preprocs.index(m.preprocess) for m in models]
    pre_views = [
        tuple(
            dict.fromkeys(
                v
                for m, q in zip(models, pre_of, strict=True)
                if q == k
                for v in plan.views.get(m.name, [])
            )
        )
        for k in range(len(preprocs))
    ]  # (views per preprocessing, as local)
    blocks = [rows.slice(s, batch_size) for s in range(0, rows.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks)
    # One CPU per decode task, and the memory of a worker (Python, torch, PIL) plus the largest
    # image it may decode (RGB at max_pixels): what Ray places them by. Remote arguments unlike
    # the actors' also keep Ray Data from fusing decoding into the actors, which would
    # serialise it behind the model.
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={
            "preprocs": preprocs,
            "max_pixels": max_pixels,
            "max_bytes": max_bytes,
            "views": pre_views,
        },
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=1,
        memory=_DECODE_WORKER_BYTES + 3 * max_pixels,
    )
    return ds.map_batches(
        _EmbedWriter,
        fn_constructor_kwargs={
            "store_path": str(st.path),
            "names": names,
            "pooling": pooling,
            "runtime": runtime,
            "device": layout.device,
            "threads": max(1, int(layout.cpus)),
            "dtype": dtype,
            "preprocs": preprocs,
            "meta_names": list(plan.meta_cols),
            "batch_size": batch_size,
            "pre_views": pre_views,
            "views_of": plan.views,
        },
        batch_format="pyarrow",
        batch_size=commit_every,
        compute=ray.data.ActorPoolStrategy(size=layout.actors),
        num_cpus=layout.cpus,
        num_gpus=layout.gpus,
    )


def _drain(
    results: Any,
    st: Store,
    root: Path,
    models: list[Backbone],
    dtype: EmbDtype,
    plan: IngestPlan,
    rels_of: dict[str, list[str]],
    pending: _Pending,
    stats: Counter,
    commit_every: int,
    bar: Any,
) -> None:
    """Take the actors' results as they come and commit them in chunks."""
    chunk = _Chunk(st.version)
    columns = embedding_columns(models, plan.views)
    for b in results.iter_batches(batch_format="pyarrow", batch_size=None):
        cols = {c: b.column(c).to_pylist() for c in ("id", _UPDATE, _ERROR, _FRAGS)}
        vecs = {c: b.column(c).to_pylist() for c, _, _ in columns}
        bar.update(sum(len(rels_of[i]) for i in cols["id"]))
        for k, image_id in enumerate(cols["id"]):
            rels = rels_of[image_id]
            if cols[_ERROR][k] is not None:
                plan.skipped += [
                    {"root": str(root), "rel": r, "reason": cols[_ERROR][k]} for r in rels
                ]
                continue
            if cols[_UPDATE][k]:  # a stored image that misses some backbone or view
                for c, m, v in columns:
                    if image_id not in plan.have[_have_key(m, c, v)]:
                        e = np.frombuffer(vecs[c][k], _np_dtype(dtype))
                        pending.updates.setdefault(c, []).append((image_id, e))
                        stats[_stat(m, v)] += 1
                for r in rels:
                    pending.add_path(image_id, r)
            else:
                chunk.add(cols[_FRAGS][k], image_id)
                stats["new"] += 1
                for _, m, v in columns:
                    stats[_stat(m, v)] += 1
            stats["duplicates"] += len(rels) - 1
            for r in rels:
                pending.files.append((r, image_id))
                pending.ok_rels.append(r)
        if pending.size() >= commit_every:
            chunk.commit(st, root, pending, models, dtype, plan)
    chunk.commit(st, root, pending, models, dtype, plan)


def _stat(m: Backbone, view: str | None) -> str:
    """The summary's counter of embeddings made for a backbone (or one of its views)."""
    return f"embedded:{m.name}" if view is None else f"view:{m.name}:{view}"


class _Chunk:
    """The fragments and ids of the chunk being gathered, and the images table's version after
    this ingest's last commit (to notice another writer)."""

    def __init__(self, version: int) -> None:
        self.fragments: dict[str, None] = {}  # a batch's fragments (JSON list), once each
        self.ids: list[str] = []
        self.version = version

    def add(self, fragments: str, image_id: str) -> None:
        self.fragments[fragments] = None
        self.ids.append(image_id)

    def commit(
        self,
        st: Store,
        root: Path,
        pending: _Pending,
        models: list[Backbone],
        dtype: EmbDtype,
        plan: IngestPlan,
    ) -> None:
        """Images first (one transaction), then what points at them, as the local ingest."""
        if self.fragments:
            frags = [f for batch in self.fragments for f in json.loads(batch)]
            st.fragments.append_fragments(frags, ids=self.ids, read_version=self.version)
            plan.store_ids.update(self.ids)
            for c, m, v in embedding_columns(models, plan.views):
                plan.have[_have_key(m, c, v)].update(self.ids)
            for m in models:
                st.meta.note_runtime(m.column, m.runtime)
        _commit(
            st,
            root,
            pending,
            models,
            dtype,
            plan.meta_cols,
            plan.skipped,
            plan.store_ids,
            plan.have,
            plan.views,
        )
        self.fragments, self.ids, self.version = {}, [], st.version


def _np_dtype(dtype: EmbDtype) -> type:
    return np.float16 if dtype == "float16" else np.float32


# ---------------------------------------------------------------------- cluster


def _decode_batch(
    batch: pa.Table,
    preprocs: list[Preprocess],
    max_pixels: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    views: list[tuple[str, ...]] | None = None,
) -> pa.Table:
    """Ray task: read, hash, decode and preprocess each row's file (``decode_file``), with the
    ``views`` of each preprocessing (column ``__pre<slot>``, slots as ``_slot``). A file whose
    bytes no longer match the id the driver hashed is an error (its bytes changed)."""
    files, ids = batch.column(_FILE).to_pylist(), batch.column("id").to_pylist()
    known = batch.column(_KNOWN).to_pylist()
    errors, sizes, nbytes = [], [], []
    slots = sum(1 + len(v) for v in views) if views else len(preprocs)
    arrays: list[list[bytes | None]] = [[] for _ in range(slots)]
    for f, i, k in zip(files, ids, known, strict=True):
        r = decode_file(f, i if k else None, preprocs, max_pixels, views, max_bytes=max_bytes)
        if "error" not in r and r["id"] != i:
            r = {"error": "changed while it was being ingested; run the ingest again"}
        errors.append(r.get("error"))
        sizes.append(r.get("size", (None, None)))
        nbytes.append(r.get("bytes"))
        for a, out in zip(r.get("arrays", [None] * slots), arrays, strict=True):
            out.append(None if a is None else a.tobytes())
    batch = batch.drop_columns([_FILE, _KNOWN])
    batch = batch.append_column(_ERROR, pa.array(errors, pa.string()))
    batch = batch.append_column("width", pa.array([w for w, _ in sizes], pa.int32()))
    batch = batch.append_column("height", pa.array([h for _, h in sizes], pa.int32()))
    batch = batch.append_column("bytes", pa.array(nbytes, pa.int64()))
    for k, col in enumerate(arrays):
        batch = batch.append_column(f"__pre{k}", pa.array(col, pa.binary()))
    return batch


class _EmbedWriter:
    """Ray actor: builds the backbones once, then per batch embeds the decoded images, writes
    the new rows as uncommitted fragments of the store, and returns per image its id, error,
    fragments (new images) or embeddings (stored images missing a backbone)."""

    def __init__(
        self,
        *,
        store_path: str,
        names: list[str],
        pooling: Pooling,
        runtime: Runtime,
        device: str,
        threads: int,
        dtype: EmbDtype,
        preprocs: list[Preprocess],
        meta_names: list[str],
        batch_size: int,
        pre_views: list[tuple[str, ...]] | None = None,
        views_of: dict[str, list[str]] | None = None,
    ) -> None:
        torch.set_num_threads(threads)
        self.models = [
            with_runtime(create_backbone(b, pooling), runtime, device, threads=threads)
            for b in names
        ]
        pre_views = pre_views or [()] * len(preprocs)
        pre_of = {m.name: preprocs.index(m.preprocess) for m in self.models}
        # (column, backbone, view, its slot in the decoded arrays, the arrays' shape)
        self.columns = [
            (
                c,
                m,
                v,
                _slot(pre_views, pre_of[m.name], v),
                (3, preprocs[pre_of[m.name]].crop_px, preprocs[pre_of[m.name]].crop_px),
            )
            for c, m, v in embedding_columns(self.models, views_of or {})
        ]
        self.store_path, self.dtype, self.meta_names = store_path, dtype, meta_names
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        errors = batch.column(_ERROR).to_pylist()
        need = batch.column(_NEED).to_pylist()  # a stored image: the columns it lacks
        ok = [k for k in range(n) if errors[k] is None]
        embs: dict[str, dict[int, np.ndarray]] = {}  # column -> {row k: embedding}
        for c, m, _, slot, shape in self.columns:
            rows = [k for k in ok if need[k] is None or c in need[k]]  # only what is missing
            raw = batch.column(f"__pre{slot}").to_pylist()
            x = np.stack([np.frombuffer(raw[k], np.uint8) for k in rows]) if rows else None
            x = None if x is None else x.reshape(len(rows), *shape)  # (n, 3, H, W) uint8
            embs[c] = dict(zip(rows, self._embed(m, x), strict=True))  # (len(rows), dim)
        for k in ok:  # as the local ingest: a non-finite embedding skips the file
            bad = [
                (m.name, v)
                for c, m, v, _, _ in self.columns
                if k in embs[c] and not np.isfinite(embs[c][k]).all()
            ]
            if bad:
                name, v = bad[0]
                errors[k] = f"backbone {name} gave a non-finite embedding" + (
                    f" (view {v})" if v else ""
                )
        good = [k for k in ok if errors[k] is None]
        update = batch.column(_UPDATE).to_pylist()
        new = [k for k in good if not update[k]]
        frags = json.dumps(self._write(batch, new, embs)) if new else None
        is_new = set(new)
        out = {
            "id": batch.column("id"),
            _UPDATE: batch.column(_UPDATE),
            _ERROR: pa.array(errors, pa.string()),
            _FRAGS: pa.array([frags if k in is_new else None for k in range(n)], pa.string()),
        }
        for c, *_ in self.columns:  # embeddings travel back only for stored images
            e = embs[c]
            out[c] = pa.array(
                [
                    e[k].tobytes() if update[k] and errors[k] is None and k in e else None
                    for k in range(n)
                ],
                pa.binary(),
            )
        return pa.table(out)

    def _embed(self, m: Backbone, x: np.ndarray | None) -> np.ndarray:
        if x is None:
            return np.zeros((0, m.dim), _np_dtype(self.dtype))
        parts = [
            m.embed(torch.from_numpy(x[s : s + self.batch_size])).cpu().numpy()  # (b, dim)
            for s in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(parts).astype(_np_dtype(self.dtype))

    def _write(
        self, batch: pa.Table, rows: list[int], embs: dict[str, dict[int, np.ndarray]]
    ) -> list[str]:
        take = pa.array(rows, pa.int64())
        t = batch.take(take)
        fields = ("id", "path", "paths", "root", "label", "split", "width", "height", "bytes")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        values = {f: t.column(f).to_pylist() for f in fields}
        dicts = [{**{f: values[f][j] for f in fields}, "added_at": now} for j in range(len(rows))]
        table = image_table(
            dicts,
            metadata={name: t.column(name).combine_chunks() for name in self.meta_names},
            embeddings={c: np.stack([embs[c][k] for k in rows]) for c, *_ in self.columns},
            describes={c: {} for c, *_ in self.columns},
            dtype=self.dtype,
        )
        return write_image_fragments(self.store_path, table)


__all__ = ["HASH_TASKS_OVER", "ingest_ray"]
