"""Command line: ``embedstore ...`` and ``heads ...``.

This module only parses options and calls the library with keyword arguments; every command is a
plain library call underneath (``embedstore.ingest``, ``heads.train`` ...).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from embedstore.types import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEVICE_CHOICES,
    EMB_DTYPES,
    ENGINES,
    LOOKUP_INDEXES,
    MAP_METHODS,
    POOLINGS,
    RUNTIMES,
    check_device,
)
from heads.types import (
    AVERAGES,
    CLASS_WEIGHTS,
    ENSEMBLE_MEMBERS,
    METRIC_NAMES,
    REFERENCES,
    SAMPLERS,
)

STORE_HELP = "Store folder (default: $EMBEDSTORE_PATH or ./embedstore)."
# Options several commands share, declared once (each use builds its own click.Option).
store_option = click.option("--store", default=None, help=STORE_HELP)
backbone_option = click.option(
    "--backbone", default=None, help="Embedding column's backbone (default: the only one)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="What runs the backbones; auto: onnx on CPU where faster (efficientnet-lite0), else "
    "torch; onnx-int8: transformers quantised to int8 on CPU (faster, embeddings within "
    "cosine 0.99).",
)
_USER_ERRORS: tuple[type[Exception], ...] = ()


def _user_errors() -> tuple[type[Exception], ...]:
    """Library exceptions that mean 'bad input': shown as one clear line, exit code 2."""
    global _USER_ERRORS
    if not _USER_ERRORS:
        import embedstore
        import heads

        _USER_ERRORS = (
            embedstore.StoreError,
            embedstore.IngestError,
            embedstore.BackboneError,
            embedstore.store.MetadataError,
            embedstore.ingestion.ImageError,
            heads.HeadsError,
            FileNotFoundError,
            ValueError,
        )
    return _USER_ERRORS


_CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
# Exit codes: 0 done; 1 the command ran but nothing could be done (no image ingested or
# predicted) or an unexpected failure (a traceback); 2 a user error: a bad option, argument,
# file or store, shown as one line (click's own usage errors exit 2 as well).
EXIT_USER_ERROR = 2


class _UserError(click.ClickException):
    exit_code = EXIT_USER_ERROR


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
                raise _UserError(str(e)) from None
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


def _detector_names_or_default() -> list[str]:
    return ["default", *_detector_names()]


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


@click.group(cls=_Group, context_settings=_CONTEXT)
@click.version_option(package_name="embedstore")
def embedstore_cli() -> None:
    """Embed image collections with frozen backbones into a Lance store.

    \b
    Example:
      embedstore ingest ../shared/data/flowers12 --store flowers
      embedstore info --store flowers
      embedstore lookup photo.jpg --store flowers --k 5
    """


def _ray_options(f: Any) -> Any:
    """--ray-address, --actors, --gpus-per-actor, --cpus-per-actor (for --engine ray)."""
    for opt in reversed(
        [
            click.option(
                "--ray-address",
                default=None,
                help="With --engine ray: 'auto' (the cluster of `ray start` here) or HOST:PORT; default: a local cluster.",
            ),
            click.option(
                "--actors",
                type=click.IntRange(1),
                default=None,
                help="With --engine ray: model actors (default: one per GPU, else half the CPUs).",
            ),
            click.option(
                "--gpus-per-actor",
                type=click.FloatRange(0),
                default=None,
                help="With --engine ray: GPUs each actor holds (default: 1 on a cluster with GPUs, else 0).",
            ),
            click.option(
                "--cpus-per-actor",
                type=click.FloatRange(0, min_open=True),
                default=1.0,
                show_default=True,
                help="With --engine ray: CPUs each actor holds.",
            ),
        ]
    ):
        f = opt(f)
    return f


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
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Images per forward pass.",
)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
@runtime_option
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
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Larger images are skipped as possible decompression bombs.",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Also remove rows whose files were deleted or now hold other bytes (see `info`).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Larger files are skipped unread (FIFOs, devices and other non-regular files always are).",
)
@click.option(
    "--commit-every",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Images per atomic commit (a killed run resumes from the last one).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: this process; ray: decode and embed on a Ray cluster (pip install 'embedstore[ray]').",
)
@_ray_options
@click.option(
    "--views",
    default=None,
    metavar="NAMES",
    help="Also store embeddings of augmented views, comma-separated: flip, crops5 (4 corner + "
    "centre crops at 87.5%), or crop_tl/crop_tr/crop_bl/crop_br/crop_c. On a store that has the "
    "images only the views are embedded; heads train on them and predict with them (TTA).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
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
    metadata column. Set EMBEDSTORE_DEBUG=1 for tracebacks instead of one-line errors. Files that cannot be used are skipped and listed in STORE/skipped.csv.

    \b
    Example:
      embedstore ingest ../shared/data/flowers12 --store flowers
      embedstore ingest photos/ --metadata meta.csv --backbone dinov2-small --backbone efficientnet-lite0
      embedstore ingest ../shared/data/flowers12 --store flowers --views flip,crops5
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
            f"in {s.seconds} s ({s.images_per_s} img/s on {s.device}, "
            f"{'/'.join(dict.fromkeys(s.runtimes.values()))})"
        )
        for name, vs in s.views.items():
            click.echo(f"  views of {name}: " + ", ".join(f"{v}: {n}" for v, n in vs.items()))
        for reason, n in s.skipped_by_reason.items():
            click.echo(f"  skipped {n}: {reason}")
        if s.skipped:
            click.echo(f"  skipped files are listed in {s.skipped_file}")
        for w in s.warnings:
            click.echo(f"  warning: {w}")
        if s.pruned:
            click.echo(f"  pruned {s.pruned} image(s) whose files are gone or changed")
        click.echo(f"store {s.store}: {s.images_in_store} images, version {s.store_version}")
    if not s.ok:
        click.echo("error: no image could be ingested; see the reasons above", err=True)
        sys.exit(1)


@embedstore_cli.command("info")
@store_option
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
            f"backbone   {b['name']}  dim {b['dim']} {b['dtype']}, {b['embedded']} embedded by "
            f"{' + '.join(b.get('runtimes') or ['torch'])}  [{b['column']}]"
        )
        if b.get("views"):
            click.echo(
                "  views    "
                + ", ".join(f"{v['name']} ({v['embedded']} embedded)" for v in b["views"])
                + f"  [{b['column']}__<view>]"
            )
    if info.get("folds"):
        f = info["folds"]
        click.echo(
            f"folds      {f.get('folds')} (seed {f.get('seed')}, holdout {f.get('holdout')}, group-by {f.get('group_by')})"
        )
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
    for w in info.get("warnings") or []:
        click.echo(f"warning    {w}")
    stale = info.get("stale_files") or {}
    if stale.get("gone") or stale.get("changed"):
        click.echo(
            f"warning    {stale['gone']} ingested file(s) deleted and {stale['changed']} changed on "
            "disk since; their rows describe the old files: run `embedstore ingest FOLDER "
            "--prune` to bring the store in step"
        )


@embedstore_cli.command("check")
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
    import embedstore

    r = embedstore.check(store or embedstore.default_store_path(), repair=repair)
    if as_json:
        _echo_json(r.to_dict())
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


@embedstore_cli.command("drop-column")
@click.argument("name")
@store_option
def drop_column_cmd(name: str, store: str | None) -> None:
    """Remove the metadata column NAME from every image of the store (one commit).

    The columns ingest writes itself (id, path, label ...) and embedding columns are kept.

    \b
    Example:
      embedstore drop-column --store flowers emb_notes
    """
    import embedstore

    embedstore.store.drop_column(store, name)
    click.echo(f"dropped column {name}")


@embedstore_cli.command("split")
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
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
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
    """List registered backbones (glob PATTERN) and whether each is on this machine already.
    Any hub id or model folder also works.

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
        here = "here" if r["local"] else "download"
        lic = (r.get("license") or "-") + (" (gated)" if r.get("gated") else "")
        click.echo(f"{r['name']:<22} {here:<9} {lic:<24} {r['source']}")
    click.echo(
        "here: the weights are on this machine (works offline); download: fetched from the hub on first use;\n"
        "gated: the hub asks you to accept the licence and request access first (then `hf auth login`)"
    )


@embedstore_cli.command("serve")
@store_option
@click.option(
    "--runs", default=None, help="Folder of runs and ensembles to serve (and train into)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
@click.option(
    "--api-key-env",
    default=None,
    metavar="VAR",
    help="Environment variable holding the API key every /v1 route then requires "
    "(required to bind an address other than loopback).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0, min_open=True),
    default=20.0,
    show_default=True,
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Most images embedded in one forward pass (dynamic batching).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Longest a request waits for others to share its forward pass.",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Training/ingest jobs that may wait in the queue (429 above).",
)
@click.option(
    "--allow-root", default=None, help="Server-side folder under which POST /v1/ingest may read."
)
@runtime_option
def serve_cmd(host: str, port: int, api_key_env: str | None, store: str | None, **kw: Any) -> None:
    """Serve lookups, predictions, training jobs and a species-lookup page over HTTP.

    Keeps the store's embeddings, the backbones and the runs resident; OpenAPI docs at /docs.

    \b
    Example:
      embedstore serve --store flowers --runs runs --port 8000
      curl -F images=@photo.jpg -F run=mlp localhost:8000/v1/predict
    """
    import embedstore
    import service

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise _UserError(f"--api-key-env {api_key_env}: ${api_key_env} is empty or unset")
    settings = service.Settings(store=store or embedstore.default_store_path(), api_key=key, **kw)
    service.serve(settings, host=host, port=port)


# ============================================================================ heads


@click.group(cls=_Group, context_settings=_CONTEXT)
@click.version_option(package_name="embedstore")
def heads_cli() -> None:
    """Train, evaluate, ensemble and predict with heads on stored embeddings.

    \b
    Example:
      embedstore split --store flowers --folds 5
      heads train --store flowers --fold all --head mlp --out runs/mlp
      heads eval runs/mlp
    """


def _float_list(_ctx: Any, _param: Any, value: str | None) -> list[float] | str | None:
    if value is None or value == "auto":
        return value
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@heads_cli.command("train")
@store_option
@click.option(
    "--fold",
    default="0",
    show_default=True,
    help="Validation fold K, or 'all' (then an ensemble of the folds).",
)
@click.option(
    "--backbone",
    "backbones",
    multiple=True,
    help="Embedding column's backbone (default: the only one); repeat to train on several, "
    "each L2-normalised and concatenated in the order given.",
)
@click.option(
    "--head",
    "head",
    type=_Registered(_heads_names),
    default="mlp",
    show_default=True,
    help="Head from the registry.",
)
@click.option("--hidden", type=click.IntRange(1), default=None, help="Hidden width (default 1024).")
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1),
    default=None,
    help="Dropout before the classifier (default: the head's).",
)
@click.option(
    "--loss",
    type=_Registered(_loss_names),
    default=None,
    help="Loss from the registry (default ce).",
)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=None, help="For --loss ce.")
@click.option(
    "--class-weights",
    type=click.Choice(CLASS_WEIGHTS),
    default=None,
    help="Loss weights per class (default none).",
)
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
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=None,
    help="Training epochs, at most (early stopping on validation macro-F1).",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=None,
    help="Stop after this many epochs without a better validation macro-F1 (default 10; 0: never).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Learning rate (default: the head's; linear 1e-2, mlp 1e-3).",
)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Training batch size.")
@click.option("--k", "k", type=click.IntRange(1), default=None, help="Neighbours, for --head knn.")
@click.option(
    "--reference",
    type=click.Choice(REFERENCES),
    default=None,
    help="For --head centroid: prototypes of the training part, or of train+val (all folds, "
    "as a refit; needs --fold all).",
)
@click.option(
    "--transductive",
    is_flag=True,
    default=None,
    help="For --head centroid: move the prototypes toward the images being predicted (soft "
    "k-means) before predicting them.",
)
@click.option(
    "--unknown",
    type=_Registered(_detector_names_or_default),
    default=None,
    is_flag=False,
    flag_value="default",
    help="Attach an unknown-class detector from the registry; bare --unknown: the default "
    "(energy-knn, best measured on fine-grained data; see heads openset).",
)
@click.option(
    "--unknown-label",
    default="unknown",
    show_default=True,
    help="Label of images of no known class.",
)
@click.option(
    "--where", default=None, help="SQL filter on store rows used for training and validation."
)
@click.option(
    "--refit",
    is_flag=True,
    help="With --fold all: also train one model on every fold for the folds' median best epoch "
    "(saved as OUT/refit).",
)
@click.option(
    "--ensemble",
    "ensemble",
    type=click.Choice(ENSEMBLE_MEMBERS),
    default=None,
    help="What OUT predicts with: the fold runs, the refit, or both (default: both with --refit, "
    "else folds).",
)
@click.option(
    "--views/--no-views",
    "views",
    default=None,
    help="Train on the augmented views stored beside the embeddings (embedstore ingest --views) "
    "as augmentation (default: yes when the store has them).",
)
@click.option(
    "--tta/--no-tta",
    "tta",
    default=None,
    help="Predict with test-time augmentation: the mean of the main embedding's and the views' "
    "logits, for stored and new images alike (default: yes when the store has views).",
)
@click.option("--seed", type=int, default=None, help="Random seed for initialisation and sampling.")
@click.option("--device", type=DEVICE, default=None, help="Where to train (default: auto).")
@click.option(
    "--out", "out", default=None, help="Run directory (default runs/<head>-<backbone>-<time>)."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing run at --out (whole, once the new one is complete).",
)
@json_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
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
      heads train --store fungi --fold 0 --head transformer --metadata habitat --metadata month \\
          --aux-target poisonous --loss seesaw --sampler prior --unknown energy --out runs/tf
      heads train --store flowers --fold all --head mlp --refit --ensemble both --out runs/mlp
      heads train --store flowers --fold all --head centroid --reference train+val --transductive
      heads train --store flowers --fold all --head mlp --no-tta --out runs/mlp-views
      heads train --store flowers --fold all --head mlp --backbone efficientnet-lite0 \\
          --backbone dinov2-small --out runs/mlp-2bb
    """
    import heads

    kw["backbone"] = list(backbones) if len(backbones) > 1 else (backbones or [None])[0]
    if label_smoothing is not None:
        kw["loss_kwargs"] = {"label_smoothing": label_smoothing}
    res = heads.train(
        store, metadata=list(metadata), aux_targets=list(aux_targets), progress=not quiet, **kw
    )
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        _echo_json(res.to_dict())
        return
    nan = float("nan")
    for m in res.metrics:
        click.echo(
            f"fold {m.fold}: top1 {m.metrics.get('top1', nan):.4f}  macro-F1 {m.metrics.get('macro_f1', nan):.4f}  "
            f"({f'{m.epochs} epochs, ' if m.epochs else ''}{m.fit_seconds} s)  -> {m.run}"
        )
    if res.refit is not None:
        r = res.refit
        click.echo(
            f"refit on all folds: {r.metrics['n_train']} images"
            f"{f', {r.epochs} epochs' if r.epochs else ''} ({r.fit_seconds} s)  -> {r.run}"
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


@heads_cli.command("tune")
@store_option
@click.option(
    "--head",
    "head",
    type=_Registered(_heads_names),
    default="mlp",
    show_default=True,
    help="Head to tune (a neural head: linear, mlp, transformer).",
)
@click.option(
    "--trials", type=click.IntRange(1), default=50, show_default=True, help="Trials, at most."
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop starting trials after this many seconds (a running one stops between folds).",
)
@click.option(
    "--fold",
    default="all",
    show_default=True,
    help="'all': score trials out-of-fold over every fold and retrain all folds; K: on fold K only.",
)
@backbone_option
@click.option(
    "--losses",
    default=None,
    help="Comma-separated losses to try (default: every registered loss).",
)
@click.option(
    "--epochs", type=click.IntRange(1), default=None, help="Fixed training epochs, at most."
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=None, help="Fixed training batch size."
)
@click.option(
    "--patience", type=click.IntRange(0), default=None, help="Fixed early-stopping patience."
)
@click.option(
    "--where", default=None, help="SQL filter on store rows used for training and validation."
)
@click.option(
    "--views/--no-views",
    "views",
    default=None,
    help="Train every trial and the best run on the augmented views stored beside the "
    "embeddings (embedstore ingest --views), as heads train does (default: yes when the store "
    "has them).",
)
@click.option(
    "--tta/--no-tta",
    "tta",
    default=None,
    help="Score the trials and predict with the best run by test-time augmentation: the mean of "
    "the main embedding's and the views' logits (default: yes when the store has views).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the sampler and every head."
)
@click.option("--device", type=DEVICE, default=None, help="Where to train (default: auto).")
@click.option(
    "--out",
    default=None,
    help="Run directory for the best parameters (default runs/<head>-tuned-...).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run at --out.")
@json_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def tune_cmd(store: str | None, losses: str | None, as_json: bool, quiet: bool, **kw: Any) -> None:
    """Search a head's learning rate, weight decay, dropout, hidden width, loss and label
    smoothing with Optuna for the best out-of-fold macro-F1, then retrain the best into --out
    (a normal run folder, with trials.csv, trials.json and trials.png beside it).

    \b
    Example:
      heads tune --store grocery --head mlp --trials 50 --timeout-s 600 --out runs/mlp-tuned
      heads tune --store flowers --head mlp --trials 30 --no-tta --out runs/mlp-tuned-views
      heads eval runs/mlp-tuned
    """
    import heads

    loss_list = [s.strip() for s in losses.split(",") if s.strip()] if losses else None
    res = heads.tune(store, losses=loss_list, progress=not quiet, **kw)
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        _echo_json(res.to_dict())
        return
    click.echo(
        f"{res.n_trials} trials ({res.n_complete} complete, {res.n_pruned} pruned, "
        f"{res.n_failed} failed) in {res.seconds:.0f} s"
    )
    if res.default_macro_f1 is not None:
        click.echo(
            f"default recipe (trial 0): macro-F1 {res.default_macro_f1:.4f}  top1 {res.default_top1:.4f}"
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


_EVAL_KEYS = METRIC_NAMES


class _EvalCommand(click.Command):
    """``heads eval``: its help ends with what each score means (from the library)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        import heads

        with formatter.section("Scores"):
            formatter.write_dl(list(heads.MEASURES.items()))


@heads_cli.command("eval", cls=_EvalCommand)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--store", default=None, help="Store to read the held-out part from (default: the run's)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run or ensemble.")
def eval_cmd(runs: tuple[str, ...], store: str | None, as_json: bool) -> None:
    """Score runs or ensembles side by side: on the validation part (out-of-fold for a fold
    ensemble) and on the store's held-out part.

    \b
    Example:
      heads eval runs/mlp runs/knn runs/ens
      heads eval runs/mlp --json
    """
    import heads

    results = [heads.evaluate(r, store=store).to_dict() for r in runs]
    if as_json:
        _echo_json(results)
        return
    for part, key in (("validation (out-of-fold)", None), ("held-out part", "holdout")):
        parts = [r if key is None else r.get(key) for r in results]
        if not any(parts):
            continue
        keys = [k for k in _EVAL_KEYS if any(isinstance((d or {}).get(k), float) for d in parts)]
        names = [Path(r["run"]).name or r["run"] for r in results]
        width = max(len(k) for k in ["images", *keys])
        cols = [max(10, len(n)) for n in names]
        click.echo(f"{part}")
        click.echo(
            f"  {'':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols, strict=True))
        )
        rows = [("images", [str((d or {}).get("n", "-")) for d in parts])]
        rows += [
            (k, [f"{d[k]:.4f}" if isinstance((d or {}).get(k), float) else "-" for d in parts])
            for k in keys
        ]
        for k, vals in rows:
            click.echo(
                f"  {k:<{width}}  "
                + "  ".join(f"{v:>{w}}" for v, w in zip(vals, cols, strict=True))
            )
    for r in results:
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


@heads_cli.command("ensemble")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out", required=True, help="Ensemble directory to write.")
@click.option(
    "--weights",
    callback=_float_list,
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
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def ensemble_cmd(runs: tuple[str, ...], out: str, as_json: bool, **kw: Any) -> None:
    """Average runs (folds, heads, backbones) into an ensemble usable wherever a run is.

    \b
    Example:
      heads ensemble runs/mlp runs/knn runs/tf --out runs/ens --weights 1,0.5,1
    """
    import heads

    res = heads.ensemble(list(runs), out, **kw)
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
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where to run.")
@runtime_option
@click.option(
    "--group-by",
    default=None,
    help="One answer per group from the mean logits of its images: a store column "
    "(e.g. observation_id) or 'folder' (each image's folder).",
)
@click.option(
    "--csv", "csv_path", default=None, help="Also write the predictions to this CSV file."
)
@click.option(
    "--out",
    default=None,
    type=click.Path(path_type=str),
    help="Batch mode: write every prediction to this Lance table (id, path, label, probability, top_k, unknown).",
)
@click.option(
    "--store",
    default=None,
    help="Batch mode without images: predict every image of this store (default: the run's store).",
)
@click.option("--overwrite", is_flag=True, help="Batch mode: replace an existing --out table.")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="Batch mode: local, or ray (a Ray cluster; pip install 'embedstore[ray]').",
)
@_ray_options
@click.option("--json", "as_json", is_flag=True, help="A list with one object per image.")
def predict_cmd(
    run: str, images: tuple[str, ...], as_json: bool, csv_path: str | None, **kw: Any
) -> None:
    """Top-k labels for images with a run or ensemble (new images are embedded on the fly).

    \b
    Example:
      heads predict runs/mlp photo1.jpg photo2.jpg --top-k 3
      heads predict runs/ens --images new_photos/ --prior uniform --json
      heads predict runs/mlp --store flowers --engine ray --out predictions.lance
    """
    import heads

    batch = {
        k: kw.pop(k)
        for k in (
            "out",
            "store",
            "overwrite",
            "engine",
            "ray_address",
            "actors",
            "gpus_per_actor",
            "cpus_per_actor",
        )
    }
    if batch["out"] is not None or batch["engine"] != "local" or batch["store"] is not None:
        if batch["out"] is None:
            raise click.UsageError(
                "batch prediction (--engine, --store) writes a table: give --out PATH"
            )
        if kw.pop("group_by", None) is not None or csv_path:
            raise click.UsageError("--group-by and --csv do not apply with --out")
        s = heads.predict_batch(run, images=list(images), **batch, **kw)
        if as_json:
            _echo_json(s.to_dict())
        else:
            click.echo(
                f"{s.images} predictions ({s.errors} errors, {s.unknown} unknown) written "
                f"to {s.out} in {s.seconds} s ({s.images_per_s} img/s, {s.engine})"
            )
        if s.images and s.errors == s.images:
            click.echo("error: no image could be predicted", err=True)
            sys.exit(1)
        return
    res = heads.predict(run, list(images), **kw)
    if csv_path:
        heads.write_predictions_csv(res, csv_path)
    if as_json:
        _echo_json([r.to_dict() for r in res])
    else:
        for r in res:
            if r.error is not None:
                click.echo(f"{r.path}: error: {r.error}")
                continue
            tops = ", ".join(f"{t['label']} {t['probability']:.4f}" for t in r.top_k)
            flag = "  [unknown]" if r.unknown else ""
            group = f"  [group {r.group}]" if r.group else ""
            click.echo(f"{r.path}: {r.label}{flag}{group}  ({tops})")
        if csv_path:
            click.echo(f"predictions written to {csv_path}")
    if all(r.error is not None for r in res):
        click.echo("error: no image could be predicted", err=True)
        sys.exit(1)


@heads_cli.command("openset")
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
    type=_Registered(_detector_names),
    help="Detector to measure (repeatable; default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the draws.")
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

    rows = heads.openset(
        kw.pop("store"), detectors=list(detectors) or None, progress=not as_json, **kw
    )
    if as_json:
        _echo_json(rows)
        return
    click.echo(heads.format_openset_table(rows))
    if kw.get("roc_png"):
        click.echo(f"ROC curves (last draw; legend: means over draws): {kw['roc_png']}")


# ============================================================================ data quality
# embedstore duplicates / map, heads issues / report: look at the data through its embeddings.


@embedstore_cli.command("duplicates")
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
    import embedstore

    res = embedstore.find_duplicates(kw.pop("store") or embedstore.default_store_path(), **kw)
    if as_json:
        _echo_json(res.to_dict())
        return
    leak = ", ".join(f"{k} {v}" for k, v in res.leakage.items() if v) or "none"
    click.echo(
        f"{res.images} images ({res.backbone}, {res.index} index): {res.pairs_found} near-duplicate "
        f"pairs (cosine >= {res.threshold}) in {res.groups_found} groups; leaking pairs: {leak}"
    )
    if res.holdout_images:
        click.echo(
            f"  {res.holdout_images} held-out image(s) have a near-duplicate in a training fold"
        )
    for g in res.groups[:5]:
        leaks = f"  [leak: {', '.join(g.leaks)}]" if g.leaks else ""
        click.echo(
            f"  group {g.group} ({g.size}, {g.similarity:.3f}): {', '.join(map(str, g.paths[:4]))}{leaks}"
        )
    for n in res.notes:
        click.echo(f"  note: {n}")
    click.echo(f"pairs: {res.csv}" + (f"\ncontact sheet: {res.png}" if res.png else ""))


@embedstore_cli.command("map")
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
    import embedstore

    res = embedstore.map_store(kw.pop("store") or embedstore.default_store_path(), **kw)
    if as_json:
        _echo_json(res.to_dict())
        return
    click.echo(
        f"{res.method.upper()} map of {res.images} images ({res.backbone}) written to columns "
        f"{', '.join(res.columns)} (store version {res.store_version}); PNG: {res.png}"
    )
    for n in res.notes:
        click.echo(f"  note: {n}")


@heads_cli.command("issues")
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
@click.option("--store", default=None, help="Store to read (default: the run's).")
@json_option
def issues_cmd(run: str, as_json: bool, **kw: Any) -> None:
    """Likely label errors (cleanlab on the run's out-of-fold probabilities) and outliers (low
    kNN density), with a PNG of the top suspects beside their nearest neighbours.

    \b
    Example:
      heads issues runs/mlp --top 30
    """
    import heads

    res = heads.find_issues(run, **kw)
    if as_json:
        _echo_json(res.to_dict())
        return
    click.echo(
        f"cleanlab flags {res.flagged} of {res.images} validation images of {run}; most suspect:"
    )
    for s in res.label_issues:
        flag = "" if s.flagged else "  (not flagged)"
        click.echo(
            f"  #{s.rank} {s.path}: given {s.given}, model says {s.suggested} "
            f"(p {s.suggested_probability:.2f}, quality {s.label_quality:.3f}){flag}"
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


@heads_cli.command("report")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--out", default=None, help="HTML file to write (default RUN/report.html).")
@click.option(
    "--top",
    type=click.IntRange(1),
    default=12,
    show_default=True,
    help="Suspects, pairs and duplicate groups shown.",
)
@click.option("--store", default=None, help="Store to read (default: the run's).")
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
    import heads

    res = heads.report(run, **kw)
    if as_json:
        _echo_json(res.to_dict())
        return
    click.echo(
        f"wrote {res.path} ({_human_bytes(res.bytes)}, {res.images_inlined} thumbnails; "
        f"{', '.join(res.sections)})"
    )
    for n in res.notes:
        click.echo(f"  note: {n}")


if __name__ == "__main__":  # pragma: no cover
    embedstore_cli()
