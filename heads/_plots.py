"""PNG figures for run reports: per-class F1 against class frequency, training curves, ROC.

matplotlib is imported inside each function and drawn through the Agg canvas directly
(``Figure`` + ``FigureCanvasAgg``, no ``pyplot``), so importing ``heads`` stays cheap, no
display is needed, and the process-wide pyplot backend and figure registry are left alone.
Every function writes one PNG (creating parent folders) and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heads._metrics import openset_scores

__all__ = ["plot_per_class", "plot_roc", "plot_training_curves"]

_DPI = 120


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_per_class(
    f1: object,
    train_counts: object,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    n_annotate: int = 5,
) -> Path:
    """Scatter of per-class F1 against training images per class (log x axis).

    The ``n_annotate`` worst classes (lowest F1; among equal F1 the better-represented class
    first, since a frequent class that fails is the surprising one) are labelled by name.
    Classes with no training image are drawn at x = 1. The dashed line is the mean (macro) F1.
    """
    f1 = np.asarray(f1, dtype=np.float64)
    counts = np.asarray(train_counts, dtype=np.float64)
    if f1.ndim != 1 or f1.shape != counts.shape or len(class_names) != f1.size:
        raise ValueError(
            f"f1 {f1.shape}, train_counts {counts.shape} and class_names ({len(class_names)}) "
            "must all have one entry per class"
        )
    x = np.maximum(counts, 1.0)
    if x.max() / x.min() < 4.0 and f1.size <= 60:  # no real long tail: a scatter says nothing
        return _plot_per_class_bars(f1, counts, class_names, path)

    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(x, f1, s=14, alpha=0.6, edgecolors="none")
    ax.axhline(
        f1.mean(), color="grey", linestyle="--", linewidth=1, label=f"mean F1 {f1.mean():.3f}"
    )
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())  # 10, 100, 1000 rather than 10^1 ...
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("per-class F1")
    ax.set_title(f"Per-class F1 vs. training class frequency ({f1.size} classes)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right")

    worst = np.lexsort((-x, f1))[: max(0, n_annotate)]
    for rank, i in enumerate(worst):
        ax.annotate(
            str(class_names[i]),
            (x[i], f1[i]),
            xytext=(6, 6 + 9 * (rank % 3)),
            textcoords="offset points",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "linewidth": 0.5, "color": "0.4"},
        )
    return _save(fig, path)


def _plot_per_class_bars(f1: np.ndarray, counts: np.ndarray, class_names: Sequence[str],
                         path: str | os.PathLike[str]) -> Path:  # fmt: skip
    """Per-class F1 as sorted horizontal bars (worst at the top), for balanced class sizes."""
    order = np.argsort(-f1, kind="stable")  # barh draws bottom-up: best at the bottom
    fig = _figure(7.0, max(2.5, 0.28 * f1.size + 1.2))
    ax = fig.add_subplot()
    labels = [f"{class_names[i]} ({int(counts[i])})" for i in order]
    ax.barh(np.arange(f1.size), f1[order], color="tab:blue", alpha=0.75)
    ax.set_yticks(np.arange(f1.size), labels, fontsize=8)
    ax.axvline(
        f1.mean(), color="grey", linestyle="--", linewidth=1, label=f"mean F1 {f1.mean():.3f}"
    )
    lo = max(0.0, float(f1.min()) - 0.1)
    ax.set_xlim(lo, 1.0)
    ax.set_xlabel("per-class F1")
    ax.set_title(f"Per-class F1 ({f1.size} classes; training images in brackets)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_training_curves(
    history: Sequence[Mapping[str, float | int | None]], path: str | os.PathLike[str]
) -> Path:
    """Per-epoch losses (left) and validation metrics (right) from a training history.

    ``history`` is one dict per epoch, e.g. ``{"epoch": 3, "train_loss": 0.8, "val_loss": 0.9,
    "val_macro_f1": 0.41, "val_top1": 0.55}``. Keys ending in ``loss`` go on the left panel,
    other keys starting with ``val_`` on the right; epochs missing a key (validation every few
    epochs) are skipped for that curve. Without ``"epoch"`` the x axis is 1, 2, ...
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    keys = list(dict.fromkeys(k for row in history for k in row if k != "epoch"))
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if k.startswith("val_") and not k.endswith("loss")]

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [
            (e, float(row[key]))
            for e, row in zip(epochs, history, strict=True)
            if row.get(key) is not None and math.isfinite(float(row[key]))
        ]
        return [e for e, _ in pts], [v for _, v in pts]

    fig = _figure(10.0, 4.0)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for ax, group, ylabel, title in (
        (ax_loss, loss_keys, "loss", "Loss"),
        (ax_metric, metric_keys, "score", "Validation metrics"),
    ):
        for key in group:
            xs, ys = series(key)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if group:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_roc(curves: Mapping[str, tuple[object, object]], path: str | os.PathLike[str]) -> Path:
    """ROC curves of several unknown detectors on one axis.

    ``curves`` maps a detector name to ``(is_known (N,) bool, scores (N,))`` with higher score =
    more known (the ``score_samples`` convention). The x axis is the fraction of unknowns
    accepted, the y axis the fraction of knowns accepted; legends give AUROC and FPR@95%TPR.
    """
    from sklearn.metrics import roc_curve

    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name, (is_known, scores) in curves.items():
        known = np.asarray(is_known, dtype=bool)
        s = np.asarray(scores, dtype=np.float64)
        fpr, tpr, _ = roc_curve(known, s)
        summary = openset_scores(known, s)
        ax.plot(
            fpr,
            tpr,
            linewidth=1.5,
            label=f"{name} (AUROC {summary['auroc']:.3f}, FPR95 {summary['fpr95']:.3f})",
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("unknowns accepted (false positive rate)")
    ax.set_ylabel("knowns accepted (true positive rate)")
    ax.set_title("Unknown detection ROC")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
