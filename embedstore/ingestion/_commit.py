"""Embedding decoded batches and committing them in chunks (images before the file records
that point at them), and the summary of a finished ingest: shared by every engine."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from embedstore._images import (
    disk_path,
)
from embedstore.backbones._backbones import Backbone
from embedstore.backbones._views import view_column, view_describe
from embedstore.ingestion._decode import _slot
from embedstore.ingestion._options import _NOT_READ, IngestSummary
from embedstore.ingestion._plan import IngestPlan
from embedstore.store._store import Store
from embedstore.types import EmbDtype


def _embed_rows(
    batch: dict[str, Any],
    rows: list[int],
    models: list[Backbone],
    pre_of: list[int],
    pre_views: list[tuple[str, ...]],
    plan: IngestPlan,
    dtype: EmbDtype,
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
        else:  # stored, and now has the embeddings (or views) it lacked
            stats["completed"] += 1
        for c, e in row_embs.items():
            if it["id"] in plan.store_ids:  # a stored image missing some backbone or view
                pending.updates.setdefault(c, []).append((it["id"], e))
            name, v = key_of[c]
            stats[f"embedded:{name}" if v is None else f"view:{name}:{v}"] += 1


class _StoredPaths:
    """The paths stored for each image of ``root``, read on first use (after a crash only)."""

    def __init__(self, st: Store, root: str) -> None:
        self.st, self.root = st, root
        self.paths: dict[str, set[str]] | None = None

    def has(self, image_id: str, rel: str) -> bool:
        if self.paths is None:
            self.paths = self.st.records.paths_of(self.root)
        return rel in self.paths.get(image_id, ())


class _Pending:
    def __init__(self) -> None:
        self._reset()
        self.skipped_from = 0  # skipped[skipped_from:] are not recorded in the store yet

    def _reset(self) -> None:
        """Empty every pending list (not ``skipped_from``)."""
        self.new: list[tuple[dict, int, dict]] = []
        self.updates: dict[str, list[tuple[str, np.ndarray]]] = {}
        self.paths: dict[str, list[str]] = {}
        self.files: list[tuple[str, str]] = []
        self.ok_rels: list[str] = []

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
        self._reset()


def _commit(
    st: Store,
    root: Path,
    p: _Pending,
    models: list[Backbone],
    dtype: EmbDtype,
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
        # every file found is new, already stored (the first name of a stored image, whether
        # or not it lacked an embedding or view), a duplicate name, or skipped
        already_stored=plan.unchanged_files + stats["rechecked"] + stats["completed"],
        duplicates=stats["duplicates"] + plan.unchanged_duplicates,
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
