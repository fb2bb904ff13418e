"""A :class:`~heads.runs.Predictor` that answers as the model it wraps: the base of predictors
that change how the answers are computed, not what they are (``CompiledPredictor``, the
service's dynamic batching). Every member of the protocol is spelled out, so ``isinstance(x,
Predictor)`` holds for a wrapper as for the model (Python 3.12 checks protocols statically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heads.runs._config import EnsembleConfig, RunConfig


class WrappedPredictor:
    """Everything of ``model`` (a ``heads.Predictor``); subclasses override what they speed up.

    >>> class Timed(WrappedPredictor):
    ...     def logits_and_scores(self, embeddings, table=None):
    ...         return super().logits_and_scores(embeddings, table)
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.path: Path = model.path

    @property
    def config(self) -> RunConfig | EnsembleConfig:
        return self.model.config

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    @property
    def train_counts(self) -> np.ndarray:
        return self.model.train_counts

    @property
    def columns(self) -> list[str]:
        return self.model.columns

    @property
    def store_path(self) -> str:
        return self.model.store_path

    @property
    def unknown_label(self) -> str:
        return self.model.unknown_label

    @property
    def threshold(self) -> float | None:
        return self.model.threshold

    def backbone_columns(self) -> dict[str, dict[str, Any]]:
        return self.model.backbone_columns()

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        return self.model.logits(embeddings, table)

    def unknown_scores(
        self,
        embeddings: dict[str, np.ndarray],
        logits: np.ndarray,
        table: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        return self.model.unknown_scores(embeddings, logits, table)

    def thresholds_for(self, pred: np.ndarray) -> np.ndarray | None:
        return self.model.thresholds_for(pred)

    def is_unknown(self, scores: np.ndarray, pred: np.ndarray | None = None) -> np.ndarray:
        return self.model.is_unknown(scores, pred)

    def logits_and_scores(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return self.model.logits_and_scores(embeddings, table)
