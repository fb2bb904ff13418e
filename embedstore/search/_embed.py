"""Files to embeddings: the one path lookup, predict and the service share.

An input is an image file, raw image bytes (an upload), or a stored row id. Its content hash is
its id, so an input whose bytes are already stored reuses the stored embedding (and metadata);
any other is decoded with the safe decoder and embedded with the backbone recorded in the
column's metadata, rebuilt once per column (or taken from a caller's cache, as the service
keeps them resident). New embeddings are rounded to the column's dtype, as the store would
hold them, so a photo gives the same answer before and after it is ingested.

>>> batch = embed_inputs(store, read_inputs(["photo.jpg"]), {info.column: info.describe})
>>> batch.embeddings[info.column][batch.ok]
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore._images import ImageError, decode_image, hash_bytes, read_bytes
from embedstore.backbones._backbones import (
    Backbone,
    BackboneError,
    backbone_from_description,
    weights_mismatch,
)
from embedstore.backbones._onnx import resolve_runtime, runtime_for_column, with_runtime
from embedstore.backbones._views import make_view
from embedstore.search._resident import Resident
from embedstore.store._store import Store, StoreError
from embedstore.types import RUNTIMES, Runtime, check_choice

EMBED_BATCH = 32  # images per forward pass
_HEX_ID = re.compile(r"^[0-9a-fA-F]{64}$")
_OR_IDS = {True: " or a 64-hex stored row id", False: ""}


@dataclass
class Input:
    """One thing to embed: ``name`` (for messages), its ``id`` (content hash, or a stored row
    id), its ``data`` (None for a stored id) and an ``error`` when it cannot be read."""

    name: str
    id: str | None
    data: bytes | None = None
    error: str | None = None


def read_inputs(
    items: Sequence[str | os.PathLike | bytes], *, allow_ids: bool = False
) -> list[Input]:
    """Read and hash files (or bytes); with ``allow_ids`` a 64-hex string that is no file is a
    stored row id. Unreadable inputs carry an ``error`` instead of failing the batch."""
    out = []
    for k, item in enumerate(items):
        if isinstance(item, bytes | bytearray):
            out.append(Input(f"upload {k}", hash_bytes(bytes(item)), bytes(item)))
            continue
        name = str(item)
        if os.path.isfile(name):
            try:
                data = read_bytes(name)
            except ImageError as e:
                out.append(Input(name, None, error=f"cannot read the file: {e}"))
                continue
            out.append(Input(name, hash_bytes(data), data))
        elif allow_ids and _HEX_ID.match(name) and not os.path.exists(name):
            out.append(Input(name, name.lower()))
        elif os.path.isdir(name):
            out.append(
                Input(name, None, error="is a folder; give image files" + _OR_IDS[allow_ids])
            )
        else:
            out.append(
                Input(
                    name,
                    None,
                    error="query file not found (give an image file" + _OR_IDS[allow_ids] + ")",
                )
            )
    return out


@dataclass
class EmbeddedInputs:
    """Embeddings of a list of inputs, row ``j`` for input ``j``.

    ``embeddings[column]`` is ``(N, dim)`` float32 (zeros where missing), ``have[column]`` says
    which rows hold one, ``in_store`` which inputs are stored images, ``table`` the requested
    metadata columns of stored rows (None for new images), ``errors`` ``{row: reason}``.
    """

    inputs: list[Input]
    embeddings: dict[str, np.ndarray]
    have: dict[str, np.ndarray]
    in_store: np.ndarray
    table: dict[str, np.ndarray]
    errors: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Rows with no error and every column embedded."""
        ok = np.ones(len(self.inputs), dtype=bool)
        for h in self.have.values():
            ok &= h
        ok[list(self.errors)] = False
        return ok


def embed_inputs(
    store: Store | None,
    inputs: list[Input],
    columns: dict[str, dict[str, Any]],
    *,
    meta_columns: list[str] | tuple[str, ...] = (),
    device: str | torch.device = "auto",
    runtime: Runtime = "auto",
    batch_size: int = EMBED_BATCH,
    backbones: dict[str, Backbone] | None = None,
    resident: Resident | None = None,
) -> EmbeddedInputs:
    """Embeddings of ``inputs`` for every embedding column in ``columns`` (``{column: describe}``).

    Stored rows are reused by id; the rest are decoded and embedded with the recorded backbone
    (``backbones`` is a cache ``{column: Backbone}`` filled as backbones are built). With
    ``resident`` (the store's rows held in memory) stored rows come from it, not from a read.
    A backbone that cannot be rebuilt raises StoreError; a file that cannot be decoded gets an
    error row. ``runtime`` runs the rebuilt backbones (``auto``: ONNX Runtime on the CPU where it
    is faster, else torch; see embedstore.backbones._onnx); with ``torch`` or ``onnx`` a cached
    backbone of the other runtime is rebuilt. Under ``auto`` on the CPU, a column that ``onnx-int8``
    wrote is embedded with ``onnx-int8`` too, so queries match the stored vectors' precision.
    """
    check_choice(runtime, RUNTIMES, "runtime")
    n = len(inputs)
    embs = {c: np.zeros((n, int(d["dim"])), np.float32) for c, d in columns.items()}
    have = {c: np.zeros(n, bool) for c in columns}
    table = {c: np.array([None] * n, dtype=object) for c in meta_columns}
    res = EmbeddedInputs(inputs, embs, have, np.zeros(n, bool), table)
    for j, q in enumerate(inputs):
        if q.error:
            res.errors[j] = q.error
    if resident is not None:  # 1. stored rows, by id
        _from_resident(res, resident, columns, meta_columns)
    elif store is not None and store.exists:
        _from_store(res, store, columns, meta_columns)
    _stored_only_errors(res, store, columns)
    images = _decode_rest(res)  # 2. decode the rest once, then embed with each backbone
    if images:
        _embed_new(res, images, columns, device, runtime, batch_size, backbones)
    return res


def _from_resident(
    res: EmbeddedInputs, resident: Resident, columns: dict[str, Any], meta_columns: Any
) -> None:
    inputs = res.inputs
    r_embs, r_have, r_table = resident.vectors([None if q.error else q.id for q in inputs])
    res.in_store[:] = [not q.error and q.id in resident.row for q in inputs]
    for c in columns:
        if c in r_embs:
            res.embeddings[c][:] = r_embs[c]
            res.have[c][:] = r_have[c]
    for c in meta_columns:
        if c in r_table:
            res.table[c][:] = r_table[c]


def _from_store(
    res: EmbeddedInputs, store: Store, columns: dict[str, Any], meta_columns: Any
) -> None:
    inputs = res.inputs
    ids = sorted({q.id for q in inputs if q.id and not q.error})
    if not ids:
        return
    schema = store.schema()
    assert schema is not None  # the caller checked store.exists
    names = schema.names
    want = [c for c in columns if c in names]
    meta = [c for c in meta_columns if c in names]
    t = store.read(["id", *meta, *want], ids=ids)
    pos = {i: k for k, i in enumerate(t.column("id").to_pylist())}
    rows = [(j, pos[q.id]) for j, q in enumerate(inputs) if q.id in pos and j not in res.errors]
    for j, _ in rows:
        res.in_store[j] = True
    for c in want:
        vals = t.column(c).to_pylist()
        for j, k in rows:
            if vals[k] is not None:
                res.embeddings[c][j] = np.asarray(vals[k], dtype=np.float32)
                res.have[c][j] = True
    for c in meta:
        vals = t.column(c).to_pylist()
        for j, k in rows:
            res.table[c][j] = vals[k]


def _stored_only_errors(res: EmbeddedInputs, store: Store | None, columns: dict[str, Any]):
    """An error for each id given without bytes whose stored row lacks an embedding."""
    have = res.have
    for j, q in enumerate(res.inputs):
        if j not in res.errors and q.data is None and not all(h[j] for h in have.values()):
            res.errors[j] = (
                "no stored image has this id (and no such file)"
                if not res.in_store[j]
                else "the stored image has no "
                + ", ".join(_name(c, columns[c]) for c in columns if not have[c][j])
                + " embedding"
                + (
                    "; add the views with `embedstore ingest IMAGES_DIR "
                    f"--store {store.path if store else 'STORE'} --views ...`"
                    if any("view" in columns[c] and not have[c][j] for c in columns)
                    else ""
                )
            )


def _decode_rest(res: EmbeddedInputs) -> dict[int, Any]:
    """The images of the inputs still missing an embedding, decoded once (errors recorded)."""
    todo = [
        j
        for j, q in enumerate(res.inputs)
        if j not in res.errors and q.data is not None and not all(h[j] for h in res.have.values())
    ]
    images: dict[int, Any] = {}
    for j in todo:
        try:
            data = res.inputs[j].data
            assert data is not None  # todo holds only inputs with data
            images[j] = decode_image(data)
        except ImageError as e:
            res.errors[j] = f"cannot use as a query image: {e}"
    return images


def _embed_new(
    res: EmbeddedInputs,
    images: dict[int, Any],
    columns: dict[str, dict[str, Any]],
    device: str | torch.device,
    runtime: Runtime,
    batch_size: int,
    backbones: dict[str, Backbone] | None,
) -> None:
    """Embed ``images`` for each column with its recorded backbone (built once, cached)."""
    dev = resolve_device(device)
    resolve_runtime(runtime, dev)  # a bad setting fails before any model loads
    cache = backbones if backbones is not None else {}
    for c, describe in columns.items():
        rows = [j for j in images if not res.have[c][j]]
        if not rows:
            continue
        key = describe.get("view_of", c)  # a view column runs its main column's backbone
        rt = runtime_for_column(runtime, describe, dev)  # auto: onnx-int8 as it was written
        bb = cache.get(key)
        if bb is None or (rt != "auto" and bb.runtime != resolve_runtime(rt, dev)):
            first = res.inputs[rows[0]].name  # auto: as cached
            bb = cache[key] = _rebuild(describe, dev, rt, first, res.warnings)
        X = embed_images(bb, [images[j] for j in rows], batch_size, view=describe.get("view"))
        if describe.get("dtype", "float16") == "float16":
            X = X.astype(np.float16).astype(np.float32)  # as the store would hold it
        res.embeddings[c][rows] = X
        res.have[c][rows] = True


def embed_images(
    bb: Backbone, images: list[Any], batch_size: int = EMBED_BATCH, *, view: str | None = None
) -> np.ndarray:
    """PIL RGB images -> ``(n, dim)`` float32 embeddings, in batches; with ``view`` (a name
    in embedstore.backbones._views, e.g. ``"flip"``) of that augmented view, as ingest stores it."""
    out = []
    pre = bb.preprocess if view is None else (lambda im: make_view(im, view, bb.preprocess))
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([pre(im) for im in images[s : s + batch_size]]))
        out.append(bb.embed(x).cpu().numpy())  # (B, dim)
    return np.concatenate(out).astype(np.float32)


def _name(column: str, describe: dict[str, Any]) -> str:
    name = describe.get("backbone", column)
    return f"{name} {describe['view']} view" if "view" in describe else name


def _rebuild(
    describe: dict[str, Any], dev: torch.device, runtime: Runtime, first: str, notes: list[str]
) -> Backbone:
    """The backbone recorded in a column's metadata, on ``dev`` with ``runtime``; notes a
    weights mismatch."""
    try:
        bb = backbone_from_description(describe, warn=False)
    except BackboneError as e:
        raise StoreError(
            f"{first}: not in the store, and backbone {describe.get('backbone')!r} (source "
            f"{describe.get('source')}) cannot be rebuilt to embed it: {e}. Use stored images "
            "(by row id) instead"
        ) from e
    msg = weights_mismatch(bb, describe)
    if msg:
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
    return with_runtime(bb, runtime, dev)
