"""heads.estimators._knn: kNN voting against a per-query loop, centroid prototypes, and the head
contract."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from embedstore.search import l2_normalize
from heads import create_head, list_heads
from heads.estimators._knn import CentroidHead, KNNHead

HEADS = ["knn", "centroid"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _clusters(rng, n_classes=8, per_class=40, d=32, spread=0.5, labels=None):
    """Gaussian clusters with well separated means; ``labels`` names the classes."""
    means = rng.normal(size=(n_classes, d)) * 3.0
    y_idx = np.repeat(np.arange(n_classes), per_class)
    X = means[y_idx] + spread * rng.normal(size=(y_idx.size, d))
    names = np.arange(n_classes) if labels is None else np.asarray(labels)
    return X.astype(np.float32), names[y_idx], means


def _reference_vote(X_train, y_train, Q, k, T, classes):
    """Slow, obviously correct DINOv2 voting: one query at a time, one neighbour at a time."""
    train = l2_normalize(X_train).astype(np.float16).astype(np.float64)  # what the head stores
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    out = np.zeros((len(Q), len(classes)))
    for qi, q in enumerate(l2_normalize(Q).astype(np.float64)):
        sims = train @ q
        for j in np.argsort(-sims, kind="stable")[:k]:
            out[qi, list(classes).index(y_train[j])] += np.exp(sims[j] / T)
        out[qi] /= out[qi].sum()
    return out


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_knn_voting_matches_loop_reference(backend):
    rng = np.random.default_rng(0)
    X, y, _ = _clusters(rng, n_classes=6, per_class=30, spread=2.5)  # overlapping: votes split
    Q = rng.normal(size=(25, 32)).astype(np.float32) * 3.0
    head = KNNHead(ks=(1, 5, 30, 100), temperature=0.1, backend=backend, device="cpu").fit(X, y)
    multi = head.predict_proba_multi_k(Q)
    assert sorted(multi) == [1, 5, 30, 100]
    for k, P in multi.items():
        ref = _reference_vote(X, y, Q, k, 0.1, head.classes_)
        np.testing.assert_allclose(P, ref, atol=1e-5, err_msg=f"k={k}")
    np.testing.assert_allclose(
        head.predict_proba(Q), _reference_vote(X, y, Q, 20, 0.1, head.classes_), atol=1e-5
    )
    small_batches = clone(head).set_params(batch_size=7).fit(X, y).predict_proba_multi_k(Q)
    for k in multi:
        np.testing.assert_array_equal(small_batches[k], multi[k])


def test_faiss_and_torch_heads_predict_the_same():
    rng = np.random.default_rng(1)
    X, y, _ = _clusters(rng, spread=2.0)
    Q = rng.normal(size=(200, 32)).astype(np.float32) * 3.0
    a = KNNHead(backend="faiss", device="cpu").fit(X, y)
    b = KNNHead(backend="torch", device="cpu").fit(X, y)
    np.testing.assert_array_equal(a.predict(Q), b.predict(Q))
    np.testing.assert_allclose(a.predict_proba(Q), b.predict_proba(Q), atol=1e-5)


def test_knn_reaches_high_accuracy_on_separable_clusters():
    rng = np.random.default_rng(2)
    X, y, means = _clusters(rng, n_classes=20, per_class=50, spread=1.0)
    X_test = (means[np.repeat(np.arange(20), 20)] + rng.normal(size=(400, 32))).astype(np.float32)
    y_test = np.repeat(np.arange(20), 20)
    head = KNNHead(device="cpu").fit(X, y)
    assert np.mean(head.predict(X_test) == y_test) > 0.95
    for k, P in head.predict_proba_multi_k(X_test).items():
        assert np.mean(head.classes_[P.argmax(1)] == y_test) > 0.95, f"k={k}"


def test_k_larger_than_training_set():
    rng = np.random.default_rng(3)
    X, y, _ = _clusters(rng, n_classes=3, per_class=10)  # 30 rows
    with pytest.raises(
        ValueError, match=r"k=50 is larger than the training set \(30 stored embeddings\)"
    ):
        KNNHead(k=50, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match=r"ks=\[40\] larger than the training set \(30 stored"):
        KNNHead(k=5, ks=(5, 40), device="cpu").fit(X, y)
    head = KNNHead(device="cpu").fit(X, y)  # the defaults are clamped silently
    assert head.k_ == 20 and head.ks_ == (10, 20, 30)
    assert sorted(head.predict_proba_multi_k(X)) == [10, 20, 30]
    assert KNNHead(k=25, ks=(5,), device="cpu").fit(X, y).k_ == 25


@pytest.mark.parametrize("centring", ["mean", "none"])
def test_centroid_prototypes_and_logits_match_loop_reference(centring):
    rng = np.random.default_rng(4)
    X, y, _ = _clusters(rng, n_classes=5, per_class=12, spread=3.0)
    head = CentroidHead(temperature=0.2, centring=centring).fit(X, y)
    centre = X.mean(0) if centring == "mean" else np.zeros(X.shape[1])  # SimpleShot's CL2N
    Xn = l2_normalize(X - centre)
    for c_i, c in enumerate(head.classes_):
        proto = Xn[y == c].mean(0)
        np.testing.assert_allclose(head.prototypes_[c_i], proto / np.linalg.norm(proto), atol=1e-6)
    Q = rng.normal(size=(7, 32))
    np.testing.assert_allclose(
        head.decision_function(Q), l2_normalize(Q - centre) @ head.prototypes_.T / 0.2, atol=1e-5
    )


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", HEADS)
def test_registered(name):
    assert name in list_heads()


@pytest.mark.parametrize(
    "labels", [["zeta", "alpha", "mu", "beta"], [40, 7, 13, 2]], ids=["str", "int"]
)
@pytest.mark.parametrize("name", HEADS)
def test_head_contract(tmp_path, name, labels):
    rng = np.random.default_rng(5)
    X, y, means = _clusters(rng, n_classes=4, per_class=25, labels=labels)
    head = create_head(name)
    kw = dict(
        fields=[X[:, :2]], aux=np.zeros((len(X), 1), np.float32), X_val=X, y_val=y, fields_val=None
    )
    assert head.fit(torch.from_numpy(X), list(y), **kw) is head
    assert list(head.classes_) == sorted(labels)
    P, Z, pred = head.predict_proba(X), head.decision_function(X), head.predict(X)
    assert P.shape == Z.shape == (len(X), 4) and pred.shape == (len(X),)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(head.classes_[P.argmax(1)], pred)
    np.testing.assert_array_equal(head.classes_[Z.argmax(1)], pred)
    np.testing.assert_array_equal(
        head.predict(means), np.sort(labels)[np.argsort(np.argsort(labels))]
    )
    assert np.mean(pred == y) > 0.95

    config, tensors = head.get_state()
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "weights.safetensors")
    again = type(head).from_state(
        json.loads((tmp_path / "config.json").read_text()),
        load_file(tmp_path / "weights.safetensors"),
    )
    Q = rng.normal(size=(50, 32)).astype(np.float32) * 3.0
    np.testing.assert_array_equal(again.predict(Q), head.predict(Q))
    np.testing.assert_array_equal(again.predict_proba(Q), head.predict_proba(Q))
    assert list(again.classes_) == list(head.classes_)
    assert clone(head).get_params() == head.get_params()


@pytest.mark.parametrize("name", HEADS)
def test_unfitted_head_says_so(name):
    with pytest.raises(NotFittedError, match="not fitted"):
        create_head(name).predict(np.zeros((2, 4)))
