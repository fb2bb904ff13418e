"""Ingest: embed every image of a folder with one or more frozen backbones into a store.

Decoding (read, hash, decode, resize) runs in DataLoader worker processes, overlapped with the
model; on the CPU the model runs with ONNX Runtime by default (``runtime``,
embedstore.backbones._onnx). Work is committed in chunks, each an atomic Lance commit, images
before the file records that point at them, so a run killed at any moment resumes where it
stopped: ids are content hashes, inserts are keyed on them, and nothing is embedded twice.

The steps live beside this module: the settings (``_options``), the plan (``_plan``), decoding
(``_decode``), embedding and commits (``_commit``); ``_ray_ingest`` is the Ray engine.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings as warnings_module
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedstore._device import resolve_device
from embedstore._images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from embedstore.backbones._backbones import Backbone, create_backbone
from embedstore.backbones._onnx import resolve_runtime, with_runtime
from embedstore.backbones._views import expand_views
from embedstore.ingestion._commit import _commit, _embed_rows, _Pending, _StoredPaths, summarize
from embedstore.ingestion._decode import (
    _collate,
    _DecodeDataset,
    _default_workers,
    preprocessing_groups,
)
from embedstore.ingestion._options import (
    INGEST_ENGINES,
    IngestError,
    IngestOptions,
    IngestSummary,
)
from embedstore.ingestion._plan import IngestPlan, _missing, check_folder, plan_ingest, read_meta
from embedstore.ingestion._prune import prune as prune_store
from embedstore.store._store import Store, connect
from embedstore.store._taxonomy import read_taxonomy_file, set_taxonomy
from embedstore.types import ENGINES, EmbDtype, Engine, Pooling, Runtime, check_choice


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
    taxonomy: str | os.PathLike | None = None,
) -> IngestSummary:
    """Embed every image under ``images_dir`` into ``store``; returns what it did.

    Re-running adds only what is new; a new backbone embeds only for that backbone.
    ``views`` (``["flip", "crops5"]`` or ``"flip,crops5"``; embedstore.backbones._views) also
    stores embeddings of augmented views of each image, one column per view beside the main
    one: on a store that has the images, only the views are embedded; once a store has views,
    later ingests give new images their views too. Heads train on them and predict with them
    (TTA). ``runtime``: ``auto`` runs backbones with ONNX Runtime on the CPU where it is faster
    (efficientnet-lite0; exported once, cached) and with torch otherwise; ``torch`` or ``onnx``
    to choose (embedstore.backbones.resolve_runtime).

    ``engine="ray"`` runs decoding and the backbones on a Ray cluster (``ray_address``,
    ``actors``, ``gpus_per_actor``, ``cpus_per_actor``; embedstore.ingestion._ray_ingest) and
    writes the same rows: ``pip install 'embedstore[ray]'``. The settings travel to the engine
    as one :class:`IngestOptions`. ``taxonomy`` (a CSV naming the ranks above the labels,
    finest first: ``species,genus,family``; embedstore.store.read_taxonomy_file) is checked
    before anything is embedded and set on the store at the end.

    >>> summary = ingest("photos/", "my-store", backbones=["efficientnet-lite0"])
    >>> summary = ingest("photos/", "my-store", engine="ray", ray_address="auto")
    """
    options = IngestOptions(
        backbones=tuple(backbones),
        pooling=pooling,
        metadata=metadata,
        label_column=label_column,
        join_column=join_column,
        batch_size=batch_size,
        device=device,
        runtime=runtime,
        workers=workers,
        dtype=dtype,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        prune=prune,
        commit_every=commit_every,
        progress=progress,
        backbone_objects=backbone_objects,
        engine=engine,
        ray_address=ray_address,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        views=views,
        taxonomy=taxonomy,
    )
    return run_ingest(images_dir, store, options)


def run_ingest(
    images_dir: str | os.PathLike, store: str | os.PathLike | Store | None, options: IngestOptions
) -> IngestSummary:
    """:func:`ingest` with its settings in one :class:`IngestOptions`: the local engine, or the
    one ``options.engine`` names (``INGEST_ENGINES``)."""
    try:
        check_choice(options.engine, ENGINES, "engine")
    except ValueError as e:
        raise IngestError(f"--engine: {e}") from None
    tax = None if options.taxonomy is None else read_taxonomy_file(options.taxonomy)
    if options.engine == "local":
        summary = ingest_local(images_dir, store, options)
    else:
        summary = INGEST_ENGINES.get(options.engine)(images_dir, store, options)
        if options.prune:
            summary.pruned = prune_store(connect(summary.store), summary.root)
    if tax is not None and summary.images_in_store:
        set_tax = set_taxonomy(summary.store, tax)
        summary.taxonomy = set_tax.names_per_rank
        summary.warnings += set_tax.warnings
    return summary


def ingest_local(
    images_dir: str | os.PathLike, store: str | os.PathLike | Store | None, options: IngestOptions
) -> IngestSummary:
    """The local engine: plan, decode in worker processes, embed, commit in chunks, prune."""
    o = options
    try:
        view_names = expand_views(o.views)
    except ValueError as e:
        raise IngestError(f"--views: {e}") from None
    if o.ray_address is not None or o.actors is not None or o.gpus_per_actor is not None:
        raise IngestError("--ray-address, --actors and --gpus-per-actor need --engine ray")
    t0 = time.perf_counter()
    root = check_folder(images_dir, o.batch_size, o.dtype)
    st = store if isinstance(store, Store) else connect(store)
    dev = _device(o)
    with st.writing("embedstore ingest"):  # one writer at a time; a second is refused
        meta = read_meta(o.metadata, o.join_column, o.label_column)
        models = o.backbone_objects or [
            create_backbone(b, o.pooling) for b in dict.fromkeys(o.backbones)
        ]
        models = [with_runtime(m, o.runtime, dev) for m in models]
        plan = plan_ingest(st, root, models, o.dtype, meta, o.label_column, view_names)
        run = _LocalRun(st, root, models, plan, o.dtype)
        _embed_and_commit(run, _loader(run, o, dev), o)
        st.compact(min_fragments=16)  # merge the many small fragments of a chunked ingest
        st.meta.record_warnings(str(root), plan.warnings)  # kept for `info`, not only printed
        pruned = prune_store(st, str(root)) if o.prune else 0
        summary = summarize(st, root, t0, plan, run.stats, models, str(dev))
        summary.pruned = pruned
        return summary


def _device(o: IngestOptions) -> torch.device:
    """The device, resolved once here (the edge), and the runtime checked on it."""
    try:
        dev = resolve_device(o.device)
    except ValueError as e:
        raise IngestError(f"--device: {e}") from None
    try:
        resolve_runtime(o.runtime, dev)
    except ValueError as e:
        raise IngestError(f"--runtime: {e}") from None
    return dev


@dataclass
class _LocalRun:
    """One local ingest under way: the plan, the backbones grouped by preprocessing (one
    decode per preprocessing), and what is pending and counted."""

    st: Store
    root: Path
    models: list[Backbone]
    plan: IngestPlan
    dtype: EmbDtype

    def __post_init__(self) -> None:
        self.preprocs, self.pre_of, self.pre_views = preprocessing_groups(
            self.models, self.plan.views
        )
        self.stats: Counter = Counter()
        self.pending = _Pending()
        self.seen: set[str] = set()  # ids met in this run

    def commit(self) -> None:
        p = self.plan
        _commit(
            self.st,
            self.root,
            self.pending,
            self.models,
            self.dtype,
            p.meta_cols,
            p.skipped,
            p.store_ids,
            p.have,
            p.views,
        )


def _loader(run: _LocalRun, o: IngestOptions, dev: torch.device) -> torch.utils.data.DataLoader:
    """Decode workers for the plan's files (none for no work; in this process without fork)."""
    work = run.plan.work
    n_workers = _default_workers() if o.workers is None else max(0, o.workers)
    n_workers = min(n_workers, -(-len(work) // o.batch_size))  # none idle; none for no work
    if "fork" not in multiprocessing.get_all_start_methods():
        n_workers = 0  # spawn would re-import the caller's script: decode in this process
    return torch.utils.data.DataLoader(
        _DecodeDataset(work, run.preprocs, o.max_pixels, run.pre_views, o.max_bytes),
        batch_size=o.batch_size,
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


def _embed_and_commit(run: _LocalRun, loader: torch.utils.data.DataLoader, o: IngestOptions):
    """Each decoded batch: sort its images (new, stored, duplicate), embed what is missing,
    commit every ``commit_every`` images, and the rest at the end."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(run.plan.work),
        unit="img",
        desc=f"ingest {run.root.name}",
        disable=not o.progress,
        smoothing=0.1,
    )
    try:
        with warnings_module.catch_warnings():
            # the forked decode workers never touch Lance (they read, hash and decode files)
            warnings_module.filterwarnings("ignore", message="lance is not fork-safe")
            batches = iter(loader)
        known = _StoredPaths(run.st, str(run.root))
        for batch in batches:
            embed_rows = _sort_batch(run, batch, known)
            if embed_rows:
                p = run.plan
                _embed_rows(
                    batch,
                    embed_rows,
                    run.models,
                    run.pre_of,
                    run.pre_views,
                    p,
                    run.dtype,
                    run.root,
                    run.pending,
                    run.stats,
                )
            bar.update(len(batch["ok"]) + len(batch["errors"]))
            if run.pending.size() >= o.commit_every:
                run.commit()
        run.commit()
    finally:
        bar.close()


def _sort_batch(run: _LocalRun, batch: dict[str, Any], known: _StoredPaths) -> list[int]:
    """Record a batch's failures, paths and duplicates; the positions in ``batch["ok"]`` of the
    images that need a forward pass."""
    plan, pending, stats = run.plan, run.pending, run.stats
    for e in batch["errors"]:
        rel = plan.work[e["i"]].rel
        plan.skipped.append({"root": str(run.root), "rel": rel, "reason": e["error"]})
    embed_rows: list[int] = []
    for k, it in enumerate(batch["ok"]):
        w = plan.work[it["i"]]
        image_id = it["id"]
        pending.files.append((w.rel, image_id))
        pending.ok_rels.append(w.rel)
        if image_id in run.seen:  # same bytes twice in this run: one image, both paths
            pending.add_path(image_id, w.rel)
            stats["duplicates"] += 1
            continue
        run.seen.add(image_id)
        if image_id in plan.store_ids and not _missing(image_id, plan.have):
            pending.add_path(image_id, w.rel)  # renamed / duplicated file of a stored image
            # ... or one stored before a crash kept its file record from being written:
            # re-checked, not a duplicate name
            stats["rechecked" if known.has(image_id, w.rel) else "duplicates"] += 1
            continue
        embed_rows.append(k)
    return embed_rows


__all__ = ["INGEST_ENGINES", "IngestError", "IngestOptions", "IngestSummary", "ingest"]
