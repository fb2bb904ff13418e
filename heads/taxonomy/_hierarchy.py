"""A run's hierarchy: how it answers at every rank of the store's taxonomy and when it falls
back to a coarser one. ``RUN/hierarchy.json`` (written by :func:`heads.taxonomy.fit_hierarchy`,
which ``heads train`` runs when the store has a taxonomy) holds the tree of the run's classes,
the temperature that calibrates its probabilities, where each coarser rank's probabilities
come from (the fine ones summed up the tree, or a run trained at that rank, whichever was more
accurate out-of-fold) and the fallback thresholds. It records the run's config checksum (and
each rank run's), so a retrained run does not use stale thresholds.

>>> h = load_hierarchy("runs/mlp")
>>> P = h.rank_probs(logits)                          # [(N, species), (N, genera), ...]
>>> answered, pred, conf = h.decide(P)                # answered: (N,) rank, -1 none confident
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heads._errors import HeadsError
from heads.runs._loaded import Predictor, load, log_softmax
from heads.taxonomy._fallback import RankThresholds, answered_rank
from heads.taxonomy._tree import Tree

HIERARCHY_FILE = "hierarchy.json"
HIERARCHY_FORMAT = 1
_CACHE: dict[tuple[str, int, str | None], Hierarchy] = {}
_CACHE_SIZE = 8


@dataclass
class RankSource:
    """Where one coarser rank's probabilities come from: ``"rollup"`` (the fine ones summed up
    the tree) or ``"run"`` (a run trained at that rank, ``heads train --rank``), and the
    out-of-fold top-1 of each candidate that chose it."""

    rank: str
    source: str = "rollup"
    run: str | None = None
    run_sha256: str | None = None
    temperature: float = 1.0  # the rank run's
    oof_top1: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))


class Hierarchy:
    """A run's ``hierarchy.json``, loaded: its :class:`Tree`, temperature, rank sources and
    fallback thresholds; rank runs are loaded on first use."""

    def __init__(self, d: dict[str, Any], path: Path | None = None) -> None:
        if d.get("format") != HIERARCHY_FORMAT:
            raise HeadsError(
                f"{path}: hierarchy format {d.get('format')!r}, this version reads "
                f"{HIERARCHY_FORMAT}; refit it with `heads hierarchy RUN`"
            )
        self.path = path
        self.tree = Tree.from_dict(d["tree"])
        self.temperature = float(d.get("temperature", 1.0))
        self.sources = [RankSource(**s) for s in d.get("sources", [])]
        self.thresholds = [RankThresholds.from_dict(t) for t in d.get("thresholds", [])]
        self.target = d.get("target")
        self.min_count = d.get("min_count")
        self.bound = d.get("bound", "none")
        self.run_sha256 = d.get("run_sha256")
        self.oof = d.get("oof") or {}
        self._models: dict[str, Predictor] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": HIERARCHY_FORMAT,
            "run_sha256": self.run_sha256,
            "tree": self.tree.to_dict(),
            "temperature": self.temperature,
            "sources": [s.to_dict() for s in self.sources],
            "thresholds": [t.to_dict() for t in self.thresholds],
            "target": self.target,
            "min_count": self.min_count,
            "bound": self.bound,
            "oof": self.oof,
        }

    @property
    def ranks(self) -> list[str]:
        return self.tree.ranks

    def rank_runs(self, device: str = "auto") -> dict[str, Predictor]:
        """The runs some coarser ranks come from (``source == "run"``), loaded once."""
        for s in self.sources:
            if s.source == "run" and s.rank not in self._models:
                assert s.run is not None  # a "run" source names its run
                m = load(s.run, device)
                if s.run_sha256 is not None and m.config.config_sha256 != s.run_sha256:
                    raise HeadsError(
                        f"{s.run}: the {s.rank} run changed since the hierarchy was fitted; "
                        f"refit it with `heads hierarchy {self.path.parent if self.path else 'RUN'}"
                        f" --rank-run {s.rank}={s.run}`"
                    )
                self._models[s.rank] = m
        return dict(self._models)

    def backbone_columns(self, device: str = "auto") -> dict[str, dict[str, Any]]:
        """The embedding columns the rank runs read (beside the run's own)."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.rank_runs(device).values():
            out.update(m.backbone_columns())
        return out

    def rank_logits(
        self,
        embeddings: dict[str, np.ndarray],
        table: dict[str, np.ndarray] | None = None,
        device: str = "auto",
    ) -> dict[str, np.ndarray]:
        """``{rank: (N, G) logits}`` of the rank runs, for inputs already embedded."""
        return {r: m.logits(embeddings, table) for r, m in self.rank_runs(device).items()}

    def rank_probs(
        self, logits: np.ndarray, rank_logits: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Each rank's calibrated probabilities ``[(N, C), (N, G1), ...]`` from the run's
        logits (and, for ranks that come from a rank run, that run's logits)."""
        P = self.tree.rollup(softmax(logits, self.temperature))
        for r, s in enumerate(self.sources, start=1):
            if s.source != "run":
                continue
            if rank_logits is None or s.rank not in rank_logits:
                raise HeadsError(f"the {s.rank} run's logits are needed for rank {s.rank}")
            m = self.rank_runs()[s.rank]
            P[r] = align(softmax(rank_logits[s.rank], s.temperature), m.classes, self.tree.names[r])
        return P

    def decide(self, P: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(answered (N,), pred (N, R), conf (N, R))``: the finest rank whose confidence clears
        its threshold (-1: none), each rank's top class and its probability."""
        pred = np.stack([p.argmax(axis=1) for p in P], axis=1)
        conf = np.stack([p.max(axis=1) for p in P], axis=1)
        if not self.thresholds:
            raise HeadsError(
                f"{self.path}: no fallback thresholds; fit them with `heads hierarchy RUN`"
            )
        return answered_rank(conf, pred, self.thresholds, self.tree.names), pred, conf

    def write(self, run_dir: Path) -> Path:
        p = Path(run_dir) / HIERARCHY_FILE
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_json))
        os.replace(tmp, p)
        self.path = p
        return p


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def align(probs: np.ndarray, classes: list[str], names: list[str]) -> np.ndarray:
    """``probs`` over ``classes`` as columns ``names`` (a name the run lacks: 0), renormalised."""
    pos = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(probs), len(names)))
    for j, n in enumerate(names):
        if n in pos:
            out[:, j] = probs[:, pos[n]]
    total = out.sum(axis=1, keepdims=True)
    return out / np.where(total > 0, total, 1.0)


def load_hierarchy(model: Predictor | str | os.PathLike, *, required: bool = True) -> Any:
    """The :class:`Hierarchy` of a run or ensemble (a path or one loaded), checked against the
    run's config; None without ``hierarchy.json`` unless ``required``."""
    run = model if isinstance(model, Predictor) else load(model, "cpu")
    p = Path(run.path) / HIERARCHY_FILE
    if not p.is_file():
        if not required:
            return None
        raise HeadsError(
            f"{run.path}: the run has no hierarchy (no {HIERARCHY_FILE}); give its store a "
            f"taxonomy (`embedstore taxonomy FILE --store S` or `--rank COLUMN`) and fit one "
            f"with `heads hierarchy {run.path}`"
        )
    key = (str(p.resolve()), p.stat().st_mtime_ns, run.config.config_sha256)
    if key not in _CACHE:
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HeadsError(f"{p}: not valid JSON ({e}); refit with `heads hierarchy`") from e
        h = Hierarchy(d, p)
        if h.run_sha256 != run.config.config_sha256:
            raise HeadsError(
                f"{p}: fitted for another version of the run (it was retrained since); refit "
                f"it with `heads hierarchy {run.path}`"
            )
        while len(_CACHE) >= _CACHE_SIZE:  # a service serving many runs keeps the recent ones
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = h
    return _CACHE[key]
