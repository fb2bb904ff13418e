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

from embedstore._options import (
    AVERAGES,
    CLASS_WEIGHTS,
    DEVICE_CHOICES,
    EMB_DTYPES,
    LOOKUP_INDEXES,
    METRIC_NAMES,
    POOLINGS,
    SAMPLERS,
    check_device,
)

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


class _Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (presence is checked by the library)."""

    name = "|".join(DEVICE_CHOICES)

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return check_device(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DEVICE = _Device()


class _Registered(click.Choice):
    """A choice among a registry's names, listed when first needed (keeps ``--help`` light)."""

    def __init__(self, names: Any) -> None:
        self._names = names
        super().__init__([])

    @property
    def choices(self) -> list[str]:  # type: ignore[override]
        return list(self._names())

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass


def _heads_names() -> list[str]:
    import heads

    return heads.list_heads()


def _loss_names() -> list[str]:
    import heads

    return heads.list_losses()


def _detector_names() -> list[str]:
    import heads

    return heads.list_detectors()


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
@click.option(
    "--backbone",
    "backbones",
    multiple=True,
    default=("efficientnet-lite0",),
    show_default=True,
    help="Backbone short name, Hugging Face hub id or local model folder; repeatable.",
)
@click.option(
    "--pooling",
    type=click.Choice(POOLINGS),
    default="cls",
    show_default=True,
    help="Token pooling for transformer backbones.",
)
@click.option(
    "--metadata",
    type=click.Path(path_type=str),
    default=None,
    help="CSV or Parquet file joined to images by relative path, file name or id.",
)
@click.option("--join-column", default=None, help="Metadata column holding the image path/name/id.")
@click.option(
    "--label-column",
    default=None,
    help="Metadata column holding the label (default: class folder).",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
@click.option(
    "--workers",
    type=click.IntRange(0),
    default=None,
    help="Decode worker processes (default: cores - 1).",
)
@click.option(
    "--dtype",
    type=click.Choice(EMB_DTYPES),
    default="float16",
    show_default=True,
    help="Stored embedding precision.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(1),
    default=89_478_485,
    show_default=True,
    help="Larger images are skipped as possible decompression bombs.",
)
@click.option(
    "--commit-every",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Images per atomic commit (a killed run resumes from the last one).",
)
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

    summary = embedstore.ingest(
        images_dir, store, backbones=list(backbones), progress=not quiet, **kw
    )
    s = summary
    if as_json:
        _echo_json(s.to_dict())
    else:
        emb = ", ".join(f"{k}: {v}" for k, v in s.embedded.items())
        click.echo(
            f"{s.files_found} files: {s.new_images} new, {s.already_stored} already stored, "
            f"{s.duplicates} duplicate names, {s.skipped} skipped; embedded {emb} "
            f"in {s.seconds} s ({s.images_per_s} img/s on {s.device})"
        )
        for reason, n in s.skipped_by_reason.items():
            click.echo(f"  skipped {n}: {reason}")
        if s.skipped:
            click.echo(f"  skipped files are listed in {s.skipped_file}")
        for w in s.warnings:
            click.echo(f"  warning: {w}")
        click.echo(f"store {s.store}: {s.images_in_store} images, version {s.store_version}")
    if not s.ok:
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

    info = embedstore.connect(store, create=False).info().to_dict()
    if as_json:
        _echo_json(info)
        return
    click.echo(
        f"store      {info['store']}  (version {info['version']}, {_human_bytes(info['size_bytes'])} on disk)"
    )
    click.echo(
        f"images     {info['images']}  ({info['labelled']} labelled, {info['unlabelled']} unlabelled)"
    )
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
        click.echo(
            f"backbone   {b['name']}  dim {b['dim']} {b['dtype']}, {b['embedded']} embedded  [{b['column']}]"
        )
    if info.get("folds"):
        f = info["folds"]
        click.echo(
            f"folds      {f.get('folds')} (seed {f.get('seed')}, holdout {f.get('holdout')}, group-by {f.get('group_by')})"
        )
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


@embedstore_cli.command("split")
@click.option("--store", default=None, help=STORE_HELP)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--use-split",
    "use_split_column",
    is_flag=True,
    help="Honour the store's split column (train/val/test folders): test is held out, val is fold 0.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def split_cmd(store: str | None, as_json: bool, **kw: Any) -> None:
    """Write a stratified (optionally grouped) fold assignment into the store.

    Classes with fewer groups than folds train in every fold; the summary says how many.

    \b
    Example:
      embedstore split --store flowers --folds 5 --holdout 0.1 --seed 0
      embedstore split --store fungi --folds 5 --group-by observation_id
      embedstore split --store flowers --folds 3 --use-split
    """
    import embedstore

    res = embedstore.split(store, **kw).to_dict()
    if as_json:
        _echo_json(res)
        return
    per = ", ".join(f"fold {k}: {v}" for k, v in res["images_per_fold"].items())
    click.echo(
        f"{per}; held out: {res['holdout_images']}; always train: {res['always_train_images']} "
        f"({res['small_classes']} class(es) too small to split); unlabelled: {res['unlabelled']}"
    )
    for n in res["notes"]:
        click.echo(f"  {n}")


@embedstore_cli.command("lookup")
@click.argument("queries", nargs=-1, required=True)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--k", "k", type=int, default=10, show_default=True, help="Neighbours per query.")
@click.option(
    "--backbone", default=None, help="Embedding column's backbone (default: the only one)."
)
@click.option("--where", default=None, help="SQL filter on stored rows, e.g. \"habitat = 'wood'\".")
@click.option(
    "--column", "columns", multiple=True, help="Metadata column to show (repeatable; default: all)."
)
@click.option(
    "--index",
    type=click.Choice(LOOKUP_INDEXES),
    default="auto",
    show_default=True,
)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
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
    import embedstore

    res = embedstore.lookup(kw.pop("store"), list(queries), columns=list(columns) or None, **kw)
    if as_json:
        _echo_json([q.to_dict() for q in res.results])
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


@embedstore_cli.command("index")
@click.option("--store", default=None, help=STORE_HELP)
@click.option(
    "--backbone", default=None, help="Embedding column's backbone (default: the only one)."
)
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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index_cmd(as_json: bool, **kw: Any) -> None:
    """Build or refresh the ANN index `embedstore lookup` uses for a backbone.

    \b
    Example:
      embedstore index --store fungi --kind ivf
    """
    import embedstore

    res = embedstore.build_index(kw.pop("store"), **kw)
    if as_json:
        _echo_json(res.to_dict())
        return
    state = "built" if res.built else "already up to date"
    click.echo(
        f"{res.kind} index of {res.ntotal} {res.backbone} embeddings ({res.dim}-d) {state} at "
        f"store version {res.store_version}: {res.path} ({res.seconds} s)"
    )


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


def _float_list(_ctx: Any, _param: Any, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@heads_cli.command("train")
@click.option("--store", default=None, help=STORE_HELP)
@click.option(
    "--fold",
    default="0",
    show_default=True,
    help="Validation fold K, or 'all' (then an ensemble of the folds).",
)
@click.option(
    "--backbone", default=None, help="Embedding column's backbone (default: the only one)."
)
@click.option(
    "--head", "head", type=_Registered(_heads_names), default="mlp", show_default=True,
    help="Head from the registry.",
)  # fmt: skip
@click.option("--hidden", type=click.IntRange(1), default=None, help="Hidden width (default 1024).")
@click.option("--dropout", type=click.FloatRange(0, 1), default=None)
@click.option(
    "--loss",
    type=_Registered(_loss_names),
    default=None,
    help="Loss from the registry (default ce).",
)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=None, help="For --loss ce.")
@click.option("--class-weights", type=click.Choice(CLASS_WEIGHTS), default=None)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLERS),
    default=None,
    help="prior: FungiCLEF 2024 sampler, weight = val class freq / train class freq.",
)
@click.option(
    "--metadata", "metadata", multiple=True, help="Metadata column fed to the head; repeatable."
)
@click.option(
    "--aux-target",
    "aux_targets",
    multiple=True,
    help="Binary column learned as an auxiliary output; repeatable.",
)
@click.option("--aux-alpha", type=float, default=None, help="Weight of the auxiliary BCE loss.")
@click.option("--epochs", type=click.IntRange(1), default=None)
@click.option("--lr", type=float, default=None)
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--k", "k", type=click.IntRange(1), default=None, help="Neighbours, for --head knn.")
@click.option(
    "--unknown", type=_Registered(_detector_names), default=None,
    help="Attach an unknown-class detector from the registry.",
)  # fmt: skip
@click.option(
    "--unknown-label",
    default="unknown",
    show_default=True,
    help="Label of images of no known class.",
)
@click.option(
    "--where", default=None, help="SQL filter on store rows used for training and validation."
)
@click.option("--seed", type=int, default=None)
@click.option("--device", type=DEVICE, default=None, help="Where to train (default: auto).")
@click.option(
    "--out", "out", default=None, help="Run directory (default runs/<head>-<backbone>-<time>)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(store: str | None, as_json: bool, quiet: bool, metadata: tuple[str, ...], aux_targets: tuple[str, ...],
              label_smoothing: float | None, **kw: Any) -> None:  # fmt: skip
    """Train a head on one fold (or all folds) of a store's embeddings.

    \b
    Example:
      heads train --store flowers --fold all --head mlp --epochs 30 --out runs/mlp
      heads train --store fungi --fold 0 --head transformer --metadata habitat --metadata month \\
          --aux-target poisonous --loss seesaw --sampler prior --unknown energy --out runs/tf
    """
    import heads

    if label_smoothing is not None:
        kw["loss_kwargs"] = {"label_smoothing": label_smoothing}
    res = heads.train(
        store, metadata=list(metadata), aux_targets=list(aux_targets), progress=not quiet, **kw
    )
    if as_json:
        _echo_json(res.to_dict())
        return
    nan = float("nan")
    for m in res.metrics:
        click.echo(
            f"fold {m.fold}: top1 {m.metrics.get('top1', nan):.4f}  macro-F1 {m.metrics.get('macro_f1', nan):.4f}  "
            f"({m.epochs} epochs, {m.fit_seconds} s)  -> {m.run}"
        )
    e = res.ensemble_metrics
    if e is not None:
        click.echo(
            f"ensemble of {len(res.runs)} folds (out-of-fold): top1 {e.metrics.get('top1', nan):.4f}  "
            f"macro-F1 {e.metrics.get('macro_f1', nan):.4f}  -> {res.ensemble}"
        )
        if e.holdout is not None:
            click.echo(
                f"held-out part: top1 {e.holdout.get('top1', nan):.4f}  macro-F1 {e.holdout.get('macro_f1', nan):.4f}"
            )


_EVAL_KEYS = METRIC_NAMES


@heads_cli.command("eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--store", default=None, help="Store to read the held-out part from (default: the run's)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run or ensemble.")
def eval_cmd(runs: tuple[str, ...], store: str | None, as_json: bool) -> None:
    """Score runs or ensembles: top-1/3, macro-F1, mean class accuracy, shot buckets, open-set
    and FungiCLEF tracks when defined; on validation (out-of-fold) and the held-out part.

    \b
    Example:
      heads eval runs/mlp runs/knn --json
    """
    import heads

    results = [heads.evaluate(r, store=store).to_dict() for r in runs]
    if as_json:
        _echo_json(results)
        return
    for r in results:
        click.echo(f"{r['run']}  ({r['kind']}, {r['n']} validation images)")
        for part, d in (("validation", r), ("held-out", r.get("holdout"))):
            if not d:
                continue
            vals = "  ".join(f"{k} {d[k]:.4f}" for k in _EVAL_KEYS if isinstance(d.get(k), float))
            click.echo(f"  {part:<10} {vals}")
        if r.get("most_confused"):
            pairs = ", ".join(
                f"{p['true']}->{p['predicted']} ({p['count']})" for p in r["most_confused"][:5]
            )
            click.echo(f"  most confused: {pairs}")
        if r.get("per_class_png"):
            click.echo(f"  per-class plot: {r['per_class_png']}")


@heads_cli.command("ensemble")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out", required=True, help="Ensemble directory to write.")
@click.option(
    "--weights", callback=_float_list, default=None, help="Comma-separated member weights."
)
@click.option("--average", type=click.Choice(AVERAGES), default="logits", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def ensemble_cmd(
    runs: tuple[str, ...], out: str, weights: list[float] | None, average: str, as_json: bool
) -> None:
    """Average runs (folds, heads, backbones) into an ensemble usable wherever a run is.

    \b
    Example:
      heads ensemble runs/mlp runs/knn runs/tf --out runs/ens --weights 1,0.5,1
    """
    import heads

    res = heads.ensemble(list(runs), out, weights=weights, average=average)
    if as_json:
        _echo_json(res.to_dict())
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


@heads_cli.command("predict")
@click.argument("run", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--images",
    "images_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Predict every image under this folder.",
)
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
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
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
@click.option("--json", "as_json", is_flag=True, help="A list with one object per image.")
def predict_cmd(run: str, images: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Top-k labels for images with a run or ensemble (new images are embedded on the fly).

    \b
    Example:
      heads predict runs/mlp photo1.jpg photo2.jpg --top-k 3
      heads predict runs/ens --images new_photos/ --prior uniform --json
    """
    import heads

    res = heads.predict(run, list(images), **kw)
    if as_json:
        _echo_json([r.to_dict() for r in res])
    else:
        for r in res:
            if r.error is not None:
                click.echo(f"{r.path}: error: {r.error}")
                continue
            tops = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r.top_k)
            flag = "  [unknown]" if r.unknown else ""
            click.echo(f"{r.path}: {r.label}{flag}  ({tops})")
    if all(r.error is not None for r in res):
        click.echo("error: no image could be predicted", err=True)
        sys.exit(1)


@heads_cli.command("openset")
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--backbone", default=None)
@click.option(
    "--holdout-classes",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.25,
    show_default=True,
    help="Share of classes held out as unknown in each draw.",
)
@click.option("--draws", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--detector", "detectors", multiple=True, type=_Registered(_detector_names),
    help="Detector to measure (repeatable; default: all).",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
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
    import heads

    rows = heads.openset(kw.pop("store"), detectors=list(detectors) or None, **kw)
    if as_json:
        _echo_json(rows)
        return
    click.echo(heads.format_openset_table(rows))


if __name__ == "__main__":  # pragma: no cover
    embedstore_cli()
