"""Text priors for heads: prompts for class names and the class weights an image-text model's
text tower makes of them (what ``heads train --head zeroshot`` starts from).

``heads.text.DEFAULT_TEMPLATES``, ``class_prompts``, ``read_lines``, ``read_templates`` and
``read_names`` are torch-free (the command line reads its files with them);
``class_texts`` and ``ClassTexts`` load on first use.

>>> from heads.text import class_texts
>>> ct = class_texts("flowers", ["daisy", "rose"], "clip-vit-b-16")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heads.text._prompts import (
    DEFAULT_TEMPLATES,
    check_names,
    check_templates,
    class_name,
    class_prompts,
    read_lines,
    read_names,
    read_templates,
)

_LAZY = {
    "ClassTexts": "heads.text._class_texts",
    "class_texts": "heads.text._class_texts",
    "coarse_from_column": "heads.text._class_texts",
    "names_from_columns": "heads.text._class_texts",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'heads.text' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from heads.text._class_texts import (
        ClassTexts,
        class_texts,
        coarse_from_column,
        names_from_columns,
    )

__all__ = [
    "DEFAULT_TEMPLATES",
    "ClassTexts",
    "check_names",
    "check_templates",
    "class_name",
    "class_prompts",
    "class_texts",
    "coarse_from_column",
    "names_from_columns",
    "read_lines",
    "read_names",
    "read_templates",
]
