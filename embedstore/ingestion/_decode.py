"""Reading, hashing, decoding and preprocessing files, in DataLoader worker processes (the
local engine) or Ray tasks (:func:`decode_file`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from embedstore._images import (
    DEFAULT_MAX_BYTES,
    ImageError,
    decode_image,
    hash_bytes,
    read_bytes,
)
from embedstore.backbones._backbones import Backbone
from embedstore.backbones._preprocess import Preprocess
from embedstore.backbones._views import make_view


@dataclass
class _Work:
    path: str
    rel: str
    known_id: str | None


class _DecodeDataset(torch.utils.data.Dataset):
    """Reads, hashes, decodes and preprocesses one file per item (runs in worker processes)."""

    def __init__(
        self,
        work: list[_Work],
        preprocs: list[Preprocess],
        max_pixels: int,
        views: list[tuple[str, ...]] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.work, self.preprocs, self.max_pixels = work, preprocs, max_pixels
        self.views, self.max_bytes = views, max_bytes

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.work[i]
        return {
            "i": i,
            **decode_file(
                w.path,
                w.known_id,
                self.preprocs,
                self.max_pixels,
                self.views,
                max_bytes=self.max_bytes,
            ),
        }


def decode_file(
    path: str,
    known_id: str | None,
    preprocs: list[Preprocess],
    max_pixels: int,
    views: list[tuple[str, ...]] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Read, hash (unless ``known_id``), decode and preprocess one file: ``{"id", "arrays",
    "size", "bytes"}``, or ``{"error": reason}`` (the reason recorded for a skipped file).
    ``views[k]`` (embedstore.backbones._views) are made for ``preprocs[k]`` from the same decoded
    image: each preprocessing gives its main array, then one per view (:func:`_slot` finds them).
    What the decode workers of every engine run."""
    try:
        data = read_bytes(path, max_bytes)  # regular files only, at most max_bytes
        image_id = known_id or hash_bytes(data)
        im = decode_image(data, max_pixels)
        vs = views or [()] * len(preprocs)
        arrays = [
            a
            for p, pv in zip(preprocs, vs, strict=True)
            for a in (p(im), *(make_view(im, v, p) for v in pv))
        ]
        return {"id": image_id, "arrays": arrays, "size": im.size, "bytes": len(data)}
    except ImageError as e:
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - any decoder failure loses one file, not the run
        return {"error": f"cannot decode: {type(e).__name__}: {e}"}


def _slot(pre_views: list[tuple[str, ...]], k: int, view: str | None = None) -> int:
    """Where preprocessing ``k``'s main array (or its ``view``) is in :func:`decode_file`'s
    arrays."""
    start = sum(1 + len(v) for v in pre_views[:k])
    return start if view is None else start + 1 + pre_views[k].index(view)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [it for it in items if "error" not in it]
    n_pre = len(ok[0]["arrays"]) if ok else 0
    stacks = [torch.from_numpy(np.stack([it["arrays"][k] for it in ok])) for k in range(n_pre)]
    for it in ok:
        del it["arrays"]
    return {"ok": ok, "stacks": stacks, "errors": [it for it in items if "error" in it]}


def _default_workers() -> int:
    n = os.cpu_count() or 1
    return max(1, min(n - 1, 16))


def preprocessing_groups(
    models: list[Backbone], views: dict[str, list[str]]
) -> tuple[list[Preprocess], list[int], list[tuple[str, ...]]]:
    """The distinct preprocessings of ``models`` (each file is decoded once per
    preprocessing), each model's preprocessing slot, and the views each preprocessing makes
    (those of its models, in order)."""
    preprocs = list(dict.fromkeys(m.preprocess for m in models))
    pre_of = [preprocs.index(m.preprocess) for m in models]
    pre_views = [
        tuple(
            dict.fromkeys(
                v
                for m, q in zip(models, pre_of, strict=True)
                if q == k
                for v in views.get(m.name, [])
            )
        )
        for k in range(len(preprocs))
    ]
    return preprocs, pre_of, pre_views
