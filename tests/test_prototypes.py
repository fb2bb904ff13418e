"""The centroid (prototype) head with the FungiCLEF 2025 options: train+val as the reference set,
and a soft transductive update of the prototypes toward the query set; on real image files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embedstore
import heads
from embedstore.search import l2_normalize
from tests.conftest import write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")


def test_transductive_update_recovers_a_shifted_query_set(photo_store):
    X, t = embedstore.connect(photo_store).embeddings(None, columns=["label", "fold"])
    y = np.asarray(t["label"]).astype(str)
    train = np.array([f is not None and f >= 0 for f in t["fold"]])
    Xn = l2_normalize(X)
    # a query set under a shift shared by every image (another camera, light, season): the
    # held-out photos' embeddings moved by one common vector 1.5 times as long as an embedding
    shift = l2_normalize(np.random.default_rng(0).normal(size=(1, X.shape[1])))[0]
    Q, yq = Xn[~train] + 1.5 * shift, y[~train]
    plain = heads.create_head("centroid").fit(Xn[train], y[train])
    trans = heads.create_head("centroid", transductive=True).fit(Xn[train], y[train])
    assert (plain.predict(Xn[~train]) == yq).mean() == 1.0  # unshifted: easy
    acc_plain = (plain.predict(Q) == yq).mean()
    acc_trans = (trans.predict(Q) == yq).mean()
    assert acc_plain <= 0.8 and acc_trans >= 0.95, (acc_plain, acc_trans)
    # the prototypes moved toward the shifted queries, the stored ones did not change
    moved = trans.transductive_prototypes(Q) - trans.prototypes_  # (C, d)
    assert (moved @ shift > 0.05).all()
    np.testing.assert_array_equal(trans.prototypes_, plain.prototypes_)
    # one query barely moves them (its weight against every labelled image of a class)
    one = trans.transductive_prototypes(Q[:1]) - trans.prototypes_
    assert np.linalg.norm(one) < 0.2 * np.linalg.norm(moved)
    # without transduction the same head gives the inductive answer, whatever the batch
    np.testing.assert_allclose(plain.decision_function(Q[:3]), plain.decision_function(Q)[:3])


def test_reference_train_val_and_transductive_through_training(photo_store, tmp_path):
    out = tmp_path / "protos"
    res = heads.train(
        photo_store,
        fold="all",
        head="centroid",
        reference="train+val",
        transductive=True,
        out=out,
        progress=False,
    )
    folds = [json.loads((out / f"fold{k}" / "config.json").read_text()) for k in range(3)]
    refit = json.loads((out / "refit" / "config.json").read_text())
    # the folds are scored on prototypes of their training part (honest out-of-fold scores) ...
    for c in folds:
        assert c["head_config"]["params"]["reference"] == "train"
        assert sum(c["head_config"]["class_counts"]) == c["n_train"]
    # ... the refit's prototypes hold every fold (train + validation), and predict alone
    assert refit["head_config"]["params"]["reference"] == "train+val"
    assert refit["head_config"]["params"]["transductive"] is True
    assert (
        sum(refit["head_config"]["class_counts"])
        == refit["n_train"]
        == folds[0]["n_train"] + folds[0]["n_val"]
    )
    ens = json.loads((out / "config.json").read_text())
    assert ens["members"] == ["refit"]
    assert res.ensemble_metrics.holdout["top1"] >= 0.9  # 4 classes: chance 0.25
    # reloaded, it predicts image files it never saw
    new = tmp_path / "new"
    write_class_images(new, n_classes=4, per_class=3, size=40, seed=5)
    preds = heads.predict(out, images_dir=new, device="cpu")
    assert sum(p.label == p.path.split("/")[-2] for p in preds) >= 10
    with pytest.raises(
        ValueError, match=r"unknown reference .everything.; valid: train, train\+val"
    ):
        heads.create_head("centroid", reference="everything").fit(np.eye(3), [0, 1, 2])


def test_simpleshot_centring_improves_the_centroid_on_real_flowers(flowers_store):
    """Subtracting the training mean before normalising (the default) moves the prototypes and
    gets more of the held-out flowers12 photos right than normalising alone."""
    X, t = embedstore.connect(flowers_store).embeddings(columns=("label", "split"), labelled=True)
    y, split = np.asarray(t["label"]).astype(str), np.asarray(t["split"])
    tr, te = split == "train", split == "test"
    plain = heads.create_head("centroid", centring="none").fit(X[tr], y[tr])
    centred = heads.create_head("centroid").fit(X[tr], y[tr])
    assert centred.centring == "mean" and centred.centre_ is not None and plain.centre_ is None
    np.testing.assert_allclose(centred.centre_, X[tr].mean(0), rtol=1e-5)
    assert np.abs(centred.prototypes_ - plain.prototypes_).max() > 0.05
    acc_plain = np.mean(plain.predict(X[te]) == y[te])
    acc_centred = np.mean(centred.predict(X[te]) == y[te])
    assert acc_centred > acc_plain > 0.9, (acc_centred, acc_plain)


def test_centroid_runs_saved_before_centring_load_uncentred():
    X = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32) + 2.0
    y = np.repeat(["a", "b", "c"], 10)
    head = heads.create_head("centroid", centring="none").fit(X, y)
    config, tensors = head.get_state()
    del config["params"]["centring"]  # a run written before the setting existed
    old = type(head).from_state(config, tensors)
    assert old.centring == "none" and old.centre_ is None
    np.testing.assert_array_equal(old.decision_function(X), head.decision_function(X))
    centred = heads.create_head("centroid").fit(X, y)
    again = type(centred).from_state(*centred.get_state())
    np.testing.assert_array_equal(again.decision_function(X), centred.decision_function(X))
    assert not np.array_equal(centred.decision_function(X), head.decision_function(X))
