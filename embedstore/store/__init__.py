"""The store: one Lance dataset of images, their metadata and embeddings (the only package
that imports lance or writes SQL text and Lance schemas), file records, check and repair, folds,
metadata files, prediction tables and Ray fragment I/O.

>>> from embedstore.store import connect
>>> X, cols = connect("my-store").embeddings(None, labelled=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedstore._lazy import lazy_names

_EXPORTS: dict[str, tuple[str, str]] = {
    "ALWAYS_TRAIN": ("embedstore.store._store", "ALWAYS_TRAIN"),
    "HOLDOUT": ("embedstore.store._store", "HOLDOUT"),
    "CheckReport": ("embedstore.store._store", "CheckReport"),
    "EmbeddingInfo": ("embedstore.store._store", "EmbeddingInfo"),
    "Store": ("embedstore.store._store", "Store"),
    "StoreError": ("embedstore.store._store", "StoreError"),
    "StoreInfo": ("embedstore.store._store", "StoreInfo"),
    "StoreLockedError": ("embedstore.store._store", "StoreLockedError"),
    "check": ("embedstore.store._store", "check"),
    "check_predicate": ("embedstore.store._store", "check_predicate"),
    "connect": ("embedstore.store._store", "connect"),
    "default_store_path": ("embedstore.store._store", "default_store_path"),
    "drop_column": ("embedstore.store._store", "drop_column"),
    "numpy_columns": ("embedstore.store._store", "numpy_columns"),
    "read_table": ("embedstore.store._store", "read_table"),
    "write_table": ("embedstore.store._store", "write_table"),
    "write_ray_dataset": ("embedstore.store._store", "write_ray_dataset"),
    "image_table": ("embedstore.store._store", "image_table"),
    "write_image_fragments": ("embedstore.store._store", "write_image_fragments"),
    "SplitSummary": ("embedstore.store._folds", "SplitSummary"),
    "split": ("embedstore.store._folds", "split"),
    "MetadataError": ("embedstore.store._metadata", "MetadataError"),
    "read_metadata": ("embedstore.store._metadata", "read_metadata"),
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore.store._folds import SplitSummary, split
    from embedstore.store._metadata import MetadataError, read_metadata
    from embedstore.store._store import (
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
        image_table,
        numpy_columns,
        read_table,
        write_image_fragments,
        write_ray_dataset,
        write_table,
    )

__all__ = [
    "ALWAYS_TRAIN",
    "CheckReport",
    "EmbeddingInfo",
    "HOLDOUT",
    "MetadataError",
    "SplitSummary",
    "Store",
    "StoreError",
    "StoreInfo",
    "StoreLockedError",
    "check",
    "check_predicate",
    "connect",
    "default_store_path",
    "drop_column",
    "image_table",
    "numpy_columns",
    "read_metadata",
    "read_table",
    "split",
    "write_image_fragments",
    "write_ray_dataset",
    "write_table",
]
