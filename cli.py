"""Command line: ``embedstore ...`` and ``heads ...``.

This module only parses options and calls the library with keyword arguments; every command is a
plain library call underneath (``embedstore.ingest``, ``heads.train`` ...).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

STORE_HELP = "Store folder (default: $EMBEDSTORE_PATH or ./embedstore)."
_USER_ERRORS: tuple[type[Exception], ...] = ()


def _user_errors() -> tuple[type[Exception], ...]:
    """Library exceptions that mean 'bad input': shown as one clear line, exit code 2."""
    global _USER_ERRORS
    if not _USER_ERRORS:
        import embedstore
        import heads

        _USER_ERRORS = (
            embedstore.StoreError, embedstore.IngestError, embedstore.BackboneError,
            embedstore.MetadataError, embedstore.ImageError, heads.HeadsError, FileNotFoundError,
            ValueError,
        )  # fmt: skip
    return _USER_ERRORS


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as e:
            if isinstance(e, _user_errors()) and not os.environ.get("EMBEDSTORE_DEBUG"):
                raise click.ClickException(str(e)) from None
            raise


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ============================================================================ embedstore


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embedstore")
def embedstore_cli() -> None:
    """Embed image collections with frozen backbones into a Lance store.

    \b
    Example:
      embedstore ingest ../shared/data/flowers12 --store flowers
      embedstore info --store flowers
      embedstore lookup photo.jpg --store flowers --k 5
    """


@embedstore_cli.command("ingest")
@click.argument("images_dir", type=click.Path(path_type=str))
@click.option("--store", "store", default=None, help=STORE_HELP)
@click.option("--backbone", "backbones", multiple=True, default=("efficientnet-lite0",), show_default=True,
              help="Backbone short name, Hugging Face hub id or local model folder; repeatable.")
@click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default="cls", show_default=True,
              help="Token pooling for transformer backbones.")
@click.option("--metadata", type=click.Path(path_type=str), default=None,
              help="CSV or Parquet file joined to images by relative path, file name or id.")
@click.option("--join-column", default=None, help="Metadata column holding the image path/name/id.")
@click.option("--label-column", default=None, help="Metadata column holding the label (default: class folder).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(0), default=None, help="Decode worker processes (default: cores - 1).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored embedding precision.")
@click.option("--max-pixels", type=click.IntRange(1), default=89_478_485, show_default=True,
              help="Larger images are skipped as possible decompression bombs.")
@click.option("--commit-every", type=click.IntRange(1), default=512, show_default=True,
              help="Images per atomic commit (a killed run resumes from the last one).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ingest_cmd(images_dir: str, store: str | None, backbones: tuple[str, ...], quiet: bool, as_json: bool,
               **kw: Any) -> None:  # fmt: skip
    """Embed every image under IMAGES_DIR into the store (incremental, resumable).

    Labels come from class folders (IMAGES_DIR/<label>/<image>) unless --label-column names a
    metadata column. Set EMBEDSTORE_DEBUG=1 for tracebacks instead of one-line errors. Files that cannot be used are skipped and listed in STORE/skipped.csv.

    \b
    Example:
      embedstore ingest ../shared/data/flowers12 --store flowers
      embedstore ingest photos/ --metadata meta.csv --backbone dinov2-small --backbone efficientnet-lite0
    """
    import embedstore

    summary = embedstore.ingest(images_dir, store, backbones=list(backbones), progress=not quiet, **kw)
    if as_json:
        _echo_json(summary)
    else:
        emb = ", ".join(f"{k}: {v}" for k, v in summary["embedded"].items())
        click.echo(
            f"{summary['files_found']} files: {summary['new_images']} new, {summary['already_stored']} already stored, "
            f"{summary['duplicates']} duplicate names, {summary['skipped']} skipped; embedded {emb} "
            f"in {summary['seconds']} s ({summary['images_per_s']} img/s on {summary['device']})"
        )
        for reason, n in summary["skipped_by_reason"].items():
            click.echo(f"  skipped {n}: {reason}")
        if summary["skipped"]:
            click.echo(f"  skipped files are listed in {summary['skipped_file']}")
        for w in summary["warnings"]:
            click.echo(f"  warning: {w}")
        click.echo(f"store {summary['store']}: {summary['images_in_store']} images, version {summary['store_version']}")
    if not summary["ok"]:
        click.echo("error: no image could be ingested; see the reasons above", err=True)
        sys.exit(1)


@embedstore_cli.command("info")
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_cmd(store: str | None, as_json: bool) -> None:
    """Summarise a store: images, classes (long tail), backbones, version, size, skipped files.

    \b
    Example:
      embedstore info --store flowers --json
    """
    import embedstore

    info = embedstore.connect(store, create=False).info()
    if as_json:
        _echo_json(info)
        return
    click.echo(f"store      {info['store']}  (version {info['version']}, {_human_bytes(info['size_bytes'])} on disk)")
    click.echo(f"images     {info['images']}  ({info['labelled']} labelled, {info['unlabelled']} unlabelled)")
    c = info["classes"]
    if c["count"]:
        click.echo(
            f"classes    {c['count']}  (largest {c['largest']['label']}: {c['largest']['images']}, smallest "
            f"{c['smallest']['label']}: {c['smallest']['images']}, median {c['median_images']:g}, "
            f"{c['under_5_images']} with < 5 images)"
        )
    else:
        click.echo("classes    0")
    for b in info["backbones"]:
        click.echo(f"backbone   {b['name']}  dim {b['dim']} {b['dtype']}, {b['embedded']} embedded  [{b['column']}]")
    if info.get("folds"):
        f = info["folds"]
        click.echo(f"folds      {f.get('folds')} (seed {f.get('seed')}, holdout {f.get('holdout')}, group-by {f.get('group_by')})")
    s = info["skipped"]
    click.echo(f"skipped    {s['count']}" + (f"  ({', '.join(f'{k}: {v}' for k, v in s['by_reason'].items())}; see {s['file']})" if s["count"] else ""))
    if info.get("columns"):
        click.echo(f"columns    {', '.join(info['columns'])}")


@embedstore_cli.command("backbones")
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def backbones_cmd(pattern: str, as_json: bool) -> None:
    """List registered backbones (glob PATTERN). Any hub id or model folder also works.

    \b
    Example:
      embedstore backbones 'dinov2*'
    """
    import embedstore

    rows = embedstore.list_backbones(pattern)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<22} {r['source']}")


# ============================================================================ heads


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embedstore")
def heads_cli() -> None:
    """Train, evaluate, ensemble and predict with heads on stored embeddings.

    \b
    Example:
      embedstore split --store flowers --folds 5
      heads train --store flowers --fold all --head mlp --out runs/mlp
      heads eval runs/mlp
    """


if __name__ == "__main__":  # pragma: no cover
    embedstore_cli()
