"""``config.json`` of a run or an ensemble as versioned dataclasses, written and read here only.

:class:`RunConfig` (``"kind": "run"``) and :class:`EnsembleConfig` (``"kind": "ensemble"``)
hold the same keys the run format has had since format 1, with the same checksum rule
(``config_sha256`` over every other key, ``heads.runs._rundir``); a key an older run lacks takes its
default, a key this version does not know is kept in ``extras`` and written back unchanged.
Both still read by key (``cfg["classes"]``, ``cfg.get("head")``) for code written against the
dict.

>>> cfg = read_run_config("runs/mlp")   # RunConfig or EnsembleConfig, checksum verified
>>> cfg.classes, cfg.store.path
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from heads._errors import HeadsError
from heads.runs._rundir import RUN_FORMAT, read_config, write_config


@dataclass
class StoreRef:
    """The store a run was trained on: its path, version and row filter."""

    path: str
    version: int | None = None
    where: str | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_C = TypeVar("_C", bound="_Config")


@dataclass
class _Config(Mapping):
    """What runs and ensembles share; ``to_dict()`` is ``config.json`` (without its checksum)."""

    KIND: ClassVar[str] = ""
    OPTIONAL: ClassVar[tuple[str, ...]] = ()  # keys written only when not None

    classes: list[Any]
    store: StoreRef
    unknown_label: str = "unknown"
    observation_column: str | None = None
    poison_column: str | None = None
    poisonous_of_class: list[bool] | None = None
    created_at: str = field(default_factory=_now)
    format: int = RUN_FORMAT
    config_sha256: str | None = None  # as read; recomputed on writing
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.KIND

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND}
        for f in dataclasses.fields(self):
            if f.name in ("extras", "config_sha256"):
                continue
            v = getattr(self, f.name)
            if v is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = dataclasses.asdict(v) if isinstance(v, StoreRef) else v
        out.update(self.extras)
        if self.config_sha256 is not None:
            out["config_sha256"] = self.config_sha256
        return out

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any]) -> _C:
        names = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        kw = {k: v for k, v in d.items() if k in names}
        kw["store"] = StoreRef(**d.get("store", {"path": ""}))
        extras = {k: v for k, v in d.items() if k not in names and k != "kind"}
        return cls(**kw, extras=extras)

    # reading by key, as when the config was a dict
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass
class RunConfig(_Config):
    """``config.json`` of one trained head (``heads train``; a fold, or the refit)."""

    KIND: ClassVar[str] = "run"
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "backbones",
        "refit",
        "temperature",
        "taxonomy",
        "label_rank",
        "class_thresholds",
        "pseudo",
        "distilled",
    )

    head: str = ""
    head_config: dict[str, Any] = field(default_factory=dict)
    train_counts: list[int] = field(default_factory=list)
    backbone: dict[str, Any] = field(default_factory=dict)  # name, column, dim, describe
    backbones: list[dict[str, Any]] | None = None  # several backbones, concatenated in order
    fold: int | None = None  # None: the refit on every fold
    metadata: list[str] = field(default_factory=list)
    metadata_encoder: dict[str, Any] | None = None
    aux_targets: list[str] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    fit_seconds: float = 0.0
    knn_top1_by_k: dict[str, float] | None = None
    versions: dict[str, str] = field(
        default_factory=lambda: {"torch": torch.__version__, "numpy": np.__version__}
    )
    weights_sha256: dict[str, str] = field(default_factory=dict)
    detector: dict[str, Any] | None = None  # {"name", "config"}
    views: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "tta": []})
    refit: dict[str, Any] | None = None  # the refit's epochs and the folds' best epochs
    temperature: float | None = None  # the refit's: the mean of the folds'
    # the store's taxonomy when it was trained (its labels only; embedstore.store.Taxonomy)
    taxonomy: dict[str, Any] | None = None
    label_rank: str | None = None  # `heads train --rank genus`: the classes are that rank's
    # unknown thresholds per predicted class (heads.estimators._class_thresholds), or None
    class_thresholds: dict[str, Any] | None = None
    # ``--pseudo-label``: the round it trained in, how many pseudo-labelled rows, their fraction
    # and weight, how those were chosen, the unlabelled rows' predicate (rows: pseudo.parquet)
    pseudo: dict[str, Any] | None = None
    # ``heads distill``: the teacher, its checksum, temperature, label weight, rows trained on
    distilled: dict[str, Any] | None = None

    @property
    def backbone_list(self) -> list[dict[str, Any]]:
        """Every backbone the head reads, in order (one for most runs)."""
        return list(self.backbones or [self.backbone])

    @property
    def tta_views(self) -> list[str]:
        return list((self.views or {}).get("tta") or [])


@dataclass
class EnsembleConfig(_Config):
    """``config.json`` of an ensemble: its members (relative paths) and how they combine."""

    KIND: ClassVar[str] = "ensemble"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("validation", "class_thresholds")

    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    average: str = "logits"
    calibrated: bool = False
    temperatures: list[float] = field(default_factory=list)
    member_sha256: list[str | None] = field(default_factory=list)
    validation: list[str] | None = None  # the runs whose predictions are its validation part
    # unknown thresholds per predicted class on the members' margins, or None
    class_thresholds: dict[str, Any] | None = None


def parse_config(d: Mapping[str, Any]) -> RunConfig | EnsembleConfig:
    """The typed config of a ``config.json`` already read and verified."""
    kind = d.get("kind")
    if kind == "ensemble":
        return EnsembleConfig.from_dict(d)
    if kind == "run":
        return RunConfig.from_dict(d)
    raise HeadsError(f"config.json: unknown kind {kind!r} (a run or an ensemble)")


def read_run_config(run_dir: str | os.PathLike) -> RunConfig | EnsembleConfig:
    """Read, verify (format, checksum) and type ``run_dir/config.json``."""
    return parse_config(read_config(run_dir))


def write_run_config(run_dir: str | os.PathLike, config: RunConfig | EnsembleConfig) -> None:
    """Write ``config.json`` with its checksum (the config is written last: it marks a run
    complete)."""
    d = config.to_dict()
    d.pop("config_sha256", None)
    write_config(Path(run_dir), d)
