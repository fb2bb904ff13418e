"""embedstore: frozen-backbone embeddings of image collections in a Lance store.

The bottom layer: it imports neither ``heads`` nor scikit-learn (``heads`` builds on it).

>>> import embedstore
>>> summary = embedstore.ingest("photos/", "my-store")          # embed a folder
>>> store = embedstore.connect("my-store")
>>> X, cols = store.embeddings("efficientnet-lite0", labelled=True)
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from embedstore._lazy import lazy_names

_EXPORTS: dict[str, tuple[str, str]] = {
    "Store": ("embedstore.store._store", "Store"),
    "connect": ("embedstore.store._store", "connect"),
    "default_store_path": ("embedstore.store._store", "default_store_path"),
    "StoreError": ("embedstore.store._lance", "StoreError"),
    "check": ("embedstore.store._check", "check"),
    "SplitSummary": ("embedstore.store._folds", "SplitSummary"),
    "split": ("embedstore.store._folds", "split"),
    "ingest": ("embedstore.ingestion._ingest", "ingest"),
    "IngestError": ("embedstore.ingestion._options", "IngestError"),
    "IngestSummary": ("embedstore.ingestion._options", "IngestSummary"),
    "add_images": ("embedstore.ingestion._uploads", "add_images"),
    "LookupResult": ("embedstore.search._lookup", "LookupResult"),
    "lookup": ("embedstore.search._lookup", "lookup"),
    "build_index": ("embedstore.search._indexes", "build_index"),
    "embed_inputs": ("embedstore.search._embed", "embed_inputs"),
    "embed_texts": ("embedstore.search._texts", "embed_texts"),
    "search_text": ("embedstore.search._text_search", "search_text"),
    "read_inputs": ("embedstore.search._embed", "read_inputs"),
    "Resident": ("embedstore.search._resident", "Resident"),
    "BACKBONES": ("embedstore.backbones._backbones", "BACKBONES"),
    "Backbone": ("embedstore.backbones._backbones", "Backbone"),
    "BackboneError": ("embedstore.backbones._backbones", "BackboneError"),
    "create_backbone": ("embedstore.backbones._backbones", "create_backbone"),
    "list_backbones": ("embedstore.backbones._backbones", "list_backbones"),
    "register_backbone": ("embedstore.backbones._backbones", "register_backbone"),
    "DuplicatesResult": ("embedstore.explore._duplicates", "DuplicatesResult"),
    "find_duplicates": ("embedstore.explore._duplicates", "find_duplicates"),
    "MapResult": ("embedstore.explore._map", "MapResult"),
    "map_store": ("embedstore.explore._map", "map_store"),
    "Registry": ("embedstore._registry", "Registry"),
    "RegistryError": ("embedstore._registry", "RegistryError"),
    "Result": ("embedstore._results", "Result"),
    "jsonable": ("embedstore._results", "jsonable"),
    "resolve_device": ("embedstore._device", "resolve_device"),
}
_SUBMODULES = ("backbones", "errors", "explore", "ingestion", "search", "store", "types")
# Names that were here before the subpackages: they still resolve from their new home, with a
# DeprecationWarning, for older scripts (and not in __all__ or dir()).
_MOVED: dict[str, str] = {
    "ALWAYS_TRAIN": "store",
    "ActorLayout": "ingestion",
    "AddedImages": "ingestion",
    "CheckReport": "store",
    "DUPLICATE_THRESHOLD": "explore",
    "DuplicateGroup": "explore",
    "DuplicatePair": "explore",
    "EmbeddedInputs": "search",
    "EmbeddingInfo": "store",
    "EngineError": "ingestion",
    "HOLDOUT": "store",
    "ImageError": "ingestion",
    "Input": "search",
    "License": "backbones",
    "MetadataError": "store",
    "NearPairs": "explore",
    "NeighborIndex": "search",
    "OnnxBackbone": "backbones",
    "Preprocess": "backbones",
    "QueryResult": "search",
    "RAY_INSTALL_HINT": "ingestion",
    "RayCluster": "ingestion",
    "StoreInfo": "store",
    "StoreLockedError": "store",
    "Tile": "explore",
    "VIEWS": "backbones",
    "actor_layout": "ingestion",
    "backbone_from_description": "backbones",
    "check_predicate": "store",
    "connect_ray": "ingestion",
    "contact_sheet": "explore",
    "decode_image": "ingestion",
    "drop_column": "store",
    "embed_images": "search",
    "embedding_column": "backbones",
    "expand_views": "backbones",
    "find_images": "ingestion",
    "hash_bytes": "ingestion",
    "import_ray": "ingestion",
    "l2_normalize": "search",
    "list_views": "backbones",
    "load_thumbnail": "explore",
    "near_duplicate_pairs": "explore",
    "numpy_columns": "store",
    "read_metadata": "store",
    "read_table": "store",
    "register_view": "backbones",
    "resolve_runtime": "backbones",
    "runtime_for_column": "backbones",
    "self_join_index": "explore",
    "view_column": "backbones",
    "view_describe": "backbones",
    "with_runtime": "backbones",
    "write_ray_dataset": "store",
    "write_table": "store",
}

_getattr, __dir__ = lazy_names(__name__, _EXPORTS, _SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        home = f"embedstore.{_MOVED[name]}"
        warnings.warn(f"embedstore.{name} moved to {home}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)
    return _getattr(name)


if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore._device import resolve_device
    from embedstore._registry import Registry, RegistryError
    from embedstore._results import Result, jsonable
    from embedstore.backbones._backbones import (
        BACKBONES,
        Backbone,
        BackboneError,
        create_backbone,
        list_backbones,
        register_backbone,
    )
    from embedstore.explore._duplicates import DuplicatesResult, find_duplicates
    from embedstore.explore._map import MapResult, map_store
    from embedstore.ingestion._ingest import ingest
    from embedstore.ingestion._options import IngestError, IngestSummary
    from embedstore.ingestion._uploads import add_images
    from embedstore.search._embed import embed_inputs, read_inputs
    from embedstore.search._indexes import build_index
    from embedstore.search._lookup import LookupResult, lookup
    from embedstore.search._resident import Resident
    from embedstore.search._text_search import search_text
    from embedstore.search._texts import embed_texts
    from embedstore.store._check import check
    from embedstore.store._folds import SplitSummary, split
    from embedstore.store._lance import StoreError
    from embedstore.store._store import Store, connect, default_store_path

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneError",
    "DuplicatesResult",
    "IngestError",
    "IngestSummary",
    "LookupResult",
    "MapResult",
    "Registry",
    "RegistryError",
    "Resident",
    "Result",
    "SplitSummary",
    "Store",
    "StoreError",
    "add_images",
    "build_index",
    "check",
    "connect",
    "create_backbone",
    "default_store_path",
    "embed_inputs",
    "embed_texts",
    "find_duplicates",
    "ingest",
    "jsonable",
    "list_backbones",
    "lookup",
    "map_store",
    "read_inputs",
    "register_backbone",
    "resolve_device",
    "search_text",
    "split",
]
