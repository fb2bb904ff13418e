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
    "ALWAYS_TRAIN": ("embedstore.store._lance", "ALWAYS_TRAIN"),
    "HOLDOUT": ("embedstore.store._lance", "HOLDOUT"),
    "StoreError": ("embedstore.store._lance", "StoreError"),
    "StoreLockedError": ("embedstore.store._lance", "StoreLockedError"),
    "numpy_columns": ("embedstore.store._lance", "numpy_columns"),
    "CheckReport": ("embedstore.store._check", "CheckReport"),
    "check": ("embedstore.store._check", "check"),
    "EmbeddingInfo": ("embedstore.store._meta", "EmbeddingInfo"),
    "StoreInfo": ("embedstore.store._info", "StoreInfo"),
    "check_predicate": ("embedstore.store._sql", "check_predicate"),
    "unlabelled_predicates": ("embedstore.store._sql", "unlabelled_predicates"),
    "Store": ("embedstore.store._store", "Store"),
    "connect": ("embedstore.store._store", "connect"),
    "default_store_path": ("embedstore.store._store", "default_store_path"),
    "drop_column": ("embedstore.store._store", "drop_column"),
    "read_table": ("embedstore.store._outputs", "read_table"),
    "write_table": ("embedstore.store._outputs", "write_table"),
    "write_ray_dataset": ("embedstore.store._outputs", "write_ray_dataset"),
    "image_table": ("embedstore.store._fragments", "image_table"),
    "write_image_fragments": ("embedstore.store._fragments", "write_image_fragments"),
    "SplitSummary": ("embedstore.store._folds", "SplitSummary"),
    "split": ("embedstore.store._folds", "split"),
    "TextCache": ("embedstore.store._text_cache", "TextCache"),
    "text_sha256": ("embedstore.store._text_cache", "text_sha256"),
    "MetadataError": ("embedstore.store._metadata", "MetadataError"),
    "read_metadata": ("embedstore.store._metadata", "read_metadata"),
    "Taxonomy": ("embedstore.store._taxonomy", "Taxonomy"),
    "TaxonomyError": ("embedstore.store._taxonomy", "TaxonomyError"),
    "TaxonomySummary": ("embedstore.store._taxonomy", "TaxonomySummary"),
    "read_taxonomy": ("embedstore.store._taxonomy", "read_taxonomy"),
    "read_taxonomy_file": ("embedstore.store._taxonomy", "read_taxonomy_file"),
    "set_taxonomy": ("embedstore.store._taxonomy", "set_taxonomy"),
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore.store._check import CheckReport, check
    from embedstore.store._folds import SplitSummary, split
    from embedstore.store._fragments import image_table, write_image_fragments
    from embedstore.store._info import StoreInfo
    from embedstore.store._lance import (
        ALWAYS_TRAIN,
        HOLDOUT,
        StoreError,
        StoreLockedError,
        numpy_columns,
    )
    from embedstore.store._meta import EmbeddingInfo
    from embedstore.store._metadata import MetadataError, read_metadata
    from embedstore.store._outputs import read_table, write_ray_dataset, write_table
    from embedstore.store._sql import check_predicate, unlabelled_predicates
    from embedstore.store._store import Store, connect, default_store_path, drop_column
    from embedstore.store._taxonomy import (
        Taxonomy,
        TaxonomyError,
        TaxonomySummary,
        read_taxonomy,
        read_taxonomy_file,
        set_taxonomy,
    )
    from embedstore.store._text_cache import TextCache, text_sha256

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
    "Taxonomy",
    "TaxonomyError",
    "TaxonomySummary",
    "TextCache",
    "check",
    "check_predicate",
    "connect",
    "default_store_path",
    "drop_column",
    "image_table",
    "numpy_columns",
    "read_metadata",
    "read_table",
    "read_taxonomy",
    "read_taxonomy_file",
    "set_taxonomy",
    "split",
    "text_sha256",
    "unlabelled_predicates",
    "write_image_fragments",
    "write_ray_dataset",
    "write_table",
]
