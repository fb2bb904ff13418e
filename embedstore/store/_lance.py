"""The Lance tables of a store folder: names, column types, the store's errors, and ``Tables``,
the one place a table is opened or created. Every module of ``embedstore.store`` builds on it."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from embedstore._ray import RAY_INSTALL_HINT, EngineError
from embedstore.errors import BadInput, Conflict
from embedstore.types import EmbDtype

STORE_FORMAT = 1
EMB_PREFIX = "emb_"
HOLDOUT, ALWAYS_TRAIN = -1, -2  # folds of the held-out part and of rows in every training part
Part = Literal["holdout", "folds"]
ID_CHUNK = 2000  # ids per "id IN (...)" read
_RUST_ANYWHERE = re.compile(r",?\s*[^\s,]+\.rs:\d+:\d+")
META_KEY = "embedstore"
VIEW_SEP = "__"  # a view column is <main column>__<view> (embedstore.backbones._views)


IMAGE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("paths", pa.list_(pa.string())),
    pa.field("root", pa.string()),
    pa.field("label", pa.string()),
    pa.field("split", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("added_at", pa.string()),
)


class StoreError(BadInput):
    """A store problem the user can act on; the message says what to do."""


class StoreLockedError(StoreError, Conflict):
    """Another process is writing the store; the message names it (PID, command, since when)."""


def plain(e: Exception) -> str:
    """An exception from Lance as one line, without Rust source locations."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = _RUST_ANYWHERE.sub("", text)
    return re.sub(r"^(External error: )?(LanceError\(\w+\): )?(Generic N/A error: )?", "", text)


def import_lance():
    import lance

    return lance


def import_lance_ray():
    """lance-ray, the Ray Data reader and writer of Lance tables (the ``ray`` extra)."""
    try:
        import lance_ray
    except ImportError as e:
        raise EngineError(f"{RAY_INSTALL_HINT} ({e})") from None
    return lance_ray


def has_version(uri: str) -> bool:
    """A Lance table exists once its first commit wrote a manifest under ``_versions``."""
    versions = os.path.join(uri, "_versions")
    if not os.path.isdir(versions):
        return False
    with os.scandir(versions) as entries:
        return any(True for _ in entries)


class Tables:
    """The store's Lance tables (``images``, ``files``, ``skipped``) in the folder ``path``:
    opened (None before a first commit) and created here, in one place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lance = import_lance()

    def uri(self, table: str) -> str:
        return str(self.path / f"{table}.lance")

    def open(self, table: str):
        uri = self.uri(table)
        if not has_version(uri):  # absent, or a first write killed before its commit
            return None
        try:
            return self.lance.dataset(uri)
        except (OSError, ValueError, RuntimeError) as e:
            raise StoreError(
                f"{self.path}: the store is damaged: its {table} table cannot be opened "
                f"({plain(e)}); run `embedstore check --store {self.path}` to see what is "
                "damaged and how to repair it"
            ) from e

    def create(self, table: str, data: pa.Table) -> None:
        """Create ``table`` holding ``data`` (its first commit)."""
        self.lance.write_dataset(data, self.uri(table), mode="create")

    def add_missing_columns(self, ds, schema: pa.Schema) -> None:
        """Add ``schema``'s columns the table lacks (null for existing rows), keeping field
        metadata."""
        missing = [f for f in schema if f.name not in ds.schema.names]
        if not missing:
            return
        ds.add_columns(missing)
        md = {
            f.name: {k.decode(): v.decode() for k, v in f.metadata.items()}
            for f in missing
            if f.metadata
        }
        if md:
            self.lance.dataset(self.uri("images")).update_field_metadata(md, replace=True)


def with_store_metadata(rows: pa.Table) -> pa.Table:
    """``rows`` carrying the store's table metadata (format, creation time, embeddings token),
    so that the commit creating the table records them too: a first commit killed half-way
    leaves no table, never a table without its format."""
    values = {"format": STORE_FORMAT, "created_at": now(), "embeddings_token": new_token()}
    md = dict(rows.schema.metadata or {})
    md.update({f"{META_KEY}.{k}".encode(): json.dumps(v).encode() for k, v in values.items()})
    return rows.replace_schema_metadata(md)


def new_token() -> str:
    return uuid.uuid4().hex


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def numpy_columns(table: pa.Table, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Columns of ``table`` as numpy arrays, as the readers return them (strings and columns
    with nulls as object arrays of Python values): what heads' encoders take."""
    return {c: to_numpy(table.column(c)) for c in (columns or table.column_names)}


def to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or col.null_count:
        return np.array(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def save_ids(path: str | os.PathLike, ids: list[str], build_id: str) -> None:
    """Write row ids in order to a Parquet file tagged with ``build_id`` (an index's ids file)."""
    import pyarrow.parquet as pq

    t = pa.table({"id": pa.array(ids, pa.string())})
    pq.write_table(t.replace_schema_metadata({"embedstore.build_id": build_id}), path)


def load_ids(path: str | os.PathLike) -> tuple[list[str], str]:
    """``(ids, build_id)`` from a file written by :func:`save_ids`."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return t.column("id").to_pylist(), (t.schema.metadata or {}).get(
        b"embedstore.build_id", b""
    ).decode()


def fixed_size_list(X: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(X, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), X.shape[1])


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give ``rows`` exactly ``schema``'s columns (missing ones as nulls), in its order."""
    cols = []
    for f in schema:
        if f.name in rows.column_names:
            cols.append(rows.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(rows.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def embedding_field(column: str, dim: int, dtype: EmbDtype, describe: dict) -> pa.Field:
    """The Lance field of an embedding column: fixed-size list of ``dtype``, described by
    ``describe`` (what reproduces it) in its field metadata."""
    pa_type = pa.list_(pa.float16() if dtype == "float16" else pa.float32(), dim)
    meta = {META_KEY: json.dumps({**describe, "dtype": dtype}, sort_keys=True)}
    return pa.field(column, pa_type, metadata=meta)


def column_of(name: str) -> str:
    return EMB_PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


def is_embedding(field: pa.Field) -> bool:
    """An embedding column: named ``emb_...`` and a fixed-size list of floats."""
    return field.name.startswith(EMB_PREFIX) and pa.types.is_fixed_size_list(field.type)


def runtimes_of(describe: dict[str, Any]) -> list[str]:
    """A column description's runtimes: ``runtimes`` once a second one added rows, else its
    ``runtime`` (older columns: torch)."""
    return list(describe.get("runtimes") or [describe.get("runtime", "torch")])


class StoreParts(Protocol):
    """What the parts of a store (``meta``, ``records``, ``fragments``) use of the
    :class:`~embedstore.store.Store` they belong to."""

    path: Path
    tables: Tables
    lock: Any
    meta: Any
    records: Any
    text_cache: Any

    @property
    def exists(self) -> bool: ...

    @property
    def version(self) -> int: ...

    def schema(self) -> pa.Schema | None: ...

    def embeddings_info(self) -> dict[str, Any]: ...

    def read(
        self,
        columns: list[str] | None = None,
        where: str | None = None,
        *,
        ids: list[str] | None = None,
    ) -> pa.Table: ...

    def update_columns(self, ids: list[str], columns: dict[str, Any]) -> int: ...
