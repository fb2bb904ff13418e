"""The bottom layer's option types (devices, poolings, runtimes, engines, indexes): one place each.

Each string choice is a ``Literal`` with its tuple of values beside it (for ``click.Choice``
and for messages); :func:`check_choice` validates one with a message that lists the valid values.
Devices are the one open-ended choice (``cuda:N``): :data:`DEVICE_PATTERN` and
:func:`check_device` validate their spelling, :func:`embedstore.resolve_device` their presence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal, get_args

from embedstore.errors import BadInput

# --- devices: "auto", "cpu", "cuda", "cuda:N", "mps"
Device = str
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N", "mps")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")

# --- backbones and the store
Pooling = Literal["cls", "mean", "cls+mean"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
# Image files ingest reads: larger images are skipped as possible decompression bombs (PIL's
# own default limit, ~0.25 GB of RGB), larger files unread ("file too large").
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 100_000_000
EmbDtype = Literal["float16", "float32"]
EMB_DTYPES: tuple[str, ...] = get_args(EmbDtype)
# What runs a backbone's forward pass: "auto" is ONNX Runtime on the CPU for backbones it runs
# faster (efficientnet-lite0), torch otherwise; "onnx-int8" (opt-in, CPU) quantises a
# transformer's matrix multiplies to int8; see embedstore.backbones._onnx.resolve_runtime.
Runtime = Literal["auto", "torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# Where ingest and batch prediction run: this process ("local") or a Ray cluster ("ray", the
# optional extra `pip install 'embedstore[ray]'`; embedstore._ray).
Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)

# --- nearest-neighbour search
IndexKind = Literal["exact", "ivf", "hnsw", "auto"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
LookupIndex = Literal["auto", "exact", "ivf", "hnsw"]
LOOKUP_INDEXES: tuple[str, ...] = get_args(LookupIndex)
SearchBackend = Literal["auto", "faiss", "torch"]
SEARCH_BACKENDS: tuple[str, ...] = get_args(SearchBackend)
# Text search blending an image with the words: the text's share of the query (0: the image
# alone, 1: the text alone), one default for the library, the command line and the service
TEXT_WEIGHT = 0.5

# --- looking at the data (embedstore map)
MapMethod = Literal["auto", "umap", "pca"]
MAP_METHODS: tuple[str, ...] = get_args(MapMethod)


def check_choice(value: str, choices: Iterable[str], option: str) -> str:
    """``value`` if it is one of ``choices``, else BadInput naming ``option`` and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise BadInput(f"unknown {option} {value!r}; valid: {', '.join(choices)}")
    return value


def check_device(value: str) -> str:
    """``value`` if it is spelled as a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        raise BadInput(f"invalid device {value!r}; use one of {', '.join(DEVICE_CHOICES)}")
    return value
