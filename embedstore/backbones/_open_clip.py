"""open_clip checkpoints (BioCLIP 2 and other ViT CLIPs) converted into a transformers
``CLIPModel`` folder, which ``create_backbone`` (images) and ``text_tower`` (texts) then load.

Why a conversion and not ``open_clip`` itself: ``open_clip_torch`` imports torchvision when it
is imported (``open_clip/transform.py``, ``open_clip/utils.py``) and requires it and timm, which
requires it too; torchvision pulls a CUDA build of torch where only the CPU wheel is installed.
A ViT CLIP in open_clip is the same network as transformers' ``CLIPModel``: the conversion
renames the weights, splits each fused attention projection into q, k, v, transposes the two
projections, and writes ``config.json``, ``model.safetensors``, the tokenizer and a
``preprocessor_config.json`` from the checkpoint's own settings.

>>> convert_open_clip("hf-hub:imageomics/bioclip-2", "models/bioclip-2")     # needs the hub
>>> convert_open_clip("bioclip-2-open_clip/", "models/bioclip-2")            # a downloaded copy
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from embedstore.backbones._backbones import BackboneError, _sha256_file
from embedstore.backbones._preprocess import CLIP_MEAN, CLIP_STD

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)
DEFAULT_TOKENIZER = "openai/clip-vit-large-patch14"  # open_clip's default tokenizer: OpenAI BPE
_NOT_WEIGHTS = {"attn_mask", "input_resolution", "context_length", "vocab_size"}
_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}


def convert_open_clip(
    source: str | os.PathLike, out: str | os.PathLike, *, tokenizer: str | None = None
) -> Path:
    """Convert the open_clip checkpoint ``source`` into a transformers CLIP folder ``out``.

    ``source``: a folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors``
    (or ``open_clip_pytorch_model.bin``), or ``hf-hub:ORG/NAME`` (downloaded). ``tokenizer``:
    the Hugging Face tokenizer (hub id or folder) that matches open_clip's (default: the
    checkpoint's ``hf_tokenizer_name``, else the OpenAI BPE every OpenAI CLIP shares). Returns
    ``out``. Only plain ViT CLIPs convert (BioCLIP, BioCLIP 2, OpenAI and LAION ViTs); any other
    setting is refused by name.
    """
    out = Path(out).expanduser()
    config_path, weights_path = _open_clip_files(str(source))
    cfg = json.loads(Path(config_path).read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    _check_supported(model_cfg, str(source))
    tokenizer = tokenizer or (model_cfg.get("text_cfg") or {}).get("hf_tokenizer_name")
    tokenizer = tokenizer or DEFAULT_TOKENIZER
    tok = _load_tokenizer(tokenizer)
    from transformers import CLIPModel

    config = clip_config(model_cfg, tok)
    model = CLIPModel(config).eval()
    state = map_state_dict(_read_weights(weights_path), config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise BackboneError(
            f"{source}: the weights do not fit a CLIPModel (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]})"
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.model_max_length = int(config.text_config.max_position_embeddings)
    tok.save_pretrained(out)
    pre = preprocessor_config(cfg.get("preprocess_cfg") or {}, config.vision_config.image_size)
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    provenance = {"source": str(source), "weights_sha256": _sha256_file(weights_path)}
    (out / "converted_from_open_clip.json").write_text(
        json.dumps({**provenance, "tokenizer": tokenizer}, indent=2)
    )
    return out


def _open_clip_files(source: str) -> tuple[str, str]:
    """The config and weights files of a local folder or an ``hf-hub:`` id."""
    if source.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        repo = source[len("hf-hub:") :]
        try:
            config = hf_hub_download(repo, OPEN_CLIP_CONFIG)
            for name in OPEN_CLIP_WEIGHTS:
                try:
                    return config, hf_hub_download(repo, name)
                except OSError:
                    continue
        except OSError as e:
            raise BackboneError(
                f"{source}: cannot download it ({str(e).splitlines()[0]}); download the "
                f"repository where the hub is reachable (`hf download {repo} --local-dir "
                "DIR`) and convert DIR"
            ) from e
        raise BackboneError(f"{source}: no open_clip weights ({', '.join(OPEN_CLIP_WEIGHTS)})")
    folder = Path(source).expanduser()
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise BackboneError(
            f"{source}: not an open_clip checkpoint folder (no {OPEN_CLIP_CONFIG}); give the "
            "folder `hf download ORG/NAME --local-dir DIR` wrote, or hf-hub:ORG/NAME"
        )
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return str(folder / OPEN_CLIP_CONFIG), str(folder / name)
    raise BackboneError(f"{source}: no open_clip weights ({', '.join(OPEN_CLIP_WEIGHTS)})")


_UNSUPPORTED_VISION = {
    "timm_model_name": None,
    "attentional_pool": False,
    "ls_init_value": None,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "pos_embed_type": "learnable",
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_UNSUPPORTED_TEXT = {
    "hf_model_name": None,
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "proj_bias": False,
    "proj_type": "linear",
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}


def _check_supported(model_cfg: dict[str, Any], source: str) -> None:
    """Refuse, by name, any open_clip setting a transformers CLIPModel does not compute."""
    v, t = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    bad = [
        f"vision_cfg.{k}={v[k]!r}" for k, ok in _UNSUPPORTED_VISION.items() if v.get(k, ok) != ok
    ]
    bad += [f"text_cfg.{k}={t[k]!r}" for k, ok in _UNSUPPORTED_TEXT.items() if t.get(k, ok) != ok]
    if not isinstance(v.get("layers", 12), int):
        bad.append("vision_cfg.layers (a ResNet image tower)")
    if t.get("pool_type", "argmax") not in ("argmax", "eos"):
        bad.append(f"text_cfg.pool_type={t['pool_type']!r}")
    if model_cfg.get("init_logit_bias") is not None:
        bad.append("init_logit_bias (a SigLIP-style open_clip model)")
    if bad:
        raise BackboneError(
            f"{source}: this open_clip model is not a plain ViT CLIP ({', '.join(bad)}); only "
            "those convert to transformers' CLIPModel"
        )


def clip_config(model_cfg: dict[str, Any], tokenizer: Any) -> Any:
    """The transformers ``CLIPConfig`` of an open_clip ``model_cfg``."""
    from transformers import CLIPConfig

    v, t = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"  # open_clip: nn.GELU, exact
    v_width, t_width = int(v.get("width", 768)), int(t.get("width", 512))
    # open_clip's "argmax" pools the highest token id (OpenAI's end-of-text); transformers does
    # exactly that for eos_token_id == 2, and pools the first eos_token_id otherwise
    eos = 2 if t.get("pool_type", "argmax") == "argmax" else int(t.get("eos_id", 2))
    return CLIPConfig(
        text_config={
            "vocab_size": int(t.get("vocab_size", 49408)),
            "hidden_size": t_width,
            "intermediate_size": int(t_width * float(t.get("mlp_ratio", 4.0))),
            "num_hidden_layers": int(t.get("layers", 12)),
            "num_attention_heads": int(t.get("heads", 8)),
            "max_position_embeddings": int(t.get("context_length", 77)),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": v_width,
            "intermediate_size": int(v_width * float(v.get("mlp_ratio", 4.0))),
            "num_hidden_layers": int(v.get("layers", 12)),
            "num_attention_heads": v_width // int(v.get("head_width", 64)),
            "image_size": int(v.get("image_size", 224)),
            "patch_size": int(v.get("patch_size", 16)),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
        projection_dim=int(model_cfg.get("embed_dim", 512)),
    )


def map_state_dict(sd: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """open_clip weight names and layouts -> transformers ``CLIPModel``'s; a weight left over
    (a layer the conversion does not know) is an error."""
    sd = {k.removeprefix("module."): v for k, v in sd.items() if k not in _NOT_WEIGHTS}
    sd = {k.removeprefix("text."): v for k, v in sd.items()}  # open_clip's CustomTextCLIP
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str, transpose: bool = False) -> None:
        if src not in sd:
            raise BackboneError(f"open_clip weights: {src} is missing")
        w = sd.pop(src)
        out[dst] = w.T.contiguous() if transpose else w

    take("token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    take("positional_embedding", "text_model.embeddings.position_embedding.weight")
    take("ln_final.weight", "text_model.final_layer_norm.weight")
    take("ln_final.bias", "text_model.final_layer_norm.bias")
    take("text_projection", "text_projection.weight", transpose=True)
    take("logit_scale", "logit_scale")
    take("visual.class_embedding", "vision_model.embeddings.class_embedding")
    take("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight")
    take("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        take(f"visual.{a}.weight", f"vision_model.{b}.weight")
        take(f"visual.{a}.bias", f"vision_model.{b}.bias")
    take("visual.proj", "visual_projection.weight", transpose=True)
    towers = (
        ("", "text_model", config.text_config),
        ("visual.", "vision_model", config.vision_config),
    )
    for prefix, tower, cfg in towers:
        for i in range(cfg.num_hidden_layers):
            _map_block(
                sd, out, f"{prefix}transformer.resblocks.{i}.", f"{tower}.encoder.layers.{i}."
            )
    if sd:
        raise BackboneError(
            f"open_clip weights: {len(sd)} not converted ({', '.join(sorted(sd)[:4])} ...): "
            "not a plain ViT CLIP"
        )
    return out


def _map_block(sd: dict, out: dict, src: str, dst: str) -> None:
    """One residual attention block: fused in_proj split into q, k, v; c_fc / c_proj as fc1 /
    fc2; ln_1 / ln_2 as layer_norm1 / layer_norm2."""
    for kind in ("weight", "bias"):
        q, k, v = sd.pop(f"{src}attn.in_proj_{kind}").chunk(3, dim=0)  # (3W, ...) -> 3 x (W, ...)
        for name, w in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            out[f"{dst}self_attn.{name}.{kind}"] = w.contiguous()
        for a, b in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            out[f"{dst}{b}.{kind}"] = sd.pop(f"{src}{a}.{kind}")


def preprocessor_config(pp: dict[str, Any], image_size: int) -> dict[str, Any]:
    """A ``CLIPImageProcessor`` config reproducing open_clip's eval transform."""
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise BackboneError(f"open_clip resize_mode {mode!r} is not supported (shortest, squash)")
    size = int(pp.get("size", image_size)) if not isinstance(pp.get("size"), list) else image_size
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size} if mode == "shortest" else {"height": size, "width": size},
        "do_center_crop": mode == "shortest",
        "crop_size": {"height": size, "width": size},
        "resample": _RESAMPLE.get(pp.get("interpolation", "bicubic"), 3),
        "do_normalize": True,
        "image_mean": list(pp.get("mean") or CLIP_MEAN),
        "image_std": list(pp.get("std") or CLIP_STD),
        "do_convert_rgb": True,
    }


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: safetensors, or a torch file read with ``weights_only`` (never
    unpickled as code)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def _load_tokenizer(tokenizer: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as e:
        raise BackboneError(
            f"tokenizer {tokenizer}: cannot load it ({str(e).splitlines()[0]}); give a hub id "
            f"(default {DEFAULT_TOKENIZER}, the OpenAI BPE open_clip uses) or a folder"
        ) from e
