"""Conformal prediction sets (heads.prediction._sets): the finite-sample quantile against a
brute-force reference, the promised coverage on exchangeable data, class-conditional coverage,
and on real photos (flowers12) coverage on a held-out part, through the library and the CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import heads_cli
from heads.prediction import calibrate_probs, label_scores, set_scores
from heads.prediction._sets import conformal_quantile


def _reference_quantile(scores: np.ndarray, coverage: float) -> float:
    """The smallest score q with at least ceil((n + 1) * coverage) scores <= q (inf: none)."""
    need = math.ceil((len(scores) + 1) * coverage - 1e-9)
    for q in sorted(scores):
        if np.sum(scores <= q) >= need:
            return float(q)
    return math.inf


def test_conformal_quantile_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        s = rng.random(n).round(int(rng.integers(1, 4)))  # with ties
        cov = float(rng.choice([0.5, 0.8, 0.9, 0.95]))
        assert conformal_quantile(s, cov) == _reference_quantile(s, cov)
    assert conformal_quantile(np.arange(8.0), 0.9) == math.inf  # 8 scores: too few for 90%
    assert conformal_quantile(np.arange(9.0), 0.9) == 8.0  # ceil(10 * 0.9) = the 9th smallest
    assert conformal_quantile(np.arange(10.0), 0.9) == 9.0  # ceil(11 * 0.9) = the 10th


def test_aps_scores_are_the_mass_of_the_labels_at_least_as_probable():
    p = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])
    np.testing.assert_allclose(label_scores(p, "aps"), [[0.5, 1.0, 0.8], [1.0, 0.6, 0.9]])
    np.testing.assert_allclose(label_scores(p, "lac"), 1 - p)


def _calibrated_model(rng, n: int, c: int = 10, hard: int | None = None):
    """Probabilities of a calibrated model and labels drawn from them (exchangeable rows);
    class ``hard`` gets flat probabilities (a class the model is unsure of)."""
    logits = rng.normal(0, 2.5, (n, c))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    if hard is not None:  # the model underrates the hard class on its own images
        rows = y == hard
        p[rows, hard] *= 0.3
        p[rows] /= p[rows].sum(1, keepdims=True)
    return p, y


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_split_conformal_covers_exchangeable_data_as_promised(score):
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(10)]
    covered = []
    for _ in range(150):
        p, y = _calibrated_model(rng, 400)
        cal = calibrate_probs(p[:200], y[:200], classes, coverage=0.9, score=score)
        covered.append(set_scores(cal.sets(p[200:]), y[200:])["coverage"])
    mean = float(np.mean(covered))
    # guaranteed >= 0.9 on average (and < 0.9 + 1/201 for lac without ties); 150 x 200 draws
    assert mean >= 0.9 - 0.006, mean
    if score == "lac":
        assert mean <= 0.9 + 1 / 201 + 0.006, mean


def test_class_conditional_sets_cover_a_hard_class_that_global_ones_miss():
    rng = np.random.default_rng(2)
    classes = [f"c{i}" for i in range(5)]
    per_class, global_only = [], []
    for _ in range(40):
        p, y = _calibrated_model(rng, 3000, c=5, hard=0)
        a, b = slice(0, 1500), slice(1500, None)
        mondrian = calibrate_probs(p[a], y[a], classes, coverage=0.9, min_class_count=20)
        plain = calibrate_probs(p[a], y[a], classes, coverage=0.9, min_class_count=10**9)
        assert all(mondrian.own) and not any(plain.own)
        hard = y[b] == 0
        per_class.append(mondrian.sets(p[b])[hard, 0].mean())
        global_only.append(plain.sets(p[b])[hard, 0].mean())
    assert np.mean(per_class) >= 0.88, np.mean(per_class)
    assert np.mean(global_only) < np.mean(per_class) - 0.02  # the global quantile favours easy


def test_a_class_below_the_minimum_count_takes_the_global_quantile():
    rng = np.random.default_rng(3)
    p, y = _calibrated_model(rng, 600, c=4)
    y[y == 3] = 2  # class 3 no longer has calibration rows ...
    y[:5] = 3  # ... but five
    cal = calibrate_probs(p, y, ["a", "b", "c", "d"], coverage=0.9, min_class_count=20)
    assert cal.own == [True, True, True, False] and cal.class_counts[3] == 5
    assert cal.thresholds[3] == cal.global_threshold
    s = 1 - p[np.arange(len(y)), y]
    assert cal.thresholds[0] == conformal_quantile(s[y == 0], 0.9)
    every = cal.sets(p)
    assert every[np.arange(len(p)), p.argmax(1)].all()  # never empty: the top label is in it


# ---------------------------------------------------------------------- real photos


@pytest.fixture(scope="module")
def flowers_run(flowers_store, tmp_path_factory):
    """flowers12 split on its train/test folders (test held out), a centroid fold ensemble."""
    d = tmp_path_factory.mktemp("sets")
    store = d / "store"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=5, use_split_column=True, seed=0)
    heads.train(store, fold="all", head="centroid", out=d / "centroid", progress=False)
    return store, d / "centroid"


def test_sets_calibrated_on_half_the_held_out_part_cover_the_other_half(flowers_run):
    store, run = flowers_run
    half = "fold = -1 AND id < '8'"  # ids are SHA-256 hex: a random half
    res = heads.evaluate(run, plots=False, coverage=0.9, calibrate_on=half)
    h = res.holdout
    assert res.sets["n"] + h["set_n"] == h["n_known"]  # the other half only is scored
    print(
        f"flowers12 centroid, 90% sets: coverage {h['set_coverage']:.3f}, size "
        f"{h['mean_set_size']:.2f} on {h['set_n']} held-out photos; top1 {h['top1']:.3f}"
    )
    assert 0.82 <= h["set_coverage"] <= 0.98  # exchangeable halves: 0.9 up to sampling
    assert h["mean_set_size"] < 3  # 12 classes: sets say something
    assert "set_coverage" not in res.metrics or res.metrics["set_n"] > 0
    # out-of-fold calibration on this easy data set covers the test photos too
    oof = heads.evaluate(run, plots=False, coverage=0.9).holdout
    assert oof["set_coverage"] >= 0.85, oof


def test_predict_gives_the_sets_evaluate_scores(flowers_run):
    store, run = flowers_run
    st = embedstore.connect(store)
    t = st.read(["id", "label"], part="holdout").to_pylist()[::20]
    preds = heads.predict(run, ids=[r["id"] for r in t], coverage=0.9)
    cal = heads.prediction.calibrate_sets(run, 0.9)
    assert cal.source == "out-of-fold" and cal.n == st.count(part="folds")
    model = heads.load(run, "cpu")
    embs, tab = st.embedding_rows(
        {c: b["dim"] for c, b in model.backbone_columns().items()}, ["id"], ids=[r["id"] for r in t]
    )
    z = model.logits(embs, {})
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    want = dict(zip(tab["id"], cal.sets(probs), strict=True))
    for p in preds:
        assert p.label in p.set and p.set[0] == p.top_k[0]["label"]
        assert set(p.set) == {model.classes[c] for c in np.flatnonzero(want[p.id])}
    covered = np.mean([r["label"] in p.set for r, p in zip(t, preds, strict=True)])
    assert covered >= 0.75


def test_calibrating_on_rows_the_run_trained_on_is_refused(flowers_run, tmp_path):
    store, _ = flowers_run
    heads.train(store, fold=0, head="centroid", out=tmp_path / "f0", progress=False)
    with pytest.raises(heads.HeadsError, match="trained the run; calibrate on images it never"):
        heads.prediction.calibrate_sets(tmp_path / "f0", 0.9, calibrate_on="fold >= 0")
    ok = heads.prediction.calibrate_sets(
        tmp_path / "f0", 0.9, calibrate_on="fold = 0"
    )  # its own fold
    assert "out-of-fold" in ok.source and ok.n == embedstore.connect(store).count("fold = 0")


def test_eval_and_predict_cli_with_coverage(flowers_run, flowers):
    _, run = flowers_run
    r = CliRunner().invoke(heads_cli, ["eval", str(run), "--coverage", "0.8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)[0]
    assert out["sets"]["coverage"] == 0.8 and out["holdout"]["mean_set_size"] >= 1
    assert 0.0 < out["holdout"]["recall@5"] <= 1.0
    photo = sorted((flowers / "test" / "daisy").glob("*.jpg"))[0]
    r = CliRunner().invoke(heads_cli, ["predict", str(run), str(photo), "--coverage", "0.9"])
    assert r.exit_code == 0 and "set (" in r.output, r.output
    r = CliRunner().invoke(heads_cli, ["predict", str(run), str(photo), "--set-score", "aps"])
    assert r.exit_code == 2 and "give --coverage too" in r.output
