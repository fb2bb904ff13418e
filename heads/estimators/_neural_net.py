"""The network behind :class:`heads.estimators.NeuralHead` (linear / MLP / transformer over an
embedding and metadata fields, a linear or cosine classifier) and the tensor helpers its trainer
uses: class weights, the prior sampler's weights, input checks, the learning-rate schedule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_array
from torch import nn
from torch.nn import functional as F

from heads.estimators._validation import host_array
from heads.types import CLASS_WEIGHTS, ClassWeights

ArrayLike = np.ndarray | torch.Tensor


def _check_choice(name: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")


def compute_class_weights(
    class_counts: ArrayLike | Sequence[int], mode: ClassWeights
) -> np.ndarray:
    """Per-class loss weights ``(C,)`` from training counts, scaled so samples average 1.

    ``"inverse"`` is ``N / (C * n_c)`` (scikit-learn's ``"balanced"``), ``"sqrt-inverse"`` is
    proportional to ``1 / sqrt(n_c)``; both satisfy ``sum_c n_c w_c = N``. ``"none"`` gives ones.

    >>> compute_class_weights([1, 4], "inverse")
    array([2.5  , 0.625])
    """
    _check_choice("class_weights", mode, CLASS_WEIGHTS)
    n = np.asarray(class_counts, dtype=np.float64)  # (C,)
    if n.ndim != 1 or (n <= 0).any():
        raise ValueError(f"class_counts must be a 1-D vector of positive counts, got {n[:10]}")
    if mode == "none":
        return np.ones_like(n)
    raw = 1.0 / n if mode == "inverse" else 1.0 / np.sqrt(n)
    return raw * n.sum() / (raw * n).sum()


def prior_sample_weights(
    y_train: ArrayLike | Sequence[int], y_val: ArrayLike | Sequence[int], num_classes: int
) -> np.ndarray:
    """Per-training-sample weights ``(N,)``: validation class frequency / training frequency.

    The FungiCLEF 2024 sampler: drawing training samples with these weights makes the training
    class distribution match the validation one. Labels are class indices ``0 .. C-1``; a class
    absent from the validation data gets weight 0 (never drawn).

    >>> prior_sample_weights([0, 0, 0, 1], [0, 1], 2)  # train freq (.75, .25), val (.5, .5)
    array([0.66666667, 0.66666667, 0.66666667, 2.        ])
    """
    yt = np.asarray(y_train, dtype=np.int64)
    yv = np.asarray(y_val, dtype=np.int64)
    if yt.size == 0 or yv.size == 0:
        raise ValueError("prior_sample_weights needs non-empty y_train and y_val")
    f_train = np.bincount(yt, minlength=num_classes) / yt.size  # (C,)
    f_val = np.bincount(yv, minlength=num_classes) / yv.size  # (C,)
    ratio = np.divide(f_val, f_train, out=np.zeros(num_classes), where=f_train > 0)  # (C,)
    return ratio[yt]


# --------------------------------------------------------------------------- the network


# A linear probe wants a larger step than a deeper head (DINOv2's linear eval sweeps 1e-3..1e-1).


class CosineClassifier(nn.Module):
    """Cosines between L2-normalised features and class weights ``(B, C)``.

    With ``subcenters`` K > 1 each class has K weight vectors (row ``c * K + k``) and its cosine
    is the max over them (sub-center ArcFace).
    """

    def __init__(self, in_features: int, num_classes: int, subcenters: int = 1) -> None:
        super().__init__()
        self.num_classes, self.subcenters = num_classes, subcenters
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, in_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (B, C*K)
        if self.subcenters > 1:
            cos = cos.view(-1, self.num_classes, self.subcenters).amax(-1)  # (B, C)
        return cos


class _HeadNet(nn.Module):
    """Body (per ``arch``) -> features ``(B, F)`` -> class outputs ``(B, C)`` [+ aux ``(B, A)``]."""

    def __init__(
        self,
        *,
        arch: str,
        input_dim: int,
        field_dims: Sequence[int],
        num_classes: int,
        num_aux: int,
        hidden: int,
        dropout: float,
        classifier: str,
        subcenters: int,
        transformer_dim: int,
        transformer_layers: int,
        transformer_heads: int,
        token_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.token_dims = [int(t) for t in token_dims] if token_dims else None
        if self.token_dims is not None and sum(self.token_dims) != input_dim:
            raise ValueError(
                f"token_dims {self.token_dims} sum to {sum(self.token_dims)}, not the embedding "
                f"width {input_dim}"
            )
        if arch in ("linear", "mlp"):
            self.norm = nn.LayerNorm(input_dim)
            width = input_dim + sum(field_dims)
            if arch == "mlp":
                self.body: nn.Module = nn.Sequential(
                    nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)
                )
                width = hidden
            else:
                self.body = nn.Dropout(dropout)
        else:
            d = transformer_dim
            if self.token_dims is None:  # the embedding is one token
                self.embed = nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, d))
            else:  # one token per block of token_dims (a backbone each)
                self.embeds = nn.ModuleList(
                    nn.Sequential(nn.LayerNorm(w), nn.Linear(w, d)) for w in self.token_dims
                )
            n_emb = 1 if self.token_dims is None else len(self.token_dims)
            self.field_proj = nn.ModuleList(nn.Linear(fd, d) for fd in field_dims)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            self.token_type = nn.Parameter(torch.zeros(1, 1 + n_emb + len(field_dims), d))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.token_type, std=0.02)
            layer = nn.TransformerEncoderLayer(
                d,
                transformer_heads,
                dim_feedforward=hidden,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, transformer_layers, enable_nested_tensor=False
            )
            self.out_norm = nn.LayerNorm(d)
            width = d
        if classifier == "cosine":
            self.classifier: nn.Module = CosineClassifier(width, num_classes, subcenters)
        else:
            self.classifier = nn.Linear(width, num_classes)
        self.aux = nn.Linear(width, num_aux) if num_aux else None

    def features(self, x: torch.Tensor, fields: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.arch != "transformer":
            return self.body(torch.cat([self.norm(x), *fields], dim=1))  # (B, F)
        if self.token_dims is None:
            tokens = [self.embed(x)]  # (B, d)
        else:
            blocks = torch.split(x, self.token_dims, dim=1)  # (B, D_i) each
            tokens = [e(b) for e, b in zip(self.embeds, blocks, strict=True)]
        tokens += [p(f) for p, f in zip(self.field_proj, fields, strict=True)]
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, d)
        seq = torch.cat([cls, torch.stack(tokens, dim=1)], dim=1) + self.token_type  # (B, T, d)
        return self.out_norm(self.encoder(seq)[:, 0])  # (B, d)

    def forward(
        self, x: torch.Tensor, fields: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x, fields)  # (B, F)
        return self.classifier(h), (self.aux(h) if self.aux is not None else None)


# --------------------------------------------------------------------------- input checks


def _as_matrix(
    a: ArrayLike, name: str, device: torch.device, *, rows: int | None = None, finite: bool = True
) -> torch.Tensor:
    """``a`` as float32 ``(N, d)`` on ``device``; ValueError on NaN/Inf rows or a bad shape."""
    with warnings.catch_warnings():  # a read-only memmap: the tensor is only ever read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.as_tensor(a).detach()
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(t.shape)}")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} has {t.shape[0]} rows, expected {rows}")
    t = t.to(device).float()
    if finite:
        bad = int((~torch.isfinite(t).all(dim=1)).sum())
        if bad:
            raise ValueError(
                f"{name} has {bad} of {t.shape[0]} rows with NaN or Inf values; re-embed those "
                f"images or filter those rows out"
            )
    return t


def _as_fields(
    fields: Sequence[ArrayLike] | None, name: str, device: torch.device, rows: int
) -> list[torch.Tensor]:
    return [_as_matrix(f, f"{name}[{i}]", device, rows=rows) for i, f in enumerate(fields or [])]


def validation_tensors(
    head: Any,
    X_val: ArrayLike | None,
    y_val: Any,
    fields_val: Sequence[ArrayLike] | None,
    aux_val: ArrayLike | None,
    num_fields: int,
    a_train: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None] | None:
    """Checked validation tensors ``(X, y index, fields, aux)`` of a neural ``head`` being
    fitted (its ``device_``, ``classes_`` and ``n_features_in_`` set), known classes only."""
    if X_val is None and y_val is None:
        return None
    if X_val is None or y_val is None:
        raise ValueError("pass both X_val and y_val, or neither")
    dev = head.device_
    xv = check_array(
        host_array(X_val),
        input_name="X_val",
        estimator=head,
        dtype=np.float32,
        ensure_all_finite=False,
    )
    if xv.shape[1] != head.n_features_in_:
        raise ValueError(
            f"X_val has {xv.shape[1]} features, but {type(head).__name__} is expecting "
            f"{head.n_features_in_} features as input (those of X)"
        )
    xv = _as_matrix(xv, "X_val", dev)
    m = xv.shape[0]
    yv = np.asarray(y_val).reshape(-1)
    if yv.shape[0] != m:
        raise ValueError(f"X_val has {m} rows but y_val has {yv.shape[0]}")
    if len(fields_val or []) != num_fields:
        raise ValueError(f"fit got {num_fields} fields but {len(fields_val or [])} fields_val")
    fv = _as_fields(fields_val, "fields_val", dev, m)
    av = None
    if a_train is not None and aux_val is not None:
        av = _as_matrix(aux_val, "aux_val", dev, rows=m, finite=False)
    c = len(head.classes_)
    pos = np.searchsorted(head.classes_, yv).clip(0, c - 1)
    known = head.classes_[pos] == yv  # (M,)
    if not known.any():
        raise ValueError("none of the y_val labels is a training class")
    if not known.all():
        warnings.warn(
            f"{int((~known).sum())} of {m} validation samples have labels absent from y; "
            f"they are left out of validation",
            stacklevel=3,
        )
    keep = torch.as_tensor(np.flatnonzero(known), device=dev)
    return (
        xv[keep],
        torch.as_tensor(pos[known], device=dev),
        [f[keep] for f in fv],
        None if av is None else av[keep],
    )


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
