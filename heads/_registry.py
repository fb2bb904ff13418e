"""The head registry (one :class:`embedstore.Registry`, verb-first names; see STYLE.md)."""

from __future__ import annotations

from embedstore import Registry

HEADS: Registry = Registry(
    "head",
    builtin=(
        "heads.estimators._neural",
        "heads.estimators._knn",
        "heads.estimators._lda",
        "heads.estimators._zeroshot",
    ),
)

register_head = HEADS.register
list_heads = HEADS.list
create_head = HEADS.create
head_class = HEADS.get
