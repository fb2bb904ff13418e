"""The head registry: one module-level dict, verb-first names (see STYLE.md)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

_HEADS: dict[str, Callable[..., Any]] = {}


def register_head(name: str, factory: Callable[..., Any] | None = None):
    """Register ``factory`` (a class or function returning a head) under ``name``.

    Usable as a decorator: ``@register_head("mlp")``.
    """

    def _add(f: Callable[..., Any]) -> Callable[..., Any]:
        _HEADS[name] = f
        return f

    return _add(factory) if factory is not None else _add


def list_heads(pattern: str = "*") -> list[str]:
    """Names of the registered heads matching a glob ``pattern``."""
    _load_builtin()
    return sorted(n for n in _HEADS if fnmatch.fnmatch(n, pattern))


def create_head(name: str, **kwargs: Any) -> Any:
    """Build the head registered as ``name`` with keyword settings ``kwargs``."""
    _load_builtin()
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(list_heads())}")
    return _HEADS[name](**kwargs)


def head_class(name: str) -> Any:
    _load_builtin()
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(list_heads())}")
    return _HEADS[name]


def _load_builtin() -> None:
    # Importing the modules registers their heads; done lazily to keep `import heads` light.
    import importlib

    for mod in ("heads._neural", "heads._knn"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet while the package grows
            if e.name != mod:
                raise
