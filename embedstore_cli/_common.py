"""What every command shares: exit codes and the group class that sets them, option types,
the options several commands use (declared once), and output helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

import heads
from embedstore.errors import UserError
from embedstore.types import DEVICE_CHOICES, RUNTIMES, check_device
from heads.types import SET_SCORES

# ---------------------------------------------------------------------- exit codes

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
# Exit codes: 0 done; 1 the command ran but nothing could be done (no image ingested or
# predicted) or a bug (an exception that is not a UserError: one line, the traceback with
# EMBEDSTORE_DEBUG=1); 2 a user error (embedstore.errors.UserError: a bad option, argument,
# file or store), shown as one line (click's own usage errors exit 2 as well).
EXIT_BUG = 1
EXIT_USER_ERROR = 2


class CliUserError(click.ClickException):
    exit_code = EXIT_USER_ERROR


class _Bug(click.ClickException):
    exit_code = EXIT_BUG

    def __init__(self, e: BaseException) -> None:
        first = (str(e).strip().splitlines() or [""])[0]
        what = f"{type(e).__name__}: {first}" if first else type(e).__name__
        super().__init__(f"internal error ({what}); set EMBEDSTORE_DEBUG=1 for the traceback")


# What Ctrl-C leaves, per command; the same command resumes (ingest) or starts again.
EXIT_INTERRUPTED = 130
_RESUME = "run the same command again to "
_INTERRUPTED = {
    "ingest": "interrupted: the images committed so far are in the store; "
    + _RESUME
    + "embed the rest (nothing is embedded twice)",
    "train": "interrupted: no run was written and an existing one is untouched; "
    + _RESUME
    + "train",
    "tune": "interrupted: no run was written and an existing one is untouched; " + _RESUME + "tune",
    "": "interrupted: nothing was left half-written; " + _RESUME + "finish",
}


class Group(click.Group):
    """Runs a command: a UserError is one line and exit 2, any other exception (a bug) one
    line and exit 1; with $EMBEDSTORE_DEBUG set both raise, traceback and all."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:  # Ctrl-C: say what was kept and how to go on (not "Aborted!")
            click.echo(_INTERRUPTED.get(ctx.invoked_subcommand or "", _INTERRUPTED[""]), err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as e:
            if os.environ.get("EMBEDSTORE_DEBUG"):
                raise
            if isinstance(e, UserError):
                raise CliUserError(str(e)) from None
            raise _Bug(e) from None


# ---------------------------------------------------------------------- option types


class Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (presence is checked by the library)."""

    name = "|".join(DEVICE_CHOICES)

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return check_device(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DEVICE = Device()


class Registered(click.Choice):
    """A choice among a registry's names, listed when first needed (keeps ``--help`` light)."""

    def __init__(self, names: Any) -> None:
        self._names = names
        super().__init__([])

    @property
    def choices(self) -> tuple[str, ...]:  # click declares (and itself stores) a tuple
        return tuple(self._names())

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass


def head_names() -> list[str]:
    return heads.list_heads()


def loss_names() -> list[str]:
    return heads.list_losses()


def detector_names() -> list[str]:
    return heads.list_detectors()


def detector_names_or_default() -> list[str]:
    return ["default", *detector_names()]


def float_list(_ctx: Any, _param: Any, value: str | None) -> list[float] | str | None:
    if value is None or value == "auto":
        return value
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


# ---------------------------------------------------------------------- shared options
# Options several commands share, declared once (each use builds its own click.Option).

STORE_HELP = "Store folder (default: $EMBEDSTORE_PATH or ./embedstore)."
store_option = click.option("--store", default=None, help=STORE_HELP)
run_store_option = click.option("--store", default=None, help="Store to read (default: the run's).")
backbone_option = click.option(
    "--backbone", default=None, help="Embedding column's backbone (default: the only one)."
)
device_option = click.option(
    "--device", type=DEVICE, default="auto", show_default=True, help="Where to run."
)
runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    help="What runs the backbones; auto: onnx on CPU where faster (efficientnet-lite0), else "
    "torch; onnx-int8: transformers quantised to int8 on CPU (faster, embeddings within "
    "cosine 0.99).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
json_summary_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON."
)
quiet_option = click.option("--quiet", is_flag=True, help="No progress bar.")


def options(*opts: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click options as one decorator, in the order given (as if stacked)."""

    def apply(f: Any) -> Any:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return apply


# --engine ray: where the cluster is and how its model actors are laid out
ray_options = options(
    click.option(
        "--ray-address",
        default=None,
        help="With --engine ray: 'auto' (the cluster of `ray start` here) or HOST:PORT; "
        "default: a local cluster.",
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
        help="With --engine ray: GPUs each actor holds "
        "(default: 1 on a cluster with GPUs, else 0).",
    ),
    click.option(
        "--cpus-per-actor",
        type=click.FloatRange(0, min_open=True),
        default=1.0,
        show_default=True,
        help="With --engine ray: CPUs each actor holds.",
    ),
)


# --coverage: conformal prediction sets (heads predict, heads eval)
sets_options = options(
    click.option(
        "--coverage",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        help="Add a prediction set per image holding the true label this share of the time "
        "(e.g. 0.9; split conformal, per class where a class has 20 calibration images).",
    ),
    click.option(
        "--set-score",
        type=click.Choice(SET_SCORES),
        default="lac",
        show_default=True,
        help="With --coverage: lac (1 - probability of the label: smallest sets) or aps "
        "(adaptive: larger, surer sets).",
    ),
    click.option(
        "--calibrate-on",
        default=None,
        metavar="WHERE",
        help="With --coverage: calibrate on the store rows matching this predicate (rows the "
        "run never trained on, e.g. a held-out session) instead of its out-of-fold predictions.",
    ),
)


# ---------------------------------------------------------------------- output


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def human_bytes(n: int) -> str:
    size: float = n
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)
