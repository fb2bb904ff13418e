"""``embedstore search``: stored images found by words (the column's text tower), or by words
and a photo ("like this photo, but ...")."""

from __future__ import annotations

from typing import Any

import click

import embedstore
from embedstore.types import TEXT_WEIGHT
from embedstore_cli._common import (
    backbone_option,
    device_option,
    echo_json,
    runtime_option,
    store_option,
)


@click.command("search")
@click.option("--text", required=True, help='The words to search for, e.g. "a photo of a daisy".')
@store_option
@click.option(
    "--image",
    default=None,
    help="An image file or a stored row id to blend with the text (like this photo, but ...).",
)
@click.option(
    "--weight",
    type=click.FloatRange(0, 1),
    default=TEXT_WEIGHT,
    help="The text's share of the query with --image: 0 the image alone, 1 the text alone.",
)
@click.option("--k", "k", type=click.IntRange(1), default=10, help="Images returned.")
@backbone_option
@click.option("--where", default=None, help="SQL filter on stored rows, e.g. \"split = 'train'\".")
@click.option(
    "--column", "columns", multiple=True, help="Metadata column to show (repeatable; default: all)."
)
@device_option
@runtime_option
@click.option("--json", "as_json", is_flag=True, help="A list with one object: lookup's shape.")
def search_cmd(columns: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """The stored images that best match words, through the text tower of an image-text
    backbone (CLIP, SigLIP, BioCLIP 2 ...); with --image, the words and a photo blended.

    The search is exact, in the space the text and image towers share; texts are cached in the
    store, so a text searched again is not embedded again.

    \b
    Example:
      embedstore search --text "a photo of a daisy" --store flowers --k 5
      embedstore search --text "but pink" --image photo.jpg --weight 0.3 --store flowers \\
        --where "split = 'train'" --json
    """
    res = embedstore.search_text(
        kw.pop("store"), kw.pop("text"), columns=list(columns) or None, **kw
    )
    if as_json:
        echo_json([q.to_dict() for q in res.results])
        return
    click.echo(f"{res.backbone} embeddings and its text tower, exact search")
    for w in res.warnings:
        click.echo(f"warning: {w}")
    for q in res.results:
        v = q.vote
        score = "-" if v["score"] is None else f"{v['score']:.3f}"
        blend = (
            f" + {q.image} (text weight {q.weight:g})"
            if isinstance(q, embedstore.search.TextQuery) and q.image
            else ""
        )
        click.echo(f"{q.query!r}{blend}: vote {v['label']} ({score})")
        for n in q.neighbors:
            click.echo(f"  {n['similarity']:.4f}  {n['label']}  {n['path']}")
