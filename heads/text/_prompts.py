"""Prompts for class names: templates, the names of each class, and reading them from files.

Torch-free and numpy-free (``heads.settings`` takes :data:`DEFAULT_TEMPLATES` from here, and the
command line reads ``--classes``, ``--templates`` and ``--names`` files with these functions).

A template holds ``{}`` where the class name goes, and may hold ``{coarse}``: the class's coarse
group (``heads train --coarse-column``); a template with ``{coarse}`` is used only for classes
that have one. Each class's prompts are every template filled with every name of the class.

>>> class_prompts("Bellis_perennis", ["a photo of {}."], names=["daisy"])
['a photo of daisy.']
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from string import Formatter

from heads._errors import HeadsError

# A few short templates that read well for species, objects and products alike; the last one
# only for classes with a coarse group (CLIP's own recipe for Food-101: "a type of food").
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of {}.",
    "a close-up photo of a {}.",
    "a photo of a {}, a type of {coarse}.",
)
_FIELDS = ("", "coarse")  # what a template may name: the class name, its coarse group


def check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """``templates`` (None: :data:`DEFAULT_TEMPLATES`) checked: strings, each holding ``{}``
    and no other field than ``{coarse}`` (``{{`` and ``}}`` are literal braces)."""
    if templates is None:
        return DEFAULT_TEMPLATES
    if isinstance(templates, str | bytes):
        raise HeadsError(f"--templates: give a list of templates, not one string: [{templates!r}]")
    out = tuple(templates)
    if not out:
        raise HeadsError("--templates: no template given; each is a text with {} for the name")
    for t in out:
        if not isinstance(t, str):
            raise HeadsError(f"--templates: {t!r} is not a string")
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in Formatter().parse(t) if f is not None]
        except ValueError as e:
            raise HeadsError(
                f"--templates: {t!r}: {e} (write a literal brace as {{{{ or }}}})"
            ) from None
        bad = [f for f, spec, conv in fields if f not in _FIELDS or spec or conv]
        if bad or "" not in [f for f, _, _ in fields]:
            raise HeadsError(
                f"--templates: {t!r} must hold {{}} where the class name goes, and no field "
                "but {coarse} (the class's --coarse-column value), e.g. 'a photo of a {}.'"
            )
    return out


def class_name(label: str) -> str:
    """The name a label stands for when no other is given: underscores as spaces."""
    return " ".join(str(label).replace("_", " ").split())


def fill(template: str, name: str, coarse: str | None = None) -> str:
    """``template`` with ``{}`` as ``name`` and ``{coarse}`` as ``coarse``."""
    out = []
    for literal, f, _, _ in Formatter().parse(template):
        out.append(literal)
        if f is not None:
            out.append(name if f == "" else str(coarse))
    return "".join(out)


def class_prompts(
    label: str,
    templates: Sequence[str],
    names: Sequence[str] | None = None,
    coarse: str | None = None,
) -> list[str]:
    """Every template filled with every name of the class (``names``; default: the label,
    :func:`class_name`); templates with ``{coarse}`` only when ``coarse`` is given. Distinct
    prompts, in order."""
    names = [n for n in (names or []) if n and n.strip()] or [class_name(label)]
    uses_coarse = ["coarse" in {f for _, f, _, _ in Formatter().parse(t)} for t in templates]
    usable = [t for t, c in zip(templates, uses_coarse, strict=True) if coarse or not c]
    if not usable:
        raise HeadsError(
            f"class {label!r}: every template names {{coarse}} and the class has no coarse "
            "group; add a template without it or give --coarse-column"
        )
    return list(dict.fromkeys(fill(t, n, coarse) for n in names for t in usable))


# ---------------------------------------------------------------------- reading files


def read_lines(path: str | os.PathLike, what: str = "--classes") -> list[str]:
    """A UTF-8 text file's non-empty lines, stripped; lines starting with ``#`` are comments."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HeadsError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HeadsError(f"{what} {path}: cannot read it as UTF-8 text ({e})") from None
    lines = [s.strip() for s in text.splitlines()]
    out = [s for s in lines if s and not s.startswith("#")]
    if not out:
        raise HeadsError(f"{what} {path}: the file holds no line (one value a line)")
    return out


def read_templates(values: Iterable[str]) -> list[str]:
    """``--templates`` values: a text holding ``{`` is a template, anything else a file of
    templates, one a line. Checked with :func:`check_templates`."""
    out: list[str] = []
    for v in values:
        out.extend([v] if "{" in v else read_lines(v, "--templates"))
    return list(check_templates(out))


def read_names(path: str | os.PathLike) -> dict[str, list[str]]:
    """A CSV of class names: a ``label`` column and one or more name columns (``name``,
    ``scientific_name``, ``common_name`` ...); a label may take several rows. Returns
    ``{label: [name, ...]}``, each label's distinct non-empty names in order."""
    p = Path(path).expanduser()
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except FileNotFoundError:
        raise HeadsError(f"--names {path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HeadsError(f"--names {path}: cannot read it as a UTF-8 CSV ({e})") from None
    lower = {h.lower(): h for h in header}
    if "label" not in lower or len(header) < 2:
        raise HeadsError(
            f"--names {path}: needs a 'label' column and one or more name columns "
            f"(e.g. label,scientific_name,common_name); it has: {', '.join(header) or 'nothing'}"
        )
    out: dict[str, list[str]] = {}
    for r in rows:
        r = {(k or "").strip(): (v or "").strip() for k, v in r.items() if isinstance(v, str)}
        label = r.get(lower["label"], "")
        if not label:
            continue
        names = [r[h] for h in header if h != lower["label"] and r.get(h)]
        out[label] = list(dict.fromkeys([*out.get(label, []), *names]))
    if not out:
        raise HeadsError(f"--names {path}: no row with a label")
    return out


def check_names(names: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """``names`` as ``{label: [name, ...]}`` (None: none), refusing anything else."""
    if names is None:
        return {}
    if not isinstance(names, Mapping):
        raise HeadsError(
            "--names: give {label: [name, ...]} (a CSV on the command line), "
            f"not {type(names).__name__}"
        )
    out = {}
    for label, ns in names.items():
        if isinstance(ns, str):
            ns = [ns]
        if not all(isinstance(n, str) for n in ns):
            raise HeadsError(f"--names: the names of {label!r} must be strings")
        out[str(label)] = [n.strip() for n in ns if n.strip()]
    return out
