"""Embeddings kept in memory: one read of the store, then lookups by id and searches in
microseconds, until the store's version moves on (the service keeps these resident).

>>> res = Resident(store, ["emb_efficientnet_lite0"], meta_columns=["habitat"])
>>> X, have, table = res.vectors(["3f2a..."])
>>> res.stale  # True once the store was written to
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from embedstore.search._search import NeighborIndex, l2_normalize
from embedstore.store._store import Store


class Resident:
    """Every stored row's embeddings for ``columns`` (and ``meta_columns``), read at one version.

    A row missing one column's embedding has ``have[column]`` False. ``index(column)`` is an
    exact :class:`NeighborIndex` over the L2-normalised vectors, built on first use.
    """

    def __init__(
        self,
        store: Store,
        columns: list[str],
        meta_columns: list[str] | tuple[str, ...] = (),
        device: str | torch.device = "cpu",
    ) -> None:
        self.store = store
        self.version = store.version
        self.device = device
        schema = store.schema() if store.exists else None
        names = schema.names if schema is not None else []
        self.columns = [c for c in columns if c in names]
        self.meta_columns = [c for c in meta_columns if c in names]
        dims = {
            c: info.dim
            for info in store.embeddings_info().values()
            for c in [info.column, *info.view_columns.values()]
        }
        self.X: dict[str, np.ndarray] = {}
        self.have: dict[str, np.ndarray] = {}
        if not store.exists:
            self.ids = np.array([], dtype=object)
            self.table: dict[str, np.ndarray] = {}
        else:
            t = store.read(["id", "label", *self.meta_columns, *self.columns])
            self.ids = np.array(t.column("id").to_pylist(), dtype=object)
            self.table = {
                c: np.array(t.column(c).to_pylist(), dtype=object)
                for c in ["label", *self.meta_columns]
            }
            for c in self.columns:
                col = t.column(c)
                self.have[c] = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
                X = np.zeros((t.num_rows, dims[c]), np.float32)
                if self.have[c].any():
                    valid = col.drop_null().combine_chunks()
                    X[self.have[c]] = (
                        valid.flatten().to_numpy(zero_copy_only=False).reshape(-1, dims[c])
                    )
                self.X[c] = X
        self.row = {i: r for r, i in enumerate(self.ids.tolist())}
        self._indexes: dict[str, tuple[NeighborIndex, np.ndarray]] = {}
        self._projected: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def stale(self) -> bool:
        """The store has a newer version than the one these embeddings were read at."""
        return self.store.version != self.version

    def vectors(
        self, ids: list[str | None]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``({column: (n, D)}, {column: (n,) bool have}, {meta column: (n,)})`` for ``ids``
        (None or an id not stored: zeros, have False, metadata None)."""
        rows = np.array([self.row.get(i, -1) if i else -1 for i in ids], dtype=np.int64)
        found = rows >= 0
        safe = np.where(found, rows, 0)
        embs, have = {}, {}
        for c in self.columns:
            X = self.X[c][safe] if len(self.ids) else np.zeros((len(ids), 0), np.float32)
            embs[c] = np.where(found[:, None], X, 0).astype(np.float32)
            have[c] = found & (self.have[c][safe] if len(self.ids) else found)
        table = {
            # numpy's stubs reject None as the fill value, which numpy takes as an object scalar
            c: np.where(found, v[safe], None)  # type: ignore[call-overload]
            if len(self.ids)
            else np.array([None] * len(ids))
            for c, v in self.table.items()
        }
        return embs, have, table

    def index(self, column: str) -> tuple[NeighborIndex, np.ndarray]:
        """``(exact index over the rows holding column, their row numbers)``, built once."""
        with self._lock:
            if column not in self._indexes:
                rows = np.flatnonzero(self.have[column])
                Xn = l2_normalize(self.X[column][rows])  # (N, D)
                self._indexes[column] = (
                    NeighborIndex(kind="exact", device=self.device).build(Xn),
                    rows,
                )
            return self._indexes[column]

    def projected(
        self, column: str, key: str, project: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(project(vectors of the rows holding column), their row numbers)``, computed once
        per ``(column, key)``: the column mapped into another space and kept, e.g. a text
        tower's image-text space (``key``: the tower's identity, ``project``: its
        ``project_images``), so text searches do not project the store again."""
        with self._lock:
            if (column, key) not in self._projected:
                rows = np.flatnonzero(self.have[column])
                P = np.asarray(project(self.X[column][rows]), dtype=np.float32)  # (N, D)
                self._projected[column, key] = (P, rows)
            return self._projected[column, key]

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "rows": int(len(self.ids)), "columns": self.columns}
