"""Ingest on a Ray cluster (``ingest(..., engine="ray")``): the local ingest's plan, rows and
commits, with decoding in Ray tasks and the backbones in an actor pool.

- **Driver** (this process): :func:`embedstore.ingestion._plan.plan_ingest` (scan, labels, metadata,
  what the store holds), then the content hash of every file to read (a thread pool here; Ray tasks
  above ``hash_tasks_over`` files), so every id is known before anything is decoded: files of stored
  images only get their paths and file records, bytes found under several names are decoded once,
  and nothing stored is embedded again.
- **Cluster**: decode tasks (read, check the hash, decode, preprocess: the local ingest's
  :func:`embedstore.ingestion._decode.decode_file`), then ``map_batches`` over an actor pool: each
  actor builds its backbones once (on its GPU when it holds one), embeds, and writes the new rows as
  uncommitted Lance fragments (:func:`embedstore.store.write_image_fragments`).
- **Driver** again: streams the results and commits every ``commit_every`` images: the chunk's
  fragments appended in one transaction (:meth:`Store.fragments.append_fragments`), then embeddings
  of stored images, paths, file records and skipped files (the local ingest's ``_commit``). A job
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

from embedstore._images import (
    ImageError,
    hash_bytes,
    read_bytes,
)
from embedstore._ray import ActorLayout, EngineError, actor_layout, connect_ray, import_ray
from embedstore.backbones._backbones import Backbone, create_backbone
from embedstore.backbones._onnx import with_runtime
from embedstore.backbones._views import expand_views, view_describe
from embedstore.ingestion._commit import _commit, _Pending, _StoredPaths, summarize
from embedstore.ingestion._decode import preprocessing_groups
from embedstore.ingestion._options import INGEST_ENGINES, IngestError, IngestOptions, IngestSummary
from embedstore.ingestion._plan import IngestPlan, _missing, check_folder, plan_ingest, read_meta
from embedstore.ingestion._ray_workers import (
    _ERROR,
    _FILE,
    _FRAGS,
    _KNOWN,
    _NEED,
    _UPDATE,
    _decode_batch,
    _EmbedWriter,
    _np_dtype,
    embedding_columns,
)
from embedstore.store._fragments import image_table
from embedstore.store._store import Store, connect
from embedstore.types import EmbDtype, Pooling, Runtime


def ingest_ray(
    images_dir: str | os.PathLike,
    store: str | os.PathLike | Store | None = None,
    options: IngestOptions | None = None,
) -> IngestSummary:
    """:func:`embedstore.ingest` with ``engine="ray"``: the same :class:`IngestOptions`, the
    same result.

    ``views`` as in the local ingest: the decode tasks make each image's views beside its main
    array and the actors embed them into their own columns; a stored image gets only the
    columns it lacks (adding views to a store embeds only the views).

    ``ray_address``: None (the cluster this process joined, else a new local one), ``"auto"``
    or ``"HOST:PORT"``; ``actors`` embedding actors (default: one per GPU, or half the CPUs),
    each holding ``gpus_per_actor`` GPUs (default 1 where the cluster has GPUs) and
    ``cpus_per_actor`` CPUs. Backbones are named (``backbones``), as every actor builds its own.
    """
    o = options or IngestOptions(engine="ray")
    t0 = time.perf_counter()
    root, view_names, layout = _check(images_dir, o)
    models = _driver_models(list(dict.fromkeys(o.backbones)), o.pooling, o.runtime, layout)
    st = store if isinstance(store, Store) else connect(store)
    meta = read_meta(o.metadata, o.join_column, o.label_column)
    plan = plan_ingest(st, root, models, o.dtype, meta, o.label_column, view_names)
    columns = embedding_columns(models, plan.views)

    stats: Counter = Counter()
    pending = _Pending()
    ids = _hash(plan, o.hash_tasks_over)
    rels_of, todo = _sort_work(plan, root, ids, pending, stats, _StoredPaths(st, str(root)))
    if todo:
        _prepare_table(st, models, plan, columns, o.dtype)
    chunk = _Chunk(st.version)
    chunk.commit(st, root, pending, models, o.dtype, plan)  # files of stored images
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(plan.work),
        unit="img",
        desc=f"ingest {root.name} (ray)",
        disable=not o.progress,
        smoothing=0.1,
    )
    bar.update(len(plan.work) - sum(len(r) for r in rels_of.values()))  # hashed and done
    try:
        if todo:
            rows = _input_rows(plan, root, todo, rels_of, columns)
            results = _pipeline(rows, st, models, layout, plan, o)
            _drain(results, st, root, models, plan, rels_of, pending, stats, o, bar)
    finally:
        bar.close()
    st.compact(min_fragments=16)  # merge the many small fragments of a chunked ingest
    return summarize(st, root, t0, plan, stats, models, layout.device, engine="ray")


INGEST_ENGINES.register("ray", ingest_ray)


def _check(images_dir: str | os.PathLike, o: IngestOptions) -> tuple[Path, list[str], ActorLayout]:
    """The folder, the views and the actors' layout, after the checks of the settings."""
    root = check_folder(images_dir, o.batch_size, o.dtype)
    if o.backbone_objects:
        raise IngestError(
            "engine 'ray' builds each backbone on its actors from its name: pass "
            "backbones=[name, ...], not backbone_objects"
        )
    if o.commit_every < 1:
        raise IngestError(f"--commit-every must be at least 1, not {o.commit_every}")
    try:
        view_names = expand_views(o.views)
    except ValueError as e:
        raise IngestError(f"--views: {e}") from None
    try:
        cluster = connect_ray(o.ray_address, quiet=not o.progress)
        layout = actor_layout(
            cluster,
            actors=o.actors,
            gpus_per_actor=o.gpus_per_actor,
            cpus_per_actor=o.cpus_per_actor,
            device=o.device,
        )
    except EngineError as e:
        raise IngestError(str(e)) from None
    return root, view_names, layout


def _prepare_table(
    st: Store,
    models: list[Backbone],
    plan: IngestPlan,
    columns: list[tuple[str, Backbone, str | None]],
    dtype: EmbDtype,
) -> None:
    """The images table with every column the workers will write (and views recorded)."""
    describes = {m.column: m.describe() for m in models}
    schema = image_table(
        [],
        metadata={k: v.slice(0, 0) for k, v in plan.meta_cols.items()},
        embeddings={c: np.zeros((0, m.dim), np.float32) for c, m, _ in columns},
        describes={
            c: describes[m.column] if v is None else view_describe(describes[m.column], m.column, v)
            for c, m, v in columns
        },
        dtype=dtype,
    )
    st.fragments.prepare_images(schema.schema)
    for m in models:  # a new store: its main columns were made just now
        if plan.views.get(m.name):
            st.meta.record_views(m.column, plan.views[m.name])


_HASH_THREADS = 8  # reading and SHA-256 release the GIL


_DECODE_WORKER_BYTES = 384 << 20  # a decode task's process before its image (measured ~240 MiB)


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
            f"--runtime {runtime} runs on the CPU and the actors hold GPUs; "
            "use --runtime torch (or auto), or --gpus-per-actor 0"
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
    out: dict[str, tuple[str | None, str | None]] = {
        w.rel: (w.known_id, None) for w in plan.work if w.known_id is not None
    }
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
    models: list[Backbone],
    layout: ActorLayout,
    plan: IngestPlan,
    o: IngestOptions,
) -> Any:
    """The Ray Dataset of results: decode tasks, then the embedding actors that write fragments."""
    ray = import_ray()
    preprocs, _, pre_views = preprocessing_groups(models, plan.views)
    batch_size, max_pixels = o.batch_size, o.max_pixels
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
            "max_bytes": o.max_bytes,
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
            "names": list(dict.fromkeys(o.backbones)),
            "pooling": o.pooling,
            "runtime": o.runtime,
            "device": layout.device,
            "threads": max(1, int(layout.cpus)),
            "dtype": o.dtype,
            "preprocs": preprocs,
            "meta_names": list(plan.meta_cols),
            "batch_size": batch_size,
            "pre_views": pre_views,
            "views_of": plan.views,
        },
        batch_format="pyarrow",
        batch_size=o.commit_every,
        compute=ray.data.ActorPoolStrategy(size=layout.actors),
        num_cpus=layout.cpus,
        num_gpus=layout.gpus,
    )


def _drain(
    results: Any,
    st: Store,
    root: Path,
    models: list[Backbone],
    plan: IngestPlan,
    rels_of: dict[str, list[str]],
    pending: _Pending,
    stats: Counter,
    o: IngestOptions,
    bar: Any,
) -> None:
    """Take the actors' results as they come and commit them in chunks."""
    dtype = o.dtype
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
                        e: np.ndarray = np.frombuffer(vecs[c][k], _np_dtype(dtype))
                        pending.updates.setdefault(c, []).append((image_id, e))
                        stats[_stat(m, v)] += 1
                for r in rels:
                    pending.add_path(image_id, r)
                stats["completed"] += 1
            else:
                chunk.add(cols[_FRAGS][k], image_id)
                stats["new"] += 1
                for _, m, v in columns:
                    stats[_stat(m, v)] += 1
            stats["duplicates"] += len(rels) - 1
            for r in rels:
                pending.files.append((r, image_id))
                pending.ok_rels.append(r)
        if pending.size() >= o.commit_every:
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
