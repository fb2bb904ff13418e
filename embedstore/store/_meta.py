"""What the store says about itself in Lance schema metadata: the table's keys (format, folds,
warnings, the embeddings token) and each embedding column's description (backbone, views,
runtimes), read as :class:`EmbeddingInfo`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from embedstore.store._lance import (
    EMB_PREFIX,
    META_KEY,
    VIEW_SEP,
    StoreError,
    StoreParts,
    embedding_field,
    is_embedding,
    new_token,
    runtimes_of,
)
from embedstore.store._lock import writes
from embedstore.types import EmbDtype


@dataclass(frozen=True)
class EmbeddingInfo:
    column: str
    backbone: str
    dim: int
    dtype: str
    describe: dict[str, Any]

    @property
    def views(self) -> list[str]:
        """The augmented views stored beside this embedding, in order
        (``embedstore.backbones._views``)."""
        return list(self.describe.get("views") or [])

    @property
    def view_columns(self) -> dict[str, str]:
        """``{view: column}`` of the views stored beside this embedding (``<column>__<view>``)."""
        return {v: f"{self.column}{VIEW_SEP}{v}" for v in self.views}

    @property
    def runtimes(self) -> list[str]:
        """What made this column's embeddings, in order: ``torch``, ``onnx``, ``onnx-int8``."""
        return runtimes_of(self.describe)


def embedding_infos(schema: pa.Schema | None) -> dict[str, EmbeddingInfo]:
    """The embedding columns described in ``schema``, keyed by backbone name (views left out)."""
    out: dict[str, EmbeddingInfo] = {}
    if schema is None:
        return out
    for f in schema:
        if not is_embedding(f):  # emb_notes of an older store, say, is not one
            continue
        md = f.metadata or {}
        desc = json.loads(md.get(META_KEY.encode(), b"{}") or b"{}")
        if "view" in desc or VIEW_SEP in f.name:  # an augmented view of another column
            continue
        name = desc.get("backbone", f.name[len(EMB_PREFIX) :])
        dtype = str(f.type.value_type)
        dtype = {"halffloat": "float16", "float": "float32"}.get(dtype, dtype)
        out[name] = EmbeddingInfo(f.name, name, f.type.list_size, dtype, desc)
    return out


class TableMeta:
    """The store's schema metadata (``Store.meta``): table keys and column descriptions."""

    def __init__(self, store: StoreParts) -> None:
        self._store, self.path, self._tables, self.lock = (
            store,
            store.path,
            store.tables,
            store.lock,
        )

    def table_metadata(self) -> dict[str, Any]:
        schema = self._store.schema()
        out = {}
        for k, v in ((schema.metadata or {}) if schema is not None else {}).items():
            k = k.decode()
            if k.startswith(META_KEY + "."):
                out[k[len(META_KEY) + 1 :]] = json.loads(v.decode())
        return out

    @writes
    def set_table_metadata(self, values: dict[str, Any]) -> None:
        ds = self._tables.open("images")
        if ds is None:
            return
        current = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
        current.update({f"{META_KEY}.{k}": json.dumps(v) for k, v in values.items()})
        ds.update_schema_metadata(current)

    def drop_table_metadata(self, key: str) -> None:
        ds = self._tables.open("images")
        md = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
        if md.pop(f"{META_KEY}.{key}", None) is not None:
            ds.update_schema_metadata(md, replace=True)

    @property
    def embeddings_token(self) -> str | None:
        """Changes whenever rows or embeddings are written, not on metadata-only writes (labels,
        folds): what a saved index checks to know it is still fresh."""
        return self.table_metadata().get("embeddings_token")

    def new_embeddings_token(self) -> None:
        # Before the write: a write killed half-way leaves the token new, so an index built
        # before it reads as stale (safe), never as fresh.
        self.set_table_metadata({"embeddings_token": new_token()})

    @writes
    def ensure_embedding_column(
        self, column: str, dim: int, dtype: EmbDtype, describe: dict
    ) -> None:
        """Add an (all null) embedding column described by ``describe`` if it is not there yet."""
        ds = self._tables.open("images")
        if ds is None:
            return  # the first insert creates the table with the column
        field = embedding_field(column, dim, dtype, describe)
        if column in ds.schema.names:
            have = ds.schema.field(column).type
            if have != field.type:
                raise StoreError(
                    f"{self.path}: column {column} holds {have}, not {field.type}; "
                    "ingest with the store's --dtype or use another backbone name"
                )
            return
        self._tables.add_missing_columns(ds, pa.schema([field]))

    @writes
    def record_views(self, column: str, views: list[str]) -> list[str]:
        """Record in ``column``'s field metadata that ``views`` (augmented views, each in its
        own column ``<column>__<view>``) are stored beside it: the stored list, then any new
        ones, in order. Returns the recorded list."""
        ds = self._tables.open("images")
        if ds is None or column not in ds.schema.names:
            return list(views)
        md = {k.decode(): v.decode() for k, v in (ds.schema.field(column).metadata or {}).items()}
        desc = json.loads(md.get(META_KEY) or "{}")
        have = list(desc.get("views") or [])
        merged = have + [v for v in views if v not in have]
        if merged != have:
            desc["views"] = merged
            md[META_KEY] = json.dumps(desc, sort_keys=True)
            ds.update_field_metadata({column: md}, replace=True)
        return merged

    def note_runtime(self, column: str, runtime: str) -> None:
        """Record in ``column``'s description that ``runtime`` wrote embeddings into it: a column
        made by one runtime and extended by another lists both, in order, as ``runtimes``."""
        ds = self._tables.open("images")
        if ds is None or column not in ds.schema.names:
            return
        md = {k.decode(): v.decode() for k, v in (ds.schema.field(column).metadata or {}).items()}
        desc = json.loads(md.get(META_KEY) or "{}")
        runtimes = runtimes_of(desc)
        if runtime in runtimes:
            return
        desc["runtimes"] = [*runtimes, runtime]
        md[META_KEY] = json.dumps(desc, sort_keys=True)
        ds.update_field_metadata({column: md}, replace=True)

    @writes
    def record_warnings(self, root: str, warnings: list[str]) -> None:
        """Keep the warnings of the last ingest of ``root`` (metadata problems, say) in the
        store, where ``info`` shows them; an ingest without warnings clears its root's."""
        kept = dict(self.table_metadata().get("warnings") or {})
        if kept.get(root, []) == list(warnings) or self._tables.open("images") is None:
            return
        kept[root] = list(warnings)
        self.set_table_metadata({"warnings": {r: w for r, w in kept.items() if w}})

    def embedding_field(self, column: str, dim: int, dtype: EmbDtype, describe: dict) -> pa.Field:
        return embedding_field(column, dim, dtype, describe)
