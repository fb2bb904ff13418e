"""Training a head with a text prior (``HeadTags.text_prior``: ``heads train --head zeroshot``):
its class weights built once from the column's text tower, and the run it makes when the store
has no labelled training image at all (a zero-shot run, scored on the held-out part).

The classes are ``classes`` (the setting) or, without it, every label of the store, plus the
labels of the training images in either case (they train, so they need a text). Each class's
names come from the ``names`` setting and the store's ``name_columns``; its coarse group from
``coarse_column``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from embedstore.store import HOLDOUT
from heads._base import head_tags
from heads._data import NO_FOLD, FoldData, fold_rows
from heads._errors import HeadsError
from heads.evaluation._evaluate import evaluate
from heads.text._class_texts import class_texts, coarse_from_column, names_from_columns
from heads.text._prompts import check_names
from heads.training._folds import _Job, calibrate_fold, fit_fold, prepare_fold, save_fold


def text_columns(estimator: Any) -> list[str]:
    """The store columns a text-prior head's class texts read (names, coarse groups)."""
    if not head_tags(estimator).text_prior:
        return []
    p = estimator.get_params()
    cols = [
        *(p.get("name_columns") or []),
        *([p["coarse_column"]] if p.get("coarse_column") else []),
    ]
    return list(dict.fromkeys(cols))


def attach_class_texts(
    data: FoldData, estimator: Any, unknown_label: str, device: str | None
) -> None:
    """Build the class text weights of a text-prior head once, into ``data.text``."""
    if len(data.backbones) > 1:
        raise HeadsError(
            "--head zeroshot compares one image column with its text tower; give one --backbone"
        )
    p = estimator.get_params()
    if isinstance(p.get("classes"), str | bytes):
        raise HeadsError(
            "--classes: give a list of class names (a file of them on the command line)"
        )
    known = [v is not None and str(v) != unknown_label for v in data.labels]
    every = sorted({str(v) for v, k in zip(data.labels, known, strict=True) if k})
    trained = sorted({str(v) for v in data.labels[fold_rows(data, None, unknown_label)[0]]})
    given = [str(c) for c in p["classes"]] if p.get("classes") is not None else every
    classes = list(dict.fromkeys([*given, *trained]))
    if len(classes) < 2:
        raise HeadsError(
            f"{data.store_path}: --head zeroshot needs at least 2 classes; give --classes FILE "
            "(one name a line) or label images"
        )
    names = names_from_columns(data.labels, data.table, p.get("name_columns") or [])
    for label, ns in check_names(p.get("names")).items():  # the --names CSV's first
        names[label] = list(dict.fromkeys([*ns, *names.get(label, [])]))
    coarse = p.get("coarse_column")
    data.text = class_texts(
        data.store_path,
        classes,
        data.backbone.backbone,
        templates=p.get("templates"),
        names=names,
        coarse=coarse_from_column(data.labels, data.table, coarse) if coarse else None,
        device=device or "auto",
    )


def zero_shot_only(data: FoldData, estimator: Any, unknown_label: str) -> bool:
    """A text-prior head on a store with no labelled image to train on (in a fold, not held
    out): one run of the class texts alone, with no folds."""
    return head_tags(estimator).text_prior and not len(fold_rows(data, None, unknown_label)[0])


def unused_labels_warning(data: FoldData, unknown_label: str) -> list[str]:
    """A warning when labelled images sit in no fold (the store was not split since): a
    zero-shot run cannot learn from them."""
    lab = np.array([v is not None and str(v) != unknown_label for v in data.labels])
    n = int((lab & (data.fold == NO_FOLD)).sum())
    if not n:
        return []
    return [
        f"{n} labelled images are in no fold, so the zero-shot run did not learn from them; "
        f"`embedstore split --store {data.store_path}` puts them in folds, and the text weights "
        "are then blended with them"
    ]


def check_zero_shot_options(job: _Job, refit: bool) -> None:
    """What a run without labelled training images cannot do, refused by name."""
    for what, given in (
        ("--unknown", job.unknown is not None),
        ("--refit", refit),
        ("--metadata", bool(job.metadata)),
        ("--aux-target", bool(job.aux_targets)),
    ):
        if given:
            raise HeadsError(
                f"{what} needs labelled training images; the store has none outside the held-out "
                "part (a zero-shot run learns from class names only). Label images and "
                f"`embedstore split`, or drop {what}"
            )


def train_zero_shot(job: _Job, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The one run of a zero-shot head with no labelled training image: fitted on the class
    texts alone, saved in ``run_dir``, scored on the held-out part. Returns the fitted head and
    the run's scores (``holdout``: the held-out part's, where the store has one)."""
    data = job.data
    assert data is not None  # train reads it first
    f = prepare_fold(data, None, job.metadata, job.aux_targets, job.unknown_label)
    model = clone(job.estimator)
    fit_s = fit_fold(model, data, f)
    val_logits, _, _ = calibrate_fold(model, None, data, f)
    save_fold(run_dir, model, None, data, f, val_logits, None, fit_s, job)
    res = evaluate(run_dir, holdout=True, plots=False, device="cpu")
    metrics: dict[str, Any] = {**res.metrics, "n_train": 0, "fit_seconds": round(fit_s, 3)}
    held = int((data.fold == HOLDOUT).sum())
    if res.holdout is not None:
        metrics["holdout"] = res.holdout
    metrics["n_holdout"] = held
    return model, metrics
