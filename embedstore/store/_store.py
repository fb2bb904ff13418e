"""The Lance store: the only module that imports lance.

Layout of a store folder (readable with ``lance.dataset``, DuckDB or Polars):

- ``images.lance``: one row per unique image (``id`` = SHA-256 of its bytes) with ``path``,
  ``paths`` (every name the same bytes were found under), ``root``, ``label``, ``split``,
  ``width``, ``height``, ``bytes``, ``added_at``, the metadata columns, an optional ``fold``, and
  one fixed-size-list column per backbone (``emb_<name>``). Each embedding field's metadata holds
  ``embedstore`` = JSON that reproduces it (backbone, source, weights hash, pooling, input size,
  mean/std, dim, dtype, library versions). Augmented views (``ingest --views flip,crops5``) are
  one more column each, ``emb_<name>__<view>`` (same type; its metadata adds ``view`` and
  ``view_of``), and the main column's metadata lists them in order as ``views``. A column per
  view, not one list-of-vectors column per backbone: adding a view later is adding a column
  (existing data untouched, every commit atomic, resumable like adding a backbone), a reader
  takes the views it wants, and each column describes itself.
- ``files.lance``: (root, rel, size, mtime_ns, id) for every ingested file, so re-runs skip
  unchanged files without reading them.
- ``skipped.lance`` and ``skipped.csv``: every file that was not ingested, with its reason.
- ``text_embeddings.lance``: text embeddings cached per text tower (``Store.text_cache``).
- ``indexes/``: ANN indexes built by ``embedstore index``.

Every write is one atomic Lance commit, so a process killed at any moment leaves the store at
the last commit; ingest resumes from there.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pyarrow as pa

from embedstore._images import disk_path
from embedstore.store._fragments import Fragments, image_table
from embedstore.store._info import StoreInfo, store_info
from embedstore.store._lance import (
    ALWAYS_TRAIN,
    EMB_PREFIX,
    HOLDOUT,
    ID_CHUNK,
    IMAGE_FIELDS,
    STORE_FORMAT,
    VIEW_SEP,
    Part,
    StoreError,
    StoreLockedError,
    Tables,
    column_of,
    conform,
    fixed_size_list,
    has_version,
    import_lance_ray,
    is_embedding,
    to_numpy,
    with_store_metadata,
)

if TYPE_CHECKING:
    import torch
from embedstore.store._lock import WriteLock, writes
from embedstore.store._meta import EmbeddingInfo, TableMeta, embedding_infos
from embedstore.store._records import FileRecords
from embedstore.store._sql import check_columns, read_error, row_filter, sql_in
from embedstore.store._text_cache import TextCache
from embedstore.types import EmbDtype

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# Methods that moved to a part of the store (``store.meta``, ``.records``, ``.fragments``): the old
# spelling still works, with a DeprecationWarning that names the new one.
_MOVED = {
    **dict.fromkeys(
        (
            "ensure_embedding_column",
            "record_views",
            "note_runtime",
            "set_table_metadata",
            "table_metadata",
            "embeddings_token",
            "embedding_field",
            "record_warnings",
        ),
        "meta",
    ),
    **dict.fromkeys(
        (
            "file_records",
            "paths_of",
            "stale_files",
            "delete_file_records",
            "record_files",
            "file_index",
            "record_skipped",
            "clear_skipped",
            "skipped",
            "add_paths",
        ),
        "records",
    ),
    **dict.fromkeys(("prepare_images", "append_fragments"), "fragments"),
}
__all__ = [  # what other modules of the package import from here
    "ALWAYS_TRAIN",
    "EMB_PREFIX",
    "HOLDOUT",
    "STORE_FORMAT",
    "VIEW_SEP",
    "EmbeddingInfo",
    "Store",
    "StoreError",
    "StoreInfo",
    "StoreLockedError",
    "connect",
    "default_store_path",
    "drop_column",
]


def drop_column(store: str | os.PathLike | Store | None, name: str) -> None:
    """Remove the metadata column ``name`` from the store (:meth:`Store.drop_column`).

    >>> drop_column("my-store", "emb_notes")
    """
    st = store if isinstance(store, Store) else connect(store, create=False)
    st.drop_column(name)


def default_store_path() -> str:
    return os.environ.get("EMBEDSTORE_PATH", "./embedstore")


def connect(path: str | os.PathLike | None = None, *, create: bool = True) -> Store:
    """Open (or create) the store at ``path`` (default ``$EMBEDSTORE_PATH`` or ``./embedstore``)."""
    return Store(path or default_store_path(), create=create)


class Store:
    """A folder of Lance tables holding images, their metadata and their embeddings.

    The rows (read and write) are its methods; the rest hangs off it by concern: ``lock`` (the
    write lock), ``meta`` (schema metadata and column descriptions), ``records`` (files ingested
    and skipped), ``fragments`` (commits of rows written by Ray workers), ``text_cache`` (text
    embeddings per text tower) and ``tables`` (the Lance tables themselves).
    """

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.tables = Tables(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(
                f"{self.path}: store path is a file, not a folder; choose another --store"
            )
        if not self.path.exists():
            if not create:
                raise StoreError(
                    f"{self.path}: no store here; create one with "
                    f"`embedstore ingest IMAGES_DIR --store {self.path}`"
                )
            self.path.mkdir(parents=True, exist_ok=True)  # another writer may create it first
        elif any(self.path.iterdir()) and not create and not self.exists:
            if (self.path / "images.lance").is_dir():
                raise StoreError(
                    f"{self.path}: images.lance has no committed version (its _versions folder is "
                    "missing or empty): the first ingest was stopped before its first commit (run "
                    "it again) or the store is damaged (run `embedstore check --store "
                    f"{self.path}`)"
                )
            if not has_version(
                str(self.path / "skipped.lance")
            ):  # only skipped files: a store still
                raise StoreError(f"{self.path}: not an embedstore store (no images.lance)")
        self.lock = WriteLock(self.path)
        self.meta = TableMeta(self)
        self.records = FileRecords(self)
        self.fragments = Fragments(self)
        self.text_cache = TextCache(self)

    def __getattr__(self, name: str) -> Any:
        part = _MOVED.get(name)
        if part is None or name.startswith("__"):
            raise AttributeError(f"'Store' object has no attribute {name!r}")
        warnings.warn(
            f"Store.{name} moved to Store.{part}.{name}", DeprecationWarning, stacklevel=2
        )
        return getattr(getattr(self, part), name)

    def writing(self, what: str | None = None) -> AbstractContextManager[None]:
        """Hold the store's write lock: one process writes a store at a time.

        Every write method takes it; a long job (an ingest) holds it throughout, so a second
        writer is refused at once with :class:`StoreLockedError` naming the holder ("store is
        being written by PID ...") instead of racing it. Re-entrant within a process (threads
        wait for each other); the lock dies with its process, so a ``kill -9`` leaves none.
        """
        return self.lock.hold(what)

    @property
    def exists(self) -> bool:
        return has_version(self.tables.uri("images"))

    @property
    def version(self) -> int:
        ds = self.tables.open("images")
        return 0 if ds is None else int(ds.version)

    def schema(self) -> pa.Schema | None:
        ds = self.tables.open("images")
        return None if ds is None else ds.schema

    def count(self, where: str | None = None, **select: Any) -> int:
        """Rows matching the user predicate ``where`` and the :meth:`read` selectors."""
        ds = self.tables.open("images")
        if ds is None:
            return 0
        filt = row_filter(self.path, ds, where, **select)
        try:
            return int(ds.count_rows(filter=filt)) if filt else int(ds.count_rows())
        except (ValueError, OSError) as e:
            raise read_error(self.path, e, where) from e

    def embeddings_info(self) -> dict[str, EmbeddingInfo]:
        """Backbones in the store, keyed by backbone name."""
        return embedding_infos(self.schema())

    def resolve_backbone(self, backbone: str | None) -> EmbeddingInfo:
        """The embedding column for ``backbone`` (a name or column), or the only one there is."""
        infos = self.embeddings_info()
        if not infos:
            raise StoreError(
                f"{self.path}: the store has no embeddings; run `embedstore ingest` first"
            )
        if backbone is None:
            if len(infos) > 1:
                raise StoreError(
                    f"{self.path}: the store has several backbones ({', '.join(infos)}); "
                    "choose one with --backbone"
                )
            return next(iter(infos.values()))
        for info in infos.values():
            if backbone in (info.backbone, info.column) or info.column == column_of(backbone):
                return info
        raise StoreError(
            f"{self.path}: no embeddings for backbone {backbone!r}; "
            f"the store has: {', '.join(infos)}"
        )

    @writes
    def insert_images(self, rows: pa.Table) -> int:
        """Insert rows whose ``id`` is not in the store yet (others are left as they are).

        The first insert creates the table with ``rows``' schema; later inserts add any new
        columns (as nulls for the old rows) first. Returns the number of rows inserted.
        """
        if rows.num_rows == 0:
            return 0
        ds = self.tables.open("images")
        if ds is None:  # the store's format metadata goes in the same (first) commit
            self.tables.create("images", with_store_metadata(rows))
            return rows.num_rows
        self.meta.new_embeddings_token()
        self.tables.add_missing_columns(
            self.tables.open("images"), rows.schema
        )  # at the token's version
        ds = self.tables.open("images")
        rows = conform(rows, ds.schema)
        res = ds.merge_insert("id").when_not_matched_insert_all().execute(rows)
        return int(res["num_inserted_rows"])

    @writes
    def update_columns(self, ids: list[str], columns: dict[str, pa.Array | list]) -> int:
        """Set ``columns`` (name -> values aligned with ``ids``) of the rows with those ids.

        New columns are added (null for the other rows); embedding columns keep their field
        metadata. Returns the number of rows updated.
        """
        if not ids:
            return 0
        ds = self.tables.open("images")
        if ds is None:
            raise StoreError(f"{self.path}: the store is empty")
        rows = pa.table({"id": pa.array(list(ids), pa.string()), **columns})
        self.tables.add_missing_columns(ds, rows.schema)
        ds = self.tables.open("images")
        rows = rows.cast(pa.schema([ds.schema.field(n) for n in rows.column_names]))
        res = ds.merge_insert("id").when_matched_update_all().execute(rows)
        return int(res["num_updated_rows"])

    def add_images(
        self,
        rows: list[dict[str, Any]],
        *,
        metadata: dict[str, pa.Array] | None = None,
        embeddings: dict[str, np.ndarray] | None = None,
        describes: dict[str, dict[str, Any]] | None = None,
        dtype: EmbDtype = "float16",
    ) -> int:
        """Insert new images: ``rows`` of :data:`IMAGE_FIELDS` values, ``metadata`` columns and
        ``embeddings`` (``{column: (n, dim)}``, described by ``describes[column]``), aligned.

        Rows whose id is already stored are left as they are. Returns the number inserted.
        """
        if not rows:
            return 0
        return self.insert_images(
            image_table(
                rows, metadata=metadata, embeddings=embeddings, describes=describes, dtype=dtype
            )
        )

    @writes
    def drop_column(self, name: str) -> None:
        """Remove the metadata column ``name`` from every row (one commit; the files of older
        versions keep it until they are cleaned up). The columns ingest writes itself and
        embedding columns are refused."""
        ds = self.tables.open("images")
        if ds is None:
            raise StoreError(f"{self.path}: the store is empty; there is no column to drop")
        check_columns(self.path, ds, [name])
        if name in {f.name for f in IMAGE_FIELDS}:
            raise StoreError(
                f"{self.path}: column {name!r} is one the store itself needs; only metadata "
                "columns can be dropped"
            )
        if is_embedding(ds.schema.field(name)):
            raise StoreError(
                f"{self.path}: column {name!r} holds embeddings; "
                "only metadata columns can be dropped"
            )
        ds.drop_columns([name])
        if name == "fold":  # the fold summary describes the column: it goes with it
            self.meta.drop_table_metadata("folds")

    @writes
    def set_embeddings(self, column: str, ids: list[str], X: np.ndarray) -> int:
        """Write ``X`` (``(n, dim)``) into the existing embedding ``column`` of rows ``ids``."""
        ds = self.tables.open("images")
        if ds is None or column not in ds.schema.names:
            raise StoreError(f"{self.path}: no embedding column {column}")
        dtype = "float16" if ds.schema.field(column).type.value_type == pa.float16() else "float32"
        self.meta.new_embeddings_token()
        return self.update_columns(ids, {column: fixed_size_list(X, dtype)})

    @writes
    def delete_images(self, ids: list[str]) -> int:
        """Delete the image rows ``ids`` (one commit per 2,000); returns how many there were."""
        ds = self.tables.open("images")
        if ds is None or not ids:
            return 0
        n = 0
        for s in range(0, len(ids), ID_CHUNK):
            chunk = ids[s : s + ID_CHUNK]
            n += int(ds.count_rows(filter=sql_in("id", chunk)))
            self.meta.new_embeddings_token()
            self.tables.open("images").delete(sql_in("id", chunk))
            ds = self.tables.open("images")
        return n

    @writes
    def compact(self, min_fragments: int = 16) -> None:
        """Merge small fragments (after a chunked ingest) when there are ``min_fragments`` or
        more."""
        for name in ("images", "files"):
            ds = self.tables.open(name)
            if ds is not None and len(ds.get_fragments()) >= min_fragments:
                ds.optimize.compact_files()

    def ray_dataset(
        self,
        columns: list[str],
        where: str | None = None,
        *,
        labelled: bool = False,
        part: Part | None = None,
        embedded: tuple[str, ...] | list[str] = (),
    ) -> Any:
        """The rows :meth:`read` would select, as a Ray Dataset read in parallel by the cluster
        (lance-ray's ``read_lance``, one read task per fragment)."""
        ds = self.tables.open("images")
        if ds is None:
            raise StoreError(
                f"{self.path}: the store is empty; "
                f"run `embedstore ingest IMAGES_DIR --store {self.path}`"
            )
        check_columns(self.path, ds, [*columns, *embedded])
        filt = row_filter(self.path, ds, where, labelled=labelled, part=part, embedded=embedded)
        return import_lance_ray().read_lance(
            self.tables.uri("images"), columns=columns, filter=filt
        )

    def read(
        self,
        columns: list[str] | None = None,
        where: str | None = None,
        *,
        ids: list[str] | None = None,
        labelled: bool = False,
        part: Part | None = None,
        embedded: tuple[str, ...] | list[str] = (),
    ) -> pa.Table:
        """Rows as a pyarrow table: ``columns`` (default all) of the rows that match every selector.

        ``where`` is the user's predicate on any columns (``"habitat = 'wood'"``), checked as one
        boolean expression (:func:`check_predicate`); ``ids`` keeps those row ids (in any
        number); ``labelled`` rows with a label; ``part="holdout"`` the held-out part of a
        split (``"folds"``: the rows in a fold); ``embedded`` rows holding those embedding columns.
        """
        ds = self.tables.open("images")
        if ds is None:
            raise StoreError(
                f"{self.path}: the store is empty; "
                f"run `embedstore ingest IMAGES_DIR --store {self.path}`"
            )
        if columns is not None:
            check_columns(self.path, ds, [*columns, *embedded])
        if ids is not None:
            ids = list(dict.fromkeys(ids))
            parts = [
                _to_table(
                    self.path, ds, columns, where, ids[s : s + ID_CHUNK], labelled, part, embedded
                )
                for s in range(0, len(ids), ID_CHUNK)
            ]
            if parts:
                return pa.concat_tables(parts)
        return _to_table(self.path, ds, columns, where, ids, labelled, part, embedded)

    def image_file(self, image_id: str) -> Path | None:
        """The file a stored image was ingested from (root joined with its path), or None when
        the id is not stored. Only ids are taken: no caller-given path is ever opened."""
        if (
            not isinstance(image_id, str)
            or not _HEX64.match(image_id)
            or not self.has_column("root")
        ):
            return None
        t = self.read(["root", "path"], ids=[image_id.lower()])
        if t.num_rows == 0:
            return None
        root, rel = t.column("root")[0].as_py(), t.column("path")[0].as_py()
        return disk_path(root, rel) if root and rel else None  # a non-UTF-8 name: its bytes

    def has_column(self, name: str) -> bool:
        schema = self.schema()
        return schema is not None and name in schema.names

    def ids(self, embedded: str | None = None) -> set[str]:
        """The stored row ids (with ``embedded``: those holding that embedding column)."""
        if not self.exists or (embedded is not None and not self.has_column(embedded)):
            return set()
        t = self.read(["id"], embedded=[embedded] if embedded is not None else ())
        return set(t.column("id").to_pylist())

    @overload
    def embeddings(
        self,
        backbone: str | None = None,
        *,
        where: str | None = None,
        columns: tuple[str, ...] | list[str] = ("id", "label"),
        dtype: str = "float32",
        as_torch: Literal[False] = False,
        ids: list[str] | None = None,
        labelled: bool = False,
        part: Part | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...

    @overload
    def embeddings(
        self,
        backbone: str | None = None,
        *,
        where: str | None = None,
        columns: tuple[str, ...] | list[str] = ("id", "label"),
        dtype: str = "float32",
        as_torch: Literal[True],
        ids: list[str] | None = None,
        labelled: bool = False,
        part: Part | None = None,
    ) -> tuple[torch.Tensor, dict[str, np.ndarray]]: ...

    def embeddings(
        self,
        backbone: str | None = None,
        *,
        where: str | None = None,
        columns: tuple[str, ...] | list[str] = ("id", "label"),
        dtype: str = "float32",
        as_torch: bool = False,
        ids: list[str] | None = None,
        labelled: bool = False,
        part: Part | None = None,
    ) -> tuple[np.ndarray | torch.Tensor, dict[str, np.ndarray]]:
        """One backbone's embeddings ``(N, dim)`` and the chosen columns, for rows with one.

        ``where`` is the user's predicate on any column (``"label = 'daisy'"``, ``"fold != 0"``);
        ``ids``, ``labelled`` and ``part`` select rows as in :meth:`read`.
        Returns ``(X, {column: array})``; ``X`` is numpy (or a torch tensor with ``as_torch``).

        >>> X, cols = connect("store").embeddings("efficientnet-lite0", labelled=True)
        """
        info = self.resolve_backbone(backbone)
        embs, out = self.embedding_rows(
            {info.column: info.dim},
            columns,
            where=where,
            ids=ids,
            labelled=labelled,
            part=part,
            dtype=dtype,
        )
        X = embs[info.column]
        if as_torch:
            import torch

            return torch.from_numpy(X), out
        return X, out

    def view_embeddings(
        self, backbone: str | None, ids: list[str] | np.ndarray, *, dtype: str = "float32"
    ) -> tuple[list[str], np.ndarray]:
        """The augmented views stored beside ``backbone``'s embeddings (``ingest --views``) for
        rows ``ids``: ``(view names, (N, V, dim))`` in ``ids`` order, NaN where a row lacks one.

        >>> names, V = connect("store").view_embeddings("efficientnet-lite0", ids)
        """
        info = self.resolve_backbone(backbone)
        ds = self.tables.open("images")
        cols = {v: c for v, c in info.view_columns.items() if c in ds.schema.names}
        ids = [str(i) for i in ids]
        out = np.full((len(ids), len(cols), info.dim), np.nan, dtype=dtype)
        if not cols or not ids:
            return list(cols), out
        t = self.read(["id", *cols.values()], ids=ids)
        pos = {i: k for k, i in enumerate(ids)}
        rows = np.array([pos[i] for i in t.column("id").to_pylist()], dtype=np.int64)
        for v, c in enumerate(cols.values()):
            col = t.column(c).combine_chunks()
            X = col.values.to_numpy(zero_copy_only=False).reshape(len(col), info.dim)
            ok = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            out[rows[ok], v] = X[ok]
        return list(cols), out

    def embedding_rows(
        self,
        embedding_columns: dict[str, int],
        columns: tuple[str, ...] | list[str] = ("id",),
        *,
        where: str | None = None,
        ids: list[str] | None = None,
        labelled: bool = False,
        part: Part | None = None,
        dtype: str = "float32",
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Several embedding columns at once (``{column: dim}``), for the rows holding all of them.

        Returns ``({column: (N, dim)}, {column: (N,) array})`` in one read, so the rows line up.
        """
        emb_cols = list(embedding_columns)
        t = self.read(
            [*emb_cols, *[c for c in columns if c not in emb_cols]],
            where,
            ids=ids,
            labelled=labelled,
            part=part,
            embedded=emb_cols,
        )
        embs = {}
        for c, dim in embedding_columns.items():
            if t.num_rows == 0:
                embs[c] = np.zeros((0, dim), dtype=dtype)
                continue
            X = t.column(c).combine_chunks().values.to_numpy(zero_copy_only=False)
            X = X.reshape(t.num_rows, dim)
            if X.dtype != np.dtype(dtype) or not X.flags.writeable:
                X = X.astype(dtype)  # a writable copy: callers (and torch) may write to it
            embs[c] = X
        return embs, {c: to_numpy(t.column(c)) for c in columns}

    def info(self) -> StoreInfo:
        """Counts, classes with a long-tail summary, backbones, version, size, skipped files."""
        try:
            return store_info(self)
        except StoreError:
            raise
        except (OSError, ValueError, RuntimeError) as e:  # a damaged store, say
            raise read_error(self.path, e, None) from e


def _to_table(path: Path, ds: Any, columns, where, ids, labelled, part, embedded) -> pa.Table:
    """One read of the images table with the filter of :meth:`Store.read`."""
    filt = row_filter(path, ds, where, ids=ids, labelled=labelled, part=part, embedded=embedded)
    try:
        return ds.to_table(columns=columns, filter=filt)
    except (ValueError, OSError) as e:
        raise read_error(path, e, where) from e
