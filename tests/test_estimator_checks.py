"""Every registered head against scikit-learn's own estimator checks, and the heads contract.

A user puts a head in a ``Pipeline`` or a ``GridSearchCV``: it must validate its input the
scikit-learn way (``parametrize_with_checks`` runs the real checks, fast settings), and it must
be clonable, give ``predict_proba`` columns in ``classes_`` order and survive the
``get_state`` / ``from_state`` round trip through JSON and safetensors unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from scipy import sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_classifiers_classes,
    check_classifiers_train,
    check_decision_proba_consistency,
    parametrize_with_checks,
)

from heads import NeuralHead, create_head, list_heads
from heads._base import head_tags

pytestmark = pytest.mark.usefixtures("one_thread")

# Small and quick: scikit-learn's toy problems are a few hundred rows of 2 to 10 features.
FAST = {
    "neural": dict(
        hidden=32,
        epochs=5,
        batch_size=64,
        lr=1e-2,
        patience=None,
        transformer_dim=16,
        transformer_heads=2,
        transformer_layers=1,
        device="cpu",
    ),
    "knn": dict(device="cpu"),
}
NEURAL = [name for name in list_heads() if isinstance(create_head(name), NeuralHead)]


def _head(name: str) -> Any:
    """A new head registered as ``name``, with fast settings."""
    return create_head(name, **FAST.get("neural" if name in NEURAL else name, {}))


def _blobs(n_classes=4, per_class=40, d=16, seed=0, labels=None):
    """Separable Gaussian clusters; ``labels`` names the classes (not in sorted order)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d)) * 3.0  # (C, d)
    y_idx = np.repeat(np.arange(n_classes), per_class)  # (N,)
    X = (means[y_idx] + 0.5 * rng.normal(size=(y_idx.size, d))).astype(np.float32)  # (N, d)
    names = np.arange(n_classes) if labels is None else np.asarray(labels)
    return X, names[y_idx], means.astype(np.float32)


# --------------------------------------------------------------------------- scikit-learn

# The transductive centroid head moves its prototypes toward the batch it predicts: a row's
# answer depends on the other rows of its call, by design (the FungiCLEF 2025 recipe).
TRANSDUCTIVE = create_head("centroid", transductive=True, reference="train+val")
EXPECTED_FAILED_TRANSDUCTIVE = {
    "check_methods_subset_invariance": "transductive: a prediction depends on its batch",
}


# The neural heads take sample_weight (pseudo-labelled rows weigh less), trained by minibatch
# SGD: a row of weight 2 is not two rows (other batches, other steps), so the weighted and the
# repeated fits differ; weights of ones give bit-identical fits (tests/test_distill.py).
EXPECTED_FAILED_NEURAL = {
    "check_sample_weight_equivalence_on_dense_data": "minibatch SGD: weight 2 is not 2 rows",
}


def _expected_failures(head: Any) -> dict[str, str]:
    if head is TRANSDUCTIVE:
        return EXPECTED_FAILED_TRANSDUCTIVE
    return EXPECTED_FAILED_NEURAL if isinstance(head, NeuralHead) else {}


@parametrize_with_checks(
    [*(_head(name) for name in list_heads()), TRANSDUCTIVE],
    expected_failed_checks=_expected_failures,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "check",
    [check_classifiers_train, check_classifiers_classes, check_decision_proba_consistency],
    ids=lambda c: c.__name__,
)
def test_transductive_head_passes_the_binary_checks(check):
    """The checks that once failed on the (N, 2) binary decision_function, on the transductive
    centroid head too (its other expected failure stops the common run before them)."""
    check("CentroidHead", clone(TRANSDUCTIVE))


@pytest.mark.parametrize("name", list_heads())
def test_binary_decision_function_is_the_margin_and_logits_keep_both_columns(name):
    X, y, _ = _blobs(n_classes=2)
    head = _head(name).fit(X, y)
    Z, margin = head.logits(X), head.decision_function(X)
    assert Z.shape == (len(X), 2) and margin.shape == (len(X),)
    np.testing.assert_allclose(margin, Z[:, 1] - Z[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(head.classes_[Z.argmax(1)], head.predict(X))
    np.testing.assert_array_equal(head.classes_[(margin > 0).astype(int)], head.predict(X))


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    "labels", [["zeta", "alpha", "mu", "beta"], [40, 7, 13, -2]], ids=["str", "int"]
)
@pytest.mark.parametrize("name", list_heads())
def test_head_contract(tmp_path, name, labels):
    X, y, means = _blobs(labels=labels)
    order = np.random.default_rng(1).permutation(len(X))
    X, y = X[order], y[order]
    built = _head(name)
    head = clone(built)
    assert type(head) is type(built) and head.get_params() == built.get_params()
    with pytest.raises(NotFittedError):
        head.predict_proba(X)
    assert head.fit(X, y) is head
    with pytest.raises(NotFittedError):
        clone(head).predict(X)  # a clone carries the settings, not what was learned

    assert list(head.classes_) == sorted(labels)
    P, Z, pred = head.predict_proba(X), head.decision_function(X), head.predict(X)
    assert P.shape == Z.shape == (len(X), len(labels)) and P.dtype == np.float32
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(head.classes_[P.argmax(1)], pred)
    np.testing.assert_array_equal(head.classes_[Z.argmax(1)], pred)
    np.testing.assert_array_equal(head.logits(X), Z)  # (N, C) for more than two classes
    assert np.mean(pred == y) > 0.95
    # column j of predict_proba is classes_[j]: each class mean scores highest in its column
    P_means = head.predict_proba(means)  # (C, C); row i is the mean of class labels[i]
    np.testing.assert_array_equal(head.classes_[P_means.argmax(1)], labels)

    config, tensors = head.get_state()
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "weights.safetensors")
    again = type(head).from_state(
        json.loads((tmp_path / "config.json").read_text()),
        load_file(tmp_path / "weights.safetensors"),
    )
    Q = np.random.default_rng(2).normal(size=(30, X.shape[1])).astype(np.float32) * 3.0
    assert list(again.classes_) == list(head.classes_)
    assert again.n_features_in_ == head.n_features_in_
    np.testing.assert_array_equal(again.predict_proba(Q), head.predict_proba(Q))
    np.testing.assert_array_equal(again.decision_function(Q), head.decision_function(Q))
    np.testing.assert_array_equal(again.predict(Q), head.predict(Q))
    assert again.get_params() == head.get_params()


@pytest.mark.parametrize("name", list_heads())
def test_sample_weight_is_honoured_where_declared_and_refused_elsewhere(name):
    """A weight nobody reads is worse than an error (GridSearchCV routes sample_weight): a head
    declaring ``HeadTags.sample_weight`` honours it, any other refuses it."""
    X, y, _ = _blobs()
    if not head_tags(_head(name)).sample_weight:
        with pytest.raises(TypeError, match="sample_weight"):
            _head(name).fit(X, y, sample_weight=np.ones(len(X)))
        return
    wrong = np.flatnonzero(y == 0)[:30]  # 30 of class 0's 40 rows labelled 1
    y_bad = y.copy()
    y_bad[wrong] = 1
    w = np.ones(len(y))
    w[wrong] = 0.0
    fooled = _head(name).fit(X, y_bad).predict(X[y == 0])
    ignored = _head(name).fit(X, y_bad, sample_weight=w).predict(X[y == 0])
    assert np.mean(fooled == 0) < 0.5 < np.mean(ignored == 0), (fooled, ignored)


@pytest.mark.parametrize("name", list_heads())
def test_bad_input_messages(name):
    X, y, _ = _blobs()
    head = _head(name)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        head.fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        head.fit(X[:, 0], y)
    with pytest.raises(TypeError, match="Sparse data was passed"):
        head.fit(sparse.csr_matrix(X), y)
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        head.fit(X_nan, y)
    head.fit(X, y)
    with pytest.raises(ValueError, match="X has 15 features, but .* is expecting 16 features"):
        head.predict(X[:, :15])


@pytest.mark.parametrize("name", NEURAL)
def test_neural_head_checks_validation_inputs(name):
    """X_val is checked like X (the kNN and centroid heads ignore it)."""
    X, y, _ = _blobs()
    head = _head(name).set_params(epochs=1)
    with pytest.raises(ValueError, match="X_val has 15 features, but .* is expecting 16"):
        head.fit(X, y, X_val=X[:, :15], y_val=y)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        head.fit(X, y, X_val=X[:, 0], y_val=y)
    X_nan = X.copy()
    X_nan[[3, 5], 1] = np.inf
    with pytest.raises(ValueError, match="X_val has 2 of 160 rows with NaN or Inf values"):
        head.fit(X, y, X_val=X_nan, y_val=y)
