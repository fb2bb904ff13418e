"""The heads' training settings as click options, derived from ``heads.settings.SETTINGS``.

One declaration (name, type, default, help, choices or registry, bounds) gives the option of
``heads train`` and ``heads tune``, the service's request body and the tune search space; here
only the click side. Numbers must be finite and in range (``--lr inf`` and ``--lr nan`` are
refused before anything runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from embedstore.errors import UserError
from embedstore_cli._common import Registered, loss_names
from heads.settings import DISTILL_SETTINGS, PSEUDO_SETTINGS, SETTINGS
from heads.text import read_lines, read_names, read_templates


class FiniteFloat(click.FloatRange):
    """A float within ``min``..``max`` that is a real number (no inf, no nan)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(rv, param, ctx)


_REGISTRIES: dict[str, Callable[[], list[str]]] = {"losses": loss_names}


def _param_type(s: Any) -> Any:
    if s.choices is not None:
        return click.Choice(s.choices)
    if s.registry is not None:
        return Registered(_REGISTRIES[s.registry])
    if s.type is int:
        return click.IntRange(
            None if s.min is None else int(s.min), None if s.max is None else int(s.max)
        )
    if s.type is float:
        return FiniteFloat(s.min, s.max, min_open=s.min_exclusive)
    return s.type


# How a ``list`` or ``dict`` setting's files are read (``Setting.file``): the library's readers,
# so that the command line and a script read a file alike. The service takes values, not paths.
_READERS: dict[str, Callable[[Any], Any]] = {
    "lines": lambda v: read_lines(v, "--classes"),
    "templates": read_templates,
    "names": read_names,
}


def _reader(s: Any) -> Callable[[Any, Any, Any], Any]:
    """A click callback turning the option's value(s) into the setting (None: not given); a
    file that cannot be read is a usage error naming it."""

    def convert(ctx: Any, param: Any, value: Any) -> Any:
        if value is None or value == ():
            return None
        try:
            return _READERS[s.file](value) if s.file else list(value)
        except UserError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return convert


def setting_option(s: Any) -> Callable[[Any], Any]:
    """The click option of one :class:`heads.settings.Setting` (default None: the head's); a
    ``list`` setting repeats (``--name-columns a --name-columns b``) unless read from one file."""
    flag = f"--{s.name.replace('_', '-')}"
    if s.type is bool:
        return click.option(flag, s.name, is_flag=True, default=None, help=s.help)
    if s.type in (list, dict):
        single = s.file in ("lines", "names")  # one file
        return click.option(
            flag,
            s.name,
            type=click.Path(dir_okay=False) if single else str,
            multiple=not single,
            default=None,
            callback=_reader(s),
            help=s.help,
        )
    return click.option(flag, s.name, type=_param_type(s), default=None, help=s.help)


def setting_options(settings: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A decorator adding every one of ``settings`` as an option, in the declared order."""

    def decorate(f: Any) -> Any:
        for s in reversed(settings):
            f = setting_option(s)(f)
        return f

    return decorate


# Every training setting of the heads; the run's pseudo-labelling options; distill's own.
head_setting_options = setting_options(SETTINGS)
pseudo_setting_options = setting_options(PSEUDO_SETTINGS)
distill_setting_options = setting_options(DISTILL_SETTINGS)
