"""Getting images into a store: finding and decoding files, the ingest pipeline (local or
Ray engine), uploads and pruning.

(``embedstore.ingest`` is the function; this package is ``embedstore.ingestion``.)

>>> from embedstore.ingestion import ingest
>>> summary = ingest("photos/", "my-store")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedstore._lazy import lazy_names

_EXPORTS: dict[str, tuple[str, str]] = {
    "ingest": ("embedstore.ingestion._ingest", "ingest"),
    "IngestError": ("embedstore.ingestion._options", "IngestError"),
    "IngestOptions": ("embedstore.ingestion._options", "IngestOptions"),
    "IngestSummary": ("embedstore.ingestion._options", "IngestSummary"),
    "AddedImages": ("embedstore.ingestion._uploads", "AddedImages"),
    "add_images": ("embedstore.ingestion._uploads", "add_images"),
    "collect_orphan_uploads": ("embedstore.ingestion._uploads", "collect_orphan_uploads"),
    "ImageError": ("embedstore._images", "ImageError"),
    "decode_image": ("embedstore._images", "decode_image"),
    "find_images": ("embedstore._images", "find_images"),
    "hash_bytes": ("embedstore._images", "hash_bytes"),
    "RAY_INSTALL_HINT": ("embedstore._ray", "RAY_INSTALL_HINT"),
    "ActorLayout": ("embedstore._ray", "ActorLayout"),
    "EngineError": ("embedstore._ray", "EngineError"),
    "RayCluster": ("embedstore._ray", "RayCluster"),
    "actor_layout": ("embedstore._ray", "actor_layout"),
    "connect_ray": ("embedstore._ray", "connect_ray"),
    "import_ray": ("embedstore._ray", "import_ray"),
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore._images import ImageError, decode_image, find_images, hash_bytes
    from embedstore._ray import (
        RAY_INSTALL_HINT,
        ActorLayout,
        EngineError,
        RayCluster,
        actor_layout,
        connect_ray,
        import_ray,
    )
    from embedstore.ingestion._ingest import ingest
    from embedstore.ingestion._options import IngestError, IngestOptions, IngestSummary
    from embedstore.ingestion._uploads import AddedImages, add_images, collect_orphan_uploads

__all__ = [
    "ActorLayout",
    "AddedImages",
    "EngineError",
    "ImageError",
    "IngestError",
    "IngestOptions",
    "IngestSummary",
    "RAY_INSTALL_HINT",
    "RayCluster",
    "actor_layout",
    "add_images",
    "collect_orphan_uploads",
    "connect_ray",
    "decode_image",
    "find_images",
    "hash_bytes",
    "import_ray",
    "ingest",
]
