"""Classification losses for the heads, one small family per module, in one registry.

Every registered loss takes the same keyword settings (``num_classes``, ``class_counts``,
``class_weight``, ``reduction``) plus its own, so a trainer can build any of them alike::

    loss = create_loss("seesaw", num_classes=C, class_counts=counts, class_weight=None)
    loss(logits, target)  # logits (B, C), target (B,) long -> scalar

``loss.classifier`` (``"linear"`` or ``"cosine"``) and ``loss.subcenters`` say which last layer
the head must have; ``loss.inference_logits(outputs)`` gives the logits to predict with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from embedstore import Registry, RegistryError
from heads.losses._base import Loss
from heads.losses.composite import CompositeLoss

__all__ = [
    "LOSSES",
    "CompositeLoss",
    "Loss",
    "RegistryError",
    "create_loss",
    "list_losses",
    "register_loss",
]

L = TypeVar("L", bound=Loss)

LOSSES: Registry = Registry(
    "loss",
    "losses",
    builtin=(
        "heads.losses.cross_entropy",
        "heads.losses.focal",
        "heads.losses.seesaw",
        "heads.losses.arcface",
        "heads.losses.logit_adjusted",
    ),
)


def register_loss(name: str) -> Callable[[type[L]], type[L]]:
    """Class decorator registering a :class:`Loss` subclass as ``name``: ``@register_loss("ce")``.

    Its ``__init__`` should take keyword-only ``num_classes``, ``class_counts``, ``class_weight``
    and ``reduction`` like :class:`Loss`, plus its own settings.
    """

    def _add(cls: type[L]) -> type[L]:
        if not (isinstance(cls, type) and issubclass(cls, Loss)):
            raise TypeError(f"register_loss({name!r}) expects a Loss subclass, got {cls!r}")
        return LOSSES.register(name, cls)

    return _add


def list_losses(pattern: str = "*") -> list[str]:
    """Names of the registered losses matching a glob ``pattern``, sorted."""
    return LOSSES.list(pattern)


def create_loss(name: str, **kwargs: Any) -> Loss:
    """Build the loss registered as ``name`` with keyword settings ``kwargs``.

    An unknown name, an unknown setting or a missing required one (``class_counts`` for
    ``"seesaw"`` and ``"logit-adjusted"``) raises ValueError naming the valid choices.
    """
    cls = LOSSES.get(name)
    sig = inspect.signature(cls)
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"loss {name!r}: {e}; valid settings: {', '.join(sig.parameters)}"
        ) from None
    return cls(**kwargs)
