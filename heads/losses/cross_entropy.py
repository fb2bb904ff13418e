"""Softmax cross-entropy with label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from heads.losses import register_loss
from heads.losses._base import ArrayLike, Loss, Reduction


@register_loss("ce")
class CrossEntropyLoss(Loss):
    """Cross-entropy; with ``label_smoothing`` = eps the target is ``(1 - eps) * onehot + eps / C``.

    Per sample: ``(1 - eps) * -log p_y + eps * mean_c(-log p_c)``.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike | None = None,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            class_weight=class_weight,
            reduction=reduction,
        )
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, label_smoothing=self.label_smoothing, reduction="none"
        )  # (B,)
