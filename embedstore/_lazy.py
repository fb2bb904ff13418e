"""Names that load on first use (PEP 562), shared by ``embedstore`` and its public subpackages.

Each public package lists ``_EXPORTS`` (public name -> defining module and attribute), the same
imports under ``TYPE_CHECKING`` (for type checkers and IDEs) and a literal ``__all__``;
``tests/test_layering.py`` checks that the three agree. Importing a package therefore costs
nothing: the command line's ``--help`` never imports torch, Lance or transformers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(
    package: str, exports: dict[str, tuple[str, str]], submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: an exported name is imported
    from its module on first use, a listed submodule is imported when first read."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module, attr = exports[name]
            value = getattr(importlib.import_module(module), attr)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports) | set(submodules))

    return __getattr__, __dir__
