"""Image preprocessing with PIL, numpy and torch (no torchvision).

Workers turn a decoded RGB image into a fixed-size ``uint8`` CHW array (cheap to send between
processes); normalisation to float happens on the model's device, batched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
# Photos whose scaled size is at most this many crops are scaled whole, then cropped (as
# torchvision does); beyond it (aspect ratios past ~1:16) only the cropped box is resampled, so
# a tiny file cannot make the resize cost gigabytes.
_MAX_RESIZE_FACTOR = 16
_PIL_CODE_TO_NAME = {
    int(Image.Resampling.BICUBIC): "bicubic",
    int(Image.Resampling.BILINEAR): "bilinear",
    0: "nearest",
}


@dataclass(frozen=True)
class Preprocess:
    """Resize then centre-crop then normalise, as a model's processor config describes.

    ``resize_mode="shortest"`` scales the shorter side to ``resize_px`` (keeping aspect);
    ``"exact"`` resizes to ``resize_px`` x ``resize_px``. The crop is ``crop_px`` square.
    """

    resize_px: int = 224
    crop_px: int = 224
    resize_mode: str = "shortest"
    resample: str = "bicubic"
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def __call__(self, im: Image.Image) -> np.ndarray:
        """RGB PIL image -> ``uint8`` array (3, crop_px, crop_px)."""
        w, h = im.size
        resample = _RESAMPLE[self.resample]
        if self.resize_mode == "exact":
            im = im.resize((self.resize_px, self.resize_px), resample)
        else:
            s = self.resize_px / min(w, h)
            nw, nh = max(self.crop_px, round(w * s)), max(self.crop_px, round(h * s))
            if nw * nh > _MAX_RESIZE_FACTOR * self.crop_px**2:
                # A strip (1 x 60000 px): scaling it whole would make gigapixels to crop a
                # square from. Resample only the part the crop keeps (the same box).
                bw, bh = min(w, self.crop_px / s), min(h, self.crop_px / s)
                left, top = (w - bw) / 2, (h - bh) / 2
                size = (self.crop_px, self.crop_px)
                im = im.resize(size, resample, box=(left, top, left + bw, top + bh))
            elif (nw, nh) != (w, h):
                # reducing_gap: a fast draft downscale first for huge photos, then the real filter
                im = im.resize((nw, nh), resample, reducing_gap=3.0)
        w, h = im.size
        left, top = (w - self.crop_px) // 2, (h - self.crop_px) // 2
        if (w, h) != (self.crop_px, self.crop_px):
            im = im.crop((left, top, left + self.crop_px, top + self.crop_px))
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``uint8`` (B, 3, H, W) on any device -> normalised float (B, 3, H, W)."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=dtype).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device, dtype=dtype).view(1, 3, 1, 1) * 255
        return (batch.to(dtype) - mean) / std


def from_processor_config(cfg: dict[str, Any]) -> Preprocess:
    """Build a :class:`Preprocess` from a Hugging Face ``preprocessor_config.json`` dict."""
    size = cfg.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "shortest_edge" in size:
        resize_px, mode = int(size["shortest_edge"]), "shortest"
    elif "height" in size:
        resize_px, mode = int(size["height"]), "exact"
    else:
        resize_px, mode = 224, "shortest"
    if cfg.get("do_resize") is False:
        mode = "shortest"
    crop_px = (
        int(crop.get("height", resize_px)) if cfg.get("do_center_crop", bool(crop)) else resize_px
    )
    mean = tuple(cfg.get("image_mean") or IMAGENET_MEAN)
    std = tuple(cfg.get("image_std") or IMAGENET_STD)
    if cfg.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = _PIL_CODE_TO_NAME.get(int(cfg.get("resample", Image.Resampling.BICUBIC)), "bicubic")
    return Preprocess(resize_px, crop_px, mode, resample, mean, std)
