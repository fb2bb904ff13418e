"""Neural heads (linear / MLP / transformer): accuracy reached, fusion, samplers, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.metrics import f1_score

from heads import create_head, list_heads
from heads._registry import head_class
from heads.estimators._encoders import MetadataEncoder
from heads.estimators._neural import (
    NeuralHead,
    compute_class_weights,
    prior_sample_weights,
)
from heads.losses import list_losses

ARCHS = ["linear", "mlp", "transformer"]
# small and quick: a few hundred optimiser steps at most per fit
FAST = dict(
    hidden=64,
    epochs=8,
    batch_size=256,
    lr=3e-3,
    transformer_dim=32,
    transformer_heads=2,
    transformer_layers=1,
    device="cpu",
)


def _blobs(n: int = 2000, c: int = 10, d: int = 64, sep: float = 1.0, seed: int = 0):
    """Gaussian blobs with string labels, split 1500 / 500."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * sep  # (C, D)
    y = rng.integers(0, c, n)
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)  # (N, D)
    labels = np.array([f"species_{i:02d}" for i in range(c)])[y]
    k = n * 3 // 4
    return X[:k], labels[:k], X[k:], labels[k:]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


def _val_acc(head: NeuralHead, Xv, yv, **kw) -> float:
    return float(np.mean(head.predict(Xv, **kw) == yv))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_separates_blobs(arch, blobs):
    assert arch in list_heads()
    X, y, Xv, yv = blobs
    head = create_head(arch, **FAST).fit(X, y, X_val=Xv, y_val=yv)
    assert _val_acc(head, Xv, yv) >= 0.95
    assert list(head.classes_) == sorted(set(y))
    proba = head.predict_proba(Xv)
    assert proba.shape == (len(Xv), 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    # columns follow classes_: the argmax column names the predicted label
    np.testing.assert_array_equal(head.classes_[proba.argmax(1)], head.predict(Xv))
    assert set(head.history_[0]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_macro_f1",
        "seconds",
    }


@pytest.mark.parametrize("loss", list_losses())
def test_every_loss_trains_an_mlp(loss, blobs):
    X, y, Xv, yv = blobs
    head = create_head("mlp", loss=loss, **{**FAST, "epochs": 12}).fit(X, y, X_val=Xv, y_val=yv)
    assert _val_acc(head, Xv, yv) >= 0.9, head.history_[-1]


def _metadata_task(seed: int = 0):
    """Embeddings are pure noise; a 'habitat' column and a geohash cell determine the class."""
    rng = np.random.default_rng(seed)
    n, c = 2000, 8
    y = rng.integers(0, c, n)
    sites = np.array([[48.0, 2.0], [52.5, 13.4], [41.9, 12.5], [40.4, -3.7]])  # Paris, ...
    table = {
        "habitat": np.array(["forest", "meadow"])[y % 2],
        "latitude": sites[y // 2, 0] + rng.normal(0, 0.05, n),
        "longitude": sites[y // 2, 1] + rng.normal(0, 0.05, n),
        "month": rng.integers(1, 13, n),  # noise
    }
    X = rng.normal(size=(n, 32)).astype(np.float32)
    k = 1500
    train = {key: v[:k] for key, v in table.items()}
    val = {key: v[k:] for key, v in table.items()}
    enc = MetadataEncoder(["habitat", "latitude", "longitude", "month"]).fit(train)
    return X[:k], y[:k], enc.transform(train), X[k:], y[k:], enc.transform(val)


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_metadata_fields_alone_determine_the_class(arch):
    X, y, f, Xv, yv, fv = _metadata_task()
    head = create_head(arch, **{**FAST, "epochs": 15, "lr": 1e-2}).fit(
        X, y, fields=f, X_val=Xv, y_val=yv, fields_val=fv
    )
    assert _val_acc(head, Xv, yv, fields=fv) >= 0.95
    # without the metadata the same task is chance level
    blind = create_head(arch, **FAST).fit(X, y, X_val=Xv, y_val=yv)
    assert _val_acc(blind, Xv, yv) < 0.3


def test_prior_sample_weights_hand_example():
    # train freq (0.75, 0.25, 0), val freq (0.5, 0.25, 0.25); class 2 never trained on
    w = prior_sample_weights([0, 0, 0, 1], [0, 0, 1, 2], num_classes=3)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 1.0])
    w = prior_sample_weights([0, 1, 1, 1], [1, 1], num_classes=2)  # class 0 absent from val
    np.testing.assert_allclose(w, [0.0, 4 / 3, 4 / 3, 4 / 3])


def test_prior_sampler_needs_validation_labels(blobs):
    X, y, Xv, yv = blobs
    with pytest.raises(ValueError, match="sampler='prior' needs validation labels"):
        create_head("linear", sampler="prior", **FAST).fit(X, y)
    head = create_head("linear", sampler="prior", **FAST).fit(X, y, X_val=Xv, y_val=yv)
    assert _val_acc(head, Xv, yv) >= 0.95


def test_class_weights_hand_example():
    np.testing.assert_allclose(compute_class_weights([1, 4], "inverse"), [2.5, 0.625])
    np.testing.assert_allclose(compute_class_weights([1, 4], "sqrt-inverse"), [5 / 3, 5 / 6])
    np.testing.assert_allclose(compute_class_weights([1, 4], "none"), [1.0, 1.0])
    with pytest.raises(ValueError, match="'none', 'inverse', 'sqrt-inverse'"):
        compute_class_weights([1, 4], "balanced")


def test_balanced_sampler_and_class_weights_on_imbalanced_data():
    X, y, Xv, yv = _blobs(sep=1.0)
    keep = (y != "species_00") | (np.arange(len(y)) % 10 == 0)  # class 0 rare
    for kw in ({"sampler": "balanced"}, {"class_weights": "inverse"}):
        head = create_head("mlp", **FAST, **kw).fit(X[keep], y[keep], X_val=Xv, y_val=yv)
        assert _val_acc(head, Xv, yv) >= 0.95


@pytest.mark.parametrize("arch", ARCHS)
def test_state_round_trip_gives_identical_logits(arch, tmp_path):
    X, y, f, Xv, yv, fv = _metadata_task()
    aux = (y % 2).astype(np.float32)[:, None]  # (N, 1)
    head = create_head(arch, **{**FAST, "epochs": 2}).fit(X, y, fields=f, aux=aux)
    config, tensors = head.get_state()
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "weights.safetensors")
    config2 = json.loads((tmp_path / "config.json").read_text())
    loaded = head_class(arch).from_state(config2, load_file(tmp_path / "weights.safetensors"))
    assert type(loaded) is type(head) and loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.classes_, head.classes_)
    np.testing.assert_array_equal(
        loaded.decision_function(Xv, fields=fv), head.decision_function(Xv, fields=fv)
    )
    np.testing.assert_array_equal(loaded.aux_proba(Xv, fields=fv), head.aux_proba(Xv, fields=fv))


def test_cosine_classifier_round_trip(blobs):
    X, y, Xv, yv = blobs
    loss = "subcenter-arcface" if "subcenter-arcface" in list_losses() else "arcface"
    head = create_head("mlp", loss=loss, **{**FAST, "epochs": 1}).fit(X, y)
    config, tensors = head.get_state()
    loaded = NeuralHead.from_state(json.loads(json.dumps(config)), tensors)
    np.testing.assert_array_equal(loaded.decision_function(Xv), head.decision_function(Xv))


def test_aux_targets_are_learned_with_missing_values(blobs):
    X, y, Xv, yv = blobs
    poisonous = lambda labels: np.isin(labels, ["species_01", "species_04", "species_07"])  # noqa: E731
    aux = poisonous(y).astype(np.float32)[:, None]
    aux[::5] = np.nan  # missing targets are skipped
    head = create_head("mlp", **FAST).fit(X, y, aux=aux, X_val=Xv, y_val=yv)
    p = head.aux_proba(Xv)
    assert p.shape == (len(Xv), 1)
    assert np.mean((p[:, 0] > 0.5) == poisonous(yv)) >= 0.95


def test_nan_rows_are_rejected_with_a_count(blobs):
    X, y, _, _ = blobs
    X = X.copy()
    X[[3, 7], 0] = np.nan
    X[11, 5] = np.inf
    with pytest.raises(ValueError, match=r"X has 3 of 1500 rows with NaN or Inf values; re-embed"):
        create_head("mlp", **FAST).fit(X, y)


def test_single_class_is_rejected(blobs):
    X, _, _, _ = blobs
    with pytest.raises(ValueError, match="y holds a single class .*at least 2"):
        create_head("linear", **FAST).fit(X, np.full(len(X), "a"))


def test_invalid_option_lists_valid_values(blobs):
    X, y, _, _ = blobs
    with pytest.raises(ValueError, match="sampler must be one of 'none', 'balanced', 'prior'"):
        create_head("mlp", sampler="uniform", **FAST).fit(X, y)


def test_early_stopping_restores_the_best_epoch(blobs):
    X, y, Xv, yv = blobs
    head = create_head("linear", **{**FAST, "epochs": 100, "patience": 3}).fit(
        X, y, X_val=Xv, y_val=yv
    )
    assert len(head.history_) < 100
    f1s = [r["val_macro_f1"] for r in head.history_]
    assert head.best_epoch_ == int(np.argmax(f1s)) + 1
    assert len(head.history_) == head.best_epoch_ + 3
    best = head.history_[head.best_epoch_ - 1]
    assert _val_acc(head, Xv, yv) == pytest.approx(best["val_top1"])


@pytest.mark.parametrize("patience", [0, None])
def test_patience_zero_or_none_never_stops_early(blobs, patience):
    X, y, Xv, yv = blobs
    head = create_head("linear", **{**FAST, "epochs": 30, "patience": patience}).fit(
        X, y, X_val=Xv, y_val=yv
    )
    assert len(head.history_) == 30  # with patience 3 the same data stops well before


def test_without_validation_all_epochs_run(blobs):
    X, y, _, _ = blobs
    head = create_head("linear", **{**FAST, "epochs": 3}).fit(X, y)
    assert [r["epoch"] for r in head.history_] == [1, 2, 3]
    assert head.history_[-1]["val_macro_f1"] is None and head.best_epoch_ == 3


def test_validation_macro_f1_matches_sklearn(blobs):
    X, y, Xv, yv = blobs
    head = create_head("linear", **{**FAST, "epochs": 1, "lr": 1e-4}).fit(X, y, X_val=Xv, y_val=yv)
    expected = f1_score(yv, head.predict(Xv), average="macro")
    assert head.history_[0]["val_macro_f1"] == pytest.approx(expected)


def test_same_seed_same_logits_and_float16_input(blobs):
    X, y, Xv, _ = blobs
    a = create_head("mlp", **{**FAST, "epochs": 2}).fit(X.astype(np.float16), y)
    b = create_head("mlp", **{**FAST, "epochs": 2}).fit(torch.from_numpy(X).half(), y)
    np.testing.assert_array_equal(a.decision_function(Xv), b.decision_function(Xv))
    c = create_head("mlp", **{**FAST, "epochs": 2, "seed": 1}).fit(X.astype(np.float16), y)
    assert not np.array_equal(a.decision_function(Xv), c.decision_function(Xv))


def test_sklearn_clone_keeps_the_class_and_settings():
    head = create_head("transformer", hidden=32, transformer_dim=16)
    twin = clone(head)
    assert type(twin) is type(head) and twin.get_params() == head.get_params()
    assert twin.get_params()["arch"] is None  # the class's default arch applies


def test_unknown_validation_labels_are_left_out_with_a_warning(blobs):
    X, y, Xv, yv = blobs
    yv = yv.copy()
    yv[:20] = "unknown"
    with pytest.warns(UserWarning, match="20 of 500 validation samples have labels absent"):
        head = create_head("linear", **{**FAST, "epochs": 2}).fit(X, y, X_val=Xv, y_val=yv)
    assert "unknown" not in head.classes_


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_reaches_cpu_accuracy(blobs):
    X, y, Xv, yv = blobs
    for arch in ARCHS:
        head = create_head(arch, **{**FAST, "device": "cuda", "sampler": "balanced"})
        head.fit(X, y, X_val=Xv, y_val=yv)
        assert head.device_.type == "cuda" and _val_acc(head, Xv, yv) >= 0.95
