"""The heads' option types (architectures, samplers, averages, metric names): one place each.

Torch-free, so the command line's ``--help`` and option parsing stay instant. Each string
choice is a ``Literal`` with its tuple of values beside it (for ``click.Choice``, the service's
request model and messages); ``embedstore.types.check_choice`` validates one.
"""

from __future__ import annotations

from typing import Literal, get_args

Arch = Literal["linear", "mlp", "transformer"]
ARCHS: tuple[str, ...] = get_args(Arch)
ClassWeights = Literal["none", "inverse", "sqrt-inverse"]
CLASS_WEIGHTS: tuple[str, ...] = get_args(ClassWeights)
Sampler = Literal["none", "balanced", "prior"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
Average = Literal["logits", "probs"]
AVERAGES: tuple[str, ...] = get_args(Average)
# What `heads train --fold all --refit` ensembles: the fold runs, the refit run, or both.
EnsembleMembers = Literal["folds", "refit", "both"]
ENSEMBLE_MEMBERS: tuple[str, ...] = get_args(EnsembleMembers)
# The reference set of the centroid head: the training part, or training + validation.
Reference = Literal["train", "train+val"]
REFERENCES: tuple[str, ...] = get_args(Reference)
# What the centroid and LDA heads do to an embedding before anything else: subtract the training
# mean, then L2-normalise (SimpleShot's CL2N), or L2-normalise only.
Centring = Literal["mean", "none"]
CENTRINGS: tuple[str, ...] = get_args(Centring)

# The fallback to a coarser rank of the taxonomy (heads.taxonomy): the share of answers at each
# rank that must be right out-of-fold, and the validation rows a predicted class needs for its
# own threshold (fewer: its rank's).
DEFAULT_TARGET = 0.9
DEFAULT_MIN_COUNT = 20
# How a threshold meets the target: the share of its answers right on the rows fitted ("none"),
# or the one-sided 95% Wilson lower bound of that share (small validation parts: a margin).
Bound = Literal["none", "wilson"]
BOUNDS: tuple[str, ...] = get_args(Bound)
# Conformal scores of prediction sets (heads.prediction._sets): 1 - p of the label, or the
# probability mass of the labels at least as probable (adaptive sets).
SetScore = Literal["lac", "aps"]
SET_SCORES: tuple[str, ...] = get_args(SetScore)

# --- metrics, in the order tables print them
MetricName = Literal[
    "top1",
    "top3",
    "recall@5",
    "macro_f1",
    "mean_class_acc",
    "many_shot",
    "medium_shot",
    "few_shot",
    "unknown_rate",
    "acc_without_rejection",
    "acceptance_rate",
    "acc_on_accepted",
    "open_set_acc",
    "auroc",
    "fpr95",
    "track1",
    "track2",
    "track3",
    "track4",
    "set_coverage",
    "mean_set_size",
]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
