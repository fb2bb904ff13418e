"""What a neural head's rows are trained toward besides their label: a weight per row
(``fit(sample_weight=)``, e.g. pseudo-labelled rows counting less than labelled ones) and soft
targets (``fit(soft_targets=)``: another model's probabilities, matched at a temperature, as
in knowledge distillation: Hinton et al. 2015, "Distilling the knowledge in a neural network").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import _check_sample_weight

from heads.estimators._neural_net import _as_matrix


@dataclass
class RowTargets:
    """Per-row training inputs beside the hard labels: weights ``(N,)`` and soft targets
    ``(N, C)`` (rows summing to 1, columns following ``classes_``) at ``temperature``."""

    weight: torch.Tensor | None = None
    soft: torch.Tensor | None = None
    temperature: float = 1.0

    def batch(self, idx: torch.Tensor) -> RowTargets:
        """The rows ``idx`` ``(B,)`` of a minibatch."""
        return RowTargets(
            None if self.weight is None else self.weight[idx],
            None if self.soft is None else self.soft[idx],
            self.temperature,
        )


def row_targets(
    X: np.ndarray,
    num_classes: int,
    device: torch.device,
    sample_weight: Any = None,
    soft_targets: Any = None,
    temperature: float = 1.0,
) -> RowTargets | None:
    """Checked :class:`RowTargets` for the ``(N, D)`` rows ``X`` (None when neither is given):
    weights finite and >= 0 (scikit-learn's ``_check_sample_weight``), soft targets
    ``(N, num_classes)``, finite, >= 0, each row summing to 1."""
    if sample_weight is None and soft_targets is None:
        return None
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"soft_temperature must be a positive number, got {temperature!r}")
    w = None
    if sample_weight is not None:
        sw = _check_sample_weight(sample_weight, X, dtype=np.float32, ensure_non_negative=True)
        w = torch.as_tensor(sw, device=device)  # (N,)
    q = None
    if soft_targets is not None:
        q = _as_matrix(np.asarray(soft_targets, np.float32), "soft_targets", device, rows=len(X))
        if q.shape[1] != num_classes:
            raise ValueError(
                f"soft_targets must be (N, C) = ({len(X)}, {num_classes}) with columns following "
                f"classes_, got {tuple(q.shape)}"
            )
        sums = q.sum(dim=1)  # (N,)
        if (q < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ValueError("soft_targets rows must be probabilities: >= 0, summing to 1")
    return RowTargets(w, q, float(temperature))


def soft_cross_entropy(logits: torch.Tensor, rt: RowTargets) -> torch.Tensor:
    """``T^2 * mean_i w_i * H(q_i, softmax(z_i / T))``: the distillation loss over a batch of
    logits ``(B, C)`` (``T^2`` keeps its gradients' scale as ``T`` changes; Hinton et al.)."""
    assert rt.soft is not None  # called for rows with soft targets only
    t = rt.temperature
    per = -(rt.soft * torch.log_softmax(logits.float() / t, dim=1)).sum(dim=1)  # (B,)
    if rt.weight is None:
        return t * t * per.mean()
    return t * t * (per * rt.weight).sum() / rt.weight.sum().clamp_min(1e-12)
