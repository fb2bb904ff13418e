"""The one registry helper behind every plug-in family (backbones, heads, losses, detectors,
metadata encoders): ``register`` / ``create`` / ``get`` / ``list``, with the same errors.

>>> HEADS = Registry("head", "heads")
>>> @HEADS.register("mlp")
... class MLP: ...
>>> HEADS.create("mlp")
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from embedstore.errors import BadInput

T = TypeVar("T")


class RegistryError(BadInput):
    """An unknown or clashing name; the message lists the valid names."""


class Registry(Generic[T]):
    """Names to factories (classes or functions) of one plug-in family.

    ``builtin`` lists modules imported on first use: importing them registers the built-in
    plug-ins, so that the package itself stays light to import.
    """

    def __init__(self, family: str, plural: str | None = None, builtin: tuple[str, ...] = ()):
        self.family = family
        self.plural = plural or family + "s"
        self._builtin = builtin
        self._loaded = not builtin
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator: ``@REG.register("mlp")``.

        Registering another object under a taken name is an error unless ``replace``.
        """

        def _add(o: T) -> T:
            old = self._items.get(name)
            if old is not None and old is not o and not replace and _qualname(old) != _qualname(o):
                raise RegistryError(
                    f"{self.family} name {name!r} is already registered to {_qualname(old)}"
                )
            self._items[name] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        """The factory registered as ``name``; RegistryError listing the valid names if none."""
        self._load()
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.family} {name!r}; valid {self.plural}: {', '.join(self.list())}"
            )
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the plug-in registered as ``name`` with keyword settings ``kwargs``."""
        factory: Any = self.get(name)  # T is a class or function: callable
        return factory(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob ``pattern``, sorted."""
        self._load()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._builtin:
                importlib.import_module(mod)


def _qualname(o: Any) -> str:
    return getattr(o, "__qualname__", type(o).__qualname__)


def lazy_factory(module: str, attr: str) -> Callable[..., Any]:
    """A factory that imports ``module.attr`` when first called (keeps imports light)."""

    def _make(**kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(**kwargs)

    return _make
