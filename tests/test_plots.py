"""What the run-report figures hold, read back from matplotlib's objects (issue 26, 14-16):
the counts a per-class plot shows, where its legend and labels sit, how its axes are labelled."""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
import pytest
from matplotlib.text import Text

import embedstore
import heads
from heads.evaluation import _plots
from heads.evaluation._evaluate import class_image_counts
from heads.evaluation._report import _per_class as _per_class_table
from heads.runs._config import read_run_config
from tests.conftest import make_synthetic_store

FAST = {"epochs": 6, "batch_size": 64, "progress": False, "device": "cpu"}


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plotting function saves, keyed by file name, drawn as it was saved."""
    saved = {}
    real_save = _plots._save

    def keep(fig, path):
        out = real_save(fig, path)
        saved[out.name] = fig
        return out

    monkeypatch.setattr(_plots, "_save", keep)
    return saved


def _tick_texts(axis, minor=False):
    """The tick labels shown inside the axis' view limits."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
    labels = axis.get_ticklabels(minor=minor)
    return [t.get_text() for v, t in zip(ticks, labels, strict=True) if lo <= v <= hi]


def test_a_fold_ensemble_counts_each_class_whole(tmp_path, figures):
    st = make_synthetic_store(tmp_path / "s", n_classes=4, per_class=25, sep=1.5)
    embedstore.split(st, folds=2, holdout=0.2, seed=0)
    heads.train(st, fold="all", head="mlp", out=tmp_path / "r", **FAST)
    folds = [np.asarray(read_run_config(tmp_path / "r" / f"fold{k}").train_counts) for k in (0, 1)]
    total = folds[0] + folds[1]  # with 2 folds each image trains exactly one of them

    counts, counted = class_image_counts(tmp_path / "r", heads.load(tmp_path / "r"))
    assert counts.tolist() == total.tolist() and counted == "training images (all folds)"
    fold0 = tmp_path / "r" / "fold0"
    counts, counted = class_image_counts(fold0, heads.load(fold0))
    assert counts.tolist() == folds[0].tolist() and counted == "training images"

    figures.clear()
    heads.evaluate(tmp_path / "r", holdout=False)
    ax = figures["per_class.png"].axes[0]  # balanced classes: bars named "class (count)"
    shown = {t.get_text() for t in ax.get_yticklabels()}
    names = heads.load(tmp_path / "r").classes
    assert shown == {f"{n} ({int(c)})" for n, c in zip(names, total, strict=True)}
    assert "training images (all folds) in brackets" in ax.get_title()
    table = _per_class_table(np.linspace(0.5, 1.0, len(names)), heads.load(tmp_path / "r"))
    assert "<th>training images (all folds)</th>" in table  # the report's table counts the same
    assert all(f"<td class='num'>{int(c)}</td>" in table for c in total)


def test_the_bars_legend_is_clear_of_bars_at_f1_one(tmp_path, figures):
    f1 = np.array([1.0, 1.0, 1.0, 0.97, 0.95, 0.9, 1.0, 0.99, 0.93, 1.0, 0.98, 0.96])
    _plots.plot_per_class(f1, np.full(12, 60), [f"c{i}" for i in range(12)], tmp_path / "p.png")
    fig = figures["p.png"]
    renderer = fig.canvas.get_renderer()
    (legend,) = [*fig.legends, *filter(None, [fig.axes[0].get_legend()])]
    box = legend.get_window_extent(renderer)
    bars = fig.axes[0].patches
    assert len(bars) == 12
    assert not any(box.overlaps(b.get_window_extent(renderer)) for b in bars)


def test_81_classes_labels_apart_and_a_plain_log_axis(tmp_path, figures):
    rng = np.random.default_rng(0)
    counts = rng.integers(16, 61, 81)  # grocery81's per-fold range: under one decade
    f1 = np.clip(rng.normal(0.85, 0.1, 81), 0, 1)
    worst = [3, 4, 5, 6, 7]  # five failures at one spot: their labels would pile up
    f1[worst], counts[worst] = [0.4, 0.4, 0.41, 0.42, 0.4], [30, 30, 31, 30, 32]
    names = [f"Grocery-Item-{i:02d}-Long-Name" for i in range(81)]
    _plots.plot_per_class(f1, counts, names, tmp_path / "p.png")
    fig = figures["p.png"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().startswith("Grocery")]
    assert sorted(t.get_text() for t in labels) == sorted(names[i] for i in worst)
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its line
    assert not any(a.overlaps(b) for a, b in combinations(boxes, 2))
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(b.overlaps(legend) for b in boxes)

    ticks = _tick_texts(ax.xaxis) + _tick_texts(ax.xaxis, minor=True)
    shown = [t for t in ticks if t]
    assert len(shown) >= 3, ticks
    assert all(re.fullmatch(r"\d+", t) for t in shown), shown  # 20, 30 (not 2x10^1)


@pytest.mark.parametrize("epochs", [3, 12])
def test_curves_whole_epochs_and_a_validation_axis_on_the_data(tmp_path, figures, epochs):
    history = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 2.2 / e, "val_top1": 0.85 + 0.01 * e}
        for e in range(1, epochs + 1)
    ]
    _plots.plot_training_curves(history, tmp_path / "curves.png", best_epoch=2)
    ax_loss, ax_metric = figures["curves.png"].axes
    for ax in (ax_loss, ax_metric):
        shown = [t for t in _tick_texts(ax.xaxis) if t]
        assert shown and all(re.fullmatch(r"\d+", t) for t in shown), shown
    lo, hi = ax_metric.get_ylim()
    top1 = [row["val_top1"] for row in history]
    assert lo <= min(top1) and max(top1) <= hi <= 1.01
    assert lo > 0.8  # scores between 0.86 and 0.97 fill the panel, not a 0-1 axis


def test_a_long_tail_log_axis_reads_1_10_100(tmp_path, figures):
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 500, 40)  # a class with no image is drawn at 1
    counts[0] = 0
    _plots.plot_per_class(rng.random(40), counts, [f"c{i}" for i in range(40)], tmp_path / "p.png")
    ax = figures["p.png"].axes[0]
    shown = [t for t in _tick_texts(ax.xaxis) + _tick_texts(ax.xaxis, minor=True) if t]
    assert shown == ["1", "10", "100"], shown  # not 1.0, 10.0 nor 10^1; no minor labels
