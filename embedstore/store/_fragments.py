"""Distributed writes: workers build image rows (:func:`image_table`) and write them as
uncommitted fragments (:func:`write_image_fragments`); the driver commits them, one
transaction per chunk (``Store.fragments.append``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embedstore.store._lance import (
    IMAGE_FIELDS,
    StoreError,
    StoreParts,
    conform,
    embedding_field,
    fixed_size_list,
    import_lance,
    with_store_metadata,
)
from embedstore.store._lock import writes
from embedstore.types import EmbDtype


def image_table(
    rows: list[dict[str, Any]],
    *,
    metadata: dict[str, pa.Array] | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
    describes: dict[str, dict[str, Any]] | None = None,
    dtype: EmbDtype = "float16",
) -> pa.Table:
    """Image rows as the store writes them: :data:`IMAGE_FIELDS` from ``rows``, then the
    ``metadata`` columns, then one described column per ``embeddings`` entry (``(n, dim)``)."""
    fields, arrays = [], []
    for f in IMAGE_FIELDS:
        fields.append(f)
        arrays.append(pa.array([r.get(f.name) for r in rows], f.type))
    for name, col in (metadata or {}).items():
        fields.append(pa.field(name, col.type))
        arrays.append(col)
    for column, X in (embeddings or {}).items():
        fields.append(embedding_field(column, X.shape[1], dtype, (describes or {})[column]))
        arrays.append(fixed_size_list(X, dtype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_image_fragments(store_path: str | os.PathLike, rows: pa.Table) -> list[str]:
    """Write ``rows`` (:func:`image_table`) as data files of the store's ``images`` table
    without committing them; returns the fragments as JSON for
    :meth:`Store.fragments.append_fragments`.

    What a worker of a distributed ingest calls: only the driver commits, one transaction per
    chunk, so a worker killed mid-write leaves unreferenced files and no rows.
    """
    lance = import_lance()
    uri = str(Path(store_path) / "images.lance")
    ds = lance.dataset(uri)
    frags = lance.fragment.write_fragments(conform(rows, ds.schema), ds, schema=ds.schema)
    return [json.dumps(f.to_json()) for f in frags]


class Fragments:
    """Committing fragments written by workers (``Store.fragments``)."""

    def __init__(self, store: StoreParts) -> None:
        self._store, self.path, self._tables, self.lock = (
            store,
            store.path,
            store.tables,
            store.lock,
        )

    @writes
    def prepare_images(self, schema: pa.Schema) -> pa.Schema:
        """Make ``images`` hold every column of ``schema`` (:func:`image_table`'s schema) before
        workers write fragments for it: the table is created empty with that schema (and the
        store's table metadata) when absent, else the missing columns are added. Returns the
        table's schema, which :func:`write_image_fragments` conforms rows to."""
        ds = self._tables.open("images")
        if ds is None:
            empty = with_store_metadata(schema.empty_table())
            self._tables.create("images", empty)
        else:
            self._tables.add_missing_columns(ds, schema)
        return self._tables.open("images").schema

    @writes
    def append_fragments(
        self, fragments: list[str], *, ids: list[str], read_version: int | None = None
    ) -> int:
        """Commit image fragments written by workers (:func:`write_image_fragments`, JSON) in
        one transaction; ``ids`` are the rows they hold. Returns the new version.

        The caller checked that none of ``ids`` is stored when the table was at
        ``read_version``; if another writer committed since, the ids are checked again and an
        overlap refuses the commit (the fragments are left unreferenced), so an image is never
        stored twice.
        """
        if not fragments:
            return self._store.version
        ds = self._tables.open("images")
        if ds is None:
            raise StoreError(f"{self.path}: no images table to append to")
        if read_version is not None and int(ds.version) != read_version:
            clash = self._store.read(["id"], ids=ids).num_rows if ids else 0
            if clash:
                raise StoreError(
                    f"{self.path}: another process added {clash} of these images during this "
                    "ingest; stop it and run the ingest again (it resumes where it stopped)"
                )
        frags = [self._tables.lance.fragment.FragmentMetadata.from_json(f) for f in fragments]
        self._store.meta.new_embeddings_token()
        new = self._tables.lance.LanceDataset.commit(
            self._tables.uri("images"),
            self._tables.lance.LanceOperation.Append(frags),
            read_version=self._tables.open("images").version,
        )
        return int(new.version)
