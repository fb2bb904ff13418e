"""heads.estimators._unknown: detectors on held-out Gaussian clusters, slow references,
calibration, contract."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.covariance import LedoitWolf
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from embedstore.search import l2_normalize
from heads.estimators._knn import CentroidHead
from heads.estimators._unknown import (
    DEFAULT_DETECTOR,
    create_detector,
    detector_from_state,
    list_detectors,
    threshold_at_tpr,
    threshold_min_cost,
)

EMBEDDING_DETECTORS = ["knn", "mahalanobis", "relative-mahalanobis"]
LOGIT_DETECTORS = ["energy", "entropy", "max-logit", "msp"]
FUSED_DETECTORS = ["energy-knn"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def open_set():
    """20 Gaussian classes in 64-d; the last 5 are never seen in training (the unknowns)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(20, 64))

    def draw(classes, n):
        y = np.repeat(classes, n)
        return (means[y] + 1.6 * rng.normal(size=(y.size, 64))).astype(np.float32), y

    X_train, y_train = draw(np.arange(15), 60)
    X_val, y_val = draw(np.arange(15), 20)
    X_known, y_known = draw(np.arange(15), 20)
    X_unknown, _ = draw(np.arange(15, 20), 20)
    head = CentroidHead().fit(X_train, y_train)
    X_eval = np.vstack([X_known, X_unknown])
    return {
        "X_train": X_train,
        "y_train": y_train,
        "logits_train": head.logits(X_train),
        "X_val": X_val,
        "logits_val": head.logits(X_val),
        "X_eval": X_eval,
        "logits_eval": head.logits(X_eval),
        "is_known": np.r_[np.ones(len(X_known), bool), np.zeros(len(X_unknown), bool)],
    }


def _fit(name, d, **kw):
    det = create_detector(name, **kw)
    return det.fit(
        d["X_train"], d["y_train"], logits=d["logits_train"] if det.needs != "embeddings" else None
    )


def _scores(det, d, split="eval"):
    return det.score_samples(d[f"X_{split}"], logits=d[f"logits_{split}"])


@pytest.mark.parametrize("name", EMBEDDING_DETECTORS)
def test_embedding_detectors_separate_held_out_clusters(open_set, name):
    auroc = roc_auc_score(open_set["is_known"], _scores(_fit(name, open_set), open_set))
    assert auroc > 0.9, f"{name}: AUROC {auroc:.3f}"


@pytest.mark.parametrize("name", LOGIT_DETECTORS + FUSED_DETECTORS)
def test_logit_detectors_on_centroid_head_logits(open_set, name):
    auroc = roc_auc_score(open_set["is_known"], _scores(_fit(name, open_set), open_set))
    print(f"{name} on CentroidHead logits: AUROC {auroc:.3f}")  # reported with pytest -s
    assert auroc > 0.9, f"{name}: AUROC {auroc:.3f}"


def test_knn_detector_matches_brute_force(open_set):
    det = _fit("knn", open_set, k=7)
    train = l2_normalize(l2_normalize(open_set["X_train"]).astype(np.float16).astype(np.float32))
    S = l2_normalize(open_set["X_eval"]) @ train.T  # (N, Ntrain)
    expected = np.sort(S, axis=1)[:, -7]  # 7th largest similarity
    np.testing.assert_allclose(det.score_samples(open_set["X_eval"]), expected, atol=1e-5)


@pytest.mark.parametrize("relative", [False, True])
def test_mahalanobis_matches_loop_reference(open_set, relative):
    name = "relative-mahalanobis" if relative else "mahalanobis"
    det = _fit(name, open_set)
    X = l2_normalize(open_set["X_train"]).astype(np.float64)
    y = open_set["y_train"]
    mus = {c: X[y == c].mean(0) for c in np.unique(y)}
    resid = np.vstack([X[y == c] - mus[c] for c in mus])
    lw = LedoitWolf(assume_centered=True).fit(resid)
    P = np.linalg.inv(lw.covariance_)
    # the background Gaussian reuses the class covariance's shrinkage intensity
    mu0 = X.mean(0)
    S0 = np.cov(X.T, bias=True)
    a = lw.shrinkage_
    P0 = np.linalg.inv((1 - a) * S0 + a * np.trace(S0) / S0.shape[0] * np.eye(S0.shape[0]))
    Q = l2_normalize(open_set["X_eval"][::10]).astype(np.float64)
    expected = []
    for q in Q:
        md = min((q - m) @ P @ (q - m) for m in mus.values())
        md0 = (q - mu0) @ P0 @ (q - mu0)
        expected.append(md0 - md if relative else -md)
    np.testing.assert_allclose(
        det.score_samples(open_set["X_eval"][::10]), expected, rtol=1e-6, atol=1e-6
    )


def test_fixed_shrinkage_and_raw_embeddings(open_set):
    det = _fit("mahalanobis", open_set, normalize=False, shrinkage=0.1)
    assert roc_auc_score(open_set["is_known"], _scores(det, open_set)) > 0.9
    with pytest.raises(ValueError, match="shrinkage must be 'ledoit-wolf' or a float"):
        _fit("mahalanobis", open_set, shrinkage=2.0)


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("name", ["knn", "mahalanobis", "msp"])
def test_tpr_calibration_keeps_95_percent_of_knowns(open_set, name):
    det = _fit(name, open_set)
    t = det.calibrate(embeddings=open_set["X_val"], logits=open_set["logits_val"])
    assert t == det.threshold_ and det.calibration_["method"] == "tpr"
    assert (
        abs(np.mean(det.predict(open_set["X_val"], logits=open_set["logits_val"]) == 1) - 0.95)
        < 0.01
    )
    kept = (
        det.predict(open_set["X_eval"], logits=open_set["logits_eval"])[open_set["is_known"]] == 1
    )
    assert 0.88 <= kept.mean() <= 1.0


def test_threshold_at_tpr_on_known_quantiles():
    scores = np.arange(100.0)
    t = threshold_at_tpr(scores, 0.95)
    assert np.sum(scores >= t) == 95
    assert threshold_at_tpr(scores, 1.0) == 0.0


def test_cost_calibration_hand_example():
    known = [0.9, 0.8, 0.7, 0.6]
    unknown = [0.1, 0.2, 0.65]
    # Accepting the unknown at 0.65 costs 10; rejecting the known at 0.6 costs 0.1: reject both.
    t, cost = threshold_min_cost(known, unknown, 10.0, 0.1)
    assert t == pytest.approx(0.675) and cost == pytest.approx(0.1 / 7)
    # With cheap false accepts the best is to accept everything from 0.6 up (one unknown in).
    t, cost = threshold_min_cost(known, unknown, 1.0, 5.0)
    assert t == pytest.approx(0.4) and cost == pytest.approx(1.0 / 7)
    det = create_detector("msp")
    scores = np.r_[known, unknown]
    is_known = np.r_[np.ones(4, bool), np.zeros(3, bool)]
    assert det.calibrate(scores, is_known=is_known) == pytest.approx(0.675)
    assert det.calibration_["method"] == "min-cost" and det.calibration_["tpr"] == 0.75
    assert det.calibration_["fpr"] == 0.0


def test_cost_calibration_beats_tpr_on_open_set(open_set):
    det = _fit("mahalanobis", open_set)
    s, known = _scores(det, open_set), open_set["is_known"]

    def mean_cost(t):
        return (10.0 * np.sum(~known & (s >= t)) + 0.1 * np.sum(known & (s < t))) / s.size

    t_cost = det.calibrate(s, is_known=known)
    assert mean_cost(t_cost) <= mean_cost(threshold_at_tpr(s[known], 0.95))
    assert mean_cost(t_cost) == pytest.approx(det.calibration_["mean_cost"])


def test_calibration_errors():
    det = create_detector("msp")
    with pytest.raises(ValueError, match="at least one known"):
        det.calibrate([0.1, 0.2], is_known=[False, False])
    with pytest.raises(ValueError, match="is_known has shape"):
        det.calibrate([0.1, 0.2], is_known=[True])


# --------------------------------------------------------------------------- contract


def test_registry():
    assert set(list_detectors()) == set(EMBEDDING_DETECTORS + LOGIT_DETECTORS + FUSED_DETECTORS)
    assert DEFAULT_DETECTOR in list_detectors()
    assert list_detectors("*mahalanobis") == ["mahalanobis", "relative-mahalanobis"]
    with pytest.raises(
        ValueError, match="unknown detector 'odin'; valid detectors: energy, energy-knn, entropy"
    ):
        create_detector("odin")


@pytest.mark.parametrize("name", list_detectors())
def test_detector_contract(open_set, tmp_path, name):
    det = create_detector(name)
    assert det.needs in ("logits", "embeddings", "both")
    assert (
        det.fit(
            torch.from_numpy(open_set["X_train"]),
            open_set["y_train"],
            logits=open_set["logits_train"],
        )
        is det
    )
    assert det.threshold_ is not None  # provisional threshold from the training scores
    s = _scores(det, open_set)
    assert s.shape == (len(open_set["X_eval"]),) and np.all(np.isfinite(s))
    det.calibrate(embeddings=open_set["X_val"], logits=open_set["logits_val"])
    pred = det.predict(open_set["X_eval"], logits=open_set["logits_eval"])
    assert set(np.unique(pred)) <= {-1, 1}
    dec = det.decision_function(open_set["X_eval"], logits=open_set["logits_eval"])
    np.testing.assert_allclose(dec, s - det.threshold_)
    np.testing.assert_array_equal(pred, np.where(dec >= 0, 1, -1))

    config, tensors = det.get_state()
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "weights.safetensors")
    again = detector_from_state(
        json.loads((tmp_path / "config.json").read_text()),
        load_file(tmp_path / "weights.safetensors"),
    )
    assert type(again) is type(det) and again.threshold_ == det.threshold_
    np.testing.assert_array_equal(_scores(again, open_set), s)
    np.testing.assert_array_equal(
        again.predict(open_set["X_eval"], logits=open_set["logits_eval"]), pred
    )


def test_energy_knn_matches_a_direct_numpy_computation():
    """Slow reference: energy by logsumexp, k-th cosine neighbour by brute force, both
    standardised with the training scores (kNN leave-one-out)."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(120, 24)).astype(np.float32), np.repeat(np.arange(6), 20)
    Z, Xq, Zq = rng.normal(size=(120, 6)), rng.normal(size=(30, 24)), rng.normal(size=(30, 6))
    for k, w, t in [(1, 0.5, 1.0), (3, 0.2, 2.0)]:
        det = create_detector("energy-knn", k=k, weight=w, temperature=t, device="cpu")
        det.fit(X, y, logits=Z)
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        Uq = Xq / np.linalg.norm(Xq, axis=1, keepdims=True)
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        sim_train = np.sort(S, axis=1)[:, -k]  # k-th nearest other training row
        sim_query = np.sort(Uq @ U.T, axis=1)[:, -k]
        e_train = t * np.log(np.exp(Z / t).sum(axis=1))
        e_query = t * np.log(np.exp(Zq / t).sum(axis=1))
        want = (
            w * (e_query - e_train.mean()) / e_train.std()
            + (1 - w) * (sim_query - sim_train.mean()) / sim_train.std()
        )
        # the training embeddings are kept in float16, as saved
        np.testing.assert_allclose(det.score_samples(Xq, logits=Zq), want, atol=5e-3)
        train_fused = (
            w * (e_train - e_train.mean()) / e_train.std()
            + (1 - w) * (sim_train - sim_train.mean()) / sim_train.std()
        )
        assert det.threshold_ == pytest.approx(np.quantile(train_fused, 0.05), abs=5e-3)


def test_energy_knn_needs_logits_and_a_valid_weight(open_set):
    with pytest.raises(ValueError, match="detector 'energy-knn' needs logits="):
        create_detector("energy-knn").fit(open_set["X_train"], open_set["y_train"])
    det = _fit("energy-knn", open_set)
    with pytest.raises(ValueError, match="detector 'energy-knn' needs logits="):
        det.score_samples(open_set["X_eval"])
    with pytest.raises(ValueError, match="detector 'energy-knn' needs embeddings"):
        det.score_samples(logits=open_set["logits_eval"])
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]; got 2"):
        create_detector("energy-knn", weight=2).fit(
            open_set["X_train"], open_set["y_train"], logits=open_set["logits_train"]
        )


@pytest.mark.parametrize("name", LOGIT_DETECTORS)
def test_logit_detectors_need_logits(open_set, name):
    det = create_detector(name).fit(open_set["X_train"], open_set["y_train"])
    with pytest.raises(ValueError, match=f"detector '{name}' needs logits="):
        det.score_samples(open_set["X_eval"])
    with pytest.raises(NotFittedError, match="has no threshold_: call calibrate"):
        det.predict(open_set["X_eval"], logits=open_set["logits_eval"])


def test_knn_detector_k_larger_than_training_set():
    with pytest.raises(ValueError, match=r"k=10 must be between 1 and the training set size \(4"):
        create_detector("knn").fit(np.eye(4, 8), np.arange(4))
