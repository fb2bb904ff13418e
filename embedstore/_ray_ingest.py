"""Ingest on a Ray cluster (``ingest(..., engine="ray")``): the local ingest's plan, rows and
commits, with decoding in Ray tasks and the backbones in an actor pool.

- **Driver** (this process): :func:`embedstore._ingest.plan_ingest` (scan, labels, metadata, what
  the store holds), then the content hash of every file to read (a thread pool here; Ray tasks
  above ``hash_tasks_over`` files), so every id is known before anything is decoded: files of
  stored images only get their paths and file records, bytes found under several names are
  decoded once, and nothing stored is embedded again.
- **Cluster**: decode tasks (read, check the hash, decode, preprocess: the local ingest's
  :func:`embedstore._ingest.decode_file`), then ``map_batches`` over an actor pool: each actor
  builds its backbones once (on its GPU when it holds one), embeds, and writes the new rows as
  uncommitted Lance fragments (:func:`embedstore._store.write_image_fragments`).
- **Driver** again: streams the results and commits every ``commit_every`` images: the chunk's
  fragments appended in one transaction (:meth:`Store.append_fragments`), then embeddings of
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

from embedstore._backbones import Backbone, create_backbone
from embedstore._images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageError,
    hash_bytes,
    read_bytes,
)
from embedstore._ingest import (
    INGEST_ENGINES,
    IngestError,
    IngestPlan,
    IngestSummary,
    _commit,
    _Pending,
    check_folder,
    decode_file,
    plan_ingest,
    read_meta,
    summarize,
)
from embedstore._onnx import with_runtime
from embedstore._options import EmbDtype, Pooling, Runtime
from embedstore._preprocess import Preprocess
from embedstore._ray import ActorLayout, EngineError, actor_layout, connect_ray, import_ray
from embedstore._store import Store, connect, image_table, write_image_fragments

HASH_TASKS_OVER = 20_000  # files to hash: above this the cluster hashes them, not the driver
_HASH_THREADS = 8  # reading and SHA-256 release the GIL
_DECODE_WORKER_BYTES = 384 << 20  # a decode task's process before its image (measured ~240 MiB)
# Pipeline columns that are not store columns (metadata columns never start with "__").
_FILE, _KNOWN, _UPDATE, _ERROR, _FRAGS = "__file", "__known", "__update", "__error", "__frags"


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
) -> IngestSummary:
    """:func:`embedstore.ingest` with ``engine="ray"``: same arguments, same result.

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
        cluster = connect_ray(ray_address, quiet=not progress)
        layout = actor_layout(cluster, actors=actors, gpus_per_actor=gpus_per_actor,
                              cpus_per_actor=cpus_per_actor, device=device)  # fmt: skip
    except EngineError as e:
        raise IngestError(str(e)) from None
    names = list(dict.fromkeys(backbones))
    models = _driver_models(names, pooling, runtime, layout)
    st = store if isinstance(store, Store) else connect(store)
    meta = read_meta(metadata, join_column, label_column)
    plan = plan_ingest(st, root, models, dtype, meta, label_column)

    stats: Counter = Counter()
    pending = _Pending()
    ids = _hash(plan, hash_tasks_over)
    rels_of, todo = _sort_work(plan, root, ids, pending, stats, models)
    if todo:  # the table, with every column the workers will write
        schema = image_table(
            [], metadata={k: v.slice(0, 0) for k, v in plan.meta_cols.items()},
            embeddings={m.column: np.zeros((0, m.dim), np.float32) for m in models},
            describes={m.column: m.describe() for m in models}, dtype=dtype,
        )  # fmt: skip
        st.prepare_images(schema.schema)
    _commit(st, root, pending, models, dtype, plan.meta_cols, plan.skipped, plan.store_ids,
            plan.have)  # files of stored images: their paths and records  # fmt: skip

    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan.work), unit="img", desc=f"ingest {root.name} (ray)",
               disable=not progress, smoothing=0.1)  # fmt: skip
    bar.update(len(plan.work) - sum(len(r) for r in rels_of.values()))  # hashed and done
    try:
        if todo:
            rows = _input_rows(plan, root, todo, rels_of)
            results = _pipeline(rows, st, names, pooling, runtime, models, layout, dtype,
                                max_pixels, batch_size, commit_every, plan, max_bytes)  # fmt: skip
            _drain(results, st, root, models, dtype, plan, rels_of, pending, stats, commit_every,
                   bar)  # fmt: skip
    finally:
        bar.close()
    st.compact(min_fragments=16)  # merge the many small fragments of a chunked ingest
    return summarize(st, root, t0, plan, stats, models, layout.device, engine="ray")


INGEST_ENGINES.register("ray", ingest_ray)


# ---------------------------------------------------------------------- driver


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
    return pa.table({"rel": batch.column("rel"), "id": pa.array([i for i, _ in out], pa.string()),
                     _ERROR: pa.array([e for _, e in out], pa.string())})  # fmt: skip


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


def _sort_work(plan: IngestPlan, root: Path, ids: dict, pending: _Pending, stats: Counter,
               models: list[Backbone]) -> tuple[dict[str, list[str]], list[_Todo]]:  # fmt: skip
    """Sort the files to read by id, as the local ingest decides per file: unreadable ones are
    skipped; files of images stored with every backbone get their path and record now; the
    first file of each other id is decoded, the rest share its result."""
    rels_of: dict[str, list[str]] = {}
    todo: list[_Todo] = []
    for w in plan.work:
        image_id, error = ids[w.rel]
        if image_id is None:
            plan.skipped.append({"root": str(root), "rel": w.rel, "reason": error})
            continue
        if image_id in plan.store_ids and all(image_id in plan.have[m.name] for m in models):
            pending.files.append((w.rel, image_id))
            pending.ok_rels.append(w.rel)
            pending.add_path(image_id, w.rel)  # a renamed or duplicated file of a stored image
            stats["duplicates"] += 1
            continue
        if image_id not in rels_of:
            rels_of[image_id] = []
            todo.append(_Todo(w, image_id, image_id in plan.store_ids))
        rels_of[image_id].append(w.rel)
    return rels_of, todo


def _input_rows(
    plan: IngestPlan, root: Path, todo: list[_Todo], rels_of: dict[str, list[str]]
) -> pa.Table:
    """The pipeline's input: one row per image to embed, with every store column that does
    not need the image (ids, paths, labels, metadata) and what the decode task needs."""
    pos = [plan.rel_pos[t.work.rel] for t in todo]
    labels = [plan.labels_split[q] for q in pos]
    cols: dict[str, Any] = {
        _FILE: pa.array([t.work.path for t in todo], pa.string()),
        _KNOWN: pa.array([t.work.known_id is not None for t in todo], pa.bool_()),
        _UPDATE: pa.array([t.update for t in todo], pa.bool_()),
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


def _pipeline(rows: pa.Table, st: Store, names: list[str], pooling: Pooling, runtime: Runtime,
              models: list[Backbone], layout: ActorLayout, dtype: EmbDtype, max_pixels: int,
              batch_size: int, commit_every: int, plan: IngestPlan,
              max_bytes: int = DEFAULT_MAX_BYTES) -> Any:  # fmt: skip
    """The Ray Dataset of results: decode tasks, then the embedding actors that write fragments."""
    ray = import_ray()
    preprocs = list(dict.fromkeys(m.preprocess for m in models))
    blocks = [rows.slice(s, batch_size) for s in range(0, rows.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks)
    # One CPU per decode task, and the memory of a worker (Python, torch, PIL) plus the largest
    # image it may decode (RGB at max_pixels): what Ray places them by. Remote arguments unlike
    # the actors' also keep Ray Data from fusing decoding into the actors, which would
    # serialise it behind the model.
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={"preprocs": preprocs, "max_pixels": max_pixels, "max_bytes": max_bytes},
        batch_format="pyarrow", batch_size=None, num_cpus=1,
        memory=_DECODE_WORKER_BYTES + 3 * max_pixels,
    )  # fmt: skip
    return ds.map_batches(
        _EmbedWriter,
        fn_constructor_kwargs={
            "store_path": str(st.path), "names": names, "pooling": pooling, "runtime": runtime,
            "device": layout.device, "threads": max(1, int(layout.cpus)), "dtype": dtype,
            "preprocs": preprocs, "meta_names": list(plan.meta_cols), "batch_size": batch_size,
        },
        batch_format="pyarrow", batch_size=commit_every,
        compute=ray.data.ActorPoolStrategy(size=layout.actors),
        num_cpus=layout.cpus, num_gpus=layout.gpus,
    )  # fmt: skip


def _drain(results: Any, st: Store, root: Path, models: list[Backbone], dtype: EmbDtype,
           plan: IngestPlan, rels_of: dict[str, list[str]], pending: _Pending, stats: Counter,
           commit_every: int, bar: Any) -> None:  # fmt: skip
    """Take the actors' results as they come and commit them in chunks."""
    chunk = _Chunk(st.version)
    for b in results.iter_batches(batch_format="pyarrow", batch_size=None):
        cols = {c: b.column(c).to_pylist() for c in ("id", _UPDATE, _ERROR, _FRAGS)}
        vecs = {m.column: b.column(m.column).to_pylist() for m in models}
        bar.update(sum(len(rels_of[i]) for i in cols["id"]))
        for k, image_id in enumerate(cols["id"]):
            rels = rels_of[image_id]
            if cols[_ERROR][k] is not None:
                plan.skipped += [
                    {"root": str(root), "rel": r, "reason": cols[_ERROR][k]} for r in rels
                ]
                continue
            if cols[_UPDATE][k]:  # a stored image that misses some backbone
                for m in models:
                    if image_id not in plan.have[m.name]:
                        e = np.frombuffer(vecs[m.column][k], _np_dtype(dtype))
                        pending.updates.setdefault(m.column, []).append((image_id, e))
                        stats[f"embedded:{m.name}"] += 1
                for r in rels:
                    pending.add_path(image_id, r)
            else:
                chunk.add(cols[_FRAGS][k], image_id)
                stats["new"] += 1
                for m in models:
                    stats[f"embedded:{m.name}"] += 1
            stats["duplicates"] += len(rels) - 1
            for r in rels:
                pending.files.append((r, image_id))
                pending.ok_rels.append(r)
        if pending.size() >= commit_every:
            chunk.commit(st, root, pending, models, dtype, plan)
    chunk.commit(st, root, pending, models, dtype, plan)


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

    def commit(self, st: Store, root: Path, pending: _Pending, models: list[Backbone],
               dtype: EmbDtype, plan: IngestPlan) -> None:  # fmt: skip
        """Images first (one transaction), then what points at them, as the local ingest."""
        if self.fragments:
            frags = [f for batch in self.fragments for f in json.loads(batch)]
            st.append_fragments(frags, ids=self.ids, read_version=self.version)
            plan.store_ids.update(self.ids)
            for m in models:
                plan.have[m.name].update(self.ids)
                st.note_runtime(m.column, m.runtime)
        _commit(st, root, pending, models, dtype, plan.meta_cols, plan.skipped, plan.store_ids,
                plan.have)  # fmt: skip
        self.fragments, self.ids, self.version = {}, [], st.version


def _np_dtype(dtype: EmbDtype) -> type:
    return np.float16 if dtype == "float16" else np.float32


# ---------------------------------------------------------------------- cluster


def _decode_batch(batch: pa.Table, preprocs: list[Preprocess], max_pixels: int,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> pa.Table:  # fmt: skip
    """Ray task: read, hash, decode and preprocess each row's file (``decode_file``). A file
    whose bytes no longer match the id the driver hashed is an error (its bytes changed)."""
    files, ids = batch.column(_FILE).to_pylist(), batch.column("id").to_pylist()
    known = batch.column(_KNOWN).to_pylist()
    errors, sizes, nbytes = [], [], []
    arrays: list[list[bytes | None]] = [[] for _ in preprocs]
    for f, i, k in zip(files, ids, known, strict=True):
        r = decode_file(f, i if k else None, preprocs, max_pixels, max_bytes=max_bytes)
        if "error" not in r and r["id"] != i:
            r = {"error": "changed while it was being ingested; run the ingest again"}
        errors.append(r.get("error"))
        sizes.append(r.get("size", (None, None)))
        nbytes.append(r.get("bytes"))
        for a, out in zip(r.get("arrays", [None] * len(preprocs)), arrays, strict=True):
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

    def __init__(self, *, store_path: str, names: list[str], pooling: Pooling, runtime: Runtime,
                 device: str, threads: int, dtype: EmbDtype, preprocs: list[Preprocess],
                 meta_names: list[str], batch_size: int) -> None:  # fmt: skip
        torch.set_num_threads(threads)
        self.models = [
            with_runtime(create_backbone(b, pooling), runtime, device, threads=threads)
            for b in names
        ]
        self.pre_of = [preprocs.index(m.preprocess) for m in self.models]
        self.shapes = [(3, p.crop_px, p.crop_px) for p in preprocs]
        self.store_path, self.dtype, self.meta_names = store_path, dtype, meta_names
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        errors = batch.column(_ERROR).to_pylist()
        ok = [k for k in range(n) if errors[k] is None]
        embs: dict[str, np.ndarray] = {}
        for m, p in zip(self.models, self.pre_of, strict=True):
            raw = batch.column(f"__pre{p}").to_pylist()
            x = np.stack([np.frombuffer(raw[k], np.uint8) for k in ok]) if ok else None
            x = None if x is None else x.reshape(len(ok), *self.shapes[p])  # (n, 3, H, W) uint8
            embs[m.column] = self._embed(m, x)  # (len(ok), dim)
        for j, k in enumerate(ok):  # as the local ingest: a non-finite embedding skips the file
            bad = [m.name for m in self.models if not np.isfinite(embs[m.column][j]).all()]
            if bad:
                errors[k] = f"backbone {bad[0]} gave a non-finite embedding"
        row_of = {k: j for j, k in enumerate(ok)}
        good = [k for k in ok if errors[k] is None]
        update = batch.column(_UPDATE).to_pylist()
        new = [k for k in good if not update[k]]
        frags = json.dumps(self._write(batch, new, [row_of[k] for k in new], embs)) if new else None
        is_new = set(new)
        out = {"id": batch.column("id"), _UPDATE: batch.column(_UPDATE),
               _ERROR: pa.array(errors, pa.string()),
               _FRAGS: pa.array([frags if k in is_new else None for k in range(n)], pa.string())}  # fmt: skip
        for m in self.models:  # embeddings travel back only for stored images
            e = embs[m.column]
            out[m.column] = pa.array(
                [e[row_of[k]].tobytes() if update[k] and errors[k] is None else None
                 for k in range(n)], pa.binary(),
            )  # fmt: skip
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
        self, batch: pa.Table, rows: list[int], emb_rows: list[int], embs: dict[str, np.ndarray]
    ) -> list[str]:
        take = pa.array(rows, pa.int64())
        t = batch.take(take)
        fields = ("id", "path", "paths", "root", "label", "split", "width", "height", "bytes")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        values = {f: t.column(f).to_pylist() for f in fields}
        dicts = [{**{f: values[f][j] for f in fields}, "added_at": now} for j in range(len(rows))]
        table = image_table(
            dicts, metadata={name: t.column(name).combine_chunks() for name in self.meta_names},
            embeddings={m.column: embs[m.column][emb_rows] for m in self.models},
            describes={m.column: {} for m in self.models}, dtype=self.dtype,
        )  # fmt: skip
        return write_image_fragments(self.store_path, table)


__all__ = ["HASH_TASKS_OVER", "ingest_ray"]
