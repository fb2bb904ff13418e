"""Text embeddings cached per model (``Store.text_cache``): the ``text_embeddings.lance`` table
of a store, one row per (model, text), so the same prompt is never embedded twice by the same
text tower.

A row's ``key`` is ``<model>:<sha256 of the text's UTF-8 bytes>``; ``model`` is the text tower's
identity (kind, recipe version, weights hash: ``TextTower.identity``). The text itself is kept
beside its vector (to read the cache back), and the vector is float32 of unit length, as the
tower returned it. Writes hold the store's write lock and insert only keys not there yet, so
two writers of the same prompt leave one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from embedstore.store._lance import ID_CHUNK, StoreError, StoreParts, now
from embedstore.store._lock import writes
from embedstore.store._sql import sql_in, sql_str

TEXT_TABLE = "text_embeddings"
TEXT_FIELDS = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("model", pa.string()),
        pa.field("text_sha256", pa.string()),
        pa.field("text", pa.string()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("added_at", pa.string()),
    ]
)


def text_sha256(text: str) -> str:
    """The SHA-256 of ``text``'s UTF-8 bytes, exactly as given (no trimming or lowercasing)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_key(model: str, text: str) -> str:
    return f"{model}:{text_sha256(text)}"


class TextCache:
    """Text embeddings per model (``Store.text_cache``): ``get`` what is cached, ``put`` what
    a tower computed, ``count`` the rows."""

    def __init__(self, store: StoreParts) -> None:
        self._store, self.path, self._tables, self.lock = (
            store,
            store.path,
            store.tables,
            store.lock,
        )

    def get(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{text: (dim,) float32}`` for those of ``texts`` cached for ``model`` (others are
        absent)."""
        ds = self._tables.open(TEXT_TABLE)
        by_key = {text_key(model, t): t for t in dict.fromkeys(texts)}
        if ds is None or not by_key:
            return {}
        keys, out = list(by_key), {}
        for s in range(0, len(keys), ID_CHUNK):
            t = ds.to_table(
                columns=["key", "embedding"], filter=sql_in("key", keys[s : s + ID_CHUNK])
            )
            keys_read, vecs = t.column("key").to_pylist(), _vectors(t.column("embedding"))
            out.update({by_key[k]: v for k, v in zip(keys_read, vecs, strict=True)})
        return out

    @writes
    def put(self, model: str, texts: Sequence[str], X: np.ndarray) -> int:
        """Cache ``X`` (``(N, dim)``, rows aligned with ``texts``) for ``model``; texts already
        cached for it are left as they are. Returns the number of rows added."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(texts):
            raise StoreError(f"{self.path}: text cache: {len(texts)} texts but X is {X.shape}")
        first = {t: i for i, t in reversed(list(enumerate(texts)))}  # one row per text
        if not first:
            return 0
        rows = pa.table(
            {
                "key": [text_key(model, t) for t in first],
                "model": [model] * len(first),
                "text_sha256": [text_sha256(t) for t in first],
                "text": list(first),
                "embedding": pa.array(list(X[list(first.values())]), pa.list_(pa.float32())),
                "added_at": [now()] * len(first),
            },
            schema=TEXT_FIELDS,
        )
        ds = self._tables.open(TEXT_TABLE)
        if ds is None:
            self._tables.create(TEXT_TABLE, rows)
            return rows.num_rows
        res = ds.merge_insert("key").when_not_matched_insert_all().execute(rows)
        return int(res["num_inserted_rows"])

    def count(self, model: str | None = None) -> int:
        """Cached rows (of ``model``, or of every model)."""
        ds = self._tables.open(TEXT_TABLE)
        if ds is None:
            return 0
        if model is None:
            return int(ds.count_rows())
        return int(ds.count_rows(filter=f"model = {sql_str(model)}"))

    def models(self) -> dict[str, int]:
        """``{model: cached texts}`` for every model with cached texts."""
        ds = self._tables.open(TEXT_TABLE)
        if ds is None:
            return {}
        models = ds.to_table(columns=["model"]).column("model").to_pylist()
        return {m: models.count(m) for m in sorted(set(models))}


def _vectors(col: pa.ChunkedArray) -> list[np.ndarray]:
    """A list<float32> column as one float32 array per row, without a Python float per value."""
    arr = col.combine_chunks()
    if len(arr) == 0:
        return []
    flat = arr.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    offsets = arr.offsets.to_numpy()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(arr))]
