"""The heads' training settings, declared once: type, default, help, allowed values, tune range.

Torch-free (``import heads.settings`` costs nothing), so the command line and the service can
build their options from it. The heads take their defaults from here, and ``heads.tune``'s
search space is derived from the ``tune`` ranges.

Shape: :data:`SETTINGS` is a tuple of :class:`Setting`, each with

- ``name``: the keyword of ``heads.train(**head_options)`` / the head's ``__init__``
  (``--name-with-dashes`` on the command line, ``name`` in the service's JSON body);
- ``type``: ``int``, ``float``, ``str`` or ``bool`` (a ``bool`` is a flag), ``list`` (of
  strings; a repeatable option, a JSON array) or ``dict`` (``{str: [str, ...]}``, a JSON object);
- ``file``: how the command line reads a ``list`` or ``dict`` setting from a file (the service
  takes the values themselves, never a path on the server): ``"lines"`` (one value a line),
  ``"templates"`` (a value holding ``{`` is itself one, else a file of them), ``"names"`` (a
  CSV, ``heads.text.read_names``); ``max_items``: the most values the service accepts;
- ``default``: the value the head uses when the option is not given (None: the head decides,
  e.g. ``lr``: ``default_by_arch``);
- ``help``: one line for ``--help`` and the OpenAPI description;
- ``choices``: the valid strings (a tuple), or ``registry``: the name of the registry whose
  names are valid (``"losses"``: ``heads.list_losses()``), or neither;
- ``min`` / ``max`` (inclusive; ``min_exclusive`` for ``> min``): numeric bounds;
- ``heads``: the registered heads that take it (``heads_taking(name)``);
- ``tune``: its search range (:class:`TuneRange`, or ``{arch: TuneRange}``), None: not tuned.

Deriving options (what the CLI and the service do; sketches, not code here)::

    for s in heads.settings.SETTINGS:           # click
        kind = click.Choice(s.choices) if s.choices else {int: click.IntRange(s.min, s.max),
               float: click.FloatRange(s.min, s.max, min_open=s.min_exclusive)}.get(s.type, s.type)
        click.option(f"--{s.name.replace('_', '-')}", type=kind, default=None, help=s.help)
    fields = {s.name: (s.type | None, pydantic.Field(None, description=s.help, **s.bounds()))
              for s in heads.settings.SETTINGS}  # pydantic.create_model("TrainBody", **fields)

:data:`PSEUDO_SETTINGS` (``heads train --pseudo-label``'s options) and :data:`DISTILL_SETTINGS`
(``heads distill``'s) are declared the same way: run options no head takes (``heads=()``).

``label_smoothing`` is no head keyword: :func:`head_options` turns it into
``loss_kwargs={"label_smoothing": x}`` (as ``heads train --label-smoothing`` always did).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from heads.text._prompts import DEFAULT_TEMPLATES
from heads.types import CENTRINGS, CLASS_WEIGHTS, REFERENCES, SAMPLERS

NEURAL = ("linear", "mlp", "transformer")
ZEROSHOT = ("zeroshot",)


@dataclass(frozen=True)
class TuneRange:
    """A search range: ``low``..``high`` (``log`` scale or linear), or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    registry: str | None = None  # choices: every name of this registry ("losses")

    def as_space(self) -> tuple[float, float, str] | list[Any] | None:
        """As ``heads.search_space`` gives it: ``(low, high, "log"|"linear")`` or ``[choices]``
        (None for a registry's names, which :func:`heads.search_space` fills in)."""
        if self.choices is not None:
            return list(self.choices)
        if self.registry is not None:
            return None
        assert self.low is not None and self.high is not None  # a range without choices
        return (self.low, self.high, "log" if self.log else "linear")


@dataclass(frozen=True)
class Setting:
    """One training setting of the heads (see the module docstring)."""

    name: str
    type: type
    default: Any
    help: str
    heads: tuple[str, ...] = NEURAL
    choices: tuple[str, ...] | None = None
    registry: str | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    tune: TuneRange | Mapping[str, TuneRange] | None = None
    default_by_arch: Mapping[str, Any] = field(default_factory=dict)
    file: str | None = None  # "lines", "templates" or "names": how the command line reads it
    max_items: int | None = None  # a list's or dict's most values (the service's bound)

    def bounds(self) -> dict[str, float]:
        """Bounds as pydantic's ``Field`` keywords (``ge``/``gt``, ``le``; ``max_length``)."""
        out: dict[str, float] = {}
        if self.max_items is not None:
            out["max_length"] = self.max_items
        if self.min is not None:
            out["gt" if self.min_exclusive else "ge"] = self.min
        if self.max is not None:
            out["le"] = self.max
        return out

    def tune_range(self, arch: str | None) -> TuneRange | None:
        """The search range for a head of architecture ``arch`` (None: not searched)."""
        if isinstance(self.tune, TuneRange) or self.tune is None:
            return self.tune
        return self.tune.get(arch or "")


# The learning rate searched a decade either side of each architecture's default.
_LR = {"linear": 1e-2, "mlp": 1e-3, "transformer": 5e-4}

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "lr",
        float,
        None,
        "Learning rate (default: the head's; linear 1e-2, mlp 1e-3, transformer 5e-4).",
        min=0,
        min_exclusive=True,
        max=100,
        default_by_arch=_LR,
        tune={
            "linear": TuneRange(1e-3, 1e-1, log=True),
            "mlp": TuneRange(1e-4, 1e-2, log=True),
            "transformer": TuneRange(5e-5, 5e-3, log=True),
        },
    ),
    Setting(
        "weight_decay",
        float,
        1e-4,
        "AdamW weight decay, on weight matrices only.",
        min=0,
        max=100,
        tune=TuneRange(1e-6, 1.0, log=True),
    ),
    Setting("dropout", float, 0.1, "Dropout rate.", min=0, max=1, tune=TuneRange(0.0, 0.7)),
    Setting(
        "hidden",
        int,
        1024,
        "Hidden width (MLP; the transformer's feed-forward width).",
        min=1,
        max=65_536,
        tune={a: TuneRange(choices=(256, 512, 1024, 2048)) for a in ("mlp", "transformer")},
    ),
    Setting(
        "loss",
        str,
        "ce",
        "Loss from the registry (default ce).",
        registry="losses",
        tune=TuneRange(registry="losses"),
    ),
    Setting(
        "label_smoothing",
        float,
        0.0,
        "For --loss ce.",
        min=0,
        max=1,
        tune=TuneRange(0.0, 0.3),
    ),
    Setting(
        "class_weights",
        str,
        "none",
        "Loss weights per class (default none).",
        choices=CLASS_WEIGHTS,
    ),
    Setting(
        "sampler",
        str,
        "none",
        "prior: FungiCLEF 2024 sampler, weight = val class freq / train class freq.",
        choices=SAMPLERS,
    ),
    Setting("aux_alpha", float, 1.0, "Weight of the auxiliary BCE loss.", min=0, max=1_000),
    Setting(
        "epochs",
        int,
        30,
        "Training epochs, at most (early stopping on validation macro-F1).",
        min=1,
        max=10_000,
    ),
    Setting(
        "patience",
        int,
        10,
        "Stop after this many epochs without a better validation macro-F1 (default 10; 0: never).",
        min=0,
        max=10_000,
    ),
    Setting("batch_size", int, 1024, "Training batch size.", min=1, max=1_000_000),
    Setting("warmup_epochs", int, 1, "Epochs of linear learning-rate warm-up.", min=0, max=10_000),
    Setting("k", int, 20, "Neighbours, for --head knn.", heads=("knn",), min=1, max=100_000),
    Setting(
        "reference",
        str,
        "train",
        "For --head centroid: prototypes of the training part, or of train+val (all folds, "
        "as a refit; needs --fold all).",
        heads=("centroid",),
        choices=REFERENCES,
    ),
    Setting(
        "transductive",
        bool,
        False,
        "For --head centroid: move the prototypes toward the images being predicted (soft "
        "k-means) before predicting them.",
        heads=("centroid",),
    ),
    Setting(
        "centring",
        str,
        "mean",
        "For --head centroid and lda: subtract the training mean, then L2-normalise "
        "(SimpleShot), or none: L2-normalise only.",
        heads=("centroid", "lda"),
        choices=CENTRINGS,
    ),
    Setting(
        "templates",
        list,
        None,
        "For --head zeroshot: prompt templates, each with {} for the class name ({coarse}: "
        "its --coarse-column group); on the command line repeatable, or a file of them, one a "
        "line (default: " + " | ".join(DEFAULT_TEMPLATES) + ").",
        heads=ZEROSHOT,
        file="templates",
        max_items=1_000,
    ),
    Setting(
        "classes",
        list,
        None,
        "For --head zeroshot: the class names (on the command line a file, one a line; "
        "default: the store's labels); the labels of training images are classes too.",
        heads=ZEROSHOT,
        file="lines",
        max_items=1_000_000,
    ),
    Setting(
        "names",
        dict,
        None,
        "For --head zeroshot: each class's names, {label: [name, ...]} (on the command line a "
        "CSV of a label column and name columns: scientific_name, common_name ...); its "
        "prompts are made with each name and averaged (default: the label, '_' as ' ').",
        heads=ZEROSHOT,
        file="names",
        max_items=1_000_000,
    ),
    Setting(
        "name_columns",
        list,
        None,
        "For --head zeroshot: a store column naming each image's class (as --names does); "
        "repeatable.",
        heads=ZEROSHOT,
        max_items=100,
    ),
    Setting(
        "coarse_column",
        str,
        None,
        "For --head zeroshot: a store column with each class's coarse group (genus, "
        "department ...), for {coarse} in templates.",
        heads=ZEROSHOT,
    ),
    Setting(
        "blend",
        float,
        None,
        "For --head zeroshot: how far labelled images move the text weights toward their class "
        "means (0: zero-shot, 1: prototypes; default: chosen out-of-fold from 0, .25, .5, .75, 1).",
        heads=ZEROSHOT,
        min=0,
        max=1,
    ),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}

# The run's pseudo-labelling options: ``heads.train`` keywords that no head takes (``heads`` is
# empty), declared here all the same so that ``heads train`` and the service derive them.
PSEUDO_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "pseudo_label",
        bool,
        False,
        "Pseudo-label (needs --fold all): score the unlabelled rows with the fold ensemble, add "
        "the most confident with their predicted labels, train again.",
        heads=(),
    ),
    Setting(
        "unlabelled",
        str,
        None,
        "SQL filter on store rows that --pseudo-label treats as unlabelled (their labels are "
        "never read), e.g. \"split = 'test'\" (default: the rows with no label).",
        heads=(),
    ),
    Setting(
        "fraction",
        float,
        None,
        "Share of the unlabelled rows pseudo-labelled, most confident first, per predicted class "
        "(default: chosen out-of-fold from 0.1, 0.3, 0.5, or none when none helps).",
        heads=(),
        min=0,
        min_exclusive=True,
        max=1,
    ),
    Setting(
        "pseudo_weight",
        float,
        None,
        "Loss weight of a pseudo-labelled row, a labelled one weighing 1 (default: chosen "
        "out-of-fold from 0.5 and 1).",
        heads=(),
        min=0,
        min_exclusive=True,
        max=1,
    ),
    Setting(
        "rounds",
        int,
        1,
        "Rounds of --pseudo-label: each scores the unlabelled rows again with the last round's "
        "fold ensemble and trains again.",
        heads=(),
        min=1,
        max=10,
    ),
)
PSEUDO_BY_NAME: dict[str, Setting] = {s.name: s for s in PSEUDO_SETTINGS}

# ``heads distill``'s own options (the student's head settings are :data:`SETTINGS`).
DISTILL_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "temperature",
        float,
        2.0,
        "Distillation temperature T: the student matches softmax(teacher logits / T).",
        heads=(),
        min=0,
        min_exclusive=True,
        max=100,
    ),
    Setting(
        "label_weight",
        float,
        0.5,
        "On labelled rows the target is this much the true label and the rest the teacher's "
        "probabilities (0: the teacher's alone).",
        heads=(),
        min=0,
        max=1,
    ),
)
DISTILL_BY_NAME: dict[str, Setting] = {s.name: s for s in DISTILL_SETTINGS}


def heads_taking(name: str) -> tuple[str, ...]:
    """The built-in heads that take setting ``name``."""
    return BY_NAME[name].heads


def head_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (None: not given) as head keywords: ``label_smoothing`` into ``loss_kwargs``."""
    out = {k: v for k, v in options.items() if v is not None and k != "label_smoothing"}
    if options.get("label_smoothing"):
        out["loss_kwargs"] = {
            **(out.get("loss_kwargs") or {}),
            "label_smoothing": float(options["label_smoothing"]),
        }
    return out


__all__ = [
    "BY_NAME",
    "DEFAULTS",
    "DISTILL_BY_NAME",
    "DISTILL_SETTINGS",
    "PSEUDO_BY_NAME",
    "PSEUDO_SETTINGS",
    "SETTINGS",
    "Setting",
    "TuneRange",
    "head_options",
    "heads_taking",
]
