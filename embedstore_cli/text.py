"""``embedstore embed-texts | convert-open-clip``: words in the space of an image column (its
text tower, through the store's text cache), and open_clip checkpoints such as BioCLIP 2 made
into a model folder the backbones and text towers load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

import embedstore
from embedstore_cli._common import (
    backbone_option,
    device_option,
    echo_json,
    store_option,
)


@click.command("embed-texts")
@click.argument("texts", nargs=-1, required=True)
@store_option
@backbone_option
@device_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the (N, dim) float32 embeddings to this .npy file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result (with vectors) as JSON.")
def embed_texts_cmd(texts: tuple[str, ...], out: str | None, as_json: bool, **kw: Any) -> None:
    """Embed TEXTS with the text tower of an image column (CLIP, SigLIP, BioCLIP 2 ...).

    Each text is cached in the store per model, so it is never embedded twice; the vectors are
    of unit length, in the space the tower maps the column's images into.

    \b
    Example:
      embedstore embed-texts "a photo of a daisy" "a photo of a rose" --store flowers \\
        --backbone clip-vit-b-16 --out prompts.npy
    """
    res = embedstore.search.text_embeddings(
        kw.pop("store"), list(texts), kw.pop("backbone"), device=kw.pop("device")
    )
    if out is not None:
        np.save(out, res.embeddings)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"{len(res.texts)} text(s) -> {res.embeddings.shape[0]} x {res.dim} float32 "
        f"({res.cached} from the cache, {res.computed} embedded"
        + ("" if res.stored else ", not cached: the store is being written")
        + f") by the text tower of {res.backbone} [{res.column}]"
        + (f"; written to {out}" if out else "")
    )


@click.command("convert-open-clip")
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--tokenizer",
    default=None,
    help="Hugging Face tokenizer (hub id or folder) matching the checkpoint's "
    "(default: its hf_tokenizer_name, else openai/clip-vit-large-patch14: open_clip's BPE).",
)
def convert_open_clip_cmd(source: str, out: str, tokenizer: str | None) -> None:
    """Convert an open_clip ViT CLIP (SOURCE: a downloaded folder or hf-hub:ORG/NAME) into a
    transformers CLIP folder OUT, usable as --backbone OUT and for its text tower.

    \b
    Example:
      hf download imageomics/bioclip-2 --local-dir bioclip-2-open_clip
      embedstore convert-open-clip bioclip-2-open_clip models/bioclip-2
      embedstore ingest photos/ --store birds --backbone models/bioclip-2
    """
    path = embedstore.backbones.convert_open_clip(source, out, tokenizer=tokenizer)
    click.echo(
        f"converted {source} -> {Path(path)} (transformers CLIPModel); use it with "
        f"`--backbone {path}`"
    )
