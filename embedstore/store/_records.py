"""The store's records of files: every ingested file (``files.lance``: root, rel, size,
mtime, id), so re-runs skip unchanged files unread; every skipped file with its reason
(``skipped.lance`` and ``skipped.csv``); the names each image was found under."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from embedstore._images import disk_path
from embedstore.store._lance import ID_CHUNK, StoreParts, now
from embedstore.store._lock import writes
from embedstore.store._sql import sql_in, sql_str


class FileRecords:
    """Files ingested and skipped, per root folder (``Store.records``)."""

    def __init__(self, store: StoreParts) -> None:
        self._store, self.path, self._tables, self.lock = (
            store,
            store.path,
            store.tables,
            store.lock,
        )

    def file_records(self, root: str | None = None) -> pa.Table:
        """The file index (root, rel, size, mtime_ns, id), of one ``root`` or of all."""
        ds = self._tables.open("files")
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
        filt = None if root is None else f"root = {sql_str(root)}"
        return ds.to_table(columns=["root", "rel", "size", "mtime_ns", "id"], filter=filt)

    def file_index(self, root: str) -> dict[str, tuple[int, int, str]]:
        """``rel -> (size, mtime_ns, id)`` for files already ingested from ``root``."""
        ds = self._tables.open("files")
        if ds is None:
            return {}
        t = ds.to_table(columns=["rel", "size", "mtime_ns", "id"], filter=f"root = {sql_str(root)}")
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

    @writes
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
        ds = self._tables.open("files")
        if ds is None:
            self._tables.create("files", rows)
            return
        ds.merge_insert(
            ["root", "rel"]
        ).when_matched_update_all().when_not_matched_insert_all().execute(rows)

    @writes
    def delete_file_records(self, root: str, rels: list[str]) -> None:
        ds = self._tables.open("files")
        for s in range(0, len(rels), ID_CHUNK):
            if ds is not None:
                ds.delete(f"root = {sql_str(root)} AND {sql_in('rel', rels[s : s + ID_CHUNK])}")
                ds = self._tables.open("files")

    def paths_of(self, root: str) -> dict[str, set[str]]:
        """``{id: {rel, ...}}``: the paths stored for each image ingested from ``root``."""
        ds = self._tables.open("images")
        if ds is None:
            return {}
        t = ds.to_table(columns=["id", "paths"], filter=f"root = {sql_str(root)}")
        return {
            i: set(ps or [])
            for i, ps in zip(t["id"].to_pylist(), t["paths"].to_pylist(), strict=True)
        }

    def add_paths(self, paths: dict[str, list[str]]) -> None:
        """Add relative paths to the ``paths`` list of stored images (``{id: [rel, ...]}``)."""
        if not paths:
            return
        cur = self._store.read(["id", "paths"], ids=list(paths))
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
            self._store.update_columns(
                ids, {"paths": pa.array(merged_lists, pa.list_(pa.string()))}
            )

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

    @writes
    def record_skipped(self, rows: list[dict[str, Any]]) -> None:
        """Record skipped files (root, rel, reason); a later success removes the record."""
        if not rows:
            return
        t = pa.Table.from_pylist(
            [{**r, "at": now()} for r in rows],
            schema=pa.schema(
                [
                    ("root", pa.string()),
                    ("rel", pa.string()),
                    ("reason", pa.string()),
                    ("at", pa.string()),
                ]
            ),
        )
        ds = self._tables.open("skipped")
        if ds is None:
            self._tables.create("skipped", t)
        else:
            ds.merge_insert(
                ["root", "rel"]
            ).when_matched_update_all().when_not_matched_insert_all().execute(t)
        self._write_skipped_csv()

    @writes
    def clear_skipped(self, root: str, rels: list[str]) -> None:
        ds = self._tables.open("skipped")
        if ds is None or not rels:
            return
        t = ds.to_table(columns=["rel"], filter=f"root = {sql_str(root)}")
        present = set(t.column("rel").to_pylist()) & set(rels)
        if present:
            ds.delete(f"root = {sql_str(root)} AND {sql_in('rel', sorted(present))}")
            self._write_skipped_csv()

    def skipped(self) -> pa.Table:
        ds = self._tables.open("skipped")
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
