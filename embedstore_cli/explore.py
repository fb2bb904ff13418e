"""``embedstore lookup | index | backbones | duplicates | map``: searching and looking at a
store."""

from __future__ import annotations

from typing import Any

import click

import embedstore
from embedstore.types import (
    LOOKUP_INDEXES,
    MAP_METHODS,
)
from embedstore_cli._common import (
    DEVICE,
    backbone_option,
    device_option,
    echo_json,
    json_option,
    json_summary_option,
    runtime_option,
    store_option,
)


@click.command("lookup")
@click.argument("queries", nargs=-1, required=True)
@store_option
@click.option("--k", "k", type=int, default=10, show_default=True, help="Neighbours per query.")
@backbone_option
@click.option("--where", default=None, help="SQL filter on stored rows, e.g. \"habitat = 'wood'\".")
@click.option(
    "--column", "columns", multiple=True, help="Metadata column to show (repeatable; default: all)."
)
@click.option(
    "--index",
    type=click.Choice(LOOKUP_INDEXES),
    default="auto",
    show_default=True,
    help="auto: the saved index when fresh (see `embedstore index`), else exact search; "
    "exact/ivf/hnsw: that kind.",
)
@device_option
@runtime_option
@click.option("--json", "as_json", is_flag=True, help="A list with one object per query.")
def lookup_cmd(
    queries: tuple[str, ...], columns: tuple[str, ...], as_json: bool, **kw: Any
) -> None:
    """The nearest stored images to each query (an image file or a stored row id), and a vote.

    An exact duplicate of a stored image comes back first with similarity 1.

    \b
    Example:
      embedstore lookup mushroom.jpg --store fungi --k 10 --where "habitat = 'wood'"
      embedstore lookup 3f2a...e9 --store fungi --json
    """
    res = embedstore.lookup(kw.pop("store"), list(queries), columns=list(columns) or None, **kw)
    if as_json:
        echo_json([q.to_dict() for q in res.results])
        return
    how = f"{res.index_kind} index" if res.used_index else "exact search"
    click.echo(f"{res.backbone} embeddings, {how}")
    for w in res.warnings:
        click.echo(f"warning: {w}")
    for q in res.results:
        v = q.vote
        score = "-" if v["score"] is None else f"{v['score']:.3f}"
        click.echo(f"{q.query}: vote {v['label']} ({score})")
        for n in q.neighbors:
            click.echo(f"  {n['similarity']:.4f}  {n['label']}  {n['path']}")


@click.command("index")
@store_option
@backbone_option
@click.option(
    "--kind",
    type=click.Choice(LOOKUP_INDEXES),
    default="auto",
    show_default=True,
    help="auto: IVF from 200,000 vectors, exact below.",
)
@click.option(
    "--nlist", type=click.IntRange(1), default=None, help="IVF lists (default ~4 sqrt(N))."
)
@click.option("--force", is_flag=True, help="Rebuild even when the index is up to date.")
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="Where to build.")
@json_summary_option
def index_cmd(as_json: bool, **kw: Any) -> None:
    """Build or refresh the ANN index `embedstore lookup` uses for a backbone.

    \b
    Example:
      embedstore index --store fungi --kind ivf
    """
    res = embedstore.build_index(kw.pop("store"), **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    state = "built" if res.built else "already up to date"
    click.echo(
        f"{res.kind} index of {res.ntotal} {res.backbone} embeddings ({res.dim}-d) {state} at "
        f"store version {res.store_version}: {res.path} ({res.seconds} s)"
    )


@click.command("backbones")
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def backbones_cmd(pattern: str, as_json: bool) -> None:
    """List registered backbones (glob PATTERN) and whether each is on this machine already.
    Any hub id or model folder also works.

    \b
    Example:
      embedstore backbones 'dinov2*'
    """
    rows = embedstore.list_backbones(pattern)
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'name':<22} {'weights':<9} {'licence':<24} {'text':<7} source")
    for r in rows:
        here = "here" if r["local"] else "download"
        # a licence we have not checked on the weights' own card is "not stated", not guessed
        lic = (r.get("license") or "not stated") + (" (gated)" if r.get("gated") else "")
        text = r.get("text_tower") or "none"
        click.echo(f"{r['name']:<22} {here:<9} {lic:<24} {text:<7} {r['source']}")
    click.echo(
        "here: the weights are on this machine (works offline); "
        "download: fetched from the hub on first use;\n"
        "gated: the hub asks you to accept the licence and request access first "
        "(then `hf auth login`); not stated: read the weights' model card before use;\n"
        "text: the kind of its text tower (`embedstore embed-texts`), none for image-only models"
    )


@click.command("duplicates")
@store_option
@backbone_option
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.9,
    show_default=True,
    help="Cosine similarity from which two images are near-duplicates.",
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Neighbours searched per image (pairs per image at most).",
)
@click.option(
    "--index",
    type=click.Choice(LOOKUP_INDEXES),
    default="auto",
    show_default=True,
    help="auto: the saved index when fresh, else exact below 20,000 images, IVF above.",
)
@click.option("--where", default=None, help="SQL filter on the rows to compare.")
@click.option(
    "--out", default=None, help="Folder for duplicates.csv and .png (default STORE/duplicates)."
)
@click.option("--top", type=click.IntRange(1), default=12, show_default=True, help="Groups drawn.")
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="Where to search.")
@json_option
def duplicates_cmd(as_json: bool, **kw: Any) -> None:
    """Near-duplicate images by embedding similarity, and the leakage they cause across splits,
    folds (held-out part included) and labels. Writes a CSV of every pair and a contact sheet.

    \b
    Example:
      embedstore duplicates --store flowers --threshold 0.9
    """
    res = embedstore.find_duplicates(kw.pop("store") or embedstore.default_store_path(), **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    leak = ", ".join(f"{k} {v}" for k, v in res.leakage.items() if v) or "none"
    click.echo(
        f"{res.images} images ({res.backbone}, {res.index} index): "
        f"{res.pairs_found} near-duplicate "
        f"pairs (cosine >= {res.threshold}) in {res.groups_found} groups; leaking pairs: {leak}"
    )
    if res.holdout_images:
        click.echo(
            f"  {res.holdout_images} held-out image(s) have a near-duplicate in a training fold"
        )
    for g in res.groups[:5]:
        leaks = f"  [leak: {', '.join(g.leaks)}]" if g.leaks else ""
        click.echo(
            f"  group {g.group} ({g.size}, {g.similarity:.3f}): "
            f"{', '.join(map(str, g.paths[:4]))}{leaks}"
        )
    for n in res.notes:
        click.echo(f"  note: {n}")
    click.echo(f"pairs: {res.csv}" + (f"\ncontact sheet: {res.png}" if res.png else ""))


@click.command("map")
@store_option
@backbone_option
@click.option(
    "--color",
    default="label",
    show_default=True,
    help="Column colouring the points: label, split, fold or any other.",
)
@click.option("--out", default=None, help="PNG to write (default STORE/map.png).")
@click.option(
    "--method",
    type=click.Choice(MAP_METHODS),
    default="auto",
    show_default=True,
    help="auto: PCA under 100 images, UMAP otherwise.",
)
@click.option(
    "--top",
    type=click.IntRange(1),
    default=12,
    show_default=True,
    help="Values named in the legend.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed of the 2-D layout."
)
@json_option
def map_cmd(as_json: bool, **kw: Any) -> None:
    """A 2-D map of the collection (UMAP), written back as the store columns map_x and map_y,
    and a PNG coloured by a column.

    \b
    Example:
      embedstore map --store flowers --color label --out map.png
    """
    res = embedstore.map_store(kw.pop("store") or embedstore.default_store_path(), **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"{res.method.upper()} map of {res.images} images ({res.backbone}) written to columns "
        f"{', '.join(res.columns)} (store version {res.store_version}); PNG: {res.png}"
    )
    for n in res.notes:
        click.echo(f"  note: {n}")
