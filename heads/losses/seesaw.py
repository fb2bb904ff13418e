"""Seesaw loss (Wang et al. 2021, "Seesaw Loss for Long-Tailed Instance Segmentation")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from heads.losses import register_loss
from heads.losses._base import ArrayLike, Loss, Reduction


@register_loss("seesaw")
class SeesawLoss(Loss):
    """Cross-entropy whose negative terms are rescaled: for a sample of class i,

    ``-log(exp(z_i) / (exp(z_i) + sum_{j != i} S_ij * exp(z_j)))`` with ``S_ij = M_ij * C_ij``:

    - mitigation ``M_ij = (N_j / N_i) ** p`` when ``N_j < N_i``, else 1 (counts clamped to >= 1),
      so a frequent class stops pushing down the rare ones;
    - compensation ``C_ij = (s_j / s_i) ** q`` when ``s_j > s_i``, else 1, where ``s`` is the
      softmax of the logits and ``s_i`` is clamped to >= ``eps``, so misclassified samples are
      penalised more.

    ``S`` is detached. This is mmdetection's ``seesaw_ce_loss`` with fixed ``class_counts``
    (samples per class in the training data) in place of its running counts.
    """

    class_counts: torch.Tensor  # required: __init__ refuses None

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
    ) -> None:
        if class_counts is None:
            raise ValueError("seesaw needs class_counts: training samples per class (C,)")
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            class_weight=class_weight,
            reduction=reduction,
        )
        if p < 0 or q < 0 or eps <= 0:
            raise ValueError(f"seesaw needs p >= 0, q >= 0 and eps > 0; got {p=}, {q=}, {eps=}")
        self.p, self.q, self.eps = float(p), float(q), float(eps)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            n = self.class_counts.to(device=logits.device, dtype=logits.dtype)  # (C,)
            log_n = n.clamp(min=1.0).log()  # (C,)
            # log M: p * log(N_j / N_i) where N_j < N_i, else 0
            log_s = self.p * (log_n[None, :] - log_n[target][:, None]).clamp(max=0.0)  # (B, C)
            # log C: q * log(s_j / max(s_i, eps)) where that ratio > 1, else 0
            log_prob = F.log_softmax(logits, dim=1)  # (B, C)
            log_self = log_prob.gather(1, target[:, None]).clamp(min=math.log(self.eps))
            log_s = log_s + self.q * (log_prob - log_self).clamp(min=0.0)  # (B, C)
            log_s.scatter_(1, target[:, None], 0.0)  # the true class is never rescaled
        return F.cross_entropy(logits + log_s, target, reduction="none")  # (B,)
