"""``heads predict``: labels for images with a run or an ensemble, one by one or in batch."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

import heads
from embedstore.types import (
    ENGINES,
)
from embedstore_cli._common import (
    CliUserError,
    device_option,
    echo_json,
    options,
    ray_options,
    runtime_option,
    sets_options,
)

# ``heads predict`` batch mode: a Lance table of predictions, locally or on Ray.
BATCH_OPTIONS = options(
    click.option(
        "--out",
        default=None,
        type=click.Path(path_type=str),
        help="Batch mode: write every prediction to this Lance table "
        "(id, path, label, probability, top_k, unknown).",
    ),
    click.option(
        "--store",
        default=None,
        help="Batch mode without images: predict every image of this store "
        "(default: the run's store).",
    ),
    click.option("--overwrite", is_flag=True, help="Batch mode: replace an existing --out table."),
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="local",
        show_default=True,
        help="Batch mode: local, or ray (a Ray cluster; pip install 'embedstore[ray]').",
    ),
    ray_options,
)


@click.command("predict")
@click.argument("run", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--images",
    "images_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Predict every image under this folder.",
)
@click.option(
    "--top-k", type=click.IntRange(1), default=5, show_default=True, help="Labels listed per image."
)
@click.option(
    "--prior",
    default=None,
    help="'uniform' or a label,probability CSV/JSON: adjust to a test label distribution.",
)
@click.option(
    "--cost-matrix",
    default=None,
    type=click.Path(path_type=str),
    help="CSV cost[true, predicted]: choose the label of least expected cost.",
)
@click.option(
    "--species-list",
    default=None,
    type=click.Path(path_type=str),
    help="Only these labels may be the answer: a file of one label a line, label,weight CSV "
    "rows or a JSON list (labels the run does not know are skipped).",
)
@click.option(
    "--prior-by",
    default=None,
    metavar="COLUMN",
    help="Weigh labels by how common each was at the image's value of this metadata column "
    "in the training rows (e.g. country); a stored image's own value, or --place.",
)
@click.option(
    "--place",
    default=None,
    metavar="VALUE",
    help="With --prior-by: the value for every image (e.g. --prior-by country --place DK).",
)
@sets_options
@device_option
@runtime_option
@click.option(
    "--group-by",
    default=None,
    help="One answer per group from the mean logits of its images: a store column "
    "(e.g. observation_id) or 'folder' (each image's folder).",
)
@click.option(
    "--fallback",
    is_flag=True,
    help="Also answer at the finest rank of the store's taxonomy whose confidence clears its "
    "threshold (fitted out-of-fold; `heads hierarchy`): rank, answer and each rank's top-1.",
)
@click.option(
    "--csv", "csv_path", default=None, help="Also write the predictions to this CSV file."
)
@BATCH_OPTIONS
@click.option("--json", "as_json", is_flag=True, help="A list with one object per image.")
def predict_cmd(
    run: str, images: tuple[str, ...], as_json: bool, csv_path: str | None, **kw: Any
) -> None:
    """Top-k labels for images with a run or ensemble (new images are embedded on the fly).

    \b
    Example:
      heads predict runs/mlp photo1.jpg photo2.jpg --top-k 3
      heads predict runs/ens --images new_photos/ --prior uniform --json
      heads predict runs/mlp photo.jpg --fallback
      heads predict runs/ens photo.jpg --species-list denmark.txt --coverage 0.9
      heads predict runs/ens photo.jpg --prior-by country --place DK
      heads predict runs/mlp --store flowers --engine ray --out predictions.lance
    """
    batch = {k: kw.pop(k) for k in _BATCH_KEYS}
    if batch["out"] is not None or batch["engine"] != "local" or batch["store"] is not None:
        if batch["out"] is None:
            raise click.UsageError(
                "batch prediction (--engine, --store) writes a table: give --out PATH"
            )
        if kw.pop("group_by", None) is not None or csv_path or kw.pop("fallback", False):
            raise click.UsageError("--group-by, --fallback and --csv do not apply with --out")
        local = [k for k in _ONE_BY_ONE if kw.pop(k, None) not in (None, "lac")]
        if local:
            given = ", ".join("--" + k.replace("_", "-") for k in local)
            raise click.UsageError(f"{given}: not with --out (predict the images one by one)")
        _predict_batch(run, images, as_json, **batch, **kw)
        return
    folders = [p for p in images if os.path.isdir(p)]
    if folders:
        raise CliUserError(
            f"{folders[0]}: is a folder; give image files, or --images {folders[0]} for every "
            "image under it"
        )
    res = heads.predict(run, list(images), **kw)
    if csv_path:
        heads.prediction.write_predictions_csv(res, csv_path)
    if as_json:
        echo_json([r.to_dict() for r in res])
    else:
        _print_predictions(res, csv_path)
    if all(r.error is not None for r in res):
        click.echo("error: no image could be predicted", err=True)
        sys.exit(1)


# What only one-by-one prediction answers (the batch table has no columns for them).
_ONE_BY_ONE = ("species_list", "prior_by", "place", "coverage", "set_score", "calibrate_on")
_BATCH_KEYS = (
    "out",
    "store",
    "overwrite",
    "engine",
    "ray_address",
    "actors",
    "gpus_per_actor",
    "cpus_per_actor",
)


def _predict_batch(run: str, images: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Batch mode: every prediction into a Lance table (``--out``); a summary line."""
    s = heads.predict_batch(run, images=list(images), **kw)
    if as_json:
        echo_json(s.to_dict())
    else:
        click.echo(
            f"{s.images} predictions ({s.errors} errors, {s.unknown} unknown) written "
            f"to {s.out} in {s.seconds} s ({s.images_per_s} img/s, {s.engine})"
        )
    if s.images and s.errors == s.images:
        click.echo("error: no image could be predicted", err=True)
        sys.exit(1)


def _fallback_words(r: Any) -> str:
    """``coarse_class Apple (label Golden-Delicious 0.41 < 0.62)``: the answer and the ranks
    below it that were not confident enough."""
    shown = []
    for k in r.ranks:
        t = "never" if k["threshold"] is None else f"{k['threshold']:.2f}"
        mark = ">=" if k["rank"] == r.rank else "<"
        shown.append(f"{k['rank']} {k['label']} {k['confidence']:.2f} {mark} {t}")
        if k["rank"] == r.rank:
            break
    what = (
        f"{r.rank} {r.answer}"
        if r.rank is not None
        else ("unknown" if r.unknown else "no rank confident")
    )
    return f"{what}  ({'; '.join(shown)})"


def _print_predictions(res: list[Any], csv_path: str | None) -> None:
    for r in res:
        if r.error is not None:
            click.echo(f"{r.path}: error: {r.error}")
            continue
        tops = ", ".join(f"{t['label']} {t['probability']:.4f}" for t in r.top_k)
        flag = "  [unknown]" if r.unknown else ""
        group = f"  [group {r.group}]" if r.group else ""
        click.echo(f"{r.path}: {r.label}{flag}{group}  ({tops})")
        if r.unconstrained is not None and r.unconstrained["label"] != r.label:
            u = r.unconstrained
            why = " (unusual here)" if r.unusual_here else ""
            click.echo(f"    the image alone: {u['label']} {u['probability']:.4f}{why}")
        elif r.unusual_here:
            click.echo("    unusual here")
        if r.set is not None:
            click.echo(f"    set ({len(r.set)}): {', '.join(r.set)}")
        if r.ranks is not None:
            click.echo(f"  fallback: {_fallback_words(r)}")
    if csv_path:
        click.echo(f"predictions written to {csv_path}")
