"""Export graphs for backbones whose Hugging Face forward hides what ONNX Runtime can fuse.

DINOv2, as ``transformers`` writes it, exports to ~560 small ops: its attention scales the
query with ``Mul`` and multiplies each branch by a LayerScale vector before the residual add,
which keeps ONNX Runtime's transformer optimizer from recognising attention at all.
:class:`FusedDinov2` is the same function written the way the optimizer expects:

- LayerScale folded into the weights of the projection before it (``o_proj``, ``fc2`` /
  ``down_proj``): ``(x W^T + b) * s == x (s * W)^T + s * b``;
- attention as ``softmax(q k^T / sqrt(d)) v`` with ``Div`` (the pattern the fuser matches);
- the position embedding interpolated once for the export's input size (a constant, as the
  model's own bicubic interpolation would compute on every call), the CLS token added to it.

After ``optimize_model(model_type="vit")`` dinov2-small becomes 11 ``Attention``,
12 ``BiasGelu`` and 24 ``SkipLayerNormalization`` nodes (~110 ops); the export is still
checked against the torch backbone on a probe batch (embedstore.backbones._onnx). The fused graph is
what int8 quantisation needs: ``Attention`` becomes ``QAttention`` and every projection a
``MatMulInteger``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def has_fused_graph(backbone: Any) -> bool:
    """Whether :func:`fused_graph` has a fused form for ``backbone`` (cheap: builds nothing)."""
    model = getattr(backbone, "model", None)
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "dinov2" or not hasattr(model, "encoder"):
        return False
    assert model is not None  # hasattr(None, "encoder") is False
    layer = model.encoder.layer[0]  # another transformers layout: the generic export
    return all(hasattr(layer.attention, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))


def fused_graph(backbone: Any) -> tuple[nn.Module, dict[str, int]] | None:
    """``(module, {"num_heads", "hidden_size"})`` to export instead of the backbone's own
    forward, or None when there is no fused form for it (then the generic export is used)."""
    if not has_fused_graph(backbone):
        return None
    config = backbone.model.config
    module = FusedDinov2(backbone).eval()
    return module, {"num_heads": config.num_attention_heads, "hidden_size": config.hidden_size}


class _Block(nn.Module):
    ln1: nn.Module
    ln2: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Linear
    swiglu: bool
    gate: nn.Module  # swiglu
    up: nn.Module
    down: nn.Linear
    fc1: nn.Module  # else
    act: nn.Module
    fc2: nn.Linear

    def __init__(self, layer: Any) -> None:
        """``layer``: a transformers ``Dinov2Layer`` (its submodules are looked up by name)."""
        super().__init__()
        attn = layer.attention
        self.ln1, self.ln2 = layer.norm1, layer.norm2
        self.q, self.k, self.v = attn.q_proj, attn.k_proj, attn.v_proj
        self.o = _scaled(attn.o_proj, layer.layer_scale1.lambda1)
        mlp = layer.mlp
        self.swiglu = hasattr(mlp, "gate_proj")
        if self.swiglu:
            self.gate, self.up = mlp.gate_proj, mlp.up_proj
            self.down = _scaled(mlp.down_proj, layer.layer_scale2.lambda1)
        else:
            self.fc1, self.act = mlp.fc1, mlp.activation_fn
            self.fc2 = _scaled(mlp.fc2, layer.layer_scale2.lambda1)


class FusedDinov2(nn.Module):
    """``uint8`` images (B, 3, px, px) -> pooled embeddings, the backbone's normalisation and
    ``pooling`` (``cls``, ``mean`` of patch tokens, or both) included; the same function as
    ``backbone.embed`` within float32 rounding."""

    start: torch.Tensor  # a buffer: (1, 1 + n, hidden)
    blocks: nn.ModuleList

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        model, cfg = backbone.model, backbone.model.config
        self.preprocess, self.pooling = backbone.preprocess, backbone.pooling
        self.n_prefix = backbone.n_prefix
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scale = math.sqrt(self.head_dim)
        emb = model.embeddings
        self.patch = emb.patch_embeddings.projection  # Conv2d(3, hidden, patch, stride=patch)
        px = backbone.preprocess.crop_px
        n = (px // cfg.patch_size) ** 2
        with torch.no_grad():  # what the model adds to [CLS, patches] at this input size
            pos = emb.interpolate_pos_encoding(torch.zeros(1, n + 1, cfg.hidden_size), px, px)
            start = torch.cat([emb.cls_token, torch.zeros(1, n, cfg.hidden_size)], dim=1)
        self.register_buffer("start", (pos + start).detach().clone())  # (1, 1 + n, hidden)
        self.blocks = nn.ModuleList(_Block(layer) for layer in model.encoder.layer)
        self.norm = model.layernorm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.preprocess.normalize(images)).flatten(2).transpose(1, 2)  # (B, n, H)
        b, _, hidden = x.shape
        x = torch.cat([x.new_zeros(b, 1, hidden), x], dim=1) + self.start  # (B, T, H)
        t = x.shape[1]
        for blk in self.blocks:
            assert isinstance(blk, _Block)
            h = blk.ln1(x)
            q = blk.q(h).reshape(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)
            k = blk.k(h).reshape(b, t, self.heads, self.head_dim).permute(0, 2, 3, 1)
            v = blk.v(h).reshape(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)
            p = torch.softmax(torch.matmul(q, k) / self.scale, dim=-1)  # (B, heads, T, T)
            ctx = torch.matmul(p, v).permute(0, 2, 1, 3).reshape(b, t, hidden)
            x = x + blk.o(ctx)
            h = blk.ln2(x)
            if blk.swiglu:
                x = x + blk.down(F.silu(blk.gate(h)) * blk.up(h))
            else:
                x = x + blk.fc2(blk.act(blk.fc1(h)))
        x = self.norm(x)
        if self.pooling == "cls":
            return x[:, 0]
        mean = x[:, self.n_prefix :].mean(dim=1)
        return mean if self.pooling == "mean" else torch.cat([x[:, 0], mean], dim=1)


def _scaled(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """A copy of ``linear`` whose output is multiplied by ``scale`` (its LayerScale)."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        s = scale.detach().to(linear.weight.dtype)
        out.weight.copy_(linear.weight * s[:, None])
        bias = linear.bias if linear.bias is not None else torch.zeros_like(s)
        out.bias.copy_(bias * s)
    return out.requires_grad_(False)
