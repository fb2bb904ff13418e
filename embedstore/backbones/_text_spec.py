"""Which image columns have a text tower, and which: what an image-text backbone records in its
column's description at ingest (``text_tower``), and the same record derived from the recorded
backbone for columns ingested before towers were recorded.

Torch-free (``embedstore info`` reads it), and it never downloads: a hub id is recognised by its
family's prefix or by the ``config.json`` already in the Hugging Face cache.

>>> ref = text_tower_ref(info.describe)          # None: the column has no text tower
>>> ref.kind, ref.source, ref.identity
('clip', 'openai/clip-vit-base-patch16', 'clip/v1:5c3f...')
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# model_type of the checkpoints whose text tower embedstore runs (a TEXT_TOWERS kind each)
TEXT_KINDS = ("clip", "siglip")
# hub ids of those families (SigLIP 2's fixed-resolution checkpoints are SiglipModel too)
HUB_TEXT_KINDS = {"openai/clip-": "clip", "google/siglip-": "siglip", "google/siglip2-": "siglip"}
# Bumped when what a tower computes for the same weights changes (tokenisation, pooling): the
# cache keys text embeddings by it, so older entries are never served for the new recipe.
TEXT_RECIPE_VERSION = 1


@dataclass(frozen=True)
class TextTowerRef:
    """Where an image column's text tower comes from, without loading it.

    ``kind``: a ``TEXT_TOWERS`` name (``clip``, ``siglip``); ``source``: the hub id or model
    folder; ``weights_sha256``: the checkpoint's hash as the column recorded it (None when
    unknown); ``dim``: the image-text space's size (None until loaded, for a derived tower);
    ``recorded``: written at ingest (True) or derived from the recorded backbone (False).
    """

    kind: str
    source: str
    weights_sha256: str | None = None
    dim: int | None = None
    recorded: bool = False

    @property
    def identity(self) -> str:
        """The model's identity in the text cache: kind, recipe version and the weights' hash
        (the source where the hash is unknown)."""
        return f"{self.kind}/v{TEXT_RECIPE_VERSION}:{self.weights_sha256 or self.source}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "identity": self.identity}


def text_record(model_type: str, has_text_model: bool, pooling: str, source: str, dim: int):
    """The ``text_tower`` entry an image backbone writes into its column's description, or None.

    Only the image tower's own output (pooling ``cls``: CLIP's pooled CLS, SigLIP's attention
    pool) shares a space with the text tower; a ``mean`` pooling does not.
    """
    if model_type not in TEXT_KINDS or not has_text_model or pooling != "cls":
        return None
    return {"kind": model_type, "source": source, "dim": int(dim)}


def text_tower_ref(describe: dict[str, Any]) -> TextTowerRef | None:
    """The text tower of the column ``describe`` describes (recorded, else derived), or None."""
    weights = describe.get("weights_sha256")
    weights = None if weights in (None, "", "unknown") else str(weights)
    rec = describe.get("text_tower")
    if isinstance(rec, dict) and rec.get("kind") and rec.get("source"):
        dim = rec.get("dim")
        return TextTowerRef(
            str(rec["kind"]), str(rec["source"]), weights, int(dim) if dim else None, True
        )
    if no_text_tower_reason(describe) is not None:
        return None
    source = str(describe.get("source") or "")
    kind = _kind_of_source(source)
    return None if kind is None else TextTowerRef(kind, source, weights, None, False)


def no_text_tower_reason(describe: dict[str, Any]) -> str | None:
    """Why the column ``describe`` describes has no text tower (None when it has one)."""
    if isinstance(describe.get("text_tower"), dict):
        return None
    name = describe.get("backbone", "?")
    if describe.get("view"):
        return f"{name}'s augmented view {describe['view']!r} is not a column text is compared to"
    pooling = describe.get("pooling", "cls")
    source = str(describe.get("source") or "")
    if _kind_of_source(source) is None:
        model_type = _config_of(source).get("model_type")
        what = f"model type {model_type}" if model_type else f"weights from {source or '?'}"
        return f"{name} is an image-only model ({what})"
    if pooling != "cls":
        return (
            f"{name} was pooled with {pooling!r}, which is not the image tower's output; "
            "ingest with pooling 'cls' to compare images with text"
        )
    return None


def _kind_of_source(source: str) -> str | None:
    """``clip`` / ``siglip`` for a checkpoint of those families holding both towers, else None."""
    for prefix, kind in HUB_TEXT_KINDS.items():
        if source.startswith(prefix):
            return kind
    cfg = _config_of(source)
    model_type = cfg.get("model_type")
    return model_type if model_type in TEXT_KINDS and "text_config" in cfg else None


def _config_of(source: str) -> dict[str, Any]:
    """The ``config.json`` of a model folder, or of a hub id already in the Hugging Face cache
    (never downloaded); {} when there is none."""
    if not source or source.startswith("pypi:"):
        return {}
    path: str | None = str(Path(source).expanduser() / "config.json")
    if not Path(str(path)).is_file():
        path = None
        if "/" in source and not Path(source).expanduser().exists():
            try:
                from huggingface_hub import try_to_load_from_cache

                found = try_to_load_from_cache(source, "config.json")
                path = found if isinstance(found, str) else None
            except (ImportError, ValueError):
                path = None
    if path is None:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}
