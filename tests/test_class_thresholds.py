"""Per-class thresholds for the unknown decision (heads.estimators._class_thresholds): fitted per
predicted class, shrunk to the global one below the minimum count, and on real photos (flowers12)
fitted out-of-fold by `heads train --class-thresholds` and used by eval and predict."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import embedstore
import heads
from heads.estimators._class_thresholds import fit_class_thresholds
from heads.estimators._unknown import threshold_at_tpr, threshold_min_cost


def test_classes_below_the_minimum_count_keep_the_global_threshold():
    rng = np.random.default_rng(0)
    pred = np.repeat([0, 1, 2], [50, 19, 20])
    scores = rng.normal(pred * 2.0, 1.0)  # class 0 scores low, class 2 high
    th = fit_class_thresholds(
        scores, pred, np.ones(len(pred), bool), 4, global_threshold=0.7, min_count=20
    )
    assert th.own == [True, False, True, False] and th.counts == [50, 19, 20, 0]
    assert th.per_class[1] == th.per_class[3] == 0.7  # 19 and 0 rows: the global one
    assert th.per_class[0] == threshold_at_tpr(scores[pred == 0], 0.95)
    assert th.per_class[2] == threshold_at_tpr(scores[pred == 2], 0.95)
    np.testing.assert_allclose(th.for_pred(np.array([0, 1, 2, -1])), [*th.per_class[:3], 0.7])
    # each own class rejects 5% of its rows, whatever its score level
    for c in (0, 2):
        assert np.mean(scores[pred == c] < th.per_class[c]) == pytest.approx(0.05, abs=0.03)


def test_with_unknowns_a_class_takes_the_least_cost_threshold_of_its_rows():
    rng = np.random.default_rng(1)
    pred = np.repeat([0, 1], [60, 60])
    known = np.tile(np.r_[np.ones(40, bool), np.zeros(20, bool)], 2)
    scores = rng.normal(np.where(known, 2.0, 0.0) + pred, 0.7)
    th = fit_class_thresholds(scores, pred, known, 2, global_threshold=1.0, min_count=30)
    assert th.own == [True, True] and th.method == "min-cost"
    for c in (0, 1):
        rows = pred == c
        want, _ = threshold_min_cost(scores[rows & known], scores[rows & ~known])
        assert th.per_class[c] == want


@pytest.fixture(scope="module")
def open_run(flowers_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("class-thresholds")
    store = d / "store"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=5, use_split_column=True, seed=0)
    res = heads.train(
        store,
        fold="all",
        head="centroid",
        unknown="msp",
        class_thresholds=20,
        out=d / "open",
        progress=False,
    )
    return store, res


def test_train_fits_class_thresholds_out_of_fold(open_run):
    store, res = open_run
    ens = heads.load(res.ensemble, "cpu")
    fold = heads.load(res.runs[0], "cpu")
    ct = ens.class_thresholds
    assert ct is not None and all(ct.own)  # ~60 out-of-fold images a class in the ensemble
    assert fold.class_thresholds is not None and not any(fold.class_thresholds.own)  # ~12 a fold
    assert fold.class_thresholds.global_threshold == fold.threshold
    val = heads.runs.read_val(res.ensemble)
    s = np.asarray(val["unknown_score"], float)
    pred = val["logits"].argmax(1)
    unknown = ens.is_unknown(s, pred)
    rates = [unknown[pred == c].mean() for c in range(len(ens.classes))]
    assert max(rates) - min(rates) < 0.06  # every class rejects its ~5% out-of-fold
    assert np.mean(ens.is_unknown(s) != unknown) > 0  # not the global decision
    e = heads.evaluate(res.ensemble, plots=False)
    assert e.metrics["unknown_rate"] == pytest.approx(unknown.mean())
    held = embedstore.connect(store).read(["id"], part="holdout").column("id").to_pylist()
    for x in heads.predict(res.ensemble, ids=held[:60]):  # each its predicted class's threshold
        c = ens.classes.index(x.top_k[0]["label"])
        assert x.unknown == (x.unknown_score < ct.per_class[c])


def test_class_thresholds_need_a_detector(open_run, tmp_path):
    store, _ = open_run
    with pytest.raises(heads.HeadsError, match="--class-thresholds .* add --unknown"):
        heads.train(store, fold=0, head="centroid", class_thresholds=20, out=tmp_path / "x")
