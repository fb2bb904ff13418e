"""Nearest neighbours: ``NeighborIndex`` (faiss or torch), saved indexes, ``Resident`` (a
store's embeddings held in memory), files to embeddings (``embed_inputs``), texts to
embeddings through the store's text cache (``embed_texts``), ``lookup`` and ``search_text``
(stored images found by words, or by words and an image).

>>> from embedstore.search import NeighborIndex, l2_normalize
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedstore._lazy import lazy_names

_EXPORTS: dict[str, tuple[str, str]] = {
    "NeighborIndex": ("embedstore.search._search", "NeighborIndex"),
    "as_float32": ("embedstore.search._search", "as_float32"),
    "l2_normalize": ("embedstore.search._search", "l2_normalize"),
    "Resident": ("embedstore.search._resident", "Resident"),
    "LookupResult": ("embedstore.search._lookup", "LookupResult"),
    "QueryResult": ("embedstore.search._lookup", "QueryResult"),
    "lookup": ("embedstore.search._lookup", "lookup"),
    "build_index": ("embedstore.search._indexes", "build_index"),
    "EmbeddedInputs": ("embedstore.search._embed", "EmbeddedInputs"),
    "Input": ("embedstore.search._embed", "Input"),
    "embed_images": ("embedstore.search._embed", "embed_images"),
    "embed_inputs": ("embedstore.search._embed", "embed_inputs"),
    "read_inputs": ("embedstore.search._embed", "read_inputs"),
    "TextEmbeddings": ("embedstore.search._texts", "TextEmbeddings"),
    "embed_texts": ("embedstore.search._texts", "embed_texts"),
    "text_embeddings": ("embedstore.search._texts", "text_embeddings"),
    "TextQuery": ("embedstore.search._text_search", "TextQuery"),
    "search_text": ("embedstore.search._text_search", "search_text"),
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore.search._embed import (
        EmbeddedInputs,
        Input,
        embed_images,
        embed_inputs,
        read_inputs,
    )
    from embedstore.search._indexes import build_index
    from embedstore.search._lookup import LookupResult, QueryResult, lookup
    from embedstore.search._resident import Resident
    from embedstore.search._search import NeighborIndex, as_float32, l2_normalize
    from embedstore.search._text_search import TextQuery, search_text
    from embedstore.search._texts import TextEmbeddings, embed_texts, text_embeddings

__all__ = [
    "EmbeddedInputs",
    "Input",
    "LookupResult",
    "NeighborIndex",
    "QueryResult",
    "Resident",
    "TextEmbeddings",
    "TextQuery",
    "as_float32",
    "build_index",
    "embed_images",
    "embed_inputs",
    "embed_texts",
    "l2_normalize",
    "lookup",
    "read_inputs",
    "search_text",
    "text_embeddings",
]
