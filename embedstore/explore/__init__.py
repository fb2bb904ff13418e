"""Looking at a store: near-duplicates and leakage, a 2-D map, thumbnails and contact sheets.

>>> from embedstore.explore import find_duplicates
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedstore._lazy import lazy_names

_EXPORTS: dict[str, tuple[str, str]] = {
    "DUPLICATE_THRESHOLD": ("embedstore.explore._duplicates", "DEFAULT_THRESHOLD"),
    "DuplicateGroup": ("embedstore.explore._duplicates", "DuplicateGroup"),
    "DuplicatePair": ("embedstore.explore._duplicates", "DuplicatePair"),
    "DuplicatesResult": ("embedstore.explore._duplicates", "DuplicatesResult"),
    "NearPairs": ("embedstore.explore._duplicates", "NearPairs"),
    "find_duplicates": ("embedstore.explore._duplicates", "find_duplicates"),
    "near_duplicate_pairs": ("embedstore.explore._duplicates", "near_duplicate_pairs"),
    "self_join_index": ("embedstore.explore._duplicates", "self_join_index"),
    "MapResult": ("embedstore.explore._map", "MapResult"),
    "map_store": ("embedstore.explore._map", "map_store"),
    "Tile": ("embedstore.explore._sheets", "Tile"),
    "contact_sheet": ("embedstore.explore._sheets", "contact_sheet"),
    "load_thumbnail": ("embedstore.explore._sheets", "load_thumbnail"),
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore.explore._duplicates import DEFAULT_THRESHOLD as DUPLICATE_THRESHOLD
    from embedstore.explore._duplicates import (
        DuplicateGroup,
        DuplicatePair,
        DuplicatesResult,
        NearPairs,
        find_duplicates,
        near_duplicate_pairs,
        self_join_index,
    )
    from embedstore.explore._map import MapResult, map_store
    from embedstore.explore._sheets import Tile, contact_sheet, load_thumbnail

__all__ = [
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
]
