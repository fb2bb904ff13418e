"""Files that changed or went away on disk after they were ingested.

Ids are content hashes, so a file overwritten with other bytes is a new image; the old row
keeps its path until it is pruned. :meth:`Store.records.stale_files` counts such files (``info``
reports them) and :func:`prune` (``embedstore ingest --prune``) removes what no file on disk
backs any more: file records of deleted files, paths that no longer hold the image's bytes,
and image rows left with no path at all.
"""

from __future__ import annotations

import os

import pyarrow as pa

from embedstore._images import disk_path
from embedstore.store._store import Store


def prune(st: Store, root: str) -> int:
    """Remove, for the images folder ``root``, the records of files that are gone, the paths
    whose file now holds other bytes (or none), and the image rows left without a path.
    Run after an ingest of ``root`` (which recorded the current bytes of every file there).
    Returns the number of image rows removed."""
    files = st.records.file_records(root)
    gone, current = [], {}  # current: rel -> id of the bytes the file holds now
    for rel, size, mtime, i in zip(
        files["rel"].to_pylist(),
        files["size"].to_pylist(),
        files["mtime_ns"].to_pylist(),
        files["id"].to_pylist(),
        strict=True,
    ):
        try:
            s = os.stat(disk_path(root, rel))
        except OSError:
            gone.append(rel)
            continue
        if (s.st_size, s.st_mtime_ns) == (size, mtime):  # else: changed and not re-ingested
            current[rel] = i
    if not st.exists:
        return 0
    t = st.read(["id", "root", "path", "paths"])
    drop, keep_ids, keep_paths = [], [], []
    for i, r, paths in zip(
        t["id"].to_pylist(), t["root"].to_pylist(), t["paths"].to_pylist(), strict=True
    ):
        if r != root:
            continue
        paths = paths or []
        kept = [p for p in paths if current.get(p) == i]
        if not kept:
            drop.append(i)
        elif kept != paths:
            keep_ids.append(i)
            keep_paths.append(kept)
    with st.writing("embedstore ingest --prune"):
        if keep_ids:
            st.update_columns(
                keep_ids,
                {
                    "paths": pa.array(keep_paths, pa.list_(pa.string())),
                    "path": pa.array([p[0] for p in keep_paths], pa.string()),
                },
            )
        n = st.delete_images(drop)
        st.records.delete_file_records(root, gone)
    return n
