"""embedstore: frozen-backbone embeddings of image collections in a Lance store.

The bottom layer: it imports neither ``heads`` nor scikit-learn (``heads`` builds on it).

>>> import embedstore
>>> summary = embedstore.ingest("photos/", "my-store")          # embed a folder
>>> store = embedstore.connect("my-store")
>>> X, cols = store.embeddings("efficientnet-lite0", labelled=True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# What `embedstore.X` is, loaded on first use (PEP 562): `import embedstore` stays light, so
# the command line's --help and option parsing never import torch, Lance or transformers.
_EXPORTS: dict[str, tuple[str, str]] = {
    "BACKBONES": ("embedstore._backbones", "BACKBONES"),
    "Backbone": ("embedstore._backbones", "Backbone"),
    "BackboneError": ("embedstore._backbones", "BackboneError"),
    "License": ("embedstore._backbones", "License"),
    "backbone_from_description": ("embedstore._backbones", "backbone_from_description"),
    "create_backbone": ("embedstore._backbones", "create_backbone"),
    "embedding_column": ("embedstore._backbones", "embedding_column"),
    "list_backbones": ("embedstore._backbones", "list_backbones"),
    "register_backbone": ("embedstore._backbones", "register_backbone"),
    "resolve_device": ("embedstore._device", "resolve_device"),
    "DUPLICATE_THRESHOLD": ("embedstore._duplicates", "DEFAULT_THRESHOLD"),
    "DuplicateGroup": ("embedstore._duplicates", "DuplicateGroup"),
    "DuplicatePair": ("embedstore._duplicates", "DuplicatePair"),
    "DuplicatesResult": ("embedstore._duplicates", "DuplicatesResult"),
    "NearPairs": ("embedstore._duplicates", "NearPairs"),
    "find_duplicates": ("embedstore._duplicates", "find_duplicates"),
    "near_duplicate_pairs": ("embedstore._duplicates", "near_duplicate_pairs"),
    "self_join_index": ("embedstore._duplicates", "self_join_index"),
    "EmbeddedInputs": ("embedstore._embed", "EmbeddedInputs"),
    "Input": ("embedstore._embed", "Input"),
    "embed_images": ("embedstore._embed", "embed_images"),
    "embed_inputs": ("embedstore._embed", "embed_inputs"),
    "read_inputs": ("embedstore._embed", "read_inputs"),
    "SplitSummary": ("embedstore._folds", "SplitSummary"),
    "split": ("embedstore._folds", "split"),
    "ImageError": ("embedstore._images", "ImageError"),
    "decode_image": ("embedstore._images", "decode_image"),
    "find_images": ("embedstore._images", "find_images"),
    "hash_bytes": ("embedstore._images", "hash_bytes"),
    "build_index": ("embedstore._indexes", "build_index"),
    "IngestError": ("embedstore._ingest", "IngestError"),
    "IngestSummary": ("embedstore._ingest", "IngestSummary"),
    "ingest": ("embedstore._ingest", "ingest"),
    "LookupResult": ("embedstore._lookup", "LookupResult"),
    "QueryResult": ("embedstore._lookup", "QueryResult"),
    "lookup": ("embedstore._lookup", "lookup"),
    "MapResult": ("embedstore._map", "MapResult"),
    "map_store": ("embedstore._map", "map_store"),
    "MetadataError": ("embedstore._metadata", "MetadataError"),
    "read_metadata": ("embedstore._metadata", "read_metadata"),
    "OnnxBackbone": ("embedstore._onnx", "OnnxBackbone"),
    "resolve_runtime": ("embedstore._onnx", "resolve_runtime"),
    "runtime_for_column": ("embedstore._onnx", "runtime_for_column"),
    "with_runtime": ("embedstore._onnx", "with_runtime"),
    "Preprocess": ("embedstore._preprocess", "Preprocess"),
    "RAY_INSTALL_HINT": ("embedstore._ray", "RAY_INSTALL_HINT"),
    "ActorLayout": ("embedstore._ray", "ActorLayout"),
    "EngineError": ("embedstore._ray", "EngineError"),
    "RayCluster": ("embedstore._ray", "RayCluster"),
    "actor_layout": ("embedstore._ray", "actor_layout"),
    "connect_ray": ("embedstore._ray", "connect_ray"),
    "import_ray": ("embedstore._ray", "import_ray"),
    "Registry": ("embedstore._registry", "Registry"),
    "RegistryError": ("embedstore._registry", "RegistryError"),
    "Resident": ("embedstore._resident", "Resident"),
    "Result": ("embedstore._results", "Result"),
    "jsonable": ("embedstore._results", "jsonable"),
    "NeighborIndex": ("embedstore._search", "NeighborIndex"),
    "l2_normalize": ("embedstore._search", "l2_normalize"),
    "Tile": ("embedstore._sheets", "Tile"),
    "contact_sheet": ("embedstore._sheets", "contact_sheet"),
    "load_thumbnail": ("embedstore._sheets", "load_thumbnail"),
    "ALWAYS_TRAIN": ("embedstore._store", "ALWAYS_TRAIN"),
    "HOLDOUT": ("embedstore._store", "HOLDOUT"),
    "CheckReport": ("embedstore._store", "CheckReport"),
    "EmbeddingInfo": ("embedstore._store", "EmbeddingInfo"),
    "Store": ("embedstore._store", "Store"),
    "StoreError": ("embedstore._store", "StoreError"),
    "StoreInfo": ("embedstore._store", "StoreInfo"),
    "StoreLockedError": ("embedstore._store", "StoreLockedError"),
    "check": ("embedstore._store", "check"),
    "check_predicate": ("embedstore._store", "check_predicate"),
    "connect": ("embedstore._store", "connect"),
    "default_store_path": ("embedstore._store", "default_store_path"),
    "drop_column": ("embedstore._store", "drop_column"),
    "numpy_columns": ("embedstore._store", "numpy_columns"),
    "read_table": ("embedstore._store", "read_table"),
    "write_ray_dataset": ("embedstore._store", "write_ray_dataset"),
    "write_table": ("embedstore._store", "write_table"),
    "AddedImages": ("embedstore._uploads", "AddedImages"),
    "add_images": ("embedstore._uploads", "add_images"),
    "collect_orphan_uploads": ("embedstore._uploads", "collect_orphan_uploads"),
    "VIEWS": ("embedstore._views", "VIEWS"),
    "expand_views": ("embedstore._views", "expand_views"),
    "list_views": ("embedstore._views", "list_views"),
    "register_view": ("embedstore._views", "register_view"),
    "view_column": ("embedstore._views", "view_column"),
    "view_describe": ("embedstore._views", "view_describe"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'embedstore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore._backbones import (
        BACKBONES,
        Backbone,
        BackboneError,
        License,
        backbone_from_description,
        create_backbone,
        embedding_column,
        list_backbones,
        register_backbone,
    )
    from embedstore._device import resolve_device
    from embedstore._duplicates import DEFAULT_THRESHOLD as DUPLICATE_THRESHOLD
    from embedstore._duplicates import (
        DuplicateGroup,
        DuplicatePair,
        DuplicatesResult,
        NearPairs,
        find_duplicates,
        near_duplicate_pairs,
        self_join_index,
    )
    from embedstore._embed import EmbeddedInputs, Input, embed_images, embed_inputs, read_inputs
    from embedstore._folds import SplitSummary, split
    from embedstore._images import ImageError, decode_image, find_images, hash_bytes
    from embedstore._indexes import build_index
    from embedstore._ingest import IngestError, IngestSummary, ingest
    from embedstore._lookup import LookupResult, QueryResult, lookup
    from embedstore._map import MapResult, map_store
    from embedstore._metadata import MetadataError, read_metadata
    from embedstore._onnx import OnnxBackbone, resolve_runtime, runtime_for_column, with_runtime
    from embedstore._preprocess import Preprocess
    from embedstore._ray import (
        RAY_INSTALL_HINT,
        ActorLayout,
        EngineError,
        RayCluster,
        actor_layout,
        connect_ray,
        import_ray,
    )
    from embedstore._registry import Registry, RegistryError
    from embedstore._resident import Resident
    from embedstore._results import Result, jsonable
    from embedstore._search import NeighborIndex, l2_normalize
    from embedstore._sheets import Tile, contact_sheet, load_thumbnail
    from embedstore._store import (
        ALWAYS_TRAIN,
        HOLDOUT,
        CheckReport,
        EmbeddingInfo,
        Store,
        StoreError,
        StoreInfo,
        StoreLockedError,
        check,
        check_predicate,
        connect,
        default_store_path,
        drop_column,
        numpy_columns,
        read_table,
        write_ray_dataset,
        write_table,
    )
    from embedstore._uploads import AddedImages, add_images, collect_orphan_uploads
    from embedstore._views import (
        VIEWS,
        expand_views,
        list_views,
        register_view,
        view_column,
        view_describe,
    )

__all__ = [
    "RAY_INSTALL_HINT",
    "ActorLayout",
    "EngineError",
    "RayCluster",
    "actor_layout",
    "connect_ray",
    "import_ray",
    "numpy_columns",
    "read_table",
    "write_ray_dataset",
    "write_table",
    "DUPLICATE_THRESHOLD",
    "DuplicateGroup",
    "DuplicatePair",
    "DuplicatesResult",
    "MapResult",
    "NearPairs",
    "Tile",
    "contact_sheet",
    "find_duplicates",
    "load_thumbnail",
    "map_store",
    "near_duplicate_pairs",
    "self_join_index",
    "AddedImages",
    "Resident",
    "add_images",
    "collect_orphan_uploads",
    "ALWAYS_TRAIN",
    "BACKBONES",
    "HOLDOUT",
    "Backbone",
    "BackboneError",
    "License",
    "CheckReport",
    "EmbeddedInputs",
    "EmbeddingInfo",
    "ImageError",
    "IngestError",
    "IngestSummary",
    "Input",
    "LookupResult",
    "MetadataError",
    "NeighborIndex",
    "OnnxBackbone",
    "Preprocess",
    "QueryResult",
    "Registry",
    "RegistryError",
    "Result",
    "SplitSummary",
    "Store",
    "StoreError",
    "StoreLockedError",
    "StoreInfo",
    "backbone_from_description",
    "build_index",
    "check",
    "check_predicate",
    "connect",
    "create_backbone",
    "decode_image",
    "default_store_path",
    "drop_column",
    "embed_images",
    "embed_inputs",
    "embedding_column",
    "find_images",
    "hash_bytes",
    "ingest",
    "jsonable",
    "l2_normalize",
    "list_backbones",
    "lookup",
    "read_inputs",
    "read_metadata",
    "register_backbone",
    "resolve_device",
    "resolve_runtime",
    "runtime_for_column",
    "split",
    "with_runtime",
    "VIEWS",
    "expand_views",
    "list_views",
    "register_view",
    "view_column",
    "view_describe",
]
