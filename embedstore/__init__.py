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
    backbone_from_description,
    create_backbone,
    embedding_column,
    list_backbones,
    register_backbone,
)
from embedstore._device import resolve_device
from embedstore._embed import EmbeddedInputs, Input, embed_images, embed_inputs, read_inputs
from embedstore._folds import SplitSummary, split
from embedstore._images import ImageError, decode_image, find_images, hash_bytes
from embedstore._indexes import build_index
from embedstore._ingest import IngestError, IngestSummary, ingest
from embedstore._lookup import LookupResult, QueryResult, lookup
from embedstore._metadata import MetadataError, read_metadata
from embedstore._preprocess import Preprocess
from embedstore._registry import Registry, RegistryError
from embedstore._results import Result, jsonable
from embedstore._search import NeighborIndex, l2_normalize
from embedstore._store import (
    ALWAYS_TRAIN,
    HOLDOUT,
    EmbeddingInfo,
    Store,
    StoreError,
    StoreInfo,
    check_predicate,
    connect,
    default_store_path,
)

__all__ = [
    "ALWAYS_TRAIN",
    "BACKBONES",
    "HOLDOUT",
    "Backbone",
    "BackboneError",
    "EmbeddedInputs",
    "EmbeddingInfo",
    "ImageError",
    "IngestError",
    "IngestSummary",
    "Input",
    "LookupResult",
    "MetadataError",
    "NeighborIndex",
    "Preprocess",
    "QueryResult",
    "Registry",
    "RegistryError",
    "Result",
    "SplitSummary",
    "Store",
    "StoreError",
    "StoreInfo",
    "backbone_from_description",
    "build_index",
    "check_predicate",
    "connect",
    "create_backbone",
    "decode_image",
    "default_store_path",
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
    "split",
]
