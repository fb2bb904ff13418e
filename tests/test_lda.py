"""The LDA head (``heads.estimators._lda``): scikit-learn's ``LinearDiscriminantAnalysis(
solver="lsqr", shrinkage="auto")`` on real photos' embeddings is its reference; the Gaussian
scores against scipy's; the state round trip; ``heads train | eval | predict --head lda``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from scipy.stats import multivariate_normal
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

import embedstore
import heads
from cli import heads_cli
from heads.estimators import LDAHead

pytestmark = pytest.mark.usefixtures("one_thread")


def _cl2n(X: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """SimpleShot's centring, written out: less the training mean, then unit length."""
    Z = X.astype(np.float64) - centre
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def flowers_parts(flowers_store):
    """Real flowers12 embeddings (efficientnet-lite0): the train folder's and the test's."""
    X, cols = embedstore.connect(flowers_store).embeddings(
        columns=("label", "split"), labelled=True
    )
    y, split = np.asarray(cols["label"]).astype(str), np.asarray(cols["split"])
    return X[split == "train"], y[split == "train"], X[split == "test"], y[split == "test"]


@pytest.mark.slow  # scikit-learn's lstsq and per-class loop: ~10 s a setting on 2 busy cores
@pytest.mark.parametrize("shrinkage", ["auto", 0.3])
def test_lda_agrees_with_scikit_learn_on_real_flowers_embeddings(flowers_parts, shrinkage):
    X, y, Xt, yt = flowers_parts
    ours = LDAHead(shrinkage=shrinkage, device="cpu").fit(X, y)
    centre = X.mean(axis=0, dtype=np.float64)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(_cl2n(X, centre), y)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.covariance_, ref.covariance_, rtol=1e-4, atol=1e-9)
    pred, ref_pred = ours.predict(Xt), ref.predict(_cl2n(Xt, centre))
    assert np.mean(pred == ref_pred) == 1.0  # 240 real test photos: every prediction agrees
    P, ref_P = ours.predict_proba(Xt), ref.predict_proba(_cl2n(Xt, centre))
    assert np.abs(P - ref_P).max() < 1e-4
    np.testing.assert_allclose(ours.logits(Xt), ref.decision_function(_cl2n(Xt, centre)), atol=2e-3)
    assert np.mean(pred == yt) > 0.9  # 12 species: chance is 0.08


def test_lda_beats_the_plain_nearest_centroid_on_real_flowers(flowers_parts):
    X, y, Xt, yt = flowers_parts
    lda = np.mean(LDAHead(device="cpu").fit(X, y).predict(Xt) == yt)
    centroid = np.mean(heads.create_head("centroid", centring="none").fit(X, y).predict(Xt) == yt)
    assert lda > centroid, (lda, centroid)


@pytest.mark.filterwarnings("ignore:Only one sample available")  # scikit-learn, class v
def test_lda_agrees_with_scikit_learn_on_uneven_classes_and_constant_features():
    """Classes of 1 to 40 rows, a feature constant within a class (StandardScaler's scale 1):
    the closed form and scikit-learn's loop over classes agree."""
    rng = np.random.default_rng(7)
    sizes = [1, 2, 5, 17, 40]
    y = np.repeat(np.array(["v", "w", "x", "y", "z"]), sizes)
    X = rng.normal(size=(len(y), 24)) * rng.uniform(0.2, 3.0, size=24) + 0.3 * (y == "z")[:, None]
    X[y == "y", 3] = 1.5  # constant in class y
    for shrinkage in ("auto", 0.0, 0.5):
        ours = LDAHead(shrinkage=shrinkage, centring="none", device="cpu").fit(X, y)
        Z = X / np.linalg.norm(X, axis=1, keepdims=True)
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(Z, y)
        np.testing.assert_allclose(ours.covariance_, ref.covariance_, rtol=1e-5, atol=1e-7)
        Q = rng.normal(size=(50, 24))
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        np.testing.assert_array_equal(ours.predict(Q), ref.predict(Qn))
        np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Qn), atol=1e-4)


def _blobs(n_classes=3, per_class=30, d=6, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d)) * 2.0
    y = np.repeat(np.arange(n_classes), per_class)
    X = means[y] + rng.normal(size=(len(y), d)) * rng.uniform(0.3, 1.5, size=d)
    return X.astype(np.float32), np.array(["c", "a", "b"])[y]


def test_gaussian_scores_match_scipy_and_the_logits():
    X, y = _blobs()
    head = LDAHead(device="cpu").fit(X, y)
    Q = np.random.default_rng(1).normal(size=(9, X.shape[1])).astype(np.float32) * 2
    Z = _cl2n(Q, head.centre_)
    ref = np.stack(
        [
            multivariate_normal(m, head.covariance_.astype(np.float64)).logpdf(Z)
            for m in head.means_
        ],
        axis=1,
    )  # (9, C)
    np.testing.assert_allclose(head.log_likelihood(Q), ref, rtol=1e-6)
    # the logits are the log-posteriors up to a constant of each row
    post = head.log_likelihood(Q) + np.log(head.class_counts_ / head.class_counts_.sum())
    shift = post - head.logits(Q)  # (9, C): the same in every column
    np.testing.assert_allclose(shift, shift[:, :1].repeat(3, axis=1), atol=1e-3)
    d2 = head.mahalanobis(Q)  # (9, C); balanced classes: the nearest class is the prediction
    assert (d2 >= 0).all() and list(head.classes_[d2.argmin(1)]) == list(head.predict(Q))


def test_state_round_trip_is_exact(tmp_path):
    X, y = _blobs(d=16)
    head = LDAHead(device="cpu").fit(X, y)
    config, tensors = head.get_state()
    assert set(tensors) == {"coef", "intercept", "means", "covariance", "shrinkage", "centre"}
    assert config["class_counts"] == [30, 30, 30] and 0 < head.shrinkage_.min() <= 1
    (tmp_path / "c.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "t.safetensors")
    again = LDAHead.from_state(
        json.loads((tmp_path / "c.json").read_text()), load_file(tmp_path / "t.safetensors")
    )
    Q = np.random.default_rng(3).normal(size=(40, 16)).astype(np.float32)
    np.testing.assert_array_equal(again.logits(Q), head.logits(Q))
    np.testing.assert_array_equal(again.mahalanobis(Q), head.mahalanobis(Q))
    np.testing.assert_array_equal(again.predict(Q), head.predict(Q))
    plain = LDAHead(centring="none", device="cpu").fit(X, y)
    assert "centre" not in plain.get_state()[1] and plain.centre_ is None


def test_one_image_per_class_falls_back_to_least_squares():
    """Nothing to estimate a covariance from: the minimum-norm answer, as scikit-learn's lstsq."""
    X = np.eye(3, 5, dtype=np.float32) + 0.1
    head = LDAHead(device="cpu").fit(X, ["a", "b", "c"])
    assert (head.shrinkage_ == 0).all() and np.isfinite(head.coef_).all()
    assert list(head.predict(X)) == list(head.classes_[head.logits(X).argmax(1)])


def test_bad_settings_are_refused():
    X, y = _blobs()
    with pytest.raises(ValueError, match="shrinkage must be 'auto' or a number in"):
        LDAHead(shrinkage="oas").fit(X, y)
    with pytest.raises(ValueError, match="shrinkage must be 'auto' or a number in"):
        LDAHead(shrinkage=1.5).fit(X, y)
    with pytest.raises(ValueError, match="unknown centring 'median'; valid: mean, none"):
        LDAHead(centring="median").fit(X, y)


def test_heads_train_eval_predict_with_lda_on_real_flowers(flowers_store, flowers, tmp_path):
    store, runs = tmp_path / "store", tmp_path / "runs"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=3, use_split_column=True, seed=0)
    cli = CliRunner()
    args = ["train", "--store", str(store), "--head", "lda", "--fold", "all", "--quiet", "--json"]
    r = cli.invoke(heads_cli, [*args, "--out", str(runs / "lda")])
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert [m["epochs"] for m in trained["metrics"]] == [0, 0, 0]  # closed form, no epochs
    assert trained["ensemble_metrics"]["holdout"]["top1"] > 0.9
    config = json.loads((runs / "lda" / "fold0" / "config.json").read_text())
    assert config["head"] == "lda" and config["head_config"]["params"]["centring"] == "mean"

    r = cli.invoke(heads_cli, ["eval", str(runs / "lda"), "--json"])
    assert r.exit_code == 0, r.output
    (ev,) = json.loads(r.stdout)
    assert ev["holdout"]["top1"] == trained["ensemble_metrics"]["holdout"]["top1"]
    photos = sorted((flowers / "test" / "sunflower").glob("*.jpg"))[:3]
    r = cli.invoke(heads_cli, ["predict", str(runs / "lda"), *map(str, photos), "--json"])
    assert r.exit_code == 0, r.output
    assert [p["label"] for p in json.loads(r.stdout)] == ["sunflower"] * 3

    # settings of the trained heads do not apply: refused, as for the centroid and kNN heads
    r = cli.invoke(heads_cli, [*args, "--epochs", "5", "--out", str(runs / "x")])
    assert r.exit_code == 2 and "--epochs do not apply to head 'lda'" in r.output
    # the library call behind it, with the centring setting
    res = heads.train(store, fold=0, head="lda", centring="none", out=runs / "y", progress=False)
    assert res.metrics[0].metrics["top1"] > 0.9
