"""The tiny base class every loss builds on: shared settings, input checks and reduction.

A subclass implements :meth:`Loss.per_sample_loss` (one value per sample, unweighted); the base
checks the inputs, upcasts half precision, applies ``class_weight`` and reduces.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

Reduction = Literal["mean", "sum", "none"]
Classifier = Literal["linear", "cosine"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)

ArrayLike = torch.Tensor | Sequence[float]


def as_class_vector(values: ArrayLike | None, name: str) -> torch.Tensor | None:
    """``values`` as a finite, non-negative float32 vector ``(C,)``, or None."""
    if values is None:
        return None
    v = torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float32)  # (C,)
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D (C,) vector, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {v.tolist()[:10]}")
    return v


class Loss(nn.Module):
    """Base of the classification losses: ``forward(logits (B, C), target (B,) long)``.

    Every subclass takes the same keyword settings, so a trainer can build any of them alike:

    - ``num_classes``: C; optional, inferred from ``class_counts`` / ``class_weight`` or, when
      all are None, from the logits. When known it is checked against the logits.
    - ``class_counts``: training samples per class ``(C,)``; needed by the long-tail losses.
    - ``class_weight``: per-class weights ``(C,)``. Sample ``i`` counts ``class_weight[y_i]``
      times, and ``"mean"`` divides by the sum of those weights (``F.cross_entropy(weight=)``
      semantics), so the weights' overall scale does not matter.
    - ``reduction``: ``"mean"``, ``"sum"`` or ``"none"`` (gives ``(B,)``).

    Class attributes tell the head which last layer the loss needs: ``classifier`` is
    ``"linear"`` (logits) or ``"cosine"`` (cosines in [-1, 1], already max-pooled over the
    ``subcenters`` per class). :meth:`inference_logits` maps the head's outputs to the logits used
    at prediction time. Half-precision inputs are computed in float32 and give a float32 loss.
    """

    classifier: Classifier = "linear"
    subcenters: int = 1
    # Buffers (registered in __init__), declared for the type checker only.
    class_counts: torch.Tensor | None
    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_counts: ArrayLike | None = None,
        class_weight: ArrayLike | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}"
            )
        counts = as_class_vector(class_counts, "class_counts")  # (C,) or None
        weight = as_class_vector(class_weight, "class_weight")  # (C,) or None
        if num_classes is not None:
            integral = isinstance(num_classes, numbers.Integral) and not isinstance(
                num_classes, bool
            )
            if not integral or num_classes < 1:
                raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
            num_classes = int(num_classes)
        sizes = {"num_classes": num_classes, "class_counts": counts, "class_weight": weight}
        known = {n: v if isinstance(v, int) else len(v) for n, v in sizes.items() if v is not None}
        if len(set(known.values())) > 1:
            raise ValueError(f"inconsistent number of classes: {known}")
        self.num_classes: int | None = next(iter(known.values()), None)
        self.reduction: Reduction = reduction
        # Settings derived from the training data, not learned: kept out of the state_dict.
        self.register_buffer("class_counts", counts, persistent=False)
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The reduced loss: a scalar, or ``(B,)`` with ``reduction="none"``; ``sample_weight``
        ``(B,)`` multiplies each sample's loss as ``class_weight`` does (e.g. pseudo-labelled
        rows counting less than labelled ones)."""
        self.check_inputs(logits, target)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()  # (B, C) half precision is computed in float32
        loss = self.per_sample_loss(logits, target)  # (B,)
        return self.reduce(loss, target, sample_weight)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of each sample ``(B,)`` from checked inputs; subclasses implement it."""
        raise NotImplementedError

    def inference_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The logits to predict with, from the head's outputs ``(B, C)``: identity here."""
        return outputs

    def reduce(
        self, loss: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply ``class_weight[target]`` and ``sample_weight`` to the per-sample ``loss``
        ``(B,)`` and reduce it (``"mean"``: divided by the sum of the weights)."""
        w = None
        if self.class_weight is not None:
            w = self.class_weight.to(device=loss.device, dtype=loss.dtype)[target]  # (B,)
        if sample_weight is not None:
            sw = sample_weight.to(device=loss.device, dtype=loss.dtype).reshape(-1)  # (B,)
            if sw.shape != loss.shape:
                raise ValueError(
                    f"{type(self).__name__}: sample_weight must be (B,) = {tuple(loss.shape)}, "
                    f"got {tuple(sample_weight.shape)}"
                )
            w = sw if w is None else w * sw
        if w is not None:
            loss = loss * w  # (B,)
            if self.reduction == "mean":
                return loss.sum() / w.sum().clamp_min(torch.finfo(loss.dtype).tiny)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def check_inputs(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Raise ValueError unless ``logits`` is float ``(B, C)`` and ``target`` long ``(B,)``."""
        name = type(self).__name__
        if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise ValueError(f"{name}: logits and target must be torch tensors")
        if logits.ndim != 2:
            raise ValueError(f"{name}: logits must be (B, C), got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")
        if target.ndim != 1:
            raise ValueError(f"{name}: target must be (B,), got shape {tuple(target.shape)}")
        if target.dtype != torch.long:
            raise ValueError(f"{name}: target must be torch.long class indices, got {target.dtype}")
        b, c = logits.shape
        if target.shape[0] != b:
            raise ValueError(f"{name}: logits have B={b} rows but target has {target.shape[0]}")
        if b == 0:
            raise ValueError(f"{name}: empty batch (B=0)")
        if self.num_classes is not None and c != self.num_classes:
            raise ValueError(f"{name}: logits have C={c} columns, expected {self.num_classes}")
        bad = (target < 0) | (target >= c)  # (B,)
        if bad.any():
            raise ValueError(
                f"{name}: target values must lie in [0, {c}), got {target[bad][:5].tolist()}"
            )
