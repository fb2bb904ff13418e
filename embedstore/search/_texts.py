"""Texts to embeddings for an image column: its text tower, through the store's text cache.

Each distinct text is looked up in the store's cache (``Store.text_cache``, keyed by the
tower's identity and the SHA-256 of the text); only the texts not cached run through the text
tower, which loads on the first miss (a call whose texts are all cached loads no model), and
what it computes is cached under the store's write lock.

>>> T = embed_texts("flowers", ["a photo of a daisy", "a photo of a rose"], "clip-vit-b-16")
>>> T.shape, T.dtype                                  # (2, 512) float32, unit rows
>>> res = text_embeddings("flowers", ["a photo of a daisy"], "clip-vit-b-16")
>>> res.cached, res.computed                          # (1, 0): served from the cache
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore._results import Result
from embedstore.backbones._text import TEXT_BATCH, TextTower, check_texts, text_tower
from embedstore.backbones._text_spec import TextTowerRef, text_tower_ref
from embedstore.errors import BadInput
from embedstore.store._lance import StoreLockedError
from embedstore.store._meta import EmbeddingInfo
from embedstore.store._store import Store, connect


@dataclass
class TextEmbeddings(Result):
    """Embeddings of ``texts`` in the text space of an image column.

    ``embeddings``: float32 ``(N, dim)``, row ``i`` for ``texts[i]``, unit length;
    ``model``: the tower's identity in the cache; ``cached`` / ``computed``: distinct texts
    served from the cache / run through the tower; ``stored``: whether the computed ones were
    cached (False when another process was writing the store).
    """

    texts: list[str]
    column: str
    backbone: str
    model: str
    dim: int
    cached: int
    computed: int
    stored: bool
    embeddings: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["embeddings"] = self.embeddings.tolist()
        return out


def text_embeddings(
    store: str | os.PathLike | Store | None,
    texts: Sequence[str],
    column: str | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int = TEXT_BATCH,
    tower: TextTower | None = None,
) -> TextEmbeddings:
    """Embed ``texts`` with the text tower of the image column ``column`` (a backbone name or
    column; None: the store's only one), reusing and filling the store's text cache.

    ``tower``: a text tower already built (kept resident by a caller); it must be the column's.
    Raises ``BackboneError`` (a ``BadInput``) when the column has no text tower.
    """
    st = store if isinstance(store, Store) else connect(store, create=False)
    info = st.resolve_backbone(column)
    texts = check_texts(texts)
    model, tower = _tower_for(info, tower, device)
    distinct = list(dict.fromkeys(texts))
    have = st.text_cache.get(model, distinct)
    missing = [t for t in distinct if t not in have]
    stored = True
    if missing:
        X = tower.encode(missing, batch_size=batch_size)  # (M, dim)
        have.update(zip(missing, X, strict=True))
        stored = _store(st, model, missing, X)
    dim = len(next(iter(have.values()))) if have else tower.dim
    E = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        E[i] = have[t]
    return TextEmbeddings(
        texts, info.column, info.backbone, model, dim,
        cached=len(distinct) - len(missing), computed=len(missing), stored=stored, embeddings=E,
    )  # fmt: skip


def embed_texts(
    store: str | os.PathLike | Store | None,
    texts: Sequence[str],
    column: str | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int = TEXT_BATCH,
    tower: TextTower | None = None,
) -> np.ndarray:
    """float32 ``(N, dim)`` embeddings of ``texts`` (unit rows) in the text space of the image
    column ``column``: :func:`text_embeddings`' array. Compare them with the column's stored
    embeddings through ``text_tower(info).project_images(X)`` (the identity for SigLIP).

    >>> T = embed_texts("flowers", ["a photo of a daisy"], "clip-vit-b-16")
    """
    return text_embeddings(
        store, texts, column, device=device, batch_size=batch_size, tower=tower
    ).embeddings


def _tower_for(
    info: EmbeddingInfo, tower: TextTower | None, device: str | torch.device
) -> tuple[str, TextTower]:
    """The cache identity of the column's text tower, and the tower: built here (lazily, on
    ``device``), or the caller's once checked to be the column's (kept on its device unless
    ``device`` names one)."""
    ref = text_tower_ref(info.describe)
    if ref is None or tower is None:
        tower = text_tower(info)  # ref None: raises the one-line "has no text tower" error
        return tower.identity, tower.to(resolve_device(device))
    if not _same_model(tower.ref, ref):
        raise BadInput(
            f"text tower {tower.identity} is not the one of column {info.column} "
            f"({ref.identity}); build it with text_tower(info)"
        )
    if device != "auto":
        tower.to(resolve_device(device))
    return ref.identity, tower


def _same_model(a: TextTowerRef, b: TextTowerRef) -> bool:
    """The same kind and weights (by hash where both know it, else by where they come from):
    a tower must never fill the cache under another model's identity."""
    if a.kind != b.kind:
        return False
    if a.weights_sha256 and b.weights_sha256:
        return a.weights_sha256 == b.weights_sha256
    return a.source == b.source


def _store(st: Store, model: str, texts: list[str], X: np.ndarray) -> bool:
    """Cache the computed embeddings; another process writing the store only skips caching."""
    try:
        st.text_cache.put(model, texts, X)
        return True
    except (StoreLockedError, PermissionError) as e:
        warnings.warn(
            f"{st.path}: text embeddings not cached ({str(e).splitlines()[0]})", stacklevel=3
        )
        return False
