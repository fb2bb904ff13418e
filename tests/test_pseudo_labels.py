"""Pseudo-labels (``heads train --pseudo-label``) on real flowers12 photos: the unlabelled rows'
stored labels are never read, rounds are recorded, the fraction and weight are chosen
out-of-fold, and the rows picked are the fold ensemble's confident, agreed, per-class ones."""

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
from heads.runs import read_pseudo, read_val
from heads.training._pseudo import FoldScores, fold_probabilities, select_confident

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {
    "epochs": 12,
    "patience": 0,
    "hidden": 64,
    "lr": 3e-3,
    "batch_size": 64,
    "progress": False,
    "device": "cpu",
    "seed": 0,
}
TEST = "split = 'test'"


@pytest.fixture(scope="module")
def split_flowers(flowers_store, tmp_path_factory):
    """flowers12's 959 photos, 3 folds over the 719 training ones, the 240 test ones held out."""
    path = tmp_path_factory.mktemp("pseudo") / "flowers"
    shutil.copytree(flowers_store, path)
    embedstore.split(path, folds=3, seed=0, use_split_column=True)
    return path


def _labels(store, where=None):
    t = embedstore.connect(store).read(["id", "label"], where=where).to_pydict()
    return dict(zip(t["id"], t["label"], strict=True))


@pytest.mark.slow
def test_pseudo_labelled_rows_never_read_their_stored_labels(split_flowers, tmp_path):
    opts = {**FAST, "pseudo_label": True, "unlabelled": TEST, "fraction": 0.3}
    a = heads.train(split_flowers, fold="all", out=tmp_path / "a", pseudo_weight=0.5, **opts)
    # the same store with wrong labels planted on every test photo (and a class no photo has)
    planted = tmp_path / "planted"
    shutil.copytree(split_flowers, planted)
    truth = _labels(split_flowers, TEST)
    classes = sorted(set(truth.values()))
    ids = sorted(truth)
    wrong = [classes[(classes.index(truth[i]) + 1) % len(classes)] for i in ids]
    wrong[::7] = ["planted-wrong"] * len(wrong[::7])
    embedstore.connect(planted).update_columns(ids, {"label": wrong})
    assert all(_labels(planted, TEST)[i] != truth[i] for i in ids)
    b = heads.train(planted, fold="all", out=tmp_path / "b", pseudo_weight=0.5, **opts)
    # the same rows, labels and rounds, and the same models (bit for bit)
    pa, pb = read_pseudo(tmp_path / "a"), read_pseudo(tmp_path / "b")
    for key in ("id", "label", "round", "margin"):
        assert np.array_equal(pa[key], pb[key]), key
    for k in range(3):
        va, vb = read_val(tmp_path / "a" / f"fold{k}"), read_val(tmp_path / "b" / f"fold{k}")
        assert np.array_equal(va["logits"], vb["logits"])
    assert a.pseudo.to_dict() == {**b.pseudo.to_dict(), "labels": a.pseudo.labels}
    # the pseudo-labels are the model's: right for most test photos, whatever was planted
    n = len(pa["id"])
    assert 0.25 * len(ids) <= n <= 0.4 * len(ids)
    right = np.mean([truth[i] == lab for i, lab in zip(pa["id"], pa["label"], strict=True)])
    assert right >= 0.95, right
    assert "planted-wrong" not in set(pb["label"])
    # evaluation reads the stored labels of the test part, as it always does: planted, they score
    assert a.ensemble_metrics.holdout["top1"] >= 0.85
    assert b.ensemble_metrics.holdout["top1"] <= 0.2


@pytest.mark.slow
def test_rounds_are_recorded_and_eval_scores_labelled_rows_only(split_flowers, tmp_path):
    # semi-supervised: half the training photos lose their label (and their fold)
    semi = tmp_path / "semi"
    shutil.copytree(split_flowers, semi)
    st = embedstore.connect(semi)
    t = st.read(["id", "fold"], where="fold >= 0").to_pydict()
    drop = sorted(t["id"])[::2]
    st.update_columns(drop, {"label": [None] * len(drop), "fold": [None] * len(drop)})
    embedstore.split(semi, folds=3, seed=0, use_split_column=True)
    out = tmp_path / "run"
    res = heads.train(
        semi,
        fold="all",
        out=out,
        pseudo_label=True,
        fraction=0.2,
        pseudo_weight=0.5,
        rounds=2,
        **FAST,
    )
    p = res.pseudo
    assert p.unlabelled == "label IS NULL" and p.n_unlabelled == len(drop)
    assert [r["round"] for r in p.rounds] == [1, 2] and p.chosen == "given"
    rows = read_pseudo(out)
    assert set(rows["round"]) == {1, 2}
    for r in (1, 2):  # each round: about a fifth of the unlabelled rows, every class kept
        sel = rows["round"] == r
        assert set(rows["id"][sel]) <= set(drop)
        assert 0.2 * len(drop) <= sel.sum() <= 0.2 * len(drop) + 12
        assert len(set(rows["label"][sel])) == 12
    for k in range(3):
        cfg = json.loads((out / f"fold{k}" / "config.json").read_text())
        assert cfg["pseudo"]["round"] == 2 and cfg["pseudo"]["rows"] == int(
            (rows["round"] == 2).sum()
        )
        assert cfg["pseudo"]["weight"] == 0.5 and cfg["pseudo"]["labels"] == "../pseudo.parquet"
        assert cfg["n_train"] + cfg["n_val"] == 719 - len(drop)  # labelled rows only
    # heads eval: out-of-fold on the labelled rows, held-out on the test part
    ev = heads.evaluate(out, plots=False, device="cpu")
    assert ev.metrics["n"] == 719 - len(drop) and ev.holdout["n"] == 240
    assert ev.holdout["top1"] >= 0.85


@pytest.mark.slow
def test_the_fraction_and_weight_are_chosen_out_of_fold(split_flowers, tmp_path):
    res = heads.train(
        split_flowers,
        fold="all",
        out=tmp_path / "r",
        pseudo_label=True,
        unlabelled=TEST,
        **FAST,
    )
    p = res.pseudo
    assert p.chosen == "out-of-fold"
    grid = [(c["fraction"], c["weight"]) for c in p.choice]
    assert grid[0] == (0.0, None)  # the plain fit first
    assert sorted(grid[1:]) == sorted(
        (f, w) for f in heads.training.PSEUDO_FRACTIONS for w in heads.training.PSEUDO_WEIGHTS
    )
    best = max(p.choice, key=lambda c: (c["oof_macro_f1"], c["oof_top1"]))
    assert (p.fraction, p.weight) == (best["fraction"], best["weight"] or 1.0)
    # the plain row is the fold runs' own out-of-fold score before pseudo-labelling
    assert all(0.8 <= c["oof_top1"] <= 1 for c in p.choice)
    if p.fraction:
        assert len(read_pseudo(tmp_path / "r")["id"]) == p.rounds[0]["rows"] > 0
    else:  # nothing helped: the run is the plain fit and records no rows
        assert p.rounds == [] and p.labels is None


def _reference_selection(P, fraction):
    """Slow and obvious: per predicted class, the agreed rows by margin, ceil(fraction * n)."""
    mean = P.mean(axis=0)
    picked = []
    for c in range(P.shape[2]):
        members = [i for i in range(P.shape[1]) if mean[i].argmax() == c]
        agreed = [i for i in members if all(P[k, i].argmax() == c for k in range(P.shape[0]))]
        margin = {i: sorted(mean[i])[-1] - sorted(mean[i])[-2] for i in agreed}
        agreed.sort(key=lambda i: -margin[i])
        picked += agreed[: math.ceil(fraction * len(members))]
    return sorted(picked)


@pytest.mark.parametrize("seed", range(5))
def test_selection_matches_the_slow_reference(seed):
    rng = np.random.default_rng(seed)
    K, M, C = 3, 200, 7
    base = rng.normal(size=(M, C)) * 3
    base[:, 6] -= 4  # a rare class: 5 rows predicted, one still chosen at 10%
    base[:5, 6] += 20
    scores = [
        FoldScores(k, np.array(list("abcdefg")), 1.0, base + rng.normal(size=(M, C)), 0, 0)
        for k in range(K)
    ]
    classes, P = fold_probabilities(scores)
    for fraction in (0.1, 0.3, 1.0):
        sel = select_confident(P, classes, fraction)
        assert sel.rows.tolist() == _reference_selection(P, fraction)
        assert (sel.agreement == 1).all()
        assert set(sel.labels) == set(classes[P.mean(0)[sel.rows].argmax(1)])
    assert "g" in set(select_confident(P, classes, 0.1).labels)


def test_fold_probabilities_align_classes_a_fold_never_saw():
    z = np.log(np.array([[0.7, 0.3]]))
    s1 = FoldScores(0, np.array(["a", "b"]), 1.0, z, 0, 0)
    s2 = FoldScores(1, np.array(["b", "c"]), 1.0, z, 0, 0)
    classes, P = fold_probabilities([s1, s2])
    assert classes.tolist() == ["a", "b", "c"]
    assert np.allclose(P[0], [[0.7, 0.3, 0.0]]) and np.allclose(P[1], [[0.0, 0.7, 0.3]])


def test_pseudo_label_options_and_their_errors(split_flowers, tmp_path):
    with pytest.raises(heads.HeadsError, match="--fraction: only with --pseudo-label"):
        heads.train(split_flowers, fold="all", fraction=0.3, **FAST)
    with pytest.raises(heads.HeadsError, match="needs --fold all"):
        heads.train(split_flowers, fold=0, pseudo_label=True, unlabelled=TEST, **FAST)
    with pytest.raises(heads.HeadsError, match="found no unlabelled rows"):
        heads.train(split_flowers, fold="all", pseudo_label=True, out=tmp_path / "x", **FAST)
    with pytest.raises(heads.HeadsError, match="--rounds 0"):
        heads.train(split_flowers, fold="all", pseudo_label=True, rounds=0, **FAST)
    r = CliRunner().invoke(
        heads_cli, ["train", "--store", str(split_flowers), "--fold", "all", "--fraction", "0.3"]
    )
    assert r.exit_code == 2 and "only with --pseudo-label" in r.output


@pytest.mark.slow
def test_cli_pseudo_label_says_what_it_did(split_flowers, tmp_path):
    args = ["train", "--store", str(split_flowers), "--fold", "all", "--out", str(tmp_path / "r")]
    args += ["--pseudo-label", "--unlabelled", TEST, "--fraction", "0.2", "--pseudo-weight", "1"]
    args += ["--epochs", "8", "--hidden", "64", "--batch-size", "64", "--seed", "0"]
    args += ["--device", "cpu", "--quiet"]
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code == 0, r.output
    assert "pseudo-labels: fraction 0.2, weight 1 (given) of 240 unlabelled rows" in r.output
    assert "round 1: " in r.output and str(tmp_path / "r" / "pseudo.parquet") in r.output
