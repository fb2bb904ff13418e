"""Loaded predictors: a :class:`Run` or an :class:`Ensemble` behind one :class:`Predictor` contract.

Evaluate, predict and the service use only what :class:`Predictor` declares, so an ensemble
works wherever a run does. ``load(path, device="auto")`` picks the class from the directory's
config and puts the model on ``device``, whatever device it was trained on: the device a run
records is a training setting, not a requirement for using it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from embedstore import resolve_device
from embedstore.backbones import view_column, view_describe
from heads._data import concat_backbones
from heads._errors import HeadsError
from heads._registry import head_class
from heads.estimators._class_thresholds import ClassThresholds
from heads.estimators._encoders import MetadataEncoder
from heads.estimators._unknown import detector_from_state
from heads.runs._config import EnsembleConfig, RunConfig, read_run_config
from heads.runs._rundir import load_tensors


@runtime_checkable
class Predictor(Protocol):
    """What a trained model offers its users (runs and ensembles alike).

    ``logits`` and ``unknown_scores`` take ``{embedding column: (N, D) float32}`` and a table
    ``{metadata column: (N,) array}`` holding :attr:`columns`; ``unknown_scores`` compares with
    :attr:`threshold` (score >= threshold: known), or with the threshold of each image's
    predicted class where the run has per-class thresholds (``is_unknown(scores, pred)``).
    """

    path: Path

    @property
    def config(self) -> RunConfig | EnsembleConfig: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def train_counts(self) -> np.ndarray: ...

    @property
    def columns(self) -> list[str]: ...

    @property
    def store_path(self) -> str: ...

    @property
    def unknown_label(self) -> str: ...

    @property
    def threshold(self) -> float | None: ...

    def backbone_columns(self) -> dict[str, dict[str, Any]]: ...

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> np.ndarray: ...

    def unknown_scores(
        self,
        embeddings: dict[str, np.ndarray],
        logits: np.ndarray,
        table: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None: ...

    def thresholds_for(self, pred: np.ndarray) -> np.ndarray | None: ...

    def is_unknown(self, scores: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray: ...

    def logits_and_scores(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]: ...


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class _Loaded:
    """What runs and ensembles share: config-backed properties."""

    path: Path
    config: RunConfig | EnsembleConfig

    @property
    def store_path(self) -> str:
        return self.config.store.path

    @property
    def unknown_label(self) -> str:
        return self.config.unknown_label

    @property
    def class_thresholds(self) -> ClassThresholds | None:
        """The unknown thresholds per predicted class (``heads train --class-thresholds``)."""
        d = self.config.class_thresholds
        return None if d is None else ClassThresholds.from_dict(d)

    @property
    def threshold(self) -> float | None:
        raise NotImplementedError

    def thresholds_for(self, pred: np.ndarray) -> np.ndarray | None:
        """``(N,)`` the unknown threshold of each image's predicted class ``pred`` (the global
        :attr:`threshold` without per-class ones; None without a detector)."""
        t = self.threshold
        if t is None:
            return None
        ct = self.class_thresholds
        return np.full(len(pred), t) if ct is None else ct.for_pred(pred)


class Run(_Loaded):
    """A trained head loaded from its run directory (no pickle), ready to predict on ``device``."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "auto") -> None:
        self.path = Path(path)
        config = read_run_config(self.path)
        if not isinstance(config, RunConfig):
            raise HeadsError(
                f"{self.path}: is an {config.kind}, not a run; load it with heads.load"
            )
        self.config: RunConfig = config
        self.device = str(resolve_device(device))
        sha = config.weights_sha256
        tensors = load_tensors(self.path, "head.safetensors", sha.get("head.safetensors"))
        try:
            cls = head_class(config.head)
            self.head = cls.from_state(_on_device(config.head_config, self.device), tensors)
        except (KeyError, RuntimeError, ValueError) as e:
            raise HeadsError(
                f"{self.path}: weights do not fit the config ({str(e).splitlines()[0]}); "
                "retrain the run"
            ) from e
        enc = config.metadata_encoder
        self.encoder = MetadataEncoder.from_state(enc) if enc else None
        self.detector = None
        if config.detector:
            dt = load_tensors(self.path, "detector.safetensors", sha.get("detector.safetensors"))
            dconf = _on_device(config.detector["config"], self.device)
            self.detector = detector_from_state(dconf, dt)

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @property
    def train_counts(self) -> np.ndarray:
        return np.asarray(self.config.train_counts, dtype=np.float64)

    @property
    def columns(self) -> list[str]:
        """Store columns this run reads besides the embedding (its metadata fields)."""
        return list(self.config.metadata or [])

    @property
    def tta_views(self) -> list[str]:
        """The augmented views whose logits :meth:`logits` averages with the main embedding's
        (test-time augmentation; ``heads train --tta``), in order; empty without TTA."""
        return self.config.tta_views

    @property
    def backbones(self) -> list[dict[str, Any]]:
        """The backbones the head reads, in order (``heads train --backbone a --backbone b``)."""
        return self.config.backbone_list

    def head_input(self, embeddings: dict[str, np.ndarray]) -> np.ndarray:
        """The head's input ``(N, D)`` from ``{column: (N, Di)}``: the backbone's embedding, or
        several backbones' each L2-normalised and concatenated, as at training."""
        bs = self.backbones
        if len(bs) == 1:
            return embeddings[bs[0]["column"]]
        return concat_backbones([embeddings[b["column"]] for b in bs])

    def backbone_columns(self) -> dict[str, dict[str, Any]]:
        """The embedding columns this run reads: its backbones', then (with TTA) one per view,
        described so that ``embed_inputs`` makes the same view of a new image."""
        out = {c["column"]: c for c in self.backbones}
        for v in self.tta_views:
            for b in self.backbones:
                c = view_column(b["column"], v)
                out[c] = {
                    **b,
                    "name": f"{b['name']} {v} view",
                    "column": c,
                    "view": v,
                    "describe": view_describe(b["describe"], b["column"], v),
                }
        return out

    def head_inputs(self, embeddings: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The head's inputs: the main one (:meth:`head_input`), then (with TTA) each view's."""
        return [self.head_input(embeddings)] + [
            self.head_input(
                {b["column"]: embeddings[view_column(b["column"], v)] for b in self.backbones}
            )
            for v in self.tta_views
        ]

    def fields(self, n: int, table: dict[str, np.ndarray] | None) -> list[np.ndarray] | None:
        """The encoded metadata blocks of ``n`` rows (None for a run without metadata)."""
        if self.encoder is None:
            return None
        none = np.array([None] * n, dtype=object)
        tab = {c: table[c] if table is not None and c in table else none for c in self.columns}
        return self.encoder.transform(tab)

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Logits (N, C) from ``{column: (N, D)}`` embeddings and a table of metadata columns;
        with TTA the mean of the logits of the main embedding and of each view's."""
        inputs = self.head_inputs(embeddings)
        kw = {}
        if self.encoder is not None:
            kw["fields"] = self.fields(len(inputs[0]), table)
        if not self.tta_views:
            return np.asarray(self.head.logits(inputs[0], **kw), dtype=np.float32)
        z = [np.asarray(self.head.logits(x, **kw), np.float64) for x in inputs]
        return np.mean(z, axis=0).astype(np.float32)  # (N, C)

    def unknown_scores(
        self,
        embeddings: dict[str, np.ndarray],
        logits: np.ndarray,
        table: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """Detector scores (N,) from the embeddings and this run's own ``logits``."""
        if self.detector is None:
            return None
        X = self.head_input(embeddings)
        return np.asarray(self.detector.score_samples(X, logits=logits), dtype=np.float64)

    @property
    def threshold(self) -> float | None:
        return (
            None if self.detector is None else float(getattr(self.detector, "threshold_", np.nan))
        )

    def logits_and_scores(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits (N, C), unknown scores (N,) or None)``: what a prediction reads."""
        z = self.logits(embeddings, table)
        return z, self.unknown_scores(embeddings, z, table)

    def is_unknown(self, scores: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` bool: the detector's decision for scores from :meth:`unknown_scores`; with
        the predicted classes ``pred`` and per-class thresholds, each class's own."""
        if self.detector is None:
            return np.zeros(len(scores), dtype=bool)
        if pred is not None and self.config.class_thresholds is not None:
            t = self.thresholds_for(pred)
            assert t is not None  # a detector, so a threshold
            return np.asarray(scores, dtype=np.float64) < t
        return self.detector.predict_scores(scores) == -1


class Ensemble(_Loaded):
    """Members loaded from an ensemble directory; combines their logits and unknown scores."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "auto") -> None:
        self.path = Path(path)
        config = read_run_config(self.path)
        if not isinstance(config, EnsembleConfig):
            raise HeadsError(f"{self.path}: is a run, not an ensemble; load it with heads.load")
        self.config: EnsembleConfig = config
        paths = [resolve_member(self.path, m) for m in config.members]
        for p, want in zip(paths, config.member_sha256 or [None] * len(paths), strict=True):
            have = read_run_config(p).config_sha256
            if want is not None and have != want:
                raise HeadsError(
                    f"{self.path}: member {p} changed since the ensemble was made "
                    "(it was retrained or replaced); "
                    "re-create the ensemble with `heads ensemble ... --overwrite`"
                )
        self.members = [load(p, device) for p in paths]
        self.weights = np.asarray(config.weights, dtype=np.float64)
        self.average: str = config.average
        self.temperatures = config.temperatures if config.calibrated else None

    @property
    def classes(self) -> list[str]:
        return self.members[0].classes

    @property
    def train_counts(self) -> np.ndarray:
        return np.mean([m.train_counts for m in self.members], axis=0)

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for m in self.members for c in m.columns))

    def backbone_columns(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for m in self.members:
            out.update(m.backbone_columns())
        return out

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        return self.combine_members([m.logits(embeddings, table) for m in self.members])

    def combine_members(self, parts: list[np.ndarray]) -> np.ndarray:
        """The ensemble's logits ``(N, C)`` from its members' (in order)."""
        if self.temperatures is not None:  # calibrated members: log-probabilities at temperature T
            parts = [
                log_softmax(z.astype(np.float64) / t)
                for z, t in zip(parts, self.temperatures, strict=True)
            ]
        return combine(parts, self.weights, self.average)

    def unknown_scores(
        self,
        embeddings: dict[str, np.ndarray],
        logits: np.ndarray,
        table: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """Mean over members with a detector of (score - member threshold); threshold 0.

        Each member scores with its own logits, computed from the same metadata ``table``.
        """
        return self.member_scores(
            embeddings,
            [
                m.logits(embeddings, table) if m.threshold is not None else None
                for m in self.members
            ],
            table,
        )

    def member_scores(
        self,
        embeddings: dict[str, np.ndarray],
        parts: list[np.ndarray | None],
        table: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """:meth:`unknown_scores` from the members' own logits ``parts`` (in order)."""
        return self.combine_scores(
            [
                None if m.threshold is None or z is None else m.unknown_scores(embeddings, z, table)
                for m, z in zip(self.members, parts, strict=True)
            ],
            parts,
        )

    def combine_scores(
        self, scores: list[np.ndarray | None], parts: list[np.ndarray | None]
    ) -> np.ndarray | None:
        """The ensemble's unknown scores from its members' detector scores and logits (in
        order): the mean of each member's margin over its threshold."""
        margins: list[np.ndarray] = []
        for m, s, z in zip(self.members, scores, parts, strict=True):
            if m.threshold is None:
                continue
            assert s is not None and z is not None  # given for every member with a threshold
            t = m.thresholds_for(z.argmax(axis=1))  # its own class's where it has them
            assert t is not None  # a member with a threshold has a detector
            margins.append(s - t)
        return None if not margins else np.mean(margins, axis=0)

    def logits_and_scores(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits (N, C), unknown scores (N,) or None)``, each member's head run once."""
        parts = [m.logits(embeddings, table) for m in self.members]
        return self.combine_members(parts), self.member_scores(embeddings, list(parts), table)

    @property
    def threshold(self) -> float | None:
        return 0.0 if any(m.threshold is not None for m in self.members) else None

    def is_unknown(self, scores: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` bool: the mean margin over members' thresholds is below 0 (below the
        predicted class's own threshold with ``pred`` and per-class thresholds)."""
        s = np.asarray(scores, dtype=np.float64)
        if pred is not None and self.config.class_thresholds is not None:
            t = self.thresholds_for(pred)
            assert t is not None  # per-class thresholds exist only with a detector
            return s < t
        return s < 0.0


def load(path: str | os.PathLike, device: str | torch.device = "auto") -> Run | Ensemble:
    """Load a run or an ensemble directory onto ``device`` (``auto``, ``cpu``, ``cuda[:N]``,
    ``mps``).

    >>> model = heads.load("runs/mlp", device="cpu")
    >>> model.logits({"emb_efficientnet_lite0": X})
    """
    if isinstance(read_run_config(path), EnsembleConfig):
        return Ensemble(path, device)
    return Run(path, device)


def combine(parts: list[np.ndarray], weights: np.ndarray, average: str) -> np.ndarray:
    """Weighted mean of members' logits, or of their probabilities (as log-probabilities)."""
    w = weights / weights.sum()
    if average == "probs":
        p = sum(
            wi * np.exp(log_softmax(z.astype(np.float64))) for wi, z in zip(w, parts, strict=True)
        )
        return np.log(np.maximum(p, 1e-30)).astype(np.float32)
    return sum(wi * z.astype(np.float64) for wi, z in zip(w, parts, strict=True)).astype(np.float32)


def resolve_member(base: Path, member: str) -> Path:
    p = Path(member)
    return p if p.is_absolute() else (base / p).resolve()


def _on_device(config: dict[str, Any], device: str) -> dict[str, Any]:
    """``config`` with its recorded ``device`` setting (top level or under ``params``) replaced."""
    out = dict(config)
    if "device" in out:
        out["device"] = device
    if isinstance(out.get("params"), dict) and "device" in out["params"]:
        out["params"] = {**out["params"], "device": device}
    return out
