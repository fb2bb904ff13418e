"""The settings of one ingest, shared by every engine (:class:`IngestOptions`), what it
returns (:class:`IngestSummary`), its error, and ``INGEST_ENGINES``, where engines other than
the local one register."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from embedstore._images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from embedstore._registry import Registry
from embedstore._results import Result
from embedstore.errors import BadInput
from embedstore.types import EmbDtype, Engine, Pooling, Runtime

if TYPE_CHECKING:
    from embedstore.backbones._backbones import Backbone

HASH_TASKS_OVER = 20_000  # engine "ray": files to hash above which the cluster hashes them

# Reasons of files skipped without being read (they do not make an ingest fail).
_NOT_READ = ("unsupported format", "not a regular file")


class IngestError(BadInput):
    """The ingest cannot run at all (bad folder, bad options); the message says what to do."""


# Engines other than "local": a function ``(images_dir, store, options: IngestOptions)`` that
# returns an IngestSummary. "ray" registers itself when embedstore.ingestion._ray_ingest is
# imported (on first use).
INGEST_ENGINES: Registry = Registry("ingest engine", builtin=("embedstore.ingestion._ray_ingest",))


@dataclass
class IngestSummary(Result):
    """What an ingest did; ``ok`` is False only when none of the folder's images was usable."""

    root: str
    store: str
    files_found: int
    new_images: int
    already_stored: int
    duplicates: int
    embedded: dict[str, int]
    skipped: int
    skipped_by_reason: dict[str, int]
    skipped_file: str
    warnings: list[str]
    images_in_store: int
    store_version: int
    device: str
    runtimes: dict[str, str]  # backbone -> what ran it: "onnx" or "torch"
    seconds: float
    images_per_s: float | None
    ok: bool
    engine: str = "local"
    pruned: int = 0  # image rows removed by prune (their files are gone or hold other bytes)
    views: dict[str, dict[str, int]] = field(default_factory=dict)  # backbone -> view -> embedded
    taxonomy: dict[str, int] | None = None  # --taxonomy: names per rank, finest first


@dataclass(frozen=True)
class IngestOptions:
    """Every setting of one ingest but the folder and the store, as :func:`embedstore.ingest`
    takes them (its keyword arguments, same names and defaults): built once and handed to the
    engine, so the local and the Ray engine read the same settings.

    >>> IngestOptions(backbones=("dinov2-small",), views=("flip",), engine="ray")
    """

    backbones: Sequence[str] = ("efficientnet-lite0",)
    pooling: Pooling = "cls"
    metadata: str | os.PathLike | None = None
    label_column: str | None = None
    join_column: str | None = None
    batch_size: int = 64
    device: str = "auto"
    runtime: Runtime = "auto"
    workers: int | None = None  # local engine: decode processes (Ray places its tasks itself)
    dtype: EmbDtype = "float16"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    prune: bool = False
    commit_every: int = 512
    progress: bool = True
    backbone_objects: Sequence[Backbone] | None = None  # local engine: ready-made backbones
    engine: Engine = "local"
    ray_address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    views: Sequence[str] | str | None = None
    hash_tasks_over: int = HASH_TASKS_OVER  # engine "ray": see HASH_TASKS_OVER
    taxonomy: str | os.PathLike | None = None  # a taxonomy file set on the store afterwards
