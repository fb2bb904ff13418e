"""What an ingest has to do, from a scan of the folder and the store (:func:`plan_ingest`):
every engine runs one, then embeds ``plan.work``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from embedstore._images import (
    FoundFile,
    find_images,
)
from embedstore.backbones._backbones import Backbone
from embedstore.backbones._views import view_column, view_describe
from embedstore.ingestion._decode import _Work
from embedstore.ingestion._options import IngestError
from embedstore.store._metadata import join_metadata, read_metadata, store_column_names
from embedstore.store._store import Store
from embedstore.types import EmbDtype

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _label_and_split(rel: str) -> tuple[str | None, str | None]:
    parts = rel.split("/")
    label = parts[-2] if len(parts) >= 2 else None
    split = next((_SPLIT_NAMES[p.lower()] for p in parts[:-2] if p.lower() in _SPLIT_NAMES), None)
    if label is not None and label.lower() in _SPLIT_NAMES and len(parts) == 2:
        split, label = _SPLIT_NAMES[label.lower()], None  # root/train/x.jpg: a split, no class
    return label, split


def check_folder(images_dir: str | os.PathLike, batch_size: int, dtype: str) -> Path:
    """The images folder, resolved, after the checks every engine makes on its arguments."""
    root = Path(images_dir).expanduser()
    if not root.exists():
        raise IngestError(f"{root}: images folder not found")
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder; give the folder that holds the images")
    if batch_size < 1:
        raise IngestError(f"--batch-size must be at least 1, not {batch_size}")
    if dtype not in ("float16", "float32"):
        raise IngestError(f"unknown dtype {dtype!r}; valid: float16, float32")
    return root.resolve()


def read_meta(
    metadata: str | os.PathLike | None, join_column: str | None, label_column: str | None
) -> Any:
    """The metadata file read for joining (None without one); checks ``label_column``."""
    meta = read_metadata(metadata, join_column) if metadata is not None else None
    if label_column is not None:
        if meta is None:
            raise IngestError("--label-column needs --metadata FILE")
        if label_column not in meta.table.column_names:
            raise IngestError(
                f"{metadata}: label column {label_column!r} not found; "
                f"columns: {', '.join(meta.table.column_names)}"
            )
    return meta


@dataclass
class IngestPlan:
    """What an ingest has to do, from the scan and the store: every engine runs one.

    ``work`` lists the files to read (``known_id`` set for unchanged files of stored images
    that miss a backbone); ``skipped`` starts with the unsupported files and grows as files
    fail; ``store_ids`` and ``have`` (backbone name -> ids holding it) grow as chunks commit.
    """

    found: list[FoundFile]
    supported: list[FoundFile]
    skipped: list[dict[str, Any]]
    labels_split: list[tuple[str | None, str | None]]
    meta_cols: dict[str, pa.Array]
    warnings: list[str]
    rel_pos: dict[str, int]
    store_ids: set[str]
    have: dict[str, set[str]]
    work: list[_Work]
    unchanged_ids: set[str]
    # files left unread: those of a stored image met first (already stored), and further
    # names of an image met before them (duplicate names), so a re-run counts every file
    unchanged_files: int = 0
    unchanged_duplicates: int = 0
    # backbone name -> its augmented views (embedstore.backbones._views): those asked for and
    # those the store holds already; ``have`` also maps each view's column to the ids holding it
    views: dict[str, list[str]] = field(default_factory=dict)


def plan_ingest(
    st: Store,
    root: Path,
    models: list[Backbone],
    dtype: EmbDtype,
    meta: Any,
    label_column: str | None,
    views: list[str] | tuple[str, ...] = (),
) -> IngestPlan:
    """Scan ``root``, label and join metadata, and compare with the store: an :class:`IngestPlan`.

    Adds the (empty) embedding columns the store lacks and refreshes the metadata of images
    already stored.
    """
    found, supported, skipped = _scan(root)
    rels = [f.rel for f in supported]
    labels_split, meta_cols, warnings = _labels_and_metadata(rels, meta, label_column)
    rel_pos = {r: i for i, r in enumerate(rels)}

    # ---- what is already there
    index = st.records.file_index(str(root))
    store_ids = st.ids()
    have = {m.name: st.ids(embedded=m.column) for m in models}
    for m in models:
        st.meta.ensure_embedding_column(m.column, m.dim, dtype, m.describe())
    infos = {i.column: i for i in st.embeddings_info().values()}  # read once, for both below
    views_of = _plan_views(st, infos, models, dtype, views, have)
    work, unchanged_ids, unchanged_files, unchanged_dups = _work(supported, index, store_ids, have)
    if work:
        warnings += _precision_warnings(infos, models, have)
    if meta_cols and store_ids:  # refresh metadata (and labels) of images already stored
        _update_existing_metadata(
            st, index, store_ids, rel_pos, labels_split, meta_cols, label_column
        )
    return IngestPlan(
        found,
        supported,
        skipped,
        labels_split,
        meta_cols,
        warnings,
        rel_pos,
        store_ids,
        have,
        work,
        unchanged_ids,
        unchanged_files,
        unchanged_dups,
        views_of,
    )


def _scan(root: Path) -> tuple[list[FoundFile], list[FoundFile], list[dict[str, Any]]]:
    """Every file found, the supported ones, and the skipped ones with their reasons."""
    found: list[FoundFile] = list(find_images(root))
    supported = [f for f in found if f.supported and f.skip is None]
    skipped: list[dict[str, Any]] = [
        {"root": str(root), "rel": f.rel, "reason": f"unsupported format ({Path(f.rel).suffix})"}
        for f in found
        if not f.supported
    ] + [
        {"root": str(root), "rel": f.rel, "reason": f.skip}  # a FIFO, a device: never opened
        for f in found
        if f.supported and f.skip is not None
    ]
    if not found:
        raise IngestError(
            f"{root}: no image files found "
            "(looked for .jpg .jpeg .png .webp .bmp .tif .tiff, any case, recursively)"
        )
    return found, supported, skipped


def _labels_and_metadata(
    rels: list[str], meta: Any, label_column: str | None
) -> tuple[list[tuple[str | None, str | None]], dict[str, pa.Array], list[str]]:
    """Each file's label and split (folders, or the label column) and its metadata columns."""
    labels_split = [_label_and_split(r) for r in rels]
    meta_cols: dict[str, pa.Array] = {}
    warnings: list[str] = []
    if meta is not None:
        joined = join_metadata(meta, rels)
        warnings += joined.warnings
        meta_cols = dict(joined.columns)
        if label_column is not None:
            lab = meta_cols.pop(label_column).cast(pa.string()).to_pylist()
            labels_split = [(lab[i], s) for i, (_, s) in enumerate(labels_split)]
        names, renamed = store_column_names(list(meta_cols), meta.file)
        warnings += renamed
        meta_cols = {names[k]: v for k, v in meta_cols.items()}
    return labels_split, meta_cols, warnings


def _work(
    supported: list[FoundFile],
    index: dict[str, tuple[int, int, str]],
    store_ids: set[str],
    have: dict[str, set[str]],
) -> tuple[list[_Work], set[str], int, int]:
    """The files to read (unchanged files of stored images that miss an embedding with their
    known id, once per image), the ids of unchanged, complete images, and the unchanged files
    left unread: first names of their image, and further names (duplicate names)."""
    work: list[_Work] = []
    unchanged_ids: set[str] = set()
    queued_ids: set[str] = set()
    first, duplicates = 0, 0
    for f in supported:
        prev = index.get(f.rel)
        if (
            prev is not None
            and prev[0] == f.size
            and prev[1] == f.mtime_ns
            and prev[2] in store_ids
        ):
            image_id = prev[2]
            if _missing(image_id, have) and image_id not in queued_ids:
                work.append(_Work(str(f.path), f.rel, image_id))
                queued_ids.add(image_id)
            else:
                if image_id in unchanged_ids or image_id in queued_ids:
                    duplicates += 1
                else:
                    first += 1
                unchanged_ids.add(image_id)
        else:
            work.append(_Work(str(f.path), f.rel, None))
    return work, unchanged_ids, first, duplicates


def _plan_views(
    st: Store,
    infos: dict[str, Any],
    models: list[Backbone],
    dtype: EmbDtype,
    views: list[str] | tuple[str, ...],
    have: dict[str, set[str]],
) -> dict[str, list[str]]:
    """Each backbone's views: those the store holds already (so new images get them too), then
    those asked for. Adds their columns, records them on the main column and fills ``have``."""
    out: dict[str, list[str]] = {}
    for m in models:
        vs = infos[m.column].views if m.column in infos else []
        vs += [v for v in views if v not in vs]
        out[m.name] = vs
        for v in vs:
            c = view_column(m.column, v)
            st.meta.ensure_embedding_column(
                c, m.dim, dtype, view_describe(m.describe(), m.column, v)
            )
            have[c] = st.ids(embedded=c)
        if vs:
            st.meta.record_views(m.column, vs)
    return out


def _precision_warnings(
    infos: dict[str, Any], models: list[Backbone], have: dict[str, set[str]]
) -> list[str]:
    """A warning for each column whose stored rows and new rows differ in precision (int8 from
    ``onnx-int8`` against float32 from torch or onnx): allowed, but no longer one precision."""
    out = []
    for m in models:
        if m.column not in infos or not have.get(m.name):
            continue
        made = infos[m.column].runtimes
        if any((r == "onnx-int8") != (m.runtime == "onnx-int8") for r in made):
            out.append(
                f"column {m.column}: its {len(have[m.name])} stored embeddings were made by "
                f"{'/'.join(made)} and new ones by {m.runtime}; int8 and float32 embeddings "
                "differ slightly (cosine ~0.999), so this column now mixes both. Use one "
                "--runtime per store to keep one precision"
            )
    return out


def _missing(image_id: str, have: dict[str, set[str]]) -> bool:
    """Whether a stored image lacks any embedding (a backbone's, or one of its views)."""
    return any(image_id not in ids for ids in have.values())


def _update_existing_metadata(
    st: Store, index, store_ids, rel_pos, labels_split, meta_cols, label_column
) -> None:
    first: dict[str, int] = {}
    for rel, (_, _, image_id) in index.items():
        if image_id in store_ids and rel in rel_pos:
            first.setdefault(image_id, rel_pos[rel])
    if not first:
        return
    ids = list(first)
    pos = pa.array([first[i] for i in ids])
    cols = {name: col.take(pos) for name, col in meta_cols.items()}
    if label_column is not None:
        cols["label"] = pa.array([labels_split[first[i]][0] for i in ids], pa.string())
    st.update_columns(ids, cols)
