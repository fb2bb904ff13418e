"""Ingest: embed every image of a folder with one or more frozen backbones into a store.

Decoding (read, hash, decode, resize) runs in DataLoader worker processes, overlapped with the
model; on the CPU the model runs with ONNX Runtime by default (``runtime``, embedstore.backbones._onnx).
Work is committed in chunks, each an atomic Lance commit, images before the file records
that point at them, so a run killed at any moment resumes where it stopped: ids are content
hashes, inserts are keyed on them, and nothing is embedded twice.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings as warnings_module
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from embedstore._device import resolve_device
from embedstore._images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    FoundFile,
    ImageError,
    decode_image,
    disk_path,
    find_images,
    hash_bytes,
    read_bytes,
)
from embedstore._registry import Registry
from embedstore._results import Result
from embedstore.backbones._backbones import Backbone, create_backbone
from embedstore.backbones._onnx import resolve_runtime, with_runtime
from embedstore.backbones._preprocess import Preprocess
from embedstore.backbones._views import expand_views, make_view, view_column, view_describe
from embedstore.errors import BadInput
from embedstore.ingestion._prune import prune as prune_store
from embedstore.store._metadata import join_metadata, read_metadata, store_column_names
from embedstore.store._store import Store, connect
from embedstore.types import ENGINES, EmbDtype, Engine, Pooling, Runtime, check_choice

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


# Reasons of files skipped without being read (they do not make an ingest fail).
_NOT_READ = ("unsupported format", "not a regular file")


class IngestError(BadInput):
    """The ingest cannot run at all (bad folder, bad options); the message says what to do."""


# Engines other than "local": a function with ingest's keyword arguments that returns an
# IngestSummary. "ray" registers itself when embedstore.ingestion._ray_ingest is imported (on first use).
INGEST_ENGINES: Registry = Registry("ingest engine", builtin=("embedstore.ingestion._ray_ingest",))


@dataclass
class IngestSummary(Result):
    """What an ingest did; ``ok`` is False only when none of the folder's images was usable."""

    root: str
    store: str
    files_found: int
    new_images: int
    already_stored: int
    duplicates: int
    embedded: dict[str, int]
    skipped: int
    skipped_by_reason: dict[str, int]
    skipped_file: str
    warnings: list[str]
    images_in_store: int
    store_version: int
    device: str
    runtimes: dict[str, str]  # backbone -> what ran it: "onnx" or "torch"
    seconds: float
    images_per_s: float | None
    ok: bool
    engine: str = "local"
    pruned: int = 0  # image rows removed by prune (their files are gone or hold other bytes)
    views: dict[str, dict[str, int]] = field(default_factory=dict)  # backbone -> view -> embedded


@dataclass
class _Work:
    path: str
    rel: str
    known_id: str | None


class _DecodeDataset(torch.utils.data.Dataset):
    """Reads, hashes, decodes and preprocesses one file per item (runs in worker processes)."""

    def __init__(
        self,
        work: list[_Work],
        preprocs: list[Preprocess],
        max_pixels: int,
        views: list[tuple[str, ...]] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.work, self.preprocs, self.max_pixels = work, preprocs, max_pixels
        self.views, self.max_bytes = views, max_bytes

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.work[i]
        return {
            "i": i,
            **decode_file(
                w.path,
                w.known_id,
                self.preprocs,
                self.max_pixels,
                self.views,
                max_bytes=self.max_bytes,
            ),
        }


def decode_file(
    path: str,
    known_id: str | None,
    preprocs: list[Preprocess],
    max_pixels: int,
    views: list[tuple[str, ...]] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Read, hash (unless ``known_id``), decode and preprocess one file: ``{"id", "arrays",
    "size", "bytes"}``, or ``{"error": reason}`` (the reason recorded for a skipped file).
    ``views[k]`` (embedstore.backbones._views) are made for ``preprocs[k]`` from the same decoded image:
    each preprocessing gives its main array, then one per view (:func:`_slot` finds them).
    What the decode workers of every engine run."""
    try:
        data = read_bytes(path, max_bytes)  # regular files only, at most max_bytes
        image_id = known_id or hash_bytes(data)
        im = decode_image(data, max_pixels)
        vs = views or [()] * len(preprocs)
        arrays = [
            a
            for p, pv in zip(preprocs, vs, strict=True)
            for a in (p(im), *(make_view(im, v, p) for v in pv))
        ]
        return {"id": image_id, "arrays": arrays, "size": im.size, "bytes": len(data)}
    except ImageError as e:
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - any decoder failure loses one file, not the run
        return {"error": f"cannot decode: {type(e).__name__}: {e}"}


def _slot(pre_views: list[tuple[str, ...]], k: int, view: str | None = None) -> int:
    """Where preprocessing ``k``'s main array (or its ``view``) is in :func:`decode_file`'s arrays."""
    start = sum(1 + len(v) for v in pre_views[:k])
    return start if view is None else start + 1 + pre_views[k].index(view)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [it for it in items if "error" not in it]
    n_pre = len(ok[0]["arrays"]) if ok else 0
    stacks = [torch.from_numpy(np.stack([it["arrays"][k] for it in ok])) for k in range(n_pre)]
    for it in ok:
        del it["arrays"]
    return {"ok": ok, "stacks": stacks, "errors": [it for it in items if "error" in it]}


def _label_and_split(rel: str) -> tuple[str | None, str | None]:
    parts = rel.split("/")
    label = parts[-2] if len(parts) >= 2 else None
    split = next((_SPLIT_NAMES[p.lower()] for p in parts[:-2] if p.lower() in _SPLIT_NAMES), None)
    if label is not None and label.lower() in _SPLIT_NAMES and len(parts) == 2:
        split, label = _SPLIT_NAMES[label.lower()], None  # root/train/x.jpg: a split, no class
    return label, split


def ingest(
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
    workers: int | None = None,
    dtype: EmbDtype = "float16",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    prune: bool = False,
    commit_every: int = 512,
    progress: bool = True,
    backbone_objects: list[Backbone] | None = None,
    engine: Engine = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    views: list[str] | tuple[str, ...] | str | None = None,
) -> IngestSummary:
    """Embed every image under ``images_dir`` into ``store``; returns what it did.

    Re-running adds only what is new; a new backbone embeds only for that backbone.
    ``views`` (``["flip", "crops5"]`` or ``"flip,crops5"``; embedstore.backbones._views) also stores
    embeddings of augmented views of each image, one column per view beside the main one:
    on a store that has the images, only the views are embedded; once a store has views, later
    ingests give new images their views too. Heads train on them and predict with them (TTA).
    ``runtime``: ``auto`` runs backbones with ONNX Runtime on the CPU where it is faster
    (efficientnet-lite0; exported once, cached) and with torch otherwise; ``torch`` or ``onnx`` to choose (embedstore.backbones._onnx.resolve_runtime).

    ``engine="ray"`` runs decoding and the backbones on a Ray cluster (``ray_address``,
    ``actors``, ``gpus_per_actor``, ``cpus_per_actor``; embedstore.ingestion._ray_ingest) and writes the
    same rows: ``pip install 'embedstore[ray]'``.

    >>> summary = ingest("photos/", "my-store", backbones=["efficientnet-lite0"])
    >>> summary = ingest("photos/", "my-store", engine="ray", ray_address="auto")
    """
    args = dict(locals())
    try:
        check_choice(engine, ENGINES, "engine")
    except ValueError as e:
        raise IngestError(f"--engine: {e}") from None
    del args["prune"]
    if engine != "local":
        del args["engine"]
        summary = INGEST_ENGINES.get(engine)(**args)
        if prune:
            summary.pruned = prune_store(connect(summary.store), summary.root)
        return summary
    try:
        view_names = expand_views(views)
    except ValueError as e:
        raise IngestError(f"--views: {e}") from None
    if ray_address is not None or actors is not None or gpus_per_actor is not None:
        raise IngestError("--ray-address, --actors and --gpus-per-actor need --engine ray")
    t0 = time.perf_counter()
    root = check_folder(images_dir, batch_size, dtype)
    st = store if isinstance(store, Store) else connect(store)
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise IngestError(f"--device: {e}") from None
    try:
        resolve_runtime(runtime, dev)
    except ValueError as e:
        raise IngestError(f"--runtime: {e}") from None
    with st.writing("embedstore ingest"):  # one writer at a time; a second is refused
        meta = read_meta(metadata, join_column, label_column)
        models = backbone_objects or [create_backbone(b, pooling) for b in dict.fromkeys(backbones)]
        models = [with_runtime(m, runtime, dev) for m in models]

        plan = plan_ingest(st, root, models, dtype, meta, label_column, view_names)
        found, supported, skipped, warnings = (
            plan.found,
            plan.supported,
            plan.skipped,
            plan.warnings,
        )
        labels_split, meta_cols, rel_pos = plan.labels_split, plan.meta_cols, plan.rel_pos
        store_ids, have, work, unchanged_ids = (
            plan.store_ids,
            plan.have,
            plan.work,
            plan.unchanged_ids,
        )

        # ---- decode in workers, embed, commit in chunks
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
        ]
        n_workers = _default_workers() if workers is None else max(0, workers)
        n_workers = min(n_workers, -(-len(work) // batch_size))  # none idle; none for no work
        if "fork" not in multiprocessing.get_all_start_methods():
            n_workers = 0  # spawn would re-import the caller's script: decode in this process
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(work, preprocs, max_pixels, pre_views, max_bytes),
            batch_size=batch_size,
            shuffle=False,
            num_workers=n_workers,
            collate_fn=_collate,
            pin_memory=dev.type == "cuda",
            prefetch_factor=4 if n_workers else None,
            persistent_workers=False,
            # fork: workers start from this process as it is, so a plain script without an
            # `if __name__ == "__main__"` guard works (spawn would re-run the script in each worker)
            multiprocessing_context="fork" if n_workers else None,
        )
        stats = Counter()
        pending = _Pending()
        seen_this_run: set[str] = set()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(work),
            unit="img",
            desc=f"ingest {root.name}",
            disable=not progress,
            smoothing=0.1,
        )
        try:
            with warnings_module.catch_warnings():
                # the forked decode workers never touch Lance (they read, hash and decode files)
                warnings_module.filterwarnings("ignore", message="lance is not fork-safe")
                batches = iter(loader)
            known = _StoredPaths(st, str(root))
            for batch in batches:
                for e in batch["errors"]:
                    skipped.append(
                        {"root": str(root), "rel": work[e["i"]].rel, "reason": e["error"]}
                    )
                embed_rows: list[int] = []  # positions in batch["ok"] that need a forward pass
                for k, it in enumerate(batch["ok"]):
                    w = work[it["i"]]
                    image_id = it["id"]
                    pending.files.append((w.rel, image_id))
                    pending.ok_rels.append(w.rel)
                    if (
                        image_id in seen_this_run
                    ):  # same bytes twice in this run: one image, both paths
                        pending.add_path(image_id, w.rel)
                        stats["duplicates"] += 1
                        continue
                    seen_this_run.add(image_id)
                    if image_id in store_ids and not _missing(image_id, have):
                        pending.add_path(
                            image_id, w.rel
                        )  # renamed / duplicated file of a stored image
                        # ... or one stored before a crash kept its file record from being
                        # written: re-checked, not a duplicate name
                        stats["rechecked" if known.has(image_id, w.rel) else "duplicates"] += 1
                        continue
                    embed_rows.append(k)
                if embed_rows:
                    _embed_rows(
                        batch,
                        embed_rows,
                        models,
                        pre_of,
                        pre_views,
                        plan,
                        dtype,
                        root,
                        pending,
                        stats,
                    )
                bar.update(len(batch["ok"]) + len(batch["errors"]))
                if pending.size() >= commit_every:
                    _commit(
                        st,
                        root,
                        pending,
                        models,
                        dtype,
                        meta_cols,
                        skipped,
                        store_ids,
                        have,
                        plan.views,
                    )
            _commit(
                st, root, pending, models, dtype, meta_cols, skipped, store_ids, have, plan.views
            )
        finally:
            bar.close()
        st.compact(min_fragments=16)  # merge the many small fragments of a chunked ingest
        st.meta.record_warnings(str(root), warnings)  # kept for `info`, not only printed

        pruned = prune_store(st, str(root)) if prune else 0
        summary = summarize(st, root, t0, plan, stats, models, str(dev))
        summary.pruned = pruned
        return summary


def summarize(
    st: Store,
    root: Path,
    t0: float,
    plan: IngestPlan,
    stats: Counter,
    models: list[Backbone],
    device: str,
    engine: str = "local",
) -> IngestSummary:
    """The :class:`IngestSummary` of a finished ingest (any engine) from its plan and counts."""
    seconds = time.perf_counter() - t0
    total_in_store = st.count()
    skipped = plan.skipped
    run_skips = Counter(s["reason"].split(":")[0].split("(")[0].strip() for s in skipped)
    # Success unless none of this folder's image files is usable (all skipped, or none supported).
    failed = sum(1 for s in skipped if not s["reason"].startswith(_NOT_READ))
    return IngestSummary(
        root=str(root),
        store=str(st.path),
        files_found=len(plan.found),
        new_images=stats["new"],
        already_stored=len(plan.unchanged_ids) + stats["rechecked"],
        duplicates=stats["duplicates"],
        embedded={m.name: stats[f"embedded:{m.name}"] for m in models},
        skipped=len(skipped),
        skipped_by_reason=dict(run_skips),
        skipped_file=str(st.path / "skipped.csv"),
        warnings=plan.warnings,
        images_in_store=total_in_store,
        store_version=st.version,
        device=device,
        runtimes={m.name: m.runtime for m in models},
        seconds=round(seconds, 2),
        images_per_s=round(len(plan.work) / seconds, 1) if seconds > 0 else None,
        ok=total_in_store > 0 and len(plan.supported) > failed,
        engine=engine,
        views={
            m.name: {v: stats[f"view:{m.name}:{v}"] for v in plan.views[m.name]}
            for m in models
            if plan.views.get(m.name)
        },
    )


def check_folder(images_dir: str | os.PathLike, batch_size: int, dtype: str) -> Path:
    """The images folder, resolved, after the checks every engine makes on its arguments."""
    root = Path(images_dir).expanduser()
    if not root.exists():
        raise IngestError(f"{root}: images folder not found")
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder; give the folder that holds the images")
    if batch_size < 1:
        raise IngestError(f"--batch-size must be at least 1, not {batch_size}")
    if dtype not in ("float16", "float32"):
        raise IngestError(f"unknown dtype {dtype!r}; valid: float16, float32")
    return root.resolve()


def read_meta(
    metadata: str | os.PathLike | None, join_column: str | None, label_column: str | None
) -> Any:
    """The metadata file read for joining (None without one); checks ``label_column``."""
    meta = read_metadata(metadata, join_column) if metadata is not None else None
    if label_column is not None:
        if meta is None:
            raise IngestError("--label-column needs --metadata FILE")
        if label_column not in meta.table.column_names:
            raise IngestError(
                f"{metadata}: label column {label_column!r} not found; columns: {', '.join(meta.table.column_names)}"
            )
    return meta


@dataclass
class IngestPlan:
    """What an ingest has to do, from the scan and the store: every engine runs one.

    ``work`` lists the files to read (``known_id`` set for unchanged files of stored images
    that miss a backbone); ``skipped`` starts with the unsupported files and grows as files
    fail; ``store_ids`` and ``have`` (backbone name -> ids holding it) grow as chunks commit.
    """

    found: list[FoundFile]
    supported: list[FoundFile]
    skipped: list[dict[str, Any]]
    labels_split: list[tuple[str | None, str | None]]
    meta_cols: dict[str, pa.Array]
    warnings: list[str]
    rel_pos: dict[str, int]
    store_ids: set[str]
    have: dict[str, set[str]]
    work: list[_Work]
    unchanged_ids: set[str]
    # backbone name -> its augmented views (embedstore.backbones._views): those asked for and those the
    # store holds already; ``have`` also maps each view's column to the ids holding it
    views: dict[str, list[str]] = field(default_factory=dict)


def plan_ingest(
    st: Store,
    root: Path,
    models: list[Backbone],
    dtype: EmbDtype,
    meta: Any,
    label_column: str | None,
    views: list[str] | tuple[str, ...] = (),
) -> IngestPlan:
    """Scan ``root``, label and join metadata, and compare with the store: an :class:`IngestPlan`.

    Adds the (empty) embedding columns the store lacks and refreshes the metadata of images
    already stored.
    """
    found: list[FoundFile] = list(find_images(root))
    supported = [f for f in found if f.supported and f.skip is None]
    skipped: list[dict[str, Any]] = [
        {"root": str(root), "rel": f.rel, "reason": f"unsupported format ({Path(f.rel).suffix})"}
        for f in found
        if not f.supported
    ] + [
        {"root": str(root), "rel": f.rel, "reason": f.skip}  # a FIFO, a device: never opened
        for f in found
        if f.supported and f.skip is not None
    ]
    if not found:
        raise IngestError(
            f"{root}: no image files found (looked for .jpg .jpeg .png .webp .bmp .tif .tiff, any case, recursively)"
        )

    # ---- per-file label, split and metadata
    rels = [f.rel for f in supported]
    labels_split = [_label_and_split(r) for r in rels]
    meta_cols: dict[str, pa.Array] = {}
    warnings: list[str] = []
    if meta is not None:
        joined = join_metadata(meta, rels)
        warnings += joined.warnings
        meta_cols = dict(joined.columns)
        if label_column is not None:
            lab = meta_cols.pop(label_column).cast(pa.string()).to_pylist()
            labels_split = [(lab[i], s) for i, (_, s) in enumerate(labels_split)]
        names, renamed = store_column_names(list(meta_cols), meta.file)
        warnings += renamed
        meta_cols = {names[k]: v for k, v in meta_cols.items()}
    rel_pos = {r: i for i, r in enumerate(rels)}

    # ---- what is already there
    index = st.records.file_index(str(root))
    store_ids = st.ids()
    have = {m.name: st.ids(embedded=m.column) for m in models}
    for m in models:
        st.meta.ensure_embedding_column(m.column, m.dim, dtype, m.describe())
    infos = {i.column: i for i in st.embeddings_info().values()}  # read once, for both below
    views_of = _plan_views(st, infos, models, dtype, views, have)
    work: list[_Work] = []
    unchanged_ids: set[str] = set()
    queued_ids: set[str] = set()
    for f in supported:
        prev = index.get(f.rel)
        if (
            prev is not None
            and prev[0] == f.size
            and prev[1] == f.mtime_ns
            and prev[2] in store_ids
        ):
            image_id = prev[2]
            if _missing(image_id, have) and image_id not in queued_ids:
                work.append(_Work(str(f.path), f.rel, image_id))
                queued_ids.add(image_id)
            else:
                unchanged_ids.add(image_id)
        else:
            work.append(_Work(str(f.path), f.rel, None))

    if work:
        warnings += _precision_warnings(infos, models, have)
    if meta_cols and store_ids:  # refresh metadata (and labels) of images already stored
        _update_existing_metadata(
            st, index, store_ids, rel_pos, labels_split, meta_cols, label_column
        )

    return IngestPlan(
        found,
        supported,
        skipped,
        labels_split,
        meta_cols,
        warnings,
        rel_pos,
        store_ids,
        have,
        work,
        unchanged_ids,
        views_of,
    )


def _plan_views(
    st: Store,
    infos: dict[str, Any],
    models: list[Backbone],
    dtype: EmbDtype,
    views: list[str] | tuple[str, ...],
    have: dict[str, set[str]],
) -> dict[str, list[str]]:
    """Each backbone's views: those the store holds already (so new images get them too), then
    those asked for. Adds their columns, records them on the main column and fills ``have``."""
    out: dict[str, list[str]] = {}
    for m in models:
        vs = infos[m.column].views if m.column in infos else []
        vs += [v for v in views if v not in vs]
        out[m.name] = vs
        for v in vs:
            c = view_column(m.column, v)
            st.meta.ensure_embedding_column(
                c, m.dim, dtype, view_describe(m.describe(), m.column, v)
            )
            have[c] = st.ids(embedded=c)
        if vs:
            st.meta.record_views(m.column, vs)
    return out


def _precision_warnings(
    infos: dict[str, Any], models: list[Backbone], have: dict[str, set[str]]
) -> list[str]:
    """A warning for each column whose stored rows and new rows differ in precision (int8 from
    ``onnx-int8`` against float32 from torch or onnx): allowed, but no longer one precision."""
    out = []
    for m in models:
        if m.column not in infos or not have.get(m.name):
            continue
        made = infos[m.column].runtimes
        if any((r == "onnx-int8") != (m.runtime == "onnx-int8") for r in made):
            out.append(
                f"column {m.column}: its {len(have[m.name])} stored embeddings were made by "
                f"{'/'.join(made)} and new ones by {m.runtime}; int8 and float32 embeddings "
                "differ slightly (cosine ~0.999), so this column now mixes both. Use one "
                "--runtime per store to keep one precision"
            )
    return out


def _missing(image_id: str, have: dict[str, set[str]]) -> bool:
    """Whether a stored image lacks any embedding (a backbone's, or one of its views)."""
    return any(image_id not in ids for ids in have.values())


def _embed_rows(
    batch: dict[str, Any],
    rows: list[int],
    models: list[Backbone],
    pre_of: list[int],
    pre_views: list[tuple[str, ...]],
    plan: IngestPlan,
    dtype: str,
    root: Path,
    pending: _Pending,
    stats: Counter,
) -> None:
    """The forward passes for ``rows`` (positions in ``batch["ok"]``): each backbone's main
    embedding and each of its views, only for the images that lack it (so adding views to a
    store embeds only the views), then the new rows and the updates of stored ones."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    ids = [batch["ok"][k]["id"] for k in rows]
    embs: dict[str, dict[int, np.ndarray]] = {}  # column -> {row j: embedding}
    key_of: dict[str, tuple[str, str | None]] = {}  # column -> (backbone name, view)
    for m, p in zip(models, pre_of, strict=True):
        for v in (None, *plan.views.get(m.name, [])):
            col = m.column if v is None else view_column(m.column, v)
            key_of[col] = (m.name, v)
            have = plan.have[m.name if v is None else col]
            need = [j for j, i in enumerate(ids) if i not in plan.store_ids or i not in have]
            if not need:
                continue
            x = batch["stacks"][_slot(pre_views, p, v)].index_select(
                0, torch.tensor([rows[j] for j in need])
            )
            e = m.embed(x).cpu().numpy().astype(np_dtype)  # (b, dim)
            embs[col] = dict(zip(need, e, strict=True))
    for j, k in enumerate(rows):
        it = batch["ok"][k]
        w = plan.work[it["i"]]
        row_embs = {c: e[j] for c, e in embs.items() if j in e}
        bad = [c for c, e in row_embs.items() if not np.isfinite(e).all()]
        if bad:
            name, v = key_of[bad[0]]
            plan.skipped.append(
                {
                    "root": str(root),
                    "rel": w.rel,
                    "reason": f"backbone {name} gave "
                    f"a non-finite embedding{f' (view {v})' if v else ''}",
                }
            )
            continue
        if it["id"] not in plan.store_ids:
            pos = plan.rel_pos[w.rel]
            label, split = plan.labels_split[pos]
            row = {
                "id": it["id"],
                "path": w.rel,
                "paths": [w.rel],
                "root": str(root),
                "label": label,
                "split": split,
                "width": it["size"][0],
                "height": it["size"][1],
                "bytes": it["bytes"],
            }
            pending.new.append((row, pos, row_embs))
            stats["new"] += 1
        for c, e in row_embs.items():
            if it["id"] in plan.store_ids:  # a stored image missing some backbone or view
                pending.updates.setdefault(c, []).append((it["id"], e))
            name, v = key_of[c]
            stats[f"embedded:{name}" if v is None else f"view:{name}:{v}"] += 1


class _StoredPaths:
    """The paths stored for each image of ``root``, read on first use (after a crash only)."""

    def __init__(self, st: Store, root: str) -> None:
        self.st, self.root, self.paths = st, root, None

    def has(self, image_id: str, rel: str) -> bool:
        if self.paths is None:
            self.paths = self.st.records.paths_of(self.root)
        return rel in self.paths.get(image_id, ())


class _Pending:
    def __init__(self) -> None:
        self.new: list[tuple[dict, int, dict]] = []
        self.updates: dict[str, list[tuple[str, np.ndarray]]] = {}
        self.paths: dict[str, list[str]] = {}
        self.files: list[tuple[str, str]] = []
        self.ok_rels: list[str] = []
        self.skipped_from = 0  # skipped[skipped_from:] are not recorded in the store yet

    def add_path(self, image_id: str, rel: str) -> None:
        for row, _, _ in self.new:
            if row["id"] == image_id:
                if rel not in row["paths"]:
                    row["paths"].append(rel)
                return
        self.paths.setdefault(image_id, []).append(rel)

    def size(self) -> int:
        return len(self.files)

    def clear(self) -> None:
        skipped_from = self.skipped_from
        self.__init__()
        self.skipped_from = skipped_from


def _commit(
    st: Store,
    root: Path,
    p: _Pending,
    models: list[Backbone],
    dtype: str,
    meta_cols: dict[str, pa.Array],
    skipped: list[dict],
    store_ids: set[str],
    have: dict[str, set[str]],
    views: dict[str, list[str]] | None = None,
) -> None:
    """Write one chunk: images, then embeddings of old images, then paths, then file records.
    ``views`` (backbone name -> view names) adds each backbone's view columns."""
    views = views or {}
    describes = {m.column: m.describe() for m in models}
    key = {m.column: m.name for m in models}  # column -> its key in ``have``
    for m in models:
        for v in views.get(m.name, []):
            c = view_column(m.column, v)
            describes[c], key[c] = view_describe(describes[m.column], m.column, v), c
    if p.new:
        now = _now()
        pos = pa.array([q for _, q, _ in p.new])
        st.add_images(
            [{**r, "added_at": now} for r, _, _ in p.new],
            metadata={name: col.take(pos) for name, col in meta_cols.items()},
            embeddings={c: np.stack([e[c] for _, _, e in p.new]) for c in describes},
            describes=describes,
            dtype=dtype,
        )
        for r, _, _ in p.new:
            store_ids.add(r["id"])
            for c in describes:
                have[key[c]].add(r["id"])
        for m in models:  # a new store: the main columns were made by this insert
            if views.get(m.name):
                st.meta.record_views(m.column, views[m.name])
    for column, items in p.updates.items():
        st.set_embeddings(column, [i for i, _ in items], np.stack([e for _, e in items]))
        for i, _ in items:
            have[key[column]].add(i)
    for m in models:  # provenance: a column extended by another runtime lists both
        if p.new or m.column in p.updates:
            st.meta.note_runtime(m.column, m.runtime)
    st.records.add_paths(p.paths)
    recs = []
    for rel, image_id in p.files:
        try:
            s = os.stat(disk_path(root, rel))  # a non-UTF-8 name is stored escaped
        except OSError:
            continue
        recs.append((rel, s.st_size, s.st_mtime_ns, image_id))
    st.records.record_files(str(root), recs)
    st.records.clear_skipped(str(root), p.ok_rels)
    st.records.record_skipped(skipped[p.skipped_from :])
    n = len(skipped)
    p.clear()
    p.skipped_from = n


def _update_existing_metadata(
    st: Store, index, store_ids, rel_pos, labels_split, meta_cols, label_column
) -> None:
    first: dict[str, int] = {}
    for rel, (_, _, image_id) in index.items():
        if image_id in store_ids and rel in rel_pos:
            first.setdefault(image_id, rel_pos[rel])
    if not first:
        return
    ids = list(first)
    pos = pa.array([first[i] for i in ids])
    cols = {name: col.take(pos) for name, col in meta_cols.items()}
    if label_column is not None:
        cols["label"] = pa.array([labels_split[first[i]][0] for i in ids], pa.string())
    st.update_columns(ids, cols)


def _default_workers() -> int:
    n = os.cpu_count() or 1
    return max(1, min(n - 1, 16))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["INGEST_ENGINES", "IngestError", "IngestPlan", "IngestSummary", "ingest"]
