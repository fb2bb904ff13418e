"""Text towers: the other half of an image-text backbone (CLIP, SigLIP, SigLIP 2, BioCLIP 2
converted to CLIP), which turns words into the space its image tower's embeddings are compared
in.

``text_tower(spec)`` takes an image column (``EmbeddingInfo`` or its description), a registered
backbone name, a hub id or a model folder and returns a :class:`TextTower` without loading
anything; the weights load on the first :meth:`TextTower.encode` or
:meth:`TextTower.project_images`. ``TEXT_TOWERS`` holds one factory per kind (the model family:
``clip``, ``siglip``); a backbone declares its kind in the ``BACKBONES`` registry.

>>> tower = text_tower(store.resolve_backbone("clip-vit-b-16"))
>>> T = tower.encode(["a photo of a daisy", "a photo of a rose"])      # (2, 512), unit rows
>>> P = tower.project_images(X)                 # the column's stored (N, 768) -> (N, 512)
>>> scores = P @ T.T                             # cosine similarities, image x text
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from embedstore._device import resolve_device
from embedstore._registry import Registry
from embedstore.backbones._backbones import (
    BACKBONES,
    BackboneError,
    _hub_offline_reason,
    hub_license,
)
from embedstore.backbones._text_spec import (
    TextTowerRef,
    _config_of,
    no_text_tower_reason,
    text_tower_ref,
)

TEXT_BATCH = 64  # texts per forward pass


class TextTower:
    """A frozen text encoder into an image column's image-text space.

    ``encode(texts) -> (N, dim)`` float32 rows of unit length; ``project_images(X)`` maps the
    column's stored image embeddings into the same space (CLIP: its visual projection, since
    the column holds the pooled output before it; SigLIP: the identity), unit length too, so
    ``project_images(X) @ encode(texts).T`` are cosine similarities and ``logit_scale`` (and
    SigLIP's ``logit_bias``) turn them into the model's own logits. A subclass implements
    :meth:`_load` and :meth:`_encode_batch`.
    """

    def __init__(self, ref: TextTowerRef, name: str) -> None:
        self.ref, self.name = ref, name
        self.kind, self.source = ref.kind, ref.source
        self.device = torch.device("cpu")
        self._loaded = False
        self._loading = threading.Lock()  # one load when threads share a tower
        self._dim: int | None = ref.dim
        self.image_dim: int | None = None  # the image column's dim the tower expects
        self.logit_scale: float | None = None  # exp of the learned temperature, once loaded
        self.logit_bias: float | None = None  # SigLIP's learned bias (None for CLIP)
        self._image_projection: torch.Tensor | None = None  # (dim, image_dim) or None

    @property
    def identity(self) -> str:
        """What the text cache keys this tower's embeddings by (kind, recipe, weights hash)."""
        return self.ref.identity

    @property
    def dim(self) -> int:
        """The image-text space's size (read from the column's record, else the weights)."""
        if self._dim is None:
            self.load()
        assert self._dim is not None
        return self._dim

    def to(self, device: str | torch.device) -> TextTower:
        self.device = torch.device(device)
        if self._loaded:
            self._move(self.device)
        return self

    def load(self) -> TextTower:
        """Load the weights and tokenizer now (the first encode does it otherwise)."""
        with self._loading:
            if not self._loaded:
                self._load()
                self._loaded = True
                self._move(self.device)
        return self

    def encode(self, texts: Sequence[str], batch_size: int = TEXT_BATCH) -> np.ndarray:
        """``texts`` -> float32 ``(N, dim)``, each row of unit length (L2-normalised)."""
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                Z = self._encode_batch(texts[s : s + batch_size]).float()  # (B, dim)
                out.append(F.normalize(Z, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def project_images(self, X: np.ndarray) -> np.ndarray:
        """The column's stored image embeddings ``(N, image_dim)`` (any float dtype) -> float32
        ``(N, dim)`` in the text tower's space, each row of unit length."""
        self.load()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.image_dim:
            raise BackboneError(
                f"text tower of {self.name}: image embeddings must be (N, {self.image_dim}), "
                f"not {X.shape}: give the column's stored embeddings"
            )
        with torch.inference_mode():
            Z = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))  # (N, image_dim)
            if self._image_projection is not None:
                Z = Z @ self._image_projection.T.cpu()  # (N, dim)
            return F.normalize(Z, dim=-1).numpy().astype(np.float32, copy=False)

    @property
    def image_projection(self) -> np.ndarray | None:
        """The linear map :meth:`project_images` applies before normalising, as float32
        ``(dim, image_dim)`` (CLIP's visual projection: ``project_images(X)`` is
        ``normalise(X @ P.T)``), or None where the column is already in the shared space
        (SigLIP). Loads the weights. What a head keeps to predict from the stored column
        without the tower."""
        self.load()
        if self._image_projection is None:
            return None
        return self._image_projection.detach().float().cpu().numpy().copy()

    def describe(self) -> dict[str, Any]:
        """What this tower is: its reference, and once loaded its scale and bias."""
        out = {**self.ref.to_dict(), "name": self.name, "dim": self._dim}
        out.update(
            image_dim=self.image_dim,
            image_projection=self._image_projection is not None,
            logit_scale=self.logit_scale,
            logit_bias=self.logit_bias,
        )
        return out

    def _load(self) -> None:
        raise NotImplementedError

    def _move(self, device: torch.device) -> None:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """One batch of texts -> unnormalised embeddings ``(B, dim)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class TextRecipe:
    """How a family tokenises and pools, as its model was trained: CLIP pads to the longest
    text and reads the end-of-text token (the mask changes nothing under its causal attention);
    SigLIP pads every text to its full length and reads the last position, with no mask."""

    padding: Literal["longest", "max_length"]
    attention_mask: bool
    projection: bool  # a text_projection / visual_projection pair outside the towers (CLIP)


RECIPES = {
    "clip": TextRecipe("longest", attention_mask=True, projection=True),
    "siglip": TextRecipe("max_length", attention_mask=False, projection=False),
}


class HFTextTower(TextTower):
    """The text tower of a Hugging Face ``CLIPModel`` or ``SiglipModel`` checkpoint."""

    def __init__(self, ref: TextTowerRef, name: str) -> None:
        super().__init__(ref, name)
        self.recipe = RECIPES[ref.kind]
        self._text: torch.nn.Module | None = None
        self._text_projection: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self._max_length = 64

    def _load(self) -> None:
        model, tokenizer = _load_pretrained(self.source, self.name)
        if model.config.model_type != self.kind:
            raise BackboneError(
                f"{self.source}: a {model.config.model_type} checkpoint, not {self.kind}; "
                "its column records another model"
            )
        tcfg, vcfg = model.config.text_config, model.config.vision_config
        self._text = model.text_model.eval().requires_grad_(False)
        self._tokenizer = tokenizer
        self._max_length = int(tcfg.max_position_embeddings)
        self.image_dim = int(vcfg.hidden_size)
        self.logit_scale = float(model.logit_scale.detach().exp())
        if self.recipe.projection:  # CLIP: both towers project into projection_dim
            self._text_projection = model.text_projection.eval().requires_grad_(False)
            self._image_projection = model.visual_projection.weight.detach().clone()
            dim = int(model.config.projection_dim)
        else:  # SigLIP: the text head maps into the image tower's own output space
            self.logit_bias = float(model.logit_bias.detach().reshape(-1)[0])
            dim = int(getattr(tcfg, "projection_size", None) or tcfg.hidden_size)
            if dim != self.image_dim:
                raise BackboneError(
                    f"{self.source}: its text tower gives {dim}-d embeddings and its image "
                    f"tower {self.image_dim}-d; they do not share a space"
                )
        if self._dim is not None and self._dim != dim:
            raise BackboneError(
                f"{self.source}: its text tower gives {dim}-d embeddings, the column recorded "
                f"{self._dim}-d: the weights changed since the column was embedded"
            )
        self._dim = dim

    def _move(self, device: torch.device) -> None:
        for m in (self._text, self._text_projection):
            if m is not None:
                m.to(device)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        assert self._text is not None
        enc = self._tokenizer(
            texts,
            padding=True if self.recipe.padding == "longest" else "max_length",
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"].to(self.device)  # (B, T)
        mask = enc.get("attention_mask") if self.recipe.attention_mask else None
        out = self._text(input_ids=ids, attention_mask=None if mask is None else mask.to(ids))
        pooled = out.pooler_output  # (B, H): the end-of-text token (CLIP), the head (SigLIP)
        if self._text_projection is not None:
            pooled = self._text_projection(pooled)  # (B, dim)
        return pooled


def _load_pretrained(source: str, name: str) -> tuple[Any, Any]:
    """The full image-text model and its tokenizer, with messages that say what to do."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = Path(source).expanduser().is_dir()
    offline = None if local else _hub_offline_reason(source)
    local_only = offline is not None
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        model = AutoModel.from_pretrained(source, config=config, local_files_only=local_only)
    except (OSError, ValueError) as e:
        lic = hub_license(source)
        gated = (
            " (gated: accept its licence on the hub, then `hf auth login`)"
            if (lic is not None and lic.gated)
            else ""
        )
        where = f"; {offline}: download it where the hub is reachable" if offline else ""
        raise BackboneError(
            f"text tower of {name}: cannot load {source} ({str(e).splitlines()[0]}){where}"
            f"{gated}, or give a local model folder"
        ) from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, ImportError, AttributeError, TypeError) as e:
        hint = (
            "`pip install 'embedstore[text]'` (sentencepiece, for SigLIP's tokenizer)"
            if "entencepiece" in str(e)
            else "save the checkpoint's tokenizer into the folder "
            "(`AutoTokenizer.from_pretrained(HUB_ID).save_pretrained(FOLDER)`)"
        )
        raise BackboneError(
            f"text tower of {name}: {source} has no usable tokenizer "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); {hint}"
        ) from e
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TextTowerSpec:
    """A kind of text tower: ``factory(ref=TextTowerRef, name=str) -> TextTower``."""

    factory: Callable[..., TextTower]
    note: str = ""


TEXT_TOWERS: Registry[TextTowerSpec] = Registry("text tower")


def register_text_tower(kind: str, factory: Callable[..., TextTower], *, note: str = "") -> None:
    """Register ``factory(ref=..., name=...)`` for image columns whose text tower is ``kind``
    (a backbone registered with ``text_tower=kind``, or a column recording it)."""
    TEXT_TOWERS.register(kind, TextTowerSpec(factory, note), replace=True)


register_text_tower("clip", HFTextTower, note="transformers CLIPModel (CLIP, BioCLIP 2 converted)")
register_text_tower("siglip", HFTextTower, note="transformers SiglipModel (SigLIP, SigLIP 2)")


def text_backbones() -> list[str]:
    """The registered backbones that have a text tower."""
    return [n for n in BACKBONES.list() if BACKBONES.get(n).text_tower]


def text_tower(spec: Any, *, device: str | torch.device | None = None) -> TextTower:
    """The text tower matching ``spec``: an image column (``EmbeddingInfo``, or its description
    dict), a registered backbone name, a hub id or a model folder. Nothing loads until it is
    used. A column or model without one raises :class:`BackboneError` naming the backbones that
    have one.

    >>> tower = text_tower("clip-vit-b-16")
    >>> tower = text_tower(store.resolve_backbone(None), device="cuda")
    """
    ref, name = _resolve_ref(spec)
    tower = TEXT_TOWERS.get(ref.kind).factory(ref=ref, name=name)
    if device is not None:
        tower.to(resolve_device(device))
    return tower


def _resolve_ref(spec: Any) -> tuple[TextTowerRef, str]:
    describe = getattr(spec, "describe", spec)
    if isinstance(describe, dict):
        name = str(describe.get("backbone", "?"))
        what = f"column {spec.column} ({name})" if hasattr(spec, "column") else name
        ref = text_tower_ref(describe)
        if ref is None:
            raise no_text_tower(what, no_text_tower_reason(describe) or "none recorded")
        return ref, name
    if not isinstance(spec, str):
        raise BackboneError(
            f"text_tower: give an image column, a backbone name, a hub id or a model folder, "
            f"not {type(spec).__name__}"
        )
    if spec in BACKBONES:
        entry = BACKBONES.get(spec)
        if not entry.text_tower:
            raise no_text_tower(spec, "it is an image-only model")
        return TextTowerRef(entry.text_tower, entry.source), spec
    describe = {"backbone": spec, "source": spec, "pooling": "cls"}
    ref = text_tower_ref(describe)
    if ref is None and Path(spec).expanduser().exists() and not _config_of(spec):
        raise BackboneError(f"{spec}: not a model folder (no config.json)")
    if ref is None and "/" in spec and not Path(spec).expanduser().exists():
        ref = _ref_from_hub(spec)  # an explicit hub id not in the cache: ask its config
    if ref is None:
        raise no_text_tower(spec, no_text_tower_reason(describe) or "unknown model")
    return ref, Path(spec.rstrip("/")).name


def _ref_from_hub(hub_id: str) -> TextTowerRef | None:
    from transformers import AutoConfig

    offline = _hub_offline_reason(hub_id)
    try:
        cfg = AutoConfig.from_pretrained(hub_id, local_files_only=offline is not None)
    except (OSError, ValueError) as e:
        raise BackboneError(
            f"{hub_id}: cannot read its config ({str(e).splitlines()[0]})"
            + (f"; {offline}" if offline else "")
        ) from e
    if cfg.model_type in RECIPES and hasattr(cfg, "text_config"):
        return TextTowerRef(cfg.model_type, hub_id)
    return None


def no_text_tower(what: str, reason: str) -> BackboneError:
    """The one-line error for a column or model without a text tower."""
    return BackboneError(
        f"{what} has no text tower: {reason}. Backbones with one: {', '.join(text_backbones())}, "
        "or a CLIP / SigLIP model folder (BioCLIP 2: `embedstore convert-open-clip`)"
    )


def check_texts(texts: Any) -> list[str]:
    """``texts`` as a list of strings; BackboneError for one bare string or a non-string."""
    if isinstance(texts, (str, bytes)):
        raise BackboneError("texts must be a list of strings, not one string: use [text]")
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise BackboneError(f"texts must be strings, not {type(t).__name__} {t!r}")
    return texts
