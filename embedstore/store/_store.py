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
- ``indexes/``: ANN indexes built by ``embedstore index``.

Every write is one atomic Lance commit, so a process killed at any moment leaves the store at
the last commit; ingest resumes from there.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedstore._images import disk_path
from embedstore._ray import RAY_INSTALL_HINT, EngineError
from embedstore._results import Result
from embedstore.errors import BadInput, Conflict
from embedstore.types import EmbDtype

STORE_FORMAT = 1
EMB_PREFIX = "emb_"
HOLDOUT, ALWAYS_TRAIN = -1, -2  # folds of the held-out part and of rows in every training part
Part = Literal["holdout", "folds"]
_ID_CHUNK = 2000  # ids per "id IN (...)" read
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RUST_ANYWHERE = re.compile(r",?\s*[^\s,]+\.rs:\d+:\d+")
_META_KEY = "embedstore"
VIEW_SEP = "__"  # a view column is <main column>__<view> (embedstore.backbones._views)
LOCK_FILE = "write.lock"  # held (fcntl.lockf) by the one process writing the store
_HELD: dict[str, list] = {}  # resolved store path -> [lock file descriptor, depth], this process
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_GUARD = threading.Lock()


# Columns every image row has (ingest writes them); metadata and embeddings follow.
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


def _writes(method):
    """Run a write method of :class:`Store` holding the store's write lock (:meth:`Store.writing`)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.writing():
            return method(self, *args, **kwargs)

    return locked


@dataclass
class CheckReport(Result):
    """What ``embedstore check`` found: per table, its versions and the damaged ones;
    ``problems`` and ``advice`` in plain words; ``ok`` when nothing is (left) damaged."""

    store: str
    ok: bool
    repaired: bool
    tables: list[dict[str, Any]]
    problems: list[str]
    advice: list[str]


_TABLES = ("images", "files", "skipped")
_U64 = 2**64 - 1


def check(store: str | os.PathLike, repair: bool = False) -> CheckReport:
    """Verify every version of every table of ``store``: each manifest can be read and every
    data file it names is there. With ``repair``, a table whose newest versions are damaged
    goes back to its last good version (the damaged manifests are moved to ``STORE/damaged/``;
    images added after that version are ingested again by the next ingest); a damaged file
    index or skipped list with no good version is moved aside too (the next ingest rebuilds it).

    >>> report = check("my-store")
    >>> report = check("my-store", repair=True)
    """
    root = Path(store).expanduser()
    if not root.is_dir():
        raise StoreError(f"{root}: no store here")
    lance = _import_lance()
    tables = [_check_table(lance, root, t) for t in _TABLES]
    repaired = False
    if repair and any(t["damaged"] for t in tables):
        fd = _lock(root, "embedstore check --repair")  # no other writer while it repairs
        try:
            for t in tables:
                repaired |= _repair_table(root, t)
        finally:
            os.close(fd)
        tables = [_check_table(lance, root, t) for t in _TABLES]
    problems, advice = [], []
    for t in tables:
        problems += t.pop("problems")
        if t["damaged"] and t["last_good"] is not None:
            advice.append(
                f"{t['table']}: run `embedstore check --store {root} --repair` to go back to "
                f"version {t['last_good']}, then run the ingest again (it adds what was lost)"
            )
        elif t["damaged"] and t["table"] == "images":
            advice.append(
                "images: no version can be read; ingest the images again into a new store "
                "(`embedstore ingest IMAGES_DIR --store NEW`)"
            )
        elif t["damaged"]:
            advice.append(
                f"{t['table']}: run `embedstore check --store {root} --repair` to move it aside; "
                "the next ingest rebuilds it (re-reading the files)"
            )
    ok = not any(t["damaged"] for t in tables)
    return CheckReport(str(root), ok, repaired, tables, problems, advice)


def _manifests(uri: Path) -> dict[int, Path]:
    """Version number -> manifest file, from the names under ``_versions`` (Lance names them
    ``N.manifest``, or ``2**64-1-N.manifest`` in its newer scheme)."""
    out = {}
    for m in (uri / "_versions").glob("*.manifest"):
        try:
            n = int(m.stem)
        except ValueError:
            continue
        out[_U64 - n if n > 2**63 else n] = m
    return out


def _check_table(lance, root: Path, table: str) -> dict[str, Any]:
    uri = root / f"{table}.lance"
    t: dict[str, Any] = {
        "table": table,
        "versions": 0,
        "latest": None,
        "last_good": None,
        "damaged": False,
        "damaged_versions": {},
        "problems": [],
    }
    if not uri.exists():
        if table == "images":
            t["problems"].append("images: there is no images table (nothing ingested yet?)")
        return t
    manifests = _manifests(uri)
    data = uri / "data"
    if not manifests:
        has_data = data.is_dir() and any(data.iterdir())
        if has_data:
            t["damaged"] = True
            t["problems"].append(
                f"{table}: its version history ({uri / '_versions'}) is missing or empty, so Lance "
                "cannot open it although it holds data files"
            )
        return t
    t["versions"], t["latest"] = len(manifests), max(manifests)
    for v in sorted(manifests):
        why = _version_problem(lance, uri, v)
        if why is None:
            t["last_good"] = v
        else:
            t["damaged_versions"][v] = why
    bad_after = {
        v: w
        for v, w in t["damaged_versions"].items()
        if t["last_good"] is None or v > t["last_good"]
    }
    if bad_after:
        t["damaged"] = True
        first = min(bad_after)
        t["problems"].append(
            f"{table}: version(s) {', '.join(map(str, sorted(bad_after)))} of {t['latest']} are "
            f"damaged (version {first}: {bad_after[first]})"
            + (f"; version {t['last_good']} is the last good one" if t["last_good"] else "")
        )
    return t


def _version_problem(lance, uri: Path, version: int) -> str | None:
    """Why ``version`` of the table at ``uri`` cannot be read (None when it can)."""
    try:
        ds = lance.dataset(str(uri), version=version)
        frags = ds.get_fragments()
    except Exception as e:  # noqa: BLE001 - any failure to read it is the answer
        return f"its manifest cannot be read: {_plain(e)}"
    for f in frags:
        for d in f.metadata.files:
            p = uri / "data" / d.path
            if not p.is_file() or p.stat().st_size == 0:
                return f"data file {p.name} is missing or empty"
    return None


def _repair_table(root: Path, t: dict[str, Any]) -> bool:
    """Move aside what makes table ``t`` damaged (see :func:`check`); True when it changed."""
    if not t["damaged"]:
        return False
    uri = root / f"{t['table']}.lance"
    aside = root / "damaged" / time.strftime("%Y%m%dT%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    if t["last_good"] is None:
        if t["table"] == "images":
            return False  # nothing Lance can go back to; the advice says what to do
        os.replace(uri, aside / uri.name)
        return True
    manifests = _manifests(uri)
    for v, m in manifests.items():
        if v > t["last_good"]:
            os.replace(m, aside / f"{t['table']}-{m.name}")
    hint = uri / "_versions" / "latest_version_hint.json"
    if hint.exists():
        os.replace(hint, aside / f"{t['table']}-{hint.name}")
    return True


def _plain(e: Exception) -> str:
    """An exception from Lance as one line, without Rust source locations."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = _RUST_ANYWHERE.sub("", text)
    return re.sub(r"^(External error: )?(LanceError\(\w+\): )?(Generic N/A error: )?", "", text)


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


def _import_lance():
    import lance

    return lance


def _import_lance_ray():
    """lance-ray, the Ray Data reader and writer of Lance tables (the ``ray`` extra)."""
    try:
        import lance_ray
    except ImportError as e:
        raise EngineError(f"{RAY_INSTALL_HINT} ({e})") from None
    return lance_ray


@dataclass
class StoreInfo(Result):
    """What ``embedstore info`` reports: counts, classes (long tail), backbones, version, size."""

    store: str
    exists: bool
    skipped: dict[str, Any]
    images: int
    labelled: int
    unlabelled: int
    classes: dict[str, Any]
    backbones: list[dict[str, Any]]
    version: int
    size_bytes: int
    columns: list[str] | None = None
    folds: dict[str, Any] | None = None
    warnings: list[str] | None = None  # of the last ingest of each folder (metadata problems)
    stale_files: dict[str, int] | None = None  # ingested files gone or changed on disk since


@dataclass(frozen=True)
class EmbeddingInfo:
    column: str
    backbone: str
    dim: int
    dtype: str
    describe: dict[str, Any]

    @property
    def views(self) -> list[str]:
        """The augmented views stored beside this embedding, in order (``embedstore.backbones._views``)."""
        return list(self.describe.get("views") or [])

    @property
    def view_columns(self) -> dict[str, str]:
        """``{view: column}`` of the views stored beside this embedding (``<column>__<view>``)."""
        return {v: f"{self.column}{VIEW_SEP}{v}" for v in self.views}

    @property
    def runtimes(self) -> list[str]:
        """What made this column's embeddings, in order: ``torch``, ``onnx``, ``onnx-int8``."""
        return _runtimes(self.describe)


def _runtimes(describe: dict[str, Any]) -> list[str]:
    """A column description's runtimes: ``runtimes`` once a second one added rows, else its
    ``runtime`` (older columns: torch)."""
    return list(describe.get("runtimes") or [describe.get("runtime", "torch")])


class Store:
    """A folder of Lance tables holding images, their metadata and their embeddings."""

    def __init__(self, path: str | os.PathLike, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(
                f"{self.path}: store path is a file, not a folder; choose another --store"
            )
        if not self.path.exists():
            if not create:
                raise StoreError(
                    f"{self.path}: no store here; create one with `embedstore ingest IMAGES_DIR --store {self.path}`"
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
            if not _has_version(self._uri("skipped")):  # only skipped files: a store still
                raise StoreError(f"{self.path}: not an embedstore store (no images.lance)")
        self._lance = _import_lance()

    # ------------------------------------------------------------------ low level

    def _uri(self, table: str) -> str:
        return str(self.path / f"{table}.lance")

    def _open(self, table: str):
        uri = self._uri(table)
        if not _has_version(uri):  # absent, or a first write killed before its commit
            return None
        try:
            return self._lance.dataset(uri)
        except (OSError, ValueError, RuntimeError) as e:
            raise StoreError(
                f"{self.path}: the store is damaged: its {table} table cannot be opened "
                f"({_plain(e)}); run `embedstore check --store {self.path}` to see what is "
                "damaged and how to repair it"
            ) from e

    def _write(self, table: str, data: pa.Table, mode: str = "append") -> None:
        ds = self._open(table)
        if ds is None:
            self._lance.write_dataset(data, self._uri(table), mode="create")
        else:
            self._lance.write_dataset(data, self._uri(table), mode=mode)

    @contextmanager
    def writing(self, what: str | None = None) -> Iterator[None]:
        """Hold the store's write lock: one process writes a store at a time.

        Every write method takes it; a long job (an ingest) holds it throughout, so a second
        writer is refused at once with :class:`StoreLockedError` naming the holder ("store is
        being written by PID ...") instead of racing it. Re-entrant within a process (threads
        wait for each other); the lock dies with its process, so a ``kill -9`` leaves none.
        """
        key = str(self.path.resolve())
        with _GUARD:
            tlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
        with tlock:
            held = _HELD.get(key)
            if held is not None:  # this thread holds it already
                held[1] += 1
                try:
                    yield
                finally:
                    held[1] -= 1
                return
            fd = _lock(self.path, what or "embedstore")
            _HELD[key] = [fd, 1]
            try:
                yield
            finally:
                del _HELD[key]
                os.close(fd)  # releases the lock

    @property
    def exists(self) -> bool:
        return _has_version(self._uri("images"))

    @property
    def version(self) -> int:
        ds = self._open("images")
        return 0 if ds is None else int(ds.version)

    def schema(self) -> pa.Schema | None:
        ds = self._open("images")
        return None if ds is None else ds.schema

    def count(self, where: str | None = None, **select: Any) -> int:
        """Rows matching the user predicate ``where`` and the :meth:`read` selectors."""
        ds = self._open("images")
        if ds is None:
            return 0
        filt = self._filter(ds, where, **select)
        try:
            return int(ds.count_rows(filter=filt)) if filt else int(ds.count_rows())
        except (ValueError, OSError) as e:
            raise self._read_error(e, where) from e

    # ------------------------------------------------------------------ embeddings metadata

    def embeddings_info(self) -> dict[str, EmbeddingInfo]:
        """Backbones in the store, keyed by backbone name."""
        schema = self.schema()
        out: dict[str, EmbeddingInfo] = {}
        if schema is None:
            return out
        for f in schema:
            if not _is_embedding(f):  # emb_notes of an older store, say, is not one
                continue
            md = f.metadata or {}
            desc = json.loads(md.get(_META_KEY.encode(), b"{}") or b"{}")
            if "view" in desc or VIEW_SEP in f.name:  # an augmented view of another column
                continue
            name = desc.get("backbone", f.name[len(EMB_PREFIX) :])
            dtype = str(f.type.value_type)
            dtype = {"halffloat": "float16", "float": "float32"}.get(dtype, dtype)
            out[name] = EmbeddingInfo(f.name, name, f.type.list_size, dtype, desc)
        return out

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
                    f"{self.path}: the store has several backbones ({', '.join(infos)}); choose one with --backbone"
                )
            return next(iter(infos.values()))
        for info in infos.values():
            if backbone in (info.backbone, info.column) or info.column == _column_of(backbone):
                return info
        raise StoreError(
            f"{self.path}: no embeddings for backbone {backbone!r}; the store has: {', '.join(infos)}"
        )

    # ------------------------------------------------------------------ writes

    @_writes
    def ensure_embedding_column(
        self, column: str, dim: int, dtype: EmbDtype, describe: dict
    ) -> None:
        """Add an (all null) embedding column described by ``describe`` if it is not there yet."""
        ds = self._open("images")
        if ds is None:
            return  # the first insert creates the table with the column
        field = self.embedding_field(column, dim, dtype, describe)
        if column in ds.schema.names:
            have = ds.schema.field(column).type
            if have != field.type:
                raise StoreError(
                    f"{self.path}: column {column} holds {have}, not {field.type}; "
                    "ingest with the store's --dtype or use another backbone name"
                )
            return
        self._add_missing_columns(ds, pa.schema([field]))

    @_writes
    def record_views(self, column: str, views: list[str]) -> list[str]:
        """Record in ``column``'s field metadata that ``views`` (augmented views, each in its
        own column ``<column>__<view>``) are stored beside it: the stored list, then any new
        ones, in order. Returns the recorded list."""
        ds = self._open("images")
        if ds is None or column not in ds.schema.names:
            return list(views)
        md = {k.decode(): v.decode() for k, v in (ds.schema.field(column).metadata or {}).items()}
        desc = json.loads(md.get(_META_KEY) or "{}")
        have = list(desc.get("views") or [])
        merged = have + [v for v in views if v not in have]
        if merged != have:
            desc["views"] = merged
            md[_META_KEY] = json.dumps(desc, sort_keys=True)
            ds.update_field_metadata({column: md}, replace=True)
        return merged

    def note_runtime(self, column: str, runtime: str) -> None:
        """Record in ``column``'s description that ``runtime`` wrote embeddings into it: a column
        made by one runtime and extended by another lists both, in order, as ``runtimes``."""
        ds = self._open("images")
        if ds is None or column not in ds.schema.names:
            return
        md = {k.decode(): v.decode() for k, v in (ds.schema.field(column).metadata or {}).items()}
        desc = json.loads(md.get(_META_KEY) or "{}")
        runtimes = _runtimes(desc)
        if runtime in runtimes:
            return
        desc["runtimes"] = [*runtimes, runtime]
        md[_META_KEY] = json.dumps(desc, sort_keys=True)
        ds.update_field_metadata({column: md}, replace=True)

    def embedding_field(self, column: str, dim: int, dtype: EmbDtype, describe: dict) -> pa.Field:
        return embedding_field(column, dim, dtype, describe)

    @_writes
    def insert_images(self, rows: pa.Table) -> int:
        """Insert rows whose ``id`` is not in the store yet (others are left as they are).

        The first insert creates the table with ``rows``' schema; later inserts add any new
        columns (as nulls for the old rows) first. Returns the number of rows inserted.
        """
        if rows.num_rows == 0:
            return 0
        ds = self._open("images")
        if ds is None:  # the store's format metadata goes in the same (first) commit
            self._lance.write_dataset(
                _with_store_metadata(rows), self._uri("images"), mode="create"
            )
            return rows.num_rows
        self._new_embeddings_token()
        self._add_missing_columns(self._open("images"), rows.schema)  # at the token's version
        ds = self._open("images")
        rows = _conform(rows, ds.schema)
        res = ds.merge_insert("id").when_not_matched_insert_all().execute(rows)
        return int(res["num_inserted_rows"])

    @_writes
    def update_columns(self, ids: list[str], columns: dict[str, pa.Array | list]) -> int:
        """Set ``columns`` (name -> values aligned with ``ids``) of the rows with those ids.

        New columns are added (null for the other rows); embedding columns keep their field
        metadata. Returns the number of rows updated.
        """
        if not ids:
            return 0
        ds = self._open("images")
        if ds is None:
            raise StoreError(f"{self.path}: the store is empty")
        rows = pa.table({"id": pa.array(list(ids), pa.string()), **columns})
        self._add_missing_columns(ds, rows.schema)
        ds = self._open("images")
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

    @_writes
    def drop_column(self, name: str) -> None:
        """Remove the metadata column ``name`` from every row (one commit; the files of older
        versions keep it until they are cleaned up). The columns ingest writes itself and
        embedding columns are refused."""
        ds = self._open("images")
        if ds is None:
            raise StoreError(f"{self.path}: the store is empty; there is no column to drop")
        self._check_columns(ds, [name])
        if name in {f.name for f in IMAGE_FIELDS}:
            raise StoreError(
                f"{self.path}: column {name!r} is one the store itself needs; only metadata "
                "columns can be dropped"
            )
        if _is_embedding(ds.schema.field(name)):
            raise StoreError(
                f"{self.path}: column {name!r} holds embeddings; only metadata columns can be dropped"
            )
        ds.drop_columns([name])
        if name == "fold":  # the fold summary describes the column: it goes with it
            self._drop_table_metadata("folds")

    def _drop_table_metadata(self, key: str) -> None:
        ds = self._open("images")
        md = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
        if md.pop(f"{_META_KEY}.{key}", None) is not None:
            ds.update_schema_metadata(md, replace=True)

    @_writes
    def set_embeddings(self, column: str, ids: list[str], X: np.ndarray) -> int:
        """Write ``X`` (``(n, dim)``) into the existing embedding ``column`` of rows ``ids``."""
        ds = self._open("images")
        if ds is None or column not in ds.schema.names:
            raise StoreError(f"{self.path}: no embedding column {column}")
        dtype = "float16" if ds.schema.field(column).type.value_type == pa.float16() else "float32"
        self._new_embeddings_token()
        return self.update_columns(ids, {column: _fixed_size_list(X, dtype)})

    @property
    def embeddings_token(self) -> str | None:
        """Changes whenever rows or embeddings are written, not on metadata-only writes (labels,
        folds): what a saved index checks to know it is still fresh."""
        return self.table_metadata().get("embeddings_token")

    def _new_embeddings_token(self) -> None:
        # Before the write: a write killed half-way leaves the token new, so an index built
        # before it reads as stale (safe), never as fresh.
        self.set_table_metadata({"embeddings_token": _token()})

    def add_paths(self, paths: dict[str, list[str]]) -> None:
        """Add relative paths to the ``paths`` list of stored images (``{id: [rel, ...]}``)."""
        if not paths:
            return
        cur = self.read(["id", "paths"], ids=list(paths))
        known = dict(
            zip(cur.column("id").to_pylist(), cur.column("paths").to_pylist(), strict=True)
        )
        ids, merged_lists = [], []
        for i, rels in paths.items():
            if i not in known:
                continue
            merged = list(known[i] or [])
            merged += [r for r in dict.fromkeys(rels) if r not in merged]
            if merged != known[i]:
                ids.append(i)
                merged_lists.append(merged)
        if ids:
            self.update_columns(ids, {"paths": pa.array(merged_lists, pa.list_(pa.string()))})

    def _add_missing_columns(self, ds, schema: pa.Schema) -> None:
        """Add ``schema``'s columns the table lacks (null for existing rows), keeping field metadata."""
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
            self._lance.dataset(self._uri("images")).update_field_metadata(md, replace=True)

    @_writes
    def set_table_metadata(self, values: dict[str, Any]) -> None:
        ds = self._open("images")
        if ds is None:
            return
        current = {k.decode(): v.decode() for k, v in (ds.schema.metadata or {}).items()}
        current.update({f"{_META_KEY}.{k}": json.dumps(v) for k, v in values.items()})
        ds.update_schema_metadata(current)

    def table_metadata(self) -> dict[str, Any]:
        schema = self.schema()
        out = {}
        for k, v in ((schema.metadata or {}) if schema is not None else {}).items():
            k = k.decode()
            if k.startswith(_META_KEY + "."):
                out[k[len(_META_KEY) + 1 :]] = json.loads(v.decode())
        return out

    def file_records(self, root: str | None = None) -> pa.Table:
        """The file index (root, rel, size, mtime_ns, id), of one ``root`` or of all."""
        ds = self._open("files")
        if ds is None:
            return pa.table(
                {
                    c: pa.array([], t)
                    for c, t in (
                        ("root", pa.string()),
                        ("rel", pa.string()),
                        ("size", pa.int64()),
                        ("mtime_ns", pa.int64()),
                        ("id", pa.string()),
                    )
                }
            )
        filt = None if root is None else f"root = {_sql_str(root)}"
        return ds.to_table(columns=["root", "rel", "size", "mtime_ns", "id"], filter=filt)

    def paths_of(self, root: str) -> dict[str, set[str]]:
        """``{id: {rel, ...}}``: the paths stored for each image ingested from ``root``."""
        ds = self._open("images")
        if ds is None:
            return {}
        t = ds.to_table(columns=["id", "paths"], filter=f"root = {_sql_str(root)}")
        return {
            i: set(ps or [])
            for i, ps in zip(t["id"].to_pylist(), t["paths"].to_pylist(), strict=True)
        }

    def stale_files(self) -> dict[str, int]:
        """``{"gone": n, "changed": m}``: ingested files that no longer exist, or whose size or
        time changed since (their rows still describe the old bytes until the folder is
        ingested again; ``ingest --prune`` then removes what no file backs)."""
        gone = changed = 0
        t = self.file_records()
        for r, rel, size, mtime in zip(
            t["root"].to_pylist(),
            t["rel"].to_pylist(),
            t["size"].to_pylist(),
            t["mtime_ns"].to_pylist(),
            strict=True,
        ):
            try:
                s = os.stat(disk_path(r, rel))
            except OSError:
                gone += 1
                continue
            changed += (s.st_size, s.st_mtime_ns) != (size, mtime)
        return {"gone": gone, "changed": changed}

    @_writes
    def delete_images(self, ids: list[str]) -> int:
        """Delete the image rows ``ids`` (one commit per 2,000); returns how many there were."""
        ds = self._open("images")
        if ds is None or not ids:
            return 0
        n = 0
        for s in range(0, len(ids), _ID_CHUNK):
            chunk = ids[s : s + _ID_CHUNK]
            n += int(ds.count_rows(filter=_sql_in("id", chunk)))
            self._new_embeddings_token()
            self._open("images").delete(_sql_in("id", chunk))
            ds = self._open("images")
        return n

    @_writes
    def delete_file_records(self, root: str, rels: list[str]) -> None:
        ds = self._open("files")
        for s in range(0, len(rels), _ID_CHUNK):
            if ds is not None:
                ds.delete(f"root = {_sql_str(root)} AND {_sql_in('rel', rels[s : s + _ID_CHUNK])}")
                ds = self._open("files")

    @_writes
    def record_warnings(self, root: str, warnings: list[str]) -> None:
        """Keep the warnings of the last ingest of ``root`` (metadata problems, say) in the
        store, where ``info`` shows them; an ingest without warnings clears its root's."""
        kept = dict(self.table_metadata().get("warnings") or {})
        if kept.get(root, []) == list(warnings) or self._open("images") is None:
            return
        kept[root] = list(warnings)
        self.set_table_metadata({"warnings": {r: w for r, w in kept.items() if w}})

    @_writes
    def record_files(self, root: str, files: list[tuple[str, int, int, str]]) -> None:
        """Upsert ``(rel, size, mtime_ns, id)`` of files ingested from ``root``."""
        if not files:
            return
        rows = pa.table(
            {
                "root": pa.array([root] * len(files), pa.string()),
                "rel": pa.array([f[0] for f in files], pa.string()),
                "size": pa.array([f[1] for f in files], pa.int64()),
                "mtime_ns": pa.array([f[2] for f in files], pa.int64()),
                "id": pa.array([f[3] for f in files], pa.string()),
            }
        )
        ds = self._open("files")
        if ds is None:
            self._lance.write_dataset(rows, self._uri("files"), mode="create")
            return
        ds.merge_insert(
            ["root", "rel"]
        ).when_matched_update_all().when_not_matched_insert_all().execute(rows)

    def file_index(self, root: str) -> dict[str, tuple[int, int, str]]:
        """``rel -> (size, mtime_ns, id)`` for files already ingested from ``root``."""
        ds = self._open("files")
        if ds is None:
            return {}
        t = ds.to_table(
            columns=["rel", "size", "mtime_ns", "id"], filter=f"root = {_sql_str(root)}"
        )
        return {
            r: (s, m, i)
            for r, s, m, i in zip(
                t.column("rel").to_pylist(),
                t.column("size").to_pylist(),
                t.column("mtime_ns").to_pylist(),
                t.column("id").to_pylist(),
                strict=True,
            )
        }

    @_writes
    def record_skipped(self, rows: list[dict[str, Any]]) -> None:
        """Record skipped files (root, rel, reason); a later success removes the record."""
        if not rows:
            return
        t = pa.Table.from_pylist(
            [{**r, "at": _now()} for r in rows],
            schema=pa.schema(
                [
                    ("root", pa.string()),
                    ("rel", pa.string()),
                    ("reason", pa.string()),
                    ("at", pa.string()),
                ]
            ),
        )
        ds = self._open("skipped")
        if ds is None:
            self._lance.write_dataset(t, self._uri("skipped"), mode="create")
        else:
            ds.merge_insert(
                ["root", "rel"]
            ).when_matched_update_all().when_not_matched_insert_all().execute(t)
        self._write_skipped_csv()

    @_writes
    def clear_skipped(self, root: str, rels: list[str]) -> None:
        ds = self._open("skipped")
        if ds is None or not rels:
            return
        t = ds.to_table(columns=["rel"], filter=f"root = {_sql_str(root)}")
        present = set(t.column("rel").to_pylist()) & set(rels)
        if present:
            ds.delete(f"root = {_sql_str(root)} AND {_sql_in('rel', sorted(present))}")
            self._write_skipped_csv()

    def skipped(self) -> pa.Table:
        ds = self._open("skipped")
        if ds is None:
            return pa.table(
                {
                    "root": pa.array([], pa.string()),
                    "rel": pa.array([], pa.string()),
                    "reason": pa.array([], pa.string()),
                    "at": pa.array([], pa.string()),
                }
            )
        return ds.to_table()

    def _write_skipped_csv(self) -> None:
        import pyarrow.csv as pcsv

        tmp = self.path / "skipped.csv.tmp"
        pcsv.write_csv(self.skipped(), tmp)
        os.replace(tmp, self.path / "skipped.csv")

    # ------------------------------------------------------------------ distributed writes

    @_writes
    def prepare_images(self, schema: pa.Schema) -> pa.Schema:
        """Make ``images`` hold every column of ``schema`` (:func:`image_table`'s schema) before
        workers write fragments for it: the table is created empty with that schema (and the
        store's table metadata) when absent, else the missing columns are added. Returns the
        table's schema, which :func:`write_image_fragments` conforms rows to."""
        ds = self._open("images")
        if ds is None:
            empty = _with_store_metadata(schema.empty_table())
            self._lance.write_dataset(empty, self._uri("images"), mode="create")
        else:
            self._add_missing_columns(ds, schema)
        return self._open("images").schema

    @_writes
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
            return self.version
        ds = self._open("images")
        if ds is None:
            raise StoreError(f"{self.path}: no images table to append to")
        if read_version is not None and int(ds.version) != read_version:
            clash = self.read(["id"], ids=ids).num_rows if ids else 0
            if clash:
                raise StoreError(
                    f"{self.path}: another process added {clash} of these images during this "
                    "ingest; stop it and run the ingest again (it resumes where it stopped)"
                )
        frags = [self._lance.fragment.FragmentMetadata.from_json(f) for f in fragments]
        self._new_embeddings_token()
        new = self._lance.LanceDataset.commit(
            self._uri("images"),
            self._lance.LanceOperation.Append(frags),
            read_version=self._open("images").version,
        )
        return int(new.version)

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
        ds = self._open("images")
        if ds is None:
            raise StoreError(
                f"{self.path}: the store is empty; run `embedstore ingest IMAGES_DIR --store {self.path}`"
            )
        self._check_columns(ds, [*columns, *embedded])
        filt = self._filter(ds, where, labelled=labelled, part=part, embedded=embedded)
        return _import_lance_ray().read_lance(self._uri("images"), columns=columns, filter=filt)

    @_writes
    def compact(self, min_fragments: int = 16) -> None:
        """Merge small fragments (after a chunked ingest) when there are ``min_fragments`` or more."""
        for name in ("images", "files"):
            ds = self._open(name)
            if ds is not None and len(ds.get_fragments()) >= min_fragments:
                ds.optimize.compact_files()

    # ------------------------------------------------------------------ reads

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
        ds = self._open("images")
        if ds is None:
            raise StoreError(
                f"{self.path}: the store is empty; run `embedstore ingest IMAGES_DIR --store {self.path}`"
            )
        if columns is not None:
            self._check_columns(ds, [*columns, *embedded])
        if ids is not None:
            ids = list(dict.fromkeys(ids))
            parts = [
                self._to_table(ds, columns, where, ids[s : s + _ID_CHUNK], labelled, part, embedded)
                for s in range(0, len(ids), _ID_CHUNK)
            ]
            if parts:
                return pa.concat_tables(parts)
        return self._to_table(ds, columns, where, ids, labelled, part, embedded)

    def _to_table(self, ds, columns, where, ids, labelled, part, embedded) -> pa.Table:
        filt = self._filter(ds, where, ids=ids, labelled=labelled, part=part, embedded=embedded)
        try:
            return ds.to_table(columns=columns, filter=filt)
        except (ValueError, OSError) as e:
            raise self._read_error(e, where) from e

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

    def check_where(self, where: str) -> None:
        """Raise StoreError with a clear message unless ``where`` is one valid predicate here."""
        self.count(where)

    def has_column(self, name: str) -> bool:
        schema = self.schema()
        return schema is not None and name in schema.names

    def ids_with_embedding(self, column: str) -> set[str]:
        if not self.has_column(column):
            return set()
        return set(self.read(["id"], embedded=[column]).column("id").to_pylist())

    def all_ids(self) -> set[str]:
        if not self.exists:
            return set()
        return set(self.read(["id"]).column("id").to_pylist())

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
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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
        ds = self._open("images")
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
        return embs, {c: _to_numpy(t.column(c)) for c in columns}

    # ------------------------------------------------------------------ filters

    def _check_columns(self, ds, columns: list[str]) -> None:
        unknown = [c for c in columns if c not in ds.schema.names]
        if unknown:
            raise StoreError(
                f"{self.path}: no column(s) {', '.join(unknown)}; columns: "
                f"{', '.join(n for n in ds.schema.names if not n.startswith(EMB_PREFIX))}"
            )

    def _filter(
        self,
        ds,
        where: str | None = None,
        *,
        ids: list[str] | None = None,
        labelled: bool = False,
        part: Part | None = None,
        embedded: tuple[str, ...] | list[str] = (),
    ) -> str | None:
        """The one place SQL text is built: the user's predicate in parentheses, AND the selectors."""
        terms = [f"({check_predicate(where)})"] if where is not None else []
        if ids is not None:
            terms.append(_sql_in("id", ids))
        if labelled:
            terms.append("label IS NOT NULL")
        if part is not None:
            if "fold" not in ds.schema.names:
                raise StoreError(
                    f"{self.path}: the store has no folds; run `embedstore split --store {self.path}` first"
                )
            terms.append({"holdout": f"fold = {HOLDOUT}", "folds": "fold >= 0"}[part])
        self._check_columns(ds, list(embedded))
        terms += [f"{_quote_column(c)} IS NOT NULL" for c in embedded]
        return " AND ".join(terms) if terms else None

    def _read_error(self, e: Exception, where: str | None) -> StoreError:
        reason = _plain(e)
        damaged = any(w in str(e) for w in ("LanceError(IO)", "Not found", "No such file"))
        if where is not None and not damaged and _looks_like_predicate_error(reason):
            return StoreError(f"invalid --where expression {where!r}: {reason}")
        return StoreError(
            f"{self.path}: cannot read the store ({reason}); it is damaged or was written by a "
            f"newer version: run `embedstore check --store {self.path}` to see which"
        )

    # ------------------------------------------------------------------ summary

    def info(self) -> StoreInfo:
        """Counts, classes with a long-tail summary, backbones, version, size, skipped files."""
        try:
            return self._info()
        except StoreError:
            raise
        except (OSError, ValueError, RuntimeError) as e:  # a damaged store, say
            raise self._read_error(e, None) from e

    def _info(self) -> StoreInfo:
        out: dict[str, Any] = {"store": str(self.path), "exists": self.exists}
        ds = self._open("images")
        skipped = self.skipped()
        reasons = {}
        if skipped.num_rows:
            for r in skipped.column("reason").to_pylist():
                key = r.split(":")[0].split("(")[0].strip()
                reasons[key] = reasons.get(key, 0) + 1
        out["skipped"] = {
            "count": skipped.num_rows,
            "by_reason": reasons,
            "file": str(self.path / "skipped.csv"),
        }
        if ds is None:
            out.update(
                images=0, labelled=0, unlabelled=0, classes={"count": 0}, backbones=[], version=0
            )
            out["size_bytes"] = _du(self.path)
            return StoreInfo(**out)
        t = ds.to_table(columns=["label"])
        labels = t.column("label")
        n = t.num_rows
        n_lab = n - labels.null_count
        counts = pc.value_counts(labels.drop_null()).to_pylist() if n_lab else []
        sizes = sorted(((c["counts"], c["values"]) for c in counts), reverse=True)
        cls: dict[str, Any] = {"count": len(sizes)}
        if sizes:
            arr = np.array([s for s, _ in sizes])
            cls.update(
                largest={"label": sizes[0][1], "images": int(sizes[0][0])},
                smallest={"label": sizes[-1][1], "images": int(sizes[-1][0])},
                median_images=float(np.median(arr)),
                under_5_images=int((arr < 5).sum()),
                imbalance_ratio=round(float(arr[0] / arr[-1]), 2),
            )
        backbones = []
        for info in self.embeddings_info().values():
            have = int(ds.count_rows(filter=f"{info.column} IS NOT NULL"))
            backbones.append(
                {
                    "name": info.backbone,
                    "column": info.column,
                    "dim": info.dim,
                    "dtype": info.dtype,
                    "embedded": have,
                    "source": info.describe.get("source"),
                    # what made its embeddings: torch, onnx or onnx-int8 (in order)
                    "runtimes": info.runtimes,
                }
            )
            if info.views:  # augmented views: name, column and how many images hold it
                backbones[-1]["views"] = [
                    {
                        "name": v,
                        "column": c,
                        "embedded": int(ds.count_rows(filter=f"{c} IS NOT NULL"))
                        if c in ds.schema.names
                        else 0,
                    }
                    for v, c in info.view_columns.items()
                ]
        cols = [f.name for f in ds.schema if not f.name.startswith(EMB_PREFIX)]
        out.update(
            images=n,
            labelled=n_lab,
            unlabelled=n - n_lab,
            classes=cls,
            backbones=backbones,
            version=int(ds.version),
            columns=cols,
            size_bytes=_du(self.path),
            folds=_fold_summary(self.table_metadata().get("folds")),
            stale_files=self.stale_files(),
            warnings=[
                w for ws in (self.table_metadata().get("warnings") or {}).values() for w in ws
            ],
        )
        return StoreInfo(**out)


# ---------------------------------------------------------------------- helpers


def _column_of(name: str) -> str:
    return EMB_PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


def _fold_summary(folds: dict[str, Any] | None) -> dict[str, Any] | None:
    """The split summary for ``info``; one whose split was killed before it finished says so."""
    if folds is None or folds.get("complete", True):
        return folds
    return {
        **folds,
        "interrupted": True,
        "note": "a split was stopped before it finished: the "
        "fold column may not match this summary; run `embedstore split` again",
    }


def _is_embedding(field: pa.Field) -> bool:
    """An embedding column: named ``emb_...`` and a fixed-size list of floats."""
    return field.name.startswith(EMB_PREFIX) and pa.types.is_fixed_size_list(field.type)


def _has_version(uri: str) -> bool:
    """A Lance table exists once its first commit wrote a manifest under ``_versions``."""
    versions = os.path.join(uri, "_versions")
    if not os.path.isdir(versions):
        return False
    with os.scandir(versions) as entries:
        return any(True for _ in entries)


def _lock(store: Path, what: str) -> int:
    """Take ``store``'s write lock (a POSIX record lock: held by this process only, not by
    forked workers, released when it exits however it exits); StoreLockedError if taken."""
    fd = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise StoreLockedError(
            f"{store}: the store is being written by {holder}; wait for it to finish (or stop "
            "it) and run this again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} ({what}, since {_now()})".encode(), 0)
    return fd


def _sql_in(column: str, values: list[str]) -> str:
    """``column IN ('a', 'b')`` with every value escaped as a string literal (``false`` for
    none): the one way a list of ids or paths read from the store goes into a filter."""
    if not values:
        return "false"
    return f"{_quote_column(column)} IN ({', '.join(_sql_str(v) for v in values)})"


def _sql_str(s: str) -> str:
    """``s`` as an SQL string literal (quotes doubled); StoreError for anything not a string."""
    if not isinstance(s, str):
        raise StoreError(f"expected a text value in a filter, not {type(s).__name__} {s!r}")
    return "'" + s.replace("'", "''") + "'"


def _quote_column(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else "`" + name.replace("`", "``") + "`"


_STATEMENT = re.compile(
    r"^\s*(select|insert|update|delete|drop|create|alter|with|attach|pragma|copy)\b", re.I
)


def check_predicate(where: str) -> str:
    """``where`` if it is one boolean expression; StoreError otherwise (never pasted unchecked).

    Quotes must close, parentheses balance (so ``"a = 1) OR (1=1"`` cannot escape the
    parentheses the store puts around it), and there is no ``;`` or statement.
    """
    if not isinstance(where, str) or not where.strip():
        raise StoreError(
            "invalid --where expression: it is empty; give a predicate such as \"label = 'daisy'\""
        )
    depth, quote = 0, None
    for ch in where:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
        elif ch == ";":
            raise StoreError(
                f"invalid --where expression {where!r}: ';' is not allowed; give one predicate"
            )
    if quote:
        raise StoreError(f"invalid --where expression {where!r}: a {quote} quote is not closed")
    if depth != 0:
        raise StoreError(f"invalid --where expression {where!r}: unbalanced parentheses")
    if _STATEMENT.match(where):
        raise StoreError(
            f"invalid --where expression {where!r}: give one predicate on columns, not a statement"
        )
    return where


def _looks_like_predicate_error(reason: str) -> bool:
    low = reason.lower()
    return any(
        w in low
        for w in (
            "sql",
            "parse",
            "column",
            "schema",
            "type",
            "expression",
            "filter",
            "field",
            "cast",
            "invalid",
        )
    )


def _with_store_metadata(rows: pa.Table) -> pa.Table:
    """``rows`` carrying the store's table metadata (format, creation time, embeddings token),
    so that the commit creating the table records them too: a first commit killed half-way
    leaves no table, never a table without its format."""
    values = {"format": STORE_FORMAT, "created_at": _now(), "embeddings_token": _token()}
    md = dict(rows.schema.metadata or {})
    md.update({f"{_META_KEY}.{k}".encode(): json.dumps(v).encode() for k, v in values.items()})
    return rows.replace_schema_metadata(md)


def _token() -> str:
    return uuid.uuid4().hex


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _du(path: Path) -> int:
    total = 0
    for dp, _, fns in os.walk(path):
        for f in fns:
            try:
                total += os.path.getsize(os.path.join(dp, f))
            except OSError:
                pass
    return total


def numpy_columns(table: pa.Table, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Columns of ``table`` as numpy arrays, as the readers return them (strings and columns
    with nulls as object arrays of Python values): what heads' encoders take."""
    return {c: _to_numpy(table.column(c)) for c in (columns or table.column_names)}


def _to_numpy(col: pa.ChunkedArray) -> np.ndarray:
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


def _fixed_size_list(X: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(X, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), X.shape[1])


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give ``rows`` exactly ``schema``'s columns (missing ones as nulls), in its order."""
    cols = []
    for f in schema:
        if f.name in rows.column_names:
            cols.append(rows.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(rows.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


# ---------------------------------------------------------------------- rows and fragments


def embedding_field(column: str, dim: int, dtype: EmbDtype, describe: dict) -> pa.Field:
    """The Lance field of an embedding column: fixed-size list of ``dtype``, described by
    ``describe`` (what reproduces it) in its field metadata."""
    pa_type = pa.list_(pa.float16() if dtype == "float16" else pa.float32(), dim)
    meta = {_META_KEY: json.dumps({**describe, "dtype": dtype}, sort_keys=True)}
    return pa.field(column, pa_type, metadata=meta)


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
        arrays.append(_fixed_size_list(X, dtype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_image_fragments(store_path: str | os.PathLike, rows: pa.Table) -> list[str]:
    """Write ``rows`` (:func:`image_table`) as data files of the store's ``images`` table
    without committing them; returns the fragments as JSON for :meth:`Store.append_fragments`.

    What a worker of a distributed ingest calls: only the driver commits, one transaction per
    chunk, so a worker killed mid-write leaves unreferenced files and no rows.
    """
    lance = _import_lance()
    uri = str(Path(store_path) / "images.lance")
    ds = lance.dataset(uri)
    frags = lance.fragment.write_fragments(_conform(rows, ds.schema), ds, schema=ds.schema)
    return [json.dumps(f.to_json()) for f in frags]


def _check_out(path: str | os.PathLike, overwrite: bool) -> tuple[str, str]:
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise StoreError(f"{p}: already exists; remove it, choose another --out, or overwrite")
    if p.exists() and not _has_version(str(p)):
        raise StoreError(f"{p}: exists and is not a Lance table; choose another --out")
    return str(p), "overwrite" if p.exists() else "create"


def write_table(path: str | os.PathLike, table: pa.Table, *, overwrite: bool = False) -> str:
    """Write ``table`` as a new Lance table at ``path`` (a ``.lance`` folder), e.g. a batch of
    predictions; an existing one is replaced only with ``overwrite``. Returns the path."""
    uri, mode = _check_out(path, overwrite)
    _import_lance().write_dataset(table, uri, mode=mode)
    return uri


def read_table(
    path: str | os.PathLike, columns: list[str] | None = None, where: str | None = None
) -> pa.Table:
    """A Lance table written by :func:`write_table` or :func:`write_ray_dataset` (a batch of
    predictions, say) as pyarrow: ``columns`` (default all) of the rows matching ``where``."""
    p = Path(path).expanduser()
    if not _has_version(str(p)):
        raise StoreError(f"{p}: no Lance table here")
    filt = f"({check_predicate(where)})" if where is not None else None
    return _import_lance().dataset(str(p)).to_table(columns=columns, filter=filt)


def write_ray_dataset(
    ds: Any, path: str | os.PathLike, *, schema: pa.Schema, overwrite: bool = False
) -> str:
    """Write a Ray Dataset as a Lance table at ``path``, from the workers in parallel, with
    lance-ray's ``write_lance`` (Ray 2.60's own ``Dataset.write_lance`` fails with pylance 14).
    Returns the path."""
    uri, mode = _check_out(path, overwrite)
    _import_lance_ray().write_lance(ds, uri, schema=schema, mode=mode)
    return uri
