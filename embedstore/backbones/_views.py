"""Augmented views of an image, embedded beside the main embedding (multi-view embeddings).

A frozen backbone's one embedding per image loses the augmentation a fine-tuned model sees.
A *view* is a deterministic transform of the decoded image made before the backbone's own
preprocessing: ``flip`` (mirror left-right), ``crop_tl`` ... ``crop_c`` (the four corner crops
and the centre crop, each ``CROP_SCALE`` of the side of what the main view sees, resized to the
backbone input). Names may be groups: ``crops5`` is the five crops. Heads train on the views
as augmentation and predict with test-time augmentation (the mean of the views' logits).

Register more with :func:`register_view`; a view is a function ``(image, preprocess) ->
uint8 (3, H, W)``, the same array the main view's :class:`~embedstore.Preprocess` gives.

>>> expand_views(["flip", "crops5"])
['flip', 'crop_tl', 'crop_tr', 'crop_bl', 'crop_br', 'crop_c']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from embedstore._registry import Registry
from embedstore.backbones._preprocess import _RESAMPLE, Preprocess
from embedstore.store._lance import VIEW_SEP  # a view's column: <main column>__<view>

CROP_SCALE = 0.875  # side of a crop view, as a fraction of the main view's side

ViewFn = Callable[[Image.Image, Preprocess], np.ndarray]
VIEWS: Registry[ViewFn] = Registry("view")
VIEW_GROUPS: dict[str, tuple[str, ...]] = {
    "crops5": ("crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"),
}


def register_view(name: str, fn: ViewFn | None = None, *, replace: bool = False):
    """Register a view ``fn(image, preprocess) -> uint8 (3, crop_px, crop_px)``; a decorator too."""
    if VIEW_SEP in name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"view name {name!r}: use lower-case letters, digits and single '_'")
    return VIEWS.register(name, fn, replace=replace)


def list_views() -> list[str]:
    """Registered view names, then the group names (``crops5``)."""
    return [*VIEWS.list(), *VIEW_GROUPS]


def expand_views(names: Iterable[str] | str | None) -> list[str]:
    """View names with groups expanded, in order, without repeats; ValueError naming the valid
    ones for an unknown name. A string is split on commas (``"flip,crops5"``)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[str] = []
    for raw in names:
        n = raw.strip().lower()
        if not n:
            continue
        members = VIEW_GROUPS.get(n, (n,))
        for m in members:
            if m not in VIEWS:
                raise ValueError(f"unknown view {raw!r}; valid: {', '.join(list_views())}")
            if m not in out:
                out.append(m)
    return out


def view_column(column: str, view: str) -> str:
    """The store column holding ``view`` of the main embedding ``column``."""
    return f"{column}{VIEW_SEP}{view}"


def view_describe(describe: dict, column: str, view: str) -> dict:
    """A view column's description: the main column's (what reproduces the backbone) plus the
    view and what it is a view of."""
    spec: dict[str, Any] = {"view": view, "view_of": column}
    if view.startswith("crop_"):
        spec["view_scale"] = CROP_SCALE
    return {**{k: v for k, v in describe.items() if k != "views"}, **spec}


def make_view(im: Image.Image, view: str, preprocess: Preprocess) -> np.ndarray:
    """``view`` of the decoded RGB image ``im`` as the backbone input: uint8 (3, H, W)."""
    return VIEWS.get(view)(im, preprocess)


def main_box(size: tuple[int, int], p: Preprocess) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) of the original image that ``p``'s main view shows."""
    w, h = size
    if p.resize_mode == "exact":
        bw, bh = w * p.crop_px / p.resize_px, h * p.crop_px / p.resize_px
    else:
        s = p.resize_px / min(w, h)
        bw, bh = min(w, p.crop_px / s), min(h, p.crop_px / s)
    left, top = (w - bw) / 2, (h - bh) / 2
    return left, top, left + bw, top + bh


def _crop(fx: float, fy: float) -> ViewFn:
    """A crop of ``CROP_SCALE`` of the main view's box, placed at fractions ``fx``, ``fy`` of the
    slack (0: left/top, 1: right/bottom), resized straight to the input size."""

    def view(im: Image.Image, p: Preprocess) -> np.ndarray:
        l0, t0, r0, b0 = main_box(im.size, p)
        cw, ch = (r0 - l0) * CROP_SCALE, (b0 - t0) * CROP_SCALE
        left, top = l0 + fx * (r0 - l0 - cw), t0 + fy * (b0 - t0 - ch)
        out = im.resize(
            (p.crop_px, p.crop_px), _RESAMPLE[p.resample], box=(left, top, left + cw, top + ch)
        )
        return np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1))

    return view


register_view("flip", lambda im, p: p(ImageOps.mirror(im)))
register_view("crop_tl", _crop(0.0, 0.0))
register_view("crop_tr", _crop(1.0, 0.0))
register_view("crop_bl", _crop(0.0, 1.0))
register_view("crop_br", _crop(1.0, 1.0))
register_view("crop_c", _crop(0.5, 0.5))


__all__ = [
    "CROP_SCALE",
    "VIEWS",
    "VIEW_GROUPS",
    "expand_views",
    "list_views",
    "make_view",
    "register_view",
    "view_column",
    "view_describe",
]
