"""embedstore: frozen-backbone embeddings of image collections in a Lance store.

The bottom layer: it imports neither ``heads`` nor scikit-learn (``heads`` builds on it).

>>> import embedstore
>>> summary = embedstore.ingest("photos/", "my-store")          # embed a folder
>>> store = embedstore.connect("my-store")
>>> X, cols = store.embeddings("efficientnet-lite0", labelled=True)
"""

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
from embedstore._uploads import AddedImages, add_images
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
