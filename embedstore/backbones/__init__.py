"""Frozen backbones: the ``BACKBONES`` registry (efficientnet-lite0, Hugging Face models), their
runtimes (torch, ONNX Runtime fp32 / int8), preprocessing, test-time views, and the text towers
of image-text models (``TEXT_TOWERS``, ``text_tower``; ``convert_open_clip`` for BioCLIP 2).

>>> from embedstore.backbones import create_backbone
>>> bb = create_backbone("efficientnet-lite0")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedstore._lazy import lazy_names

_EXPORTS: dict[str, tuple[str, str]] = {
    "BACKBONES": ("embedstore.backbones._backbones", "BACKBONES"),
    "Backbone": ("embedstore.backbones._backbones", "Backbone"),
    "BackboneError": ("embedstore.backbones._backbones", "BackboneError"),
    "License": ("embedstore.backbones._backbones", "License"),
    "backbone_from_description": ("embedstore.backbones._backbones", "backbone_from_description"),
    "create_backbone": ("embedstore.backbones._backbones", "create_backbone"),
    "embedding_column": ("embedstore.backbones._backbones", "embedding_column"),
    "list_backbones": ("embedstore.backbones._backbones", "list_backbones"),
    "register_backbone": ("embedstore.backbones._backbones", "register_backbone"),
    "TEXT_TOWERS": ("embedstore.backbones._text", "TEXT_TOWERS"),
    "HFTextTower": ("embedstore.backbones._text", "HFTextTower"),
    "TextTower": ("embedstore.backbones._text", "TextTower"),
    "register_text_tower": ("embedstore.backbones._text", "register_text_tower"),
    "text_tower": ("embedstore.backbones._text", "text_tower"),
    "TextTowerRef": ("embedstore.backbones._text_spec", "TextTowerRef"),
    "text_tower_ref": ("embedstore.backbones._text_spec", "text_tower_ref"),
    "convert_open_clip": ("embedstore.backbones._open_clip", "convert_open_clip"),
    "OnnxBackbone": ("embedstore.backbones._onnx", "OnnxBackbone"),
    "resolve_runtime": ("embedstore.backbones._onnx", "resolve_runtime"),
    "runtime_for_column": ("embedstore.backbones._onnx", "runtime_for_column"),
    "with_runtime": ("embedstore.backbones._onnx", "with_runtime"),
    "Preprocess": ("embedstore.backbones._preprocess", "Preprocess"),
    "VIEWS": ("embedstore.backbones._views", "VIEWS"),
    "expand_views": ("embedstore.backbones._views", "expand_views"),
    "list_views": ("embedstore.backbones._views", "list_views"),
    "register_view": ("embedstore.backbones._views", "register_view"),
    "view_column": ("embedstore.backbones._views", "view_column"),
    "view_describe": ("embedstore.backbones._views", "view_describe"),
}

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs read
    from embedstore.backbones._backbones import (
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
    from embedstore.backbones._onnx import (
        OnnxBackbone,
        resolve_runtime,
        runtime_for_column,
        with_runtime,
    )
    from embedstore.backbones._open_clip import convert_open_clip
    from embedstore.backbones._preprocess import Preprocess
    from embedstore.backbones._text import (
        TEXT_TOWERS,
        HFTextTower,
        TextTower,
        register_text_tower,
        text_tower,
    )
    from embedstore.backbones._text_spec import TextTowerRef, text_tower_ref
    from embedstore.backbones._views import (
        VIEWS,
        expand_views,
        list_views,
        register_view,
        view_column,
        view_describe,
    )

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneError",
    "HFTextTower",
    "License",
    "OnnxBackbone",
    "Preprocess",
    "TEXT_TOWERS",
    "TextTower",
    "TextTowerRef",
    "VIEWS",
    "backbone_from_description",
    "convert_open_clip",
    "create_backbone",
    "embedding_column",
    "expand_views",
    "list_backbones",
    "list_views",
    "register_backbone",
    "register_text_tower",
    "register_view",
    "resolve_runtime",
    "runtime_for_column",
    "text_tower",
    "text_tower_ref",
    "view_column",
    "view_describe",
    "with_runtime",
]
