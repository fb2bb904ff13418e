"""``embedstore ingest | info | check | drop-column | split``: building and keeping a store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

import embedstore
from embedstore.types import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    EMB_DTYPES,
    ENGINES,
    POOLINGS,
)
from embedstore_cli._common import (
    device_option,
    echo_json,
    human_bytes,
    json_summary_option,
    options,
    quiet_option,
    ray_options,
    runtime_option,
    store_option,
)

# How ``embedstore ingest`` embeds: backbones, metadata, decoding limits, commits, engine, views.
INGEST_OPTIONS = options(
    click.option(
        "--backbone",
        "backbones",
        multiple=True,
        default=("efficientnet-lite0",),
        show_default=True,
        help="Backbone short name, Hugging Face hub id or local model folder; repeatable.",
    ),
    click.option(
        "--pooling",
        type=click.Choice(POOLINGS),
        default="cls",
        show_default=True,
        help="Token pooling for transformer backbones.",
    ),
    click.option(
        "--metadata",
        type=click.Path(path_type=str),
        default=None,
        help="CSV or Parquet file joined to images by relative path, file name or id.",
    ),
    click.option(
        "--join-column", default=None, help="Metadata column holding the image path/name/id."
    ),
    click.option(
        "--label-column",
        default=None,
        help="Metadata column holding the label (default: class folder).",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(1),
        default=64,
        show_default=True,
        help="Images per forward pass.",
    ),
    device_option,
    runtime_option,
    click.option(
        "--workers",
        type=click.IntRange(0),
        default=None,
        help="Decode worker processes (default: cores - 1).",
    ),
    click.option(
        "--dtype",
        type=click.Choice(EMB_DTYPES),
        default="float16",
        show_default=True,
        help="Stored embedding precision.",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Larger images are skipped as possible decompression bombs.",
    ),
    click.option(
        "--prune",
        is_flag=True,
        help="Also remove rows whose files were deleted or now hold other bytes (see `info`).",
    ),
    click.option(
        "--max-bytes",
        type=click.IntRange(1),
        default=DEFAULT_MAX_BYTES,
        show_default=True,
        help="Larger files are skipped unread "
        "(FIFOs, devices and other non-regular files always are).",
    ),
    click.option(
        "--commit-every",
        type=click.IntRange(1),
        default=512,
        show_default=True,
        help="Images per atomic commit (a killed run resumes from the last one).",
    ),
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="local",
        show_default=True,
        help="local: this process; ray: decode and embed on a Ray cluster "
        "(pip install 'embedstore[ray]').",
    ),
    ray_options,
    click.option(
        "--views",
        default=None,
        metavar="NAMES",
        help="Also store embeddings of augmented views, comma-separated: flip, crops5 (4 corner + "
        "centre crops at 87.5%), or crop_tl/crop_tr/crop_bl/crop_br/crop_c. "
        "On a store that has the "
        "images only the views are embedded; heads train on them and predict with them (TTA).",
    ),
    click.option(
        "--taxonomy",
        type=click.Path(path_type=str),
        default=None,
        help="CSV of the ranks above the labels: a header naming them, finest first "
        "(species,genus,family), one row per label; checked first, set on the store at the end.",
    ),
)


@click.command("ingest")
@click.argument("images_dir", type=click.Path(path_type=str))
@store_option
@INGEST_OPTIONS
@json_summary_option
@quiet_option
def ingest_cmd(
    images_dir: str,
    store: str | None,
    backbones: tuple[str, ...],
    quiet: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Embed every image under IMAGES_DIR into the store (incremental, resumable).

    Labels come from class folders (IMAGES_DIR/<label>/<image>) unless --label-column names a
    metadata column. Set EMBEDSTORE_DEBUG=1 for tracebacks instead of one-line errors. Files that
    cannot be used are skipped and listed in STORE/skipped.csv.

    \b
    Example:
      embedstore ingest ../shared/data/flowers12 --store flowers
      embedstore ingest photos/ --metadata meta.csv --backbone dinov2-small \
--backbone efficientnet-lite0
      embedstore ingest ../shared/data/flowers12 --store flowers --views flip,crops5
    """
    summary = embedstore.ingest(
        images_dir, store, backbones=list(backbones), progress=not quiet, **kw
    )
    s = summary
    if as_json:
        echo_json(s.to_dict())
    else:
        click.echo(
            f"{s.files_found} files: {s.new_images} new, {s.already_stored} already stored, "
            f"{s.duplicates} duplicate names, {s.skipped} skipped; embedded {_embedded(s)} "
            f"in {s.seconds} s ({s.images_per_s} img/s on {s.device}, "
            f"{'/'.join(dict.fromkeys(s.runtimes.values()))})"
        )
        for reason, n in s.skipped_by_reason.items():
            click.echo(f"  skipped {n}: {reason}")
        if s.skipped:
            click.echo(f"  skipped files are listed in {s.skipped_file}")
        for w in s.warnings:
            click.echo(f"  warning: {w}")
        if s.pruned:
            click.echo(f"  pruned {s.pruned} image(s) whose files are gone or changed")
        if s.taxonomy:
            click.echo("  taxonomy: " + " < ".join(f"{r} ({n})" for r, n in s.taxonomy.items()))
        click.echo(f"store {s.store}: {s.images_in_store} images, version {s.store_version}")
    if not s.ok:
        click.echo("error: no image could be ingested; see the reasons above", err=True)
        sys.exit(1)


def _embedded(s: embedstore.IngestSummary) -> str:
    """What an ingest embedded, per backbone: its images, then its views with their counts
    ("tiny-dino: 0 images + 24 views (flip: 12, crop_c: 12)")."""
    out = []
    for name, n in s.embedded.items():
        vs = s.views.get(name, {})
        views = ", ".join(f"{v}: {k}" for v, k in vs.items())
        out.append(
            f"{name}: {n} images + {sum(vs.values())} views ({views})" if vs else f"{name}: {n}"
        )
    return ", ".join(out)


@click.command("info")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_cmd(store: str | None, as_json: bool) -> None:
    """Summarise a store: images, classes (long tail), backbones, version, size, skipped files.

    \b
    Example:
      embedstore info --store flowers --json
    """
    info = embedstore.connect(store, create=False).info().to_dict()
    if as_json:
        echo_json(info)
        return
    click.echo(
        f"store      {info['store']}  "
        f"(version {info['version']}, {human_bytes(info['size_bytes'])} on disk)"
    )
    click.echo(
        f"images     {info['images']}  "
        f"({info['labelled']} labelled, {info['unlabelled']} unlabelled)"
    )
    c = info["classes"]
    if c["count"]:
        click.echo(
            f"classes    {c['count']}  "
            f"(largest {c['largest']['label']}: {c['largest']['images']}, smallest "
            f"{c['smallest']['label']}: {c['smallest']['images']}, median {c['median_images']:g}, "
            f"{c['under_5_images']} with < 5 images)"
        )
    else:
        click.echo("classes    0")
    for b in info["backbones"]:
        click.echo(
            f"backbone   {b['name']}  dim {b['dim']} {b['dtype']}, {b['embedded']} embedded by "
            f"{' + '.join(b.get('runtimes') or ['torch'])}  [{b['column']}]"
        )
        t = b.get("text_tower")
        click.echo(
            f"  text     {t['kind']} text tower ({t['source']}), {t['cached_texts']} text(s) cached"
            if t
            else "  text     none (an image-only model: no text tower)"
        )
        if b.get("views"):
            click.echo(
                "  views    "
                + ", ".join(f"{v['name']} ({v['embedded']} embedded)" for v in b["views"])
                + f"  [{b['column']}__<view>]"
            )
    if info.get("folds"):
        f = info["folds"]
        click.echo(f"folds      {f.get('folds')} ({_fold_words(f)})")
        if f.get("note"):
            click.echo(f"           warning: {f['note']}")
    s = info["skipped"]
    click.echo(
        f"skipped    {s['count']}"
        + (
            f"  ({', '.join(f'{k}: {v}' for k, v in s['by_reason'].items())}; see {s['file']})"
            if s["count"]
            else ""
        )
    )
    if info.get("columns"):
        click.echo(f"columns    {', '.join(info['columns'])}")
    if info.get("taxonomy"):
        click.echo("taxonomy   " + " < ".join(f"{r} ({n})" for r, n in info["taxonomy"].items()))
    for w in info.get("warnings") or []:
        click.echo(f"warning    {w}")
    stale = info.get("stale_files") or {}
    if stale.get("gone") or stale.get("changed"):
        click.echo(
            f"warning    {stale['gone']} ingested file(s) deleted "
            f"and {stale['changed']} changed on "
            "disk since; their rows describe the old files: run `embedstore ingest FOLDER "
            "--prune` to bring the store in step"
        )


@click.command("check")
@store_option
@click.option(
    "--repair", is_flag=True, help="Go back to the last good version of each damaged table."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_cmd(store: str | None, repair: bool, as_json: bool) -> None:
    """Verify every version of the store's tables: manifests readable, data files present.

    Says in plain words what is damaged and what to do; exits 1 while damage remains.

    \b
    Example:
      embedstore check --store flowers
      embedstore check --store flowers --repair
    """
    r = embedstore.check(store or embedstore.default_store_path(), repair=repair)
    if as_json:
        echo_json(r.to_dict())
    else:
        for t in r.tables:
            if t["versions"] or t["damaged"]:
                state = "DAMAGED" if t["damaged"] else "ok"
                click.echo(
                    f"{t['table']:8} {state}: {t['versions']} version(s), latest "
                    f"{t['latest']}, last good {t['last_good']}"
                )
        for line in r.problems:
            click.echo(f"  problem: {line}")
        for line in r.advice:
            click.echo(f"  to do: {line}")
        if r.repaired:
            click.echo("repaired: damaged versions moved to " + str(Path(r.store) / "damaged"))
        click.echo("store is sound" if r.ok else "store is damaged")
    if not r.ok:
        sys.exit(1)


@click.command("drop-column")
@click.argument("name")
@store_option
def drop_column_cmd(name: str, store: str | None) -> None:
    """Remove the metadata column NAME from every image of the store (one commit).

    The columns ingest writes itself (id, path, label ...) and embedding columns are kept.

    \b
    Example:
      embedstore drop-column --store flowers emb_notes
    """
    embedstore.store.drop_column(store, name)
    click.echo(f"dropped column {name}")


@click.command("split")
@store_option
@click.option(
    "--folds", type=click.IntRange(2), default=5, show_default=True, help="Number of folds K."
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Fraction held out as a test part no fold trains on.",
)
@click.option(
    "--group-by", default=None, help="Column whose groups stay in one fold (e.g. observation_id)."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed (the same seed gives the same folds).",
)
@click.option(
    "--use-split",
    "use_split_column",
    is_flag=True,
    help="Honour the store's split column (train/val/test folders): "
    "test is held out, val is fold 0.",
)
@json_summary_option
def split_cmd(store: str | None, as_json: bool, **kw: Any) -> None:
    """Write a stratified (optionally grouped) fold assignment into the store.

    Classes with fewer groups than folds train in every fold; the summary says how many.

    \b
    Example:
      embedstore split --store flowers --folds 5 --holdout 0.1 --seed 0
      embedstore split --store fungi --folds 5 --group-by observation_id
      embedstore split --store flowers --folds 3 --use-split
    """
    res = embedstore.split(store, **kw).to_dict()
    if as_json:
        echo_json(res)
        return
    per = ", ".join(f"fold {k}: {v}" for k, v in res["images_per_fold"].items())
    click.echo(
        f"{per}; held out: {res['holdout_images']}; always train: {res['always_train_images']} "
        f"({res['small_classes']} class(es) too small to split); unlabelled: {res['unlabelled']}"
    )
    for n in res["notes"]:
        click.echo(f"  {n}")


def _fold_words(f: dict[str, Any]) -> str:
    """What a split did: ``seed 0; held out 240 images (the split column's ...); no groups``."""
    held = f.get("holdout_images") or 0
    if f.get("use_split_column"):
        part = f"held out {held} images (the split column's test/val)"
    elif f.get("holdout"):
        part = f"held out {held} images ({f['holdout']:.0%})"
    else:
        part = "nothing held out"
    groups = f"grouped by {f['group_by']}" if f.get("group_by") else "no groups"
    return f"seed {f.get('seed')}; {part}; {groups}"


@click.command("taxonomy")
@click.argument("file", required=False, type=click.Path(path_type=str))
@store_option
@click.option(
    "--rank",
    "ranks",
    multiple=True,
    help="A metadata column naming each image's parent at a coarser rank, finest first "
    "(repeatable: --rank genus --rank family); instead of FILE.",
)
@click.option("--clear", is_flag=True, help="Remove the store's taxonomy.")
@json_summary_option
def taxonomy_cmd(
    file: str | None, store: str | None, ranks: tuple[str, ...], clear: bool, as_json: bool
) -> None:
    """Set (or show) the ranks above the store's labels: runs trained on the store then answer
    at every rank (`heads predict --fallback`) and `heads eval` scores each rank.

    FILE is a CSV whose header names the ranks, finest first, with one row per label; or name
    metadata columns with --rank. A label (or a genus) under two parents is refused. Without
    FILE, --rank or --clear: the store's taxonomy.

    \b
    Example:
      embedstore taxonomy taxonomy.csv --store fungi       # species,genus,family
      embedstore taxonomy --store grocery --rank coarse_class
    """
    res = embedstore.store.set_taxonomy(store, file, ranks=list(ranks), clear=clear)
    if as_json:
        echo_json(res.to_dict())
        return
    if clear:
        click.echo(f"taxonomy removed from {res.store}")
        return
    per = " < ".join(f"{r} ({n})" for r, n in res.names_per_rank.items())
    click.echo(f"{res.store}: taxonomy {per}, from {res.source}")
    for w in res.warnings:
        click.echo(f"  warning: {w}")
    if res.extra_labels:
        click.echo(f"  {len(res.extra_labels)} label(s) of the taxonomy have no image yet")
