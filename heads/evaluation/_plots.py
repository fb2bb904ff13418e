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

__all__ = ["plot_confusion", "plot_per_class", "plot_roc", "plot_training_curves", "plot_trials"]

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
    title: str | None = None,
    counts_label: str = "training images",
) -> Path:
    """Scatter of per-class F1 against training images per class (log x axis).

    The ``n_annotate`` worst classes (lowest F1; among equal F1 the better-represented class
    first, since a frequent class that fails is the surprising one) are labelled by name, the
    labels placed clear of each other and of the legend. Classes with no training image are
    drawn at x = 1. The dashed line is the mean (macro) F1. ``counts_label`` says what
    ``train_counts`` counts (e.g. an ensemble's images in all its training folds); with balanced
    classes the figure is sorted bars instead, each class's count in brackets after its name.
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
        return _plot_per_class_bars(f1, counts, class_names, path, title, counts_label)

    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(x, f1, s=14, alpha=0.6, edgecolors="none")
    ax.axhline(
        f1.mean(), color="grey", linestyle="--", linewidth=1, label=f"mean F1 {f1.mean():.3f}"
    )
    _plain_log_x(ax)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"{counts_label} per class (log scale)")
    ax.set_ylabel("per-class F1")
    ax.set_title(_titled(title, f"per-class F1 vs. training class frequency ({f1.size} classes)"))
    ax.grid(True, which="major", alpha=0.3)
    legend = ax.legend(loc="lower right")
    worst = np.lexsort((-x, f1))[: max(0, n_annotate)]
    _annotate_apart(fig, ax, [(str(class_names[i]), x[i], f1[i]) for i in worst], [legend])
    return _save(fig, path)


def _plot_per_class_bars(
    f1: np.ndarray,
    counts: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
    counts_label: str = "training images",
) -> Path:
    """Per-class F1 as sorted horizontal bars (worst at the top), for balanced class sizes.

    The legend sits below the axes, so no bar (F1 up to 1.0) runs under it."""
    order = np.argsort(-f1, kind="stable")  # barh draws bottom-up: best at the bottom
    fig = _figure(7.0, max(2.5, 0.28 * f1.size + 1.2))
    ax = fig.add_subplot()
    labels = [f"{class_names[i]} ({int(counts[i])})" for i in order]
    ax.barh(np.arange(f1.size), f1[order], color="tab:blue", alpha=0.75)
    ax.set_yticks(np.arange(f1.size), labels, fontsize=8)
    ax.axvline(
        f1.mean(), color="grey", linestyle="--", linewidth=1, label=f"mean F1 {f1.mean():.3f}"
    )
    ax.set_xlim(0.0, 1.0)  # from 0: a zoomed axis exaggerates small differences
    ax.set_xlabel("per-class F1")
    ax.set_title(_titled(title, f"per-class F1 ({f1.size} classes; {counts_label} in brackets)"))
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(loc="outside lower right", fontsize=8, frameon=False)  # below the axes
    return _save(fig, path)


def plot_training_curves(
    history: Sequence[Mapping[str, float | int | None]],
    path: str | os.PathLike[str],
    title: str | None = None,
    best_epoch: int | None = None,
) -> Path:
    """Per-epoch losses (left) and validation metrics (right) from a training history.

    ``history`` is one dict per epoch, e.g. ``{"epoch": 3, "train_loss": 0.8, "val_loss": 0.9,
    "val_macro_f1": 0.41, "val_top1": 0.55}``. Keys ending in ``loss`` go on the left panel,
    other keys starting with ``val_`` on the right; epochs missing a key (validation every few
    epochs) are skipped for that curve. Without ``"epoch"`` the x axis is 1, 2, ...
    ``best_epoch`` (the epoch kept) is marked on both panels. Epoch ticks are whole numbers;
    the validation axis follows the scores (within 0..1), so their changes stay visible.
    """
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    keys = list(dict.fromkeys(k for row in history for k in row if k != "epoch"))
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if k.startswith("val_") and not k.endswith("loss")]

    def series(key: str) -> tuple[list[float | int | None], list[float]]:
        pts = [
            (e, float(v))
            for e, row in zip(epochs, history, strict=True)
            if (v := row.get(key)) is not None and math.isfinite(float(v))
        ]
        return [e for e, _ in pts], [v for _, v in pts]

    fig = _figure(10.0, 4.0)
    ax_loss, ax_metric = fig.subplots(1, 2)
    if title:
        fig.suptitle(title)
    for ax, group, ylabel, panel in (
        (ax_loss, loss_keys, "loss", "Loss"),
        (ax_metric, metric_keys, "score", "Validation metrics"),
    ):
        for key in group:
            xs, ys = series(key)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        if best_epoch is not None:
            ax.axvline(
                best_epoch,
                color="tab:red",
                linestyle="--",
                linewidth=1,
                label=f"best epoch {best_epoch} (kept)",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are 1, 2, 3 ...
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(True, alpha=0.3)
        if group or best_epoch is not None:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    scores = [v for key in metric_keys for v in series(key)[1]]
    if scores:
        lo, hi = min(scores), max(scores)
        pad = max(0.05 * (hi - lo), 0.01)
        ax_metric.set_ylim(max(-0.01, lo - pad), hi + pad if hi > 1.0 else min(1.01, hi + pad))
    return _save(fig, path)


def plot_confusion(
    y_true: object,
    y_pred: object,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
    max_classes: int = 20,
) -> Path:
    """Row-normalised confusion matrix; with more than ``max_classes`` classes, the classes
    involved in the most confusions only (their errors with the others are left out)."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = len(class_names)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    keep = np.arange(n)
    if n > max_classes:
        off = cm - np.diag(np.diag(cm))
        keep = np.sort(np.argsort(-(off.sum(0) + off.sum(1)), kind="stable")[:max_classes])
    sub = cm[np.ix_(keep, keep)].astype(np.float64)
    norm = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1)
    size = 2.0 + 0.42 * len(keep)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [str(class_names[int(i)]) for i in keep]
    ax.set_xticks(np.arange(len(keep)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(np.arange(len(keep)), names, fontsize=7)
    for i in range(len(keep)):
        for j in range(len(keep)):
            if sub[i, j]:
                ax.text(
                    j,
                    i,
                    int(sub[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.6 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    shown = "" if len(keep) == n else f"; the {len(keep)} most-confused of {n} classes"
    ax.set_title(_titled(title, f"confusion matrix (rows sum to 1{shown})"), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def _titled(title: str | None, what: str) -> str:
    return f"{title}\n{what}" if title else what[0].upper() + what[1:]


def _plain_log_x(ax: Any) -> None:
    """A log scale labelled 20, 50, 100 (not 2x10^1 or 1.0): plain numbers on the decades and,
    where the data spans too little for those to show, on the ticks between them."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.7)))


# offsets (points) tried in turn for a point's label: beside it, then further above or below
_LABEL_OFFSETS = [(dx, dy) for dy in (4, -12, 16, -24, 28, -36, 40, -48, 52, -60) for dx in (7, -7)]


def _annotate_apart(
    fig: Any, ax: Any, labels: Sequence[tuple[str, float, float]], avoid: Sequence[Any] = ()
) -> list[Any]:
    """Label points ``(text, x, y)`` with a leader line each, every label at the first offset
    where its text overlaps no earlier label nor the artists in ``avoid`` (a legend) and stays
    inside the axes (else where it overlaps least). The layout is settled first and the labels
    kept out of it, so what is measured here is where they are saved."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = [a.get_window_extent(renderer) for a in avoid]
    placed = []
    for text, x, y in labels:
        tries = []
        for i, (dx, dy) in enumerate(_LABEL_OFFSETS):
            ha = "left" if dx > 0 else "right"
            probe = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, fontsize=7
            )
            box = probe.get_window_extent(renderer)  # the text alone: no leader line yet
            probe.remove()
            outside = box.width * box.height - _overlap(box, inside)
            tries.append((outside + sum(_overlap(box, t) for t in taken), i, box))
            if not tries[-1][0]:
                break
        _, i, box = min(tries, key=lambda t: (t[0], t[1]))
        dx, dy = _LABEL_OFFSETS[i]
        ann = ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha="left" if dx > 0 else "right",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "linewidth": 0.5, "color": "0.4"},
        )
        ann.set_in_layout(False)
        taken.append(box)
        placed.append(ann)
    return placed


def _overlap(a: Any, b: Any) -> float:
    """Area shared by two display boxes."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def plot_roc(
    curves: Mapping[str, tuple[object, object]],
    path: str | os.PathLike[str],
    summaries: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
) -> Path:
    """ROC curves of several unknown detectors on one axis.

    ``curves`` maps a detector name to ``(is_known (N,) bool, scores (N,))`` with higher score =
    more known (the ``score_samples`` convention). The x axis is the fraction of unknowns
    accepted, the y axis the fraction of knowns accepted; legends give the drawn curve's AUROC
    and FPR@95%TPR, followed by ``summaries[name] = (auroc, fpr95)`` in brackets when given
    (e.g. means over several draws, of which the curve is one: say which in ``title``).
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
        here = openset_scores(known, s)
        label = f"{name}: AUROC {here['auroc']:.3f}, FPR95 {here['fpr95']:.3f}"
        if summaries is not None and name in summaries:
            auroc, fpr95 = summaries[name]
            label += f" (mean {auroc:.3f}, {fpr95:.3f})"
        ax.plot(fpr, tpr, linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("unknowns accepted (false positive rate)")
    ax.set_ylabel("knowns accepted (true positive rate)")
    ax.set_title(_titled(title, "unknown detection ROC") if title else "Unknown detection ROC")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_trials(
    numbers: Sequence[int],
    values: Sequence[float | None],
    pruned: Sequence[float | None],
    path: str | os.PathLike[str],
    default: float | None = None,
    title: str | None = None,
    ylabel: str = "out-of-fold macro-F1",
) -> Path:
    """A hyper-parameter search: each finished trial's objective (dots), the best so far (a step
    line drawn over the default recipe's dashed line, carried on to the last trial) and each
    pruned trial as a grey cross in a strip at the bottom: a pruned trial has no score (its
    running value over the folds it ran is not comparable to a finished one's). The y axis
    starts at 0, as the other score plots do."""
    from matplotlib.transforms import blended_transform_factory

    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    done = [(n, v) for n, v in zip(numbers, values, strict=True) if v is not None]
    cut = [n for n, v in zip(numbers, pruned, strict=True) if v is not None]
    last = max(list(numbers) + [0])
    if done:
        ax.scatter(*zip(*done, strict=True), s=18, color="tab:blue", label="trial", zorder=4)
        best = -math.inf
        xs: list[float] = []
        ys: list[float] = []
        for n, v in done:
            best = max(best, v)
            xs.append(n)
            ys.append(best)
        xs.append(max(last, xs[-1]) + 0.5)  # on to the last trial, so one trial shows a line
        ys.append(ys[-1])
        ax.step(
            xs,
            ys,
            where="post",
            color="tab:red",
            linewidth=1.5,
            label=f"best so far ({ys[-1]:.4f})",
            zorder=3,
        )
    if cut:
        strip = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            cut,
            [0.04] * len(cut),
            s=24,
            marker="x",
            color="0.45",
            transform=strip,
            label="pruned (stopped early: no score)",
            zorder=4,
        )
    if default is not None:
        ax.axhline(
            default,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"default recipe ({default:.4f})",
            zorder=2,
        )
    from matplotlib.ticker import MaxNLocator

    if len(numbers) <= 12:
        ax.set_xticks(sorted(set(numbers)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are numbered 0, 1, 2 ...
    ax.set_xlim(min(list(numbers) + [0]) - 0.5, last + 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.set_title(_titled(title, "hyper-parameter search"))
    ax.grid(True, alpha=0.3)
    if done or cut:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial finished", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)
