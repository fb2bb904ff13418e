"""Softmax focal loss (Lin et al. 2017): cross-entropy down-weighting easy samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from heads.losses import register_loss
from heads.losses._base import ArrayLike, Loss, Reduction


@register_loss("focal")
class FocalLoss(Loss):
    """Per sample ``-alpha_y * (1 - p_y) ** gamma * log p_y``; ``gamma=0`` is cross-entropy.

    ``alpha`` is None (1), a float applied to every sample, or a per-class ``(C,)`` vector.
    Unlike ``class_weight`` it does not change the ``"mean"`` denominator (which stays B).
    """

    alpha: torch.Tensor | None  # a buffer (registered in __init__)

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike | None = None,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
        gamma: float = 2.0,
        alpha: float | ArrayLike | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            class_weight=class_weight,
            reduction=reduction,
        )
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        a = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if a is not None:
            if a.ndim > 1 or (a.ndim == 1 and self.num_classes not in (None, a.numel())):
                raise ValueError(
                    f"alpha must be a float or a (C,) vector with C={self.num_classes}, "
                    f"got shape {tuple(a.shape)}"
                )
            if not torch.isfinite(a).all() or (a < 0).any():
                raise ValueError("alpha must be finite and >= 0")
            if a.ndim == 1 and self.num_classes is None:
                self.num_classes = a.numel()  # checked against the logits from now on
        self.register_buffer("alpha", a, persistent=False)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp_t = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)
        # 1 - p_y, kept off 0 so that gamma < 1 gets a finite gradient when p_y rounds to 1
        focus = (-torch.expm1(logp_t)).clamp(min=1e-12) ** self.gamma  # (B,)
        loss = -focus * logp_t  # (B,)
        if self.alpha is not None:
            a = self.alpha.to(device=loss.device, dtype=loss.dtype)
            if a.ndim == 1:
                a = a[target]  # (B,)
            loss = a * loss  # (B,)
        return loss
