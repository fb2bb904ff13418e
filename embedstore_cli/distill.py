"""``heads distill``: one head trained to match a fold ensemble's probabilities."""

from __future__ import annotations

from typing import Any

import click

import heads
from embedstore_cli._common import (
    DEVICE,
    Registered,
    echo_json,
    head_names,
    json_option,
    quiet_option,
)
from embedstore_cli._settings import distill_setting_options, head_setting_options


@click.command("distill")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", "out", default=None, help="Run directory of the student (default: RUN-distilled)."
)
@click.option(
    "--unlabelled",
    default=None,
    help="SQL filter on store rows whose teacher answers the student learns without their "
    "labels being read, e.g. \"split = 'test'\" (default: the teacher's --unlabelled, else the "
    "rows with no label).",
)
@distill_setting_options
@click.option(
    "--head",
    "head",
    type=Registered(head_names),
    default="mlp",
    show_default=True,
    help="The student's head (one that learns soft targets: linear, mlp, transformer).",
)
@head_setting_options
@click.option(
    "--views/--no-views",
    "views",
    default=None,
    help="Train the student on the stored augmented views too (default: yes when stored).",
)
@click.option(
    "--tta/--no-tta",
    "tta",
    default=None,
    help="The student predicts with test-time augmentation (default: yes when views are stored).",
)
@click.option("--seed", type=int, default=None, help="Random seed of the student.")
@click.option("--device", type=DEVICE, default=None, help="Where to train (default: auto).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run at --out.")
@json_option
@quiet_option
def distill_cmd(
    run: str, as_json: bool, quiet: bool, label_smoothing: float | None, **kw: Any
) -> None:
    """Train one head to match RUN's (temperature-scaled) probabilities on the labelled and
    the unlabelled rows of its store: one model's predict cost for the ensemble's answers.

    \b
    Example:
      heads train --store grocery --fold all --no-views --pseudo-label \\
          --unlabelled "split = 'test'" --out runs/mlp-pseudo
      heads distill runs/mlp-pseudo --out runs/mlp-distilled
      heads eval runs/mlp-distilled
    """
    if label_smoothing is not None:
        raise click.UsageError("--label-smoothing: a student learns soft targets already")
    res = heads.distill(run, progress=not quiet, **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"student {res.head}: {res.n_labelled} labelled + {res.n_unlabelled} unlabelled rows "
        f"({res.unlabelled}), T {res.temperature:g}, label weight {res.label_weight:g}"
        f"{f', {res.epochs} epochs' if res.epochs else ''} ({res.fit_seconds} s)  -> {res.run}"
    )
    nan = float("nan")
    for name, h in (("teacher", res.teacher_holdout), ("student", res.holdout)):
        if h is not None:
            click.echo(
                f"held-out part, {name}: top1 {h.get('top1', nan):.4f}  "
                f"macro-F1 {h.get('macro_f1', nan):.4f}"
            )
    if res.holdout_agreement is not None:
        s = res.predict_seconds
        click.echo(
            f"same class as the teacher on {res.holdout_agreement:.1%} of the held-out rows; "
            f"logits in {s['student']:.3f} s against the teacher's {s['teacher']:.3f} s"
        )
