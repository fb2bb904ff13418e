"""The Ray engine's tasks and actors: decode tasks (:func:`_decode_batch`) and the embedding
actors (:class:`_EmbedWriter`) that write uncommitted fragments of the images table."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import torch

from embedstore._images import (
    DEFAULT_MAX_BYTES,
)
from embedstore.backbones._backbones import Backbone, create_backbone
from embedstore.backbones._onnx import with_runtime
from embedstore.backbones._preprocess import Preprocess
from embedstore.backbones._views import view_column
from embedstore.ingestion._decode import _slot, decode_file
from embedstore.store._fragments import image_table, write_image_fragments
from embedstore.types import EmbDtype, Pooling, Runtime

# Pipeline columns that are not store columns (metadata columns never start with "__").
_FILE, _KNOWN, _UPDATE, _ERROR, _FRAGS = "__file", "__known", "__update", "__error", "__frags"


_NEED = "__need"  # a stored image's columns still to embed (null: a new image, every column)


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


def _np_dtype(dtype: EmbDtype) -> type:
    return np.float16 if dtype == "float16" else np.float32


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
