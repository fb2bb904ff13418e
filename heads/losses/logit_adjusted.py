"""Logit-adjusted cross-entropy (Menon et al. 2021, "Long-tail learning via logit adjustment")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from heads.losses import register_loss
from heads.losses._base import ArrayLike, Loss, Reduction


@register_loss("logit-adjusted")
class LogitAdjustedLoss(Loss):
    """Cross-entropy on ``logits + tau * log(prior)`` during training; raw logits at inference.

    ``prior`` is ``class_counts`` normalised to sum to 1, with counts clamped to >= 1 so that a
    class absent from the training data keeps a finite logit.
    """

    class_counts: torch.Tensor  # required: __init__ refuses None

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
        tau: float = 1.0,
    ) -> None:
        if class_counts is None:
            raise ValueError("logit-adjusted needs class_counts: training samples per class (C,)")
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            class_weight=class_weight,
            reduction=reduction,
        )
        self.tau = float(tau)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = self.class_counts.to(device=logits.device, dtype=logits.dtype).clamp(min=1.0)  # (C,)
        log_prior = (n / n.sum()).log()  # (C,)
        return F.cross_entropy(logits + self.tau * log_prior, target, reduction="none")  # (B,)
