"""``heads train | tune``: fitting heads on a store's embeddings."""

from __future__ import annotations

from typing import Any

import click

import heads
from embedstore_cli._common import (
    DEVICE,
    Registered,
    backbone_option,
    detector_names_or_default,
    echo_json,
    head_names,
    json_option,
    options,
    quiet_option,
    store_option,
)
from embedstore_cli._settings import (
    head_setting_options,
    pseudo_setting_options,
    setting_option,
)
from heads.settings import BY_NAME
from heads.types import BOUNDS, DEFAULT_MIN_COUNT, DEFAULT_TARGET, ENSEMBLE_MEMBERS

# The options of ``heads train``: every head setting derived from ``heads.settings``, then the
# run's own options.
TRAIN_OPTIONS = options(
    click.option(
        "--fold",
        default="0",
        show_default=True,
        help="Validation fold K, or 'all' (then an ensemble of the folds).",
    ),
    click.option(
        "--backbone",
        "backbones",
        multiple=True,
        help="Embedding column's backbone (default: the only one); repeat to train on several, "
        "each L2-normalised and concatenated in the order given.",
    ),
    click.option(
        "--head",
        "head",
        type=Registered(head_names),
        default="mlp",
        show_default=True,
        help="Head from the registry.",
    ),
    head_setting_options,
    click.option(
        "--metadata", "metadata", multiple=True, help="Metadata column fed to the head; repeatable."
    ),
    click.option(
        "--aux-target",
        "aux_targets",
        multiple=True,
        help="Binary column learned as an auxiliary output; repeatable.",
    ),
    click.option(
        "--unknown",
        type=Registered(detector_names_or_default),
        default=None,
        is_flag=False,
        flag_value="default",
        help="Attach an unknown-class detector from the registry; bare --unknown: the default "
        "(energy-knn, best measured on fine-grained data; see heads openset).",
    ),
    click.option(
        "--unknown-label",
        default="unknown",
        show_default=True,
        help="Label of images of no known class.",
    ),
    click.option(
        "--class-thresholds",
        type=click.IntRange(1),
        default=None,
        metavar="MIN_COUNT",
        help="With --unknown: an unknown threshold per predicted class, fitted out-of-fold, for "
        "classes predicted at least MIN_COUNT times there (others: the global one); e.g. 20.",
    ),
    click.option(
        "--where", default=None, help="SQL filter on store rows used for training and validation."
    ),
    click.option(
        "--refit",
        is_flag=True,
        help="With --fold all: also train one model on every fold for the folds' median best epoch "
        "(saved as OUT/refit).",
    ),
    click.option(
        "--ensemble",
        "ensemble",
        type=click.Choice(ENSEMBLE_MEMBERS),
        default=None,
        help="What OUT predicts with: the fold runs, the refit, or both "
        "(default: both with --refit, "
        "else folds).",
    ),
    click.option(
        "--views/--no-views",
        "views",
        default=None,
        help="Train on the augmented views stored beside the embeddings "
        "(embedstore ingest --views) "
        "as augmentation (default: yes when the store has them).",
    ),
    click.option(
        "--tta/--no-tta",
        "tta",
        default=None,
        help="Predict with test-time augmentation: the mean of the main embedding's and the views' "
        "logits, for stored and new images alike (default: yes when the store has views).",
    ),
    click.option(
        "--rank",
        default=None,
        help="Train on the labels' names at this rank of the store's taxonomy (e.g. genus) "
        "instead of the labels; `heads hierarchy RUN --rank-run genus=THIS` can then use it.",
    ),
    click.option(
        "--seed", type=int, default=None, help="Random seed for initialisation and sampling."
    ),
    click.option("--device", type=DEVICE, default=None, help="Where to train (default: auto)."),
    pseudo_setting_options,
)


@click.command("train")
@store_option
@TRAIN_OPTIONS
@click.option(
    "--out", "out", default=None, help="Run directory (default runs/<head>-<backbone>-<time>)."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing run at --out (whole, once the new one is complete).",
)
@json_option
@quiet_option
def train_cmd(
    store: str | None,
    as_json: bool,
    quiet: bool,
    metadata: tuple[str, ...],
    aux_targets: tuple[str, ...],
    label_smoothing: float | None,
    backbones: tuple[str, ...],
    **kw: Any,
) -> None:
    """Train a head on one fold (or all folds) of a store's embeddings.

    \b
    Example:
      heads train --store flowers --fold all --head mlp --epochs 30 --out runs/mlp
      heads train --store flowers --fold all --head mlp --unknown --out runs/mlp-open
      heads train --store flowers --fold all --unknown --class-thresholds 20 --out runs/open
      heads train --store fungi --fold 0 --head transformer --metadata habitat --metadata month \\
          --aux-target poisonous --loss seesaw --sampler prior --unknown energy --out runs/tf
      heads train --store flowers --fold all --head mlp --refit --ensemble both --out runs/mlp
      heads train --store flowers --fold all --head centroid --reference train+val --transductive
      heads train --store flowers --fold all --head mlp --no-tta --out runs/mlp-views
      heads train --store flowers --fold all --head mlp --backbone efficientnet-lite0 \\
          --backbone dinov2-small --out runs/mlp-2bb
      heads train --store grocery --fold all --no-views --pseudo-label \\
          --unlabelled "split = 'test'" --out runs/mlp-pseudo
      heads train --store birds --head zeroshot --classes species.txt --names names.csv \\
          --templates "a photo of {}." --out runs/zeroshot
      heads train --store birds --fold all --head zeroshot --out runs/zeroshot-blend
      heads train --store grocery --fold all --head mlp --rank coarse_class --out runs/coarse
    """
    kw["backbone"] = list(backbones) if len(backbones) > 1 else (backbones or [None])[0]
    if label_smoothing is not None:
        kw["loss_kwargs"] = {"label_smoothing": label_smoothing}
    res = heads.train(
        store, metadata=list(metadata), aux_targets=list(aux_targets), progress=not quiet, **kw
    )
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        echo_json(res.to_dict())
        return
    nan = float("nan")
    if res.views["train"] or res.views["tta"]:
        click.echo(
            f"views: {', '.join(res.views['train'] or res.views['tta'])} "
            f"(training: {'yes' if res.views['train'] else 'no'}, "
            f"TTA: {'yes' if res.views['tta'] else 'no'}; --no-views / --no-tta turn them off)"
        )
    for m in res.metrics:
        if m.fold is None:  # a zero-shot run: no labelled training image, no folds
            _echo_zero_shot(m)
            continue
        chosen = "".join(f", {k} {v}" for k, v in (m.chosen or {}).items() if k == "blend")
        click.echo(
            f"fold {m.fold}: top1 {m.metrics.get('top1', nan):.4f}  "
            f"macro-F1 {m.metrics.get('macro_f1', nan):.4f}  "
            f"({f'{m.epochs} epochs, ' if m.epochs else ''}{m.fit_seconds} s{chosen})  -> {m.run}"
        )
    if res.refit is not None:
        r = res.refit
        click.echo(
            f"refit on all folds: {r.metrics['n_train']} images"
            f"{f', {r.epochs} epochs' if r.epochs else ''} ({r.fit_seconds} s)  -> {r.run}"
        )
    if res.pseudo is not None:
        echo_pseudo(res.pseudo)
    e = res.ensemble_metrics
    if e is not None:
        click.echo(
            f"ensemble of {len(res.runs)} folds (out-of-fold): "
            f"top1 {e.metrics.get('top1', nan):.4f}  "
            f"macro-F1 {e.metrics.get('macro_f1', nan):.4f}  -> {res.ensemble}"
        )
        if e.holdout is not None:
            click.echo(
                f"held-out part: top1 {e.holdout.get('top1', nan):.4f}  "
                f"macro-F1 {e.holdout.get('macro_f1', nan):.4f}"
            )
    if res.hierarchy is not None:
        echo_hierarchy(res.hierarchy)


def echo_hierarchy(h: Any) -> None:
    """A fitted hierarchy in a few lines: each rank's out-of-fold top-1 and source, the
    thresholds, and how the fallback answered the rows it was fitted on."""
    tops = ", ".join(
        f"{r} {h.rank_top1[r]:.4f}" + (f" ({s['source']})" if s else "")
        for r, s in zip(h.ranks, [None, *h.sources], strict=True)
    )
    click.echo(f"hierarchy ({' < '.join(h.ranks)}), out-of-fold top-1: {tops}")
    for s in h.sources:
        if "run" in s["oof_top1"]:
            click.echo(
                f"  {s['rank']}: roll-up {s['oof_top1']['rollup']:.4f} vs its own run "
                f"{s['oof_top1']['run']:.4f} out-of-fold: uses the {s['source']}"
            )
    ths = "; ".join(
        f"{t['rank']} {'never' if t['threshold'] is None else format(t['threshold'], '.3f')}"
        + (f" ({t['classes_with_own']} classes their own)" if t["classes_with_own"] else "")
        for t in h.thresholds
    )
    bound = " (Wilson 95% lower bound)" if h.bound == "wilson" else ""
    click.echo(f"  fallback thresholds for {h.target:.0%} right answers{bound}: {ths}")
    ans = h.oof["answered"]
    acc = h.oof.get("accuracy", {})
    words = ", ".join(
        f"{r} {ans[r]:.1%}" + (f" (right {acc[r]:.1%})" if acc.get(r) is not None else "")
        for r in [*h.ranks, "none"]
    )
    click.echo(f"  answered at (fitted rows, optimistic): {words}  -> {h.file}")


def echo_pseudo(p: Any) -> None:
    """What --pseudo-label chose and did, in a few lines."""
    for c in p.choice:
        what = (
            "plain (no pseudo-labels)"
            if not c["fraction"]
            else (f"fraction {c['fraction']:g}, weight {c['weight']:g}")
        )
        click.echo(
            f"  out-of-fold {what}: top1 {c['oof_top1']:.4f}  macro-F1 {c['oof_macro_f1']:.4f}"
        )
    if not p.fraction:
        click.echo(
            f"pseudo-labels: none helped out-of-fold on the labelled rows; the run is the plain "
            f"fit ({p.n_unlabelled} unlabelled rows: {p.unlabelled})"
        )
        return
    click.echo(
        f"pseudo-labels: fraction {p.fraction:g}, weight {p.weight:g} ({p.chosen}) of "
        f"{p.n_unlabelled} unlabelled rows ({p.unlabelled})"
    )
    for r in p.rounds:
        click.echo(f"  round {r['round']}: {r['rows']} rows of {r['classes']} classes")
    click.echo(f"  recorded in {p.labels}")


def _echo_zero_shot(m: Any) -> None:
    """The line of a run made of class names alone, and its held-out scores."""
    click.echo(f"zero-shot run from class names (no labelled training image)  -> {m.run}")
    h = m.metrics.get("holdout")
    if h and h.get("n_known"):
        click.echo(
            f"held-out part: top1 {h.get('top1', float('nan')):.4f}  "
            f"macro-F1 {h.get('macro_f1', float('nan')):.4f}  ({h['n_known']} images)"
        )
    else:
        click.echo("no labelled held-out image to score it on (`heads eval` once there are some)")


# The search and training options of ``heads tune``, one block.
TUNE_OPTIONS = options(
    click.option(
        "--head",
        "head",
        type=Registered(head_names),
        default="mlp",
        show_default=True,
        help="Head to tune (a neural head: linear, mlp, transformer).",
    ),
    click.option(
        "--trials", type=click.IntRange(1), default=50, show_default=True, help="Trials, at most."
    ),
    click.option(
        "--timeout-s",
        type=click.FloatRange(0, min_open=True),
        default=None,
        help="Stop the search after this many seconds (a running trial stops between folds); "
        "the best is then retrained, which takes about one trial more.",
    ),
    click.option(
        "--fold",
        default="all",
        show_default=True,
        help="'all': score trials out-of-fold over every fold and retrain all folds; "
        "K: on fold K only.",
    ),
    backbone_option,
    click.option(
        "--losses",
        default=None,
        help="Comma-separated losses to try (default: every registered loss).",
    ),
    setting_option(BY_NAME["epochs"]),
    setting_option(BY_NAME["batch_size"]),
    setting_option(BY_NAME["patience"]),
    click.option(
        "--where", default=None, help="SQL filter on store rows used for training and validation."
    ),
    click.option(
        "--views/--no-views",
        "views",
        default=None,
        help="Train every trial and the best run on the augmented views stored beside the "
        "embeddings (embedstore ingest --views), as heads train does (default: yes when the store "
        "has them).",
    ),
    click.option(
        "--tta/--no-tta",
        "tta",
        default=None,
        help="Score the trials and predict with the best run by test-time augmentation: "
        "the mean of "
        "the main embedding's and the views' logits (default: yes when the store has views).",
    ),
    click.option(
        "--seed", type=int, default=0, show_default=True, help="Seeds the sampler and every head."
    ),
    click.option("--device", type=DEVICE, default=None, help="Where to train (default: auto)."),
)


@click.command("tune")
@store_option
@TUNE_OPTIONS
@click.option(
    "--out",
    default=None,
    help="Run directory for the best parameters (default runs/<head>-tuned-...).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run at --out.")
@json_option
@quiet_option
def tune_cmd(store: str | None, losses: str | None, as_json: bool, quiet: bool, **kw: Any) -> None:
    """Search a head's learning rate, weight decay, dropout, hidden width, loss and label
    smoothing with Optuna for the best out-of-fold macro-F1, then retrain the best into --out
    (a normal run folder, with trials.csv, trials.json and trials.png beside it).
    --timeout-s bounds the search; the retrain of the best comes after it.

    \b
    Example:
      heads tune --store grocery --head mlp --trials 50 --timeout-s 600 --out runs/mlp-tuned
      heads tune --store flowers --head mlp --trials 30 --no-tta --out runs/mlp-tuned-views
      heads eval runs/mlp-tuned
    """
    loss_list = [s.strip() for s in losses.split(",") if s.strip()] if losses else None
    res = heads.tune(store, losses=loss_list, progress=not quiet, **kw)
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"{res.n_trials} trials ({res.n_complete} complete, {res.n_pruned} pruned, "
        f"{res.n_failed} failed) in {res.seconds:.0f} s"
    )
    if res.timeout_s is not None:
        click.echo(
            f"search {'stopped after' if res.seconds >= res.timeout_s else 'took'} "
            f"{res.seconds:.0f} s (--timeout-s {res.timeout_s:g} bounds the "
            f"search); retraining the best took {res.retrain_seconds:.0f} s more "
            f"({res.seconds + res.retrain_seconds:.0f} s in all)"
        )
    if res.default_macro_f1 is not None:
        click.echo(
            f"default recipe (trial 0): macro-F1 {res.default_macro_f1:.4f}  "
            f"top1 {res.default_top1:.4f}"
        )
    click.echo(
        f"best (trial {res.best_trial}): macro-F1 {res.best_macro_f1:.4f}  top1 {res.best_top1:.4f}"
    )
    click.echo(
        "  "
        + "  ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in res.best_params.items()
        )
    )
    if res.views["train"] or res.views["tta"]:
        click.echo(
            f"views: {', '.join(res.views['train'] or res.views['tta'])} "
            f"(training: {'yes' if res.views['train'] else 'no'}, "
            f"TTA: {'yes' if res.views['tta'] else 'no'})"
        )
    e = res.train.ensemble_metrics if res.train is not None else None
    if e is not None and e.holdout is not None:
        click.echo(
            f"held-out part: top1 {e.holdout.get('top1', float('nan')):.4f}  "
            f"macro-F1 {e.holdout.get('macro_f1', float('nan')):.4f}"
        )
    click.echo(f"-> {res.run}  (trials: {res.trials_csv}, {res.trials_png})")


@click.command("hierarchy")
@click.argument("run", type=click.Path(path_type=str))
@click.option(
    "--rank-run",
    "rank_runs",
    multiple=True,
    metavar="RANK=RUN",
    help="A run trained at a coarser rank (heads train --rank RANK, same store and folds): used "
    "for that rank if more accurate out-of-fold than the roll-up; repeatable.",
)
@click.option(
    "--target",
    type=click.FloatRange(0, 1, min_open=True),
    default=DEFAULT_TARGET,
    show_default=True,
    help="Share of the answers at each rank that must be right out-of-fold.",
)
@click.option(
    "--min-count",
    type=click.IntRange(1),
    default=DEFAULT_MIN_COUNT,
    show_default=True,
    help="Validation rows a predicted class needs for its own threshold (else its rank's).",
)
@click.option(
    "--bound",
    type=click.Choice(BOUNDS),
    default="none",
    show_default=True,
    help="none: the answers' share right must reach --target on the validation rows; wilson: "
    "its one-sided 95% lower bound must (a margin for small validation parts).",
)
@click.option("--store", default=None, help="Store whose taxonomy to use if the run recorded none.")
@json_option
def hierarchy_cmd(run: str, rank_runs: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Fit a run's answers at every rank of its store's taxonomy on its validation part: each
    rank's source (the fine probabilities summed up the tree, or a --rank-run) and the fallback
    thresholds `heads predict --fallback` uses. `heads train` does this when the store has a
    taxonomy; run it again to change --target or add a rank run.

    \b
    Example:
      heads hierarchy runs/mlp --target 0.95
      heads hierarchy runs/mlp-val --target 0.9 --bound wilson
      heads hierarchy runs/mlp --rank-run coarse_class=runs/coarse
    """
    pairs = {}
    for spec in rank_runs:
        rank, sep, path = spec.partition("=")
        if not sep or not rank or not path:
            raise click.BadParameter(f"{spec!r}: give RANK=RUN", param_hint="--rank-run")
        pairs[rank] = path
    res = heads.taxonomy.fit_hierarchy(run, rank_runs=pairs, **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    echo_hierarchy(res)
