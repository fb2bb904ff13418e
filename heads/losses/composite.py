"""A class loss plus a weighted auxiliary binary loss with missing targets.

As in the FungiCLEF 2024 entries that predict "poisonous" next to the species: the auxiliary
targets are 0/1 with NaN where the label is unknown, and those entries are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heads.losses._base import Loss


class CompositeLoss(nn.Module):
    """``class_loss(logits, target) + alpha * BCE-with-logits(aux_logits, aux_target)``.

    ``aux_logits`` and ``aux_target`` are ``(B,)`` or ``(B, A)``; NaN targets are missing.
    The reduction is ``class_loss.reduction``; for the auxiliary term it is over the observed
    entries only: ``"mean"`` averages all observed entries of the batch, ``"sum"`` adds them,
    ``"none"`` gives each sample the mean of its observed entries (0 when it has none).
    ``classifier``, ``subcenters`` and ``inference_logits`` are the class loss's.

    Example::

        loss = CompositeLoss(create_loss("ce"), alpha=0.5)
        loss(logits, species, aux_logits=poison_logit, aux_target=poisonous)  # NaN = unknown
    """

    def __init__(self, class_loss: Loss, alpha: float = 1.0) -> None:
        super().__init__()
        if not isinstance(class_loss, Loss):
            raise ValueError(f"class_loss must be a Loss, got {type(class_loss).__name__}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.class_loss = class_loss
        self.alpha = float(alpha)

    @property
    def classifier(self) -> str:
        return self.class_loss.classifier

    @property
    def subcenters(self) -> int:
        return self.class_loss.subcenters

    @property
    def reduction(self) -> str:
        return self.class_loss.reduction

    def inference_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The class loss's prediction logits ``(B, C)``."""
        return self.class_loss.inference_logits(outputs)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        aux_logits: torch.Tensor | None = None,
        aux_target: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The class loss (``sample_weight`` ``(B,)`` weighs its samples) plus ``alpha`` times
        the masked auxiliary loss (when aux is given)."""
        loss = self.class_loss(logits, target, sample_weight)  # () or (B,)
        if aux_logits is None and aux_target is None:
            return loss
        return loss + self.alpha * self.aux_loss(aux_logits, aux_target, batch=logits.shape[0])

    def aux_loss(
        self, aux_logits: torch.Tensor | None, aux_target: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """Masked BCE-with-logits, reduced like the class loss; NaN targets are ignored."""
        if aux_logits is None or aux_target is None:
            raise ValueError("aux_logits and aux_target must be given together")
        if aux_logits.shape != aux_target.shape:
            raise ValueError(
                f"aux_logits {tuple(aux_logits.shape)} and aux_target "
                f"{tuple(aux_target.shape)} must have the same shape"
            )
        if aux_logits.ndim not in (1, 2) or aux_logits.shape[0] != batch:
            raise ValueError(
                f"aux_logits must be (B,) or (B, A) with B={batch}, got {tuple(aux_logits.shape)}"
            )
        if not aux_logits.is_floating_point() or not aux_target.is_floating_point():
            raise ValueError("aux_logits and aux_target must be floating point (NaN = missing)")
        x = aux_logits.reshape(batch, -1)  # (B, A)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        t = aux_target.reshape(batch, -1).to(x.dtype)  # (B, A)
        observed = ~torch.isnan(t)  # (B, A)
        bce = F.binary_cross_entropy_with_logits(
            x, torch.where(observed, t, torch.zeros_like(t)), reduction="none"
        )  # (B, A)
        bce = bce * observed  # (B, A) missing entries give 0 and no gradient
        if self.reduction == "sum":
            return bce.sum()
        if self.reduction == "mean":
            return bce.sum() / observed.sum().clamp(min=1)
        return bce.sum(dim=1) / observed.sum(dim=1).clamp(min=1)  # (B,)
