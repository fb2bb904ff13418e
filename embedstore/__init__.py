"""embedstore: frozen-backbone embeddings of image collections in a Lance store.

>>> import embedstore
>>> summary = embedstore.ingest("photos/", "my-store")          # embed a folder
>>> store = embedstore.connect("my-store")
>>> X, cols = store.embeddings("efficientnet-lite0", where="label IS NOT NULL")
"""

from embedstore._backbones import (
    Backbone,
    BackboneError,
    backbone_from_description,
    create_backbone,
    embedding_column,
    list_backbones,
    register_backbone,
)
from embedstore._folds import ALWAYS_TRAIN, HOLDOUT, split
from embedstore._images import ImageError, decode_image, find_images, hash_bytes
from embedstore._ingest import IngestError, ingest, resolve_device
from embedstore._lookup import build_index, lookup
from embedstore._metadata import MetadataError, read_metadata
from embedstore._preprocess import Preprocess
from embedstore._store import EmbeddingInfo, Store, StoreError, connect, default_store_path

__all__ = [
    "ALWAYS_TRAIN",
    "HOLDOUT",
    "split",
    "Backbone",
    "backbone_from_description",
    "build_index",
    "lookup",
    "BackboneError",
    "EmbeddingInfo",
    "ImageError",
    "IngestError",
    "MetadataError",
    "Preprocess",
    "Store",
    "StoreError",
    "connect",
    "create_backbone",
    "decode_image",
    "default_store_path",
    "embedding_column",
    "find_images",
    "hash_bytes",
    "ingest",
    "list_backbones",
    "read_metadata",
    "register_backbone",
    "resolve_device",
]
