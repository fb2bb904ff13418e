"""Adding images given as bytes (uploads) to a store, with the same content-hash identity as
ingest: the bytes are written durably to a folder of their own under ``uploads_dir``, then
ingested from there with every backbone the store holds. Once :func:`add_images` returns, the
images are committed: a process killed after that loses none of them, and adding the same
bytes again adds nothing.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import Image

from embedstore._images import ImageError, decode_image, hash_bytes
from embedstore._results import Result
from embedstore.backbones._backbones import Backbone, backbone_from_description
from embedstore.ingestion._ingest import ingest
from embedstore.store._store import Store, StoreError, connect
from embedstore.types import EmbDtype

_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass
class AddedImages(Result):
    """The ids of the added images, in order, and how many were new to the store."""

    ids: list[str]
    new_images: int
    already_stored: int
    folder: str
    store_version: int


def add_images(
    store: Store | str | os.PathLike,
    images: list[bytes],
    *,
    labels: list[str | None] | None = None,
    metadata: list[dict[str, Any]] | None = None,
    uploads_dir: str | os.PathLike | None = None,
    backbone_objects: list[Backbone] | None = None,
    max_pixels: int | None = None,
    names: list[str] | None = None,
) -> AddedImages:
    """Add ``images`` (encoded bytes) with optional ``labels`` and ``metadata`` rows.

    Every image is decoded first with the safe decoder (an unusable one raises ImageError
    naming it, and nothing is added). ``uploads_dir`` (default ``<store>/uploads``) keeps the
    files, since a store row points at the file it came from. ``backbone_objects`` are the
    store's backbones already built (the service keeps them loaded). ``names`` (the uploaded
    files' names) are what messages call the images. A failed add leaves no files behind.

    >>> add_images("store", [open("a.jpg", "rb").read()], labels=["daisy"]).ids
    """
    st = store if isinstance(store, Store) else connect(store)
    labels, metadata = _checked(images, labels, metadata)
    exts = _extensions(images, max_pixels, names)
    ids = [hash_bytes(data) for data in images]
    root = Path(uploads_dir) if uploads_dir is not None else st.path / "uploads"
    folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    files = []
    for data, image_id, ext in zip(images, ids, exts, strict=True):
        name = image_id + ext
        if name not in files:
            _write_durably(folder / name, data)
            files.append(name)
    labelled = any(lab is not None for lab in labels)
    meta_file = _write_metadata(folder, ids, exts, labels, metadata, labelled)
    _fsync_dir(folder)
    try:
        summary = _ingest_folder(st, folder, meta_file, labelled, backbone_objects, max_pixels)
    except Exception as e:
        shutil.rmtree(folder, ignore_errors=True)  # nothing was committed: keep nothing
        if isinstance(e, ImageError | StoreError):
            raise type(e)(str(e).replace(str(folder), "the upload")) from None
        raise
    return AddedImages(
        ids=ids,
        new_images=summary.new_images,
        already_stored=summary.already_stored + summary.duplicates,
        folder=str(folder),
        store_version=summary.store_version,
    )


def _checked(
    images: list[bytes], labels: list[str | None] | None, metadata: list[dict] | None
) -> tuple[list[str | None], list[dict[str, Any]]]:
    """The labels and metadata rows, one per image (None and {} when not given)."""
    n = len(images)
    if n == 0:
        raise ImageError("no images given")
    labels = list(labels) if labels is not None else [None] * n
    metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
    if len(labels) != n or len(metadata) != n:
        raise ImageError(
            f"{n} image(s) but {len(labels)} label(s) and {len(metadata)} metadata row(s)"
        )
    return labels, metadata


def _extensions(images: list[bytes], max_pixels: int | None, names: list[str] | None) -> list[str]:
    """Each image's file extension, after decoding it with the safe decoder."""
    exts = []
    for k, data in enumerate(images):
        try:
            decode_image(data, **({"max_pixels": max_pixels} if max_pixels else {}))
            fmt = Image.open(io.BytesIO(data)).format
        except ImageError as e:
            raise ImageError(f"{names[k] if names else f'image {k}'}: {e}") from e
        exts.append(_EXT.get(fmt or "", ".jpg"))
    return exts


def _write_metadata(
    folder: Path,
    ids: list[str],
    exts: list[str],
    labels: list[str | None],
    metadata: list[dict[str, Any]],
    labelled: bool,
) -> Path | None:
    """``metadata.csv`` beside the files (labels and metadata columns), or None without any."""
    columns = sorted({k for row in metadata for k in row})
    if not (labelled or columns):
        return None
    meta_file = folder / "metadata.csv"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", *(["label"] if labelled else []), *columns])
    seen = set()
    for image_id, ext, lab, row in zip(ids, exts, labels, metadata, strict=True):
        if image_id in seen:
            continue
        seen.add(image_id)
        w.writerow(
            [
                image_id + ext,
                *([lab or ""] if labelled else []),
                *("" if row.get(c) is None else row[c] for c in columns),
            ]
        )
    _write_durably(meta_file, buf.getvalue().encode())
    return meta_file


def _ingest_folder(
    st: Store,
    folder: Path,
    meta_file: Path | None,
    labelled: bool,
    backbone_objects: list[Backbone] | None,
    max_pixels: int | None,
) -> Any:
    infos = list(st.embeddings_info().values())
    models = backbone_objects
    if models is None and infos:
        models = [backbone_from_description(i.describe) for i in infos]
    # a column this store wrote: float16 or float32
    dtype: EmbDtype = cast(EmbDtype, infos[0].dtype) if infos else "float16"
    limits: dict[str, Any] = {"max_pixels": max_pixels} if max_pixels else {}
    return ingest(
        folder,
        st,
        metadata=meta_file,
        label_column="label" if labelled else None,
        backbone_objects=models,
        workers=0,
        progress=False,
        dtype=dtype,
        **limits,
    )


def collect_orphan_uploads(store: Store | str | os.PathLike) -> list[str]:
    """Remove the upload folders no stored image comes from (a process killed between writing
    the files and committing them); returns their names. Holds the write lock meanwhile, so no
    upload of this or another process is between those two steps."""
    st = store if isinstance(store, Store) else connect(store)
    root = st.path / "uploads"
    if not root.is_dir():
        return []
    with st.writing("collecting orphan uploads"):
        used: set[str] = set()
        if st.count() > 0:
            roots = set(st.read(columns=["root"])["root"].to_pylist())
            used = {str(Path(r).resolve()) for r in roots if r}
        gone = []
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and str(folder.resolve()) not in used:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder.name)
    return gone


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
