"""ArcFace (Deng et al. 2019) and sub-center ArcFace (Deng et al. 2020): additive angular margin.

The head's last layer gives cosines between the normalised embedding and normalised class
weights (``classifier = "cosine"``); for sub-center ArcFace it has ``subcenters`` weights per
class and max-pools their cosines, so the loss always receives cosines ``(B, C)``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from heads.losses import register_loss
from heads.losses._base import ArrayLike, Classifier, Loss, Reduction


@register_loss("arcface")
class ArcFaceLoss(Loss):
    """Cross-entropy on ``scale * cos`` with ``cos(theta_y)`` replaced by ``cos(theta_y + m)``.

    When ``theta_y + m`` would pass pi, ``cos(theta_y + m)`` stops decreasing in ``theta_y``; as
    in insightface, the target logit is then ``cos(theta_y) - m * sin(m)`` instead.
    With ``easy_margin`` the margin is only applied where ``cos(theta_y) > 0``.
    Inputs must be cosines in [-1, 1]; at inference the logits are ``scale * cos``.
    """

    classifier: Classifier = "cosine"

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike | None = None,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
        margin_rad: float = 0.5,
        scale: float = 30.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            class_weight=class_weight,
            reduction=reduction,
        )
        if not 0.0 <= margin_rad < math.pi / 2:
            raise ValueError(f"margin_rad must be in [0, pi/2), got {margin_rad}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin_rad = float(margin_rad)
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)

    def check_inputs(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().check_inputs(logits, target)
        # the tolerance lets a bf16 head's 1.0078 (one ulp above 1) through, not raw logits
        if logits.detach().abs().amax() > 1.0 + 1e-2:
            raise ValueError(
                f"{type(self).__name__} expects cosines in [-1, 1] from a cosine classifier "
                f"(loss.classifier == 'cosine'), got values up to {logits.abs().amax().item():.3g}"
            )

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.margin_rad
        cos = logits.clamp(-1.0, 1.0)  # (B, C)
        cos_t = cos.gather(1, target[:, None]).squeeze(1)  # (B,) cos(theta_y)
        sin_t = (1.0 - cos_t * cos_t).clamp(min=1e-12).sqrt()  # (B,) sin(theta_y) >= 0
        phi = cos_t * math.cos(m) - sin_t * math.sin(m)  # (B,) cos(theta_y + m)
        if self.easy_margin:
            phi = torch.where(cos_t > 0.0, phi, cos_t)
        else:  # theta_y + m < pi  <=>  cos(theta_y) > cos(pi - m)
            phi = torch.where(cos_t > math.cos(math.pi - m), phi, cos_t - m * math.sin(m))
        z = self.scale * cos.scatter(1, target[:, None], phi[:, None])  # (B, C)
        return F.cross_entropy(z, target, reduction="none")  # (B,)

    def inference_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """``scale * cos`` ``(B, C)``: the logits without margin."""
        return self.scale * outputs


@register_loss("subcenter-arcface")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace for a head with ``subcenters`` weights per class (max-pooled by the head).

    The loss itself is ArcFace's; ``subcenters`` only tells the head how many to build.
    """

    subcenters = 3

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike | None = None,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
        margin_rad: float = 0.5,
        scale: float = 30.0,
        easy_margin: bool = False,
        subcenters: int = 3,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            class_weight=class_weight,
            reduction=reduction,
            margin_rad=margin_rad,
            scale=scale,
            easy_margin=easy_margin,
        )
        integral = isinstance(subcenters, numbers.Integral) and not isinstance(subcenters, bool)
        if not integral or subcenters < 1:
            raise ValueError(f"subcenters must be a positive int, got {subcenters!r}")
        self.subcenters = int(subcenters)
