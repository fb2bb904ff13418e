"""``heads eval | ensemble | openset | issues | report``: scoring and inspecting runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import heads
from embedstore_cli._common import (
    Registered,
    backbone_option,
    detector_names,
    device_option,
    echo_json,
    float_list,
    human_bytes,
    json_option,
    run_store_option,
    sets_options,
    store_option,
)
from heads.types import (
    AVERAGES,
    METRIC_NAMES,
)

_EVAL_KEYS = METRIC_NAMES


class _EvalCommand(click.Command):
    """``heads eval``: its help ends with what each score means (from the library)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        with formatter.section("Scores"):
            formatter.write_dl(list(heads.evaluation.MEASURES.items()))


@click.command("eval", cls=_EvalCommand)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--store", default=None, help="Store to read the held-out part from (default: the run's)."
)
@click.option(
    "--recall-k",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="k of recall@k (FungiCLEF 2025 scored recall@5, per observation).",
)
@sets_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run or ensemble.")
def eval_cmd(runs: tuple[str, ...], store: str | None, as_json: bool, **kw: Any) -> None:
    """Score runs or ensembles side by side: on the validation part (out-of-fold for a fold
    ensemble) and on the store's held-out part.

    \b
    Example:
      heads eval runs/mlp runs/knn runs/ens
      heads eval runs/mlp --json
      heads eval runs/ens --coverage 0.9 --calibrate-on "path LIKE '%/val_%'"
    """
    results = [heads.evaluate(r, store=store, **kw).to_dict() for r in runs]
    if as_json:
        echo_json(results)
        return
    recall = f"recall@{kw['recall_k']}"
    order = [recall if k == "recall@5" else k for k in _EVAL_KEYS]
    for part, key in (("validation (out-of-fold)", None), ("held-out part", "holdout")):
        parts = [r if key is None else r.get(key) for r in results]
        if not any(parts):
            continue
        keys = [k for k in order if any(isinstance((d or {}).get(k), float) for d in parts)]
        names = [Path(r["run"]).name or r["run"] for r in results]
        width = max(len(k) for k in ["images", *keys])
        cols = [max(10, len(n)) for n in names]
        click.echo(f"{part}")
        click.echo(
            f"  {'':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols, strict=True))
        )
        rows = [("images", [str((d or {}).get("n", "-")) for d in parts])]
        for k in keys:
            found = [(d or {}).get(k) for d in parts]
            rows.append((k, [f"{v:.4f}" if isinstance(v, float) else "-" for v in found]))
        for k, vals in rows:
            click.echo(
                f"  {k:<{width}}  "
                + "  ".join(f"{v:>{w}}" for v, w in zip(vals, cols, strict=True))
            )
    _echo_hierarchy(results)
    for r in results:
        if r.get("sets"):
            c = r["sets"]
            click.echo(
                f"{r['run']}: {c['coverage']:.0%} sets ({c['score']}) calibrated on {c['n']} "
                f"images ({c['source']}), {c['classes_with_own_threshold']} classes with a "
                "threshold of their own"
            )
        if r.get("most_confused"):
            pairs = ", ".join(
                f"{p['true']}->{p['predicted']} ({p['count']})" for p in r["most_confused"][:5]
            )
            click.echo(f"{r['run']}: most confused: {pairs}")
        for png in ("per_class_png", "holdout_per_class_png", "confusion_png"):
            if r.get(png):
                click.echo(
                    f"{r['run']}: {png.removesuffix('_png').replace('_', ' ')} plot: {r[png]}"
                )


def _echo_hierarchy(results: list[dict[str, Any]]) -> None:
    """With a taxonomy: each run's top-1 at every rank, its mistake severity and how the
    fallback answered, on the validation and held-out parts."""
    for r in results:
        for part, d in (("validation", r.get("hierarchy")), ("held-out", r.get("holdout"))):
            h = d if part == "validation" else (d or {}).get("hierarchy")
            if not h:
                continue
            name = Path(r["run"]).name or r["run"]
            tops = ", ".join(
                f"{k} {v['top1']:.4f}" + (f" ({v['source']})" if v["source"] != "head" else "")
                for k, v in h["ranks"].items()
            )
            sev = h.get("mistake_severity")
            click.echo(
                f"{name}, {part} by rank: top-1 {tops}; mistake severity "
                f"{'-' if sev is None else format(sev, '.3f')} (distance "
                f"{h['hierarchical_distance']:.3f})"
            )
            fb = h.get("fallback")
            if fb:
                acc = fb.get("accuracy", {})
                words = ", ".join(
                    f"{k} {v:.1%}" + (f" right {acc[k]:.1%}" if acc.get(k) is not None else "")
                    for k, v in fb["answered"].items()
                )
                click.echo(f"  fallback (target {fb['target']:.0%} right): answered at {words}")


@click.command("ensemble")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out", required=True, help="Ensemble directory to write.")
@click.option(
    "--weights",
    callback=float_list,
    default="auto",
    help="Comma-separated member weights, or auto: greedy selection on the members' out-of-fold "
    "predictions (never below the best member out-of-fold; equal weights for folds of one run).",
)
@click.option(
    "--average",
    type=click.Choice(AVERAGES),
    default="logits",
    show_default=True,
    help="Average the members' (calibrated) log-probabilities, or their probabilities.",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Temperature-scale each member on its out-of-fold logits before averaging.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing ensemble at --out.")
@click.option(
    "--class-thresholds",
    type=click.IntRange(1),
    default=None,
    metavar="MIN_COUNT",
    help="Members with unknown detectors: an unknown threshold per predicted class, fitted on "
    "the out-of-fold margins, for classes predicted at least MIN_COUNT times (others: global).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def ensemble_cmd(runs: tuple[str, ...], out: str, as_json: bool, **kw: Any) -> None:
    """Average runs (folds, heads, backbones) into an ensemble usable wherever a run is.

    \b
    Example:
      heads ensemble runs/mlp runs/knn runs/tf --out runs/ens --weights 1,0.5,1
    """
    res = heads.ensemble(list(runs), out, **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    m = res.metrics
    vals = "  ".join(f"{k} {m[k]:.4f}" for k in _EVAL_KEYS if isinstance(m.get(k), float))
    click.echo(f"{res.run}: {vals}")
    if res.holdout:
        h = res.holdout
        click.echo(
            "held-out: "
            + "  ".join(f"{k} {h[k]:.4f}" for k in _EVAL_KEYS if isinstance(h.get(k), float))
        )


@click.command("openset")
@store_option
@backbone_option
@click.option(
    "--holdout-classes",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.25,
    show_default=True,
    help="Share of classes held out as unknown in each draw.",
)
@click.option(
    "--draws",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Random draws of held-out classes (scores are means over draws).",
)
@click.option(
    "--detector",
    "detectors",
    multiple=True,
    type=Registered(detector_names),
    help="Detector to measure (repeatable; default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the draws.")
@device_option
@click.option("--roc-png", default=None, help="Write ROC curves of the last draw to this PNG.")
@click.option(
    "--json", "as_json", is_flag=True, help="One object per detector: detector, auroc, fpr95."
)
def openset_cmd(as_json: bool, detectors: tuple[str, ...], **kw: Any) -> None:
    """Measure unknown-class detectors without labelled unknowns: hold out classes, train on the
    rest, and report each detector's AUROC and FPR at 95% TPR, averaged over draws.

    \b
    Example:
      heads openset --store flowers --holdout-classes 0.25 --roc-png roc.png
    """
    rows = heads.openset(
        kw.pop("store"), detectors=list(detectors) or None, progress=not as_json, **kw
    )
    if as_json:
        echo_json(rows)
        return
    click.echo(heads.evaluation.format_openset_table(rows))
    if kw.get("roc_png"):
        click.echo(f"ROC curves (last draw; legend: means over draws): {kw['roc_png']}")


@click.command("issues")
@click.argument("run", type=click.Path(path_type=str))
@click.option(
    "--top", type=click.IntRange(1), default=20, show_default=True, help="Suspects listed."
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Neighbours for the outlier score.",
)
@click.option(
    "--out", default=None, help="Folder for issues.csv and the PNGs (default RUN/issues)."
)
@run_store_option
@json_option
def issues_cmd(run: str, as_json: bool, **kw: Any) -> None:
    """Likely label errors (cleanlab on the run's out-of-fold probabilities) and outliers (low
    kNN density), with a PNG of the top suspects beside their nearest neighbours.

    \b
    Example:
      heads issues runs/mlp --top 30
    """
    res = heads.find_issues(run, **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"cleanlab flags {res.flagged} of {res.images} validation images of {run}; most suspect "
        "(lowest probability of their given label):"
    )
    for s in res.label_issues:
        flag = "" if s.flagged else "  (not flagged)"
        says = (
            f"model agrees but is unsure (p {s.given_probability:.2f}, next {s.runner_up} "
            f"{s.runner_up_probability:.2f}: near the decision boundary; "
            if s.agrees
            else f"model says {s.suggested} (p {s.suggested_probability:.2f}, "
        )
        click.echo(
            f"  #{s.rank} {s.path}: given {s.given}, {says}quality {s.label_quality:.3f}){flag}"
        )
    click.echo("outliers (lowest mean similarity to their neighbours):")
    for o in res.outliers[:5]:
        click.echo(
            f"  #{o.rank} {o.path} ({o.label}): {o.knn_similarity:.3f}, "
            f"closest class {o.nearest_class} {o.class_similarity:.3f}"
        )
    for n in res.notes:
        click.echo(f"  note: {n}")
    click.echo(
        f"every image: {res.csv}"
        + (f"\nsuspects: {res.png}\noutliers: {res.outliers_png}" if res.png else "")
    )


@click.command("report")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--out", default=None, help="HTML file to write (default RUN/report.html).")
@click.option(
    "--top",
    type=click.IntRange(1),
    default=12,
    show_default=True,
    help="Suspects, pairs and duplicate groups shown.",
)
@run_store_option
@click.option(
    "--threshold",
    "duplicates_threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.9,
    show_default=True,
    help="Near-duplicate cosine similarity.",
)
@json_option
def report_cmd(run: str, as_json: bool, **kw: Any) -> None:
    """One self-contained HTML page about a run: scores, per-class F1, confusions with example
    images, the unknown detector's ROC, suspected label errors and near-duplicates.

    \b
    Example:
      heads report runs/mlp --out report.html
    """
    res = heads.report(run, **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"wrote {res.path} ({human_bytes(res.bytes)}, {res.images_inlined} thumbnails; "
        f"{', '.join(res.sections)})"
    )
    for n in res.notes:
        click.echo(f"  note: {n}")
    for w in res.warnings:
        click.echo(f"  warning: {w}")


@click.command("unknowns")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--store", default=None, help="Store whose photos to look at (default: the run's).")
@click.option(
    "--where",
    default=None,
    help="SQL filter choosing the photos (default: the unlabelled ones and the held-out part).",
)
@click.option(
    "--out", default=None, help="Folder for the CSVs and contact sheets (default RUN/unknowns)."
)
@click.option(
    "--min-cluster-size",
    type=click.IntRange(2),
    default=5,
    show_default=True,
    help="Fewest photos a candidate class holds (HDBSCAN); the rest stay unclustered.",
)
@click.option(
    "--tiles", type=click.IntRange(1), default=24, show_default=True, help="Photos per sheet."
)
@device_option
@json_option
def unknowns_cmd(run: str, as_json: bool, **kw: Any) -> None:
    """Group the photos RUN's unknown detector rejects into candidate new classes: a contact
    sheet per cluster, clusters.csv (cluster, id, path: what labelling a cluster takes) and
    cluster_names.csv, where a reviewer names each cluster.

    \b
    Example:
      heads unknowns runs/mlp-open --store flowers
      heads unknowns runs/mlp-open --where "split = 'new'" --out review/
    """
    res = heads.evaluation.cluster_unknowns(run, **kw)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(
        f"{res.rejected} of {res.rows} photos rejected by the unknown detector; "
        f"{res.clustered} in {len(res.clusters)} candidate class(es) ({res.method})"
    )
    for c in res.clusters:
        seen = ", ".join(f"{k} {v}" for k, v in list(c.stored_labels.items())[:3])
        click.echo(
            f"  cluster {c.cluster}: {c.size} photos -> {c.sheet}"
            + (f"  (stored labels: {seen})" if seen else "")
        )
    if res.purity is not None:
        click.echo(f"  purity against the stored labels: {res.purity:.3f}")
    for n in res.notes:
        click.echo(f"  note: {n}")
    click.echo(
        f"clusters: {res.csv}\nname them in {res.names_csv} (a label call that reads these "
        "does not exist yet)"
    )
