"""heads._metrics against sklearn and slow loop references; heads.evaluation._plots writes real
PNGs."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from heads._metrics import (
    aggregate_by_observation,
    classification_report,
    closed_set_accuracy,
    fungiclef_scores,
    macro_f1,
    mean_class_accuracy,
    most_confused,
    openset_accuracy,
    openset_scores,
    per_class_f1,
    shot_accuracy,
    topk_accuracy,
)
from heads.evaluation._plots import plot_per_class, plot_roc, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_labels(rng, n, num_classes, extra=()):
    """Labels with a few classes missing from y_true and a few only ever predicted."""
    y_true = rng.integers(0, num_classes - 3, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, num_classes, n))
    if extra:
        y_true[: len(extra)] = extra
    return y_true, y_pred


# --------------------------------------------------------------------------- closed set


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_topk_accuracy_matches_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 300)
    scores = rng.normal(size=(300, 7)).astype(np.float32)
    scores[np.arange(300), y] += 0.8  # better than chance
    expected = skm.top_k_accuracy_score(y, scores, k=k, labels=np.arange(7))
    assert topk_accuracy(y, scores, k) == pytest.approx(expected, abs=1e-12)
    assert topk_accuracy(y, scores, 7) == topk_accuracy(y, scores, 70) == 1.0


def test_topk_accuracy_breaks_ties_like_argmax():
    y = np.array([0, 1, 2, 2])
    scores = np.zeros((4, 3))  # every class tied: argmax picks class 0
    assert topk_accuracy(y, scores, 1) == np.mean(scores.argmax(1) == y) == 0.25
    assert topk_accuracy(y, scores, 2) == 0.5  # classes 0 and 1 rank first
    assert topk_accuracy(y, scores, 3) == 1.0


def test_topk_accuracy_rejects_unknown_labels():
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*mask y_true >= 0"):
        topk_accuracy([0, -1], np.zeros((2, 3)), 1)


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn_on_union_of_present_labels(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = _random_labels(rng, 400, 12, extra=(-1, -1))  # -1: unknown is a class
    assert len(np.setdiff1d(y_pred, y_true)) > 0  # some classes are only predicted
    expected = skm.f1_score(y_true, y_pred, average="macro")
    assert macro_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(y_true, y_pred, num_classes=12) == pytest.approx(expected, abs=1e-12)


def test_macro_f1_num_classes_guards_label_space():
    with pytest.raises(ValueError, match="labels must be < num_classes=3, got 5"):
        macro_f1([0, 1], [0, 5], num_classes=3)


@pytest.mark.parametrize("seed", range(3))
def test_per_class_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = _random_labels(rng, 300, 10)
    y_pred[:5] = -1  # predicted unknown: a false negative of the true class
    expected = skm.f1_score(y_true, y_pred, labels=np.arange(10), average=None, zero_division=0)
    got = per_class_f1(y_true, y_pred, 10)
    assert got.shape == (10,)
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(3))
def test_mean_class_accuracy_is_balanced_accuracy(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = _random_labels(rng, 300, 10)
    expected = skm.balanced_accuracy_score(y_true, y_pred)
    assert mean_class_accuracy(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def _shot_accuracy_slow(y_true, y_pred, train_counts, many, few):
    """OLTR-style loop: per-class accuracy of each test class, averaged per bucket."""
    buckets = {"many": [], "medium": [], "few": []}
    for c in np.unique(y_true):
        if c < 0:
            continue
        acc = np.mean(y_pred[y_true == c] == c)
        n = train_counts[c]
        buckets["many" if n > many else "few" if n < few else "medium"].append(acc)
    return {k: (float(np.mean(v)) if v else None) for k, v in buckets.items()}


def test_shot_accuracy_by_hand():
    # train counts: class 0 many (150 > 100), 1 medium (100, not > 100), 2 medium (20, not < 20),
    # 3 few (5 < 20)
    train_counts = np.array([150, 100, 20, 5])
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, -1])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 0, 0, 3])
    # many: class 0 -> 3/4; medium: mean(class 1 1/2, class 2 1/1) = 0.75; few: class 3 -> 0/2
    # (the -1 sample has no training count and is ignored)
    got = shot_accuracy(y_true, y_pred, train_counts)
    assert got == {"many": 0.75, "medium": 0.75, "few": 0.0}
    # no many-shot class among the test labels -> None
    assert shot_accuracy([3, 2], [3, 2], train_counts) == {"many": None, "medium": 1.0, "few": 1.0}


@pytest.mark.parametrize("seed", range(3))
def test_shot_accuracy_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = _random_labels(rng, 500, 30)
    train_counts = rng.integers(1, 300, 30)
    expected = _shot_accuracy_slow(y_true, y_pred, train_counts, many=100, few=20)
    got = shot_accuracy(y_true, y_pred, train_counts)
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key], abs=1e-12)


def test_classification_report_keys_values_and_json():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 200)
    scores = rng.normal(size=(200, 6))
    scores[np.arange(200), y] += 1.0
    train_counts = np.array([500, 150, 60, 30, 10, 3])
    report = classification_report(y, scores, train_counts=train_counts)
    assert set(report) == {
        "top1",
        "top3",
        "macro_f1",
        "mean_class_acc",
        "n",
        "many_shot",
        "medium_shot",
        "few_shot",
    }
    pred = scores.argmax(1)
    assert report["top1"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["top3"] == pytest.approx(skm.top_k_accuracy_score(y, scores, k=3))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert report["n"] == 200 and type(report["n"]) is int
    assert json.loads(json.dumps(report)) == report  # plain Python types only
    assert "many_shot" not in classification_report(y, scores)


def test_most_confused_by_hand():
    names = ["amanita", "boletus", "cantharellus"]
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, -1]
    y_pred = [1, 1, 0, 0, 1, 1, -1, 1, 2]
    # mistakes: (0->1) x2, (2->1) x2, (1->0) x1, (2->unknown) x1, (unknown->2) x1
    got = most_confused(y_true, y_pred, names, top=3)
    assert got == [
        {"true": "amanita", "predicted": "boletus", "count": 2},
        {"true": "cantharellus", "predicted": "boletus", "count": 2},
        {"true": "unknown", "predicted": "cantharellus", "count": 1},
    ]
    assert most_confused([0, 1], [0, 1], names) == []
    with pytest.raises(ValueError, match="y_pred label 7 has no name"):
        most_confused([0], [7], names)


# --------------------------------------------------------------------------- FungiCLEF


# A hand-worked FungiCLEF case: 6 observations (A..F), 10 images, 4 known species.
# Species 1 and 3 are poisonous. Observations D and F are of unknown species (label -1).
#
# image  obs  true  logits              obs mean logits        prediction
#   0     A    0    [3, 0, 0, 0]    A = (img0+img2)/2 = [2, 0, 1, 0]    -> 0  (right)
#   2     A    0    [1, 0, 2, 0]        (img2 alone would say 2)
#   1     B    1    [0, 2, 1, 0]    B = (img1+img4)/2 = [0, 1, 2, 0]    -> 2  (poisonous as edible)
#   4     B    1    [0, 0, 3, 0]        (img1 alone would say 1)
#   5     C    3    [.5, 0, 0, .5]  C = [.5, 0, 0, .5], max .5 < 1      -> unknown
#   3     D   -1    [0, 0, 0, 2]    D = (img3+img7)/2 = [0, 0, .5, 1.5] -> 3  (unknown as poisonous)
#   7     D   -1    [0, 0, 1, 1]
#   6     E    2    [0, 2, 1, 0]    E = (img6+img8)/2 = [0, 1.5, .5, 0] -> 1  (edible as poisonous)
#   8     E    2    [0, 1, 0, 0]
#   9     F   -1    [.2, .4, 0, 0]  F = [.2, .4, 0, 0], max .4 < 1      -> unknown (right)
#
# Rule used here: predict argmax of the mean logits, or unknown when the max mean logit < 1.
#   y_true         = [0, 1, 3, -1, 2, -1]      (A..F)
#   y_pred         = [0, 2, -1, 3, 1, -1]
#   poisonous_true = [F, T, T, F, F, F]
#   poisonous_pred = [F, F, F, T, T, F]        (unknown counts as not poisonous)
#
# Track 1: wrong = B, C, D, E                                    -> 4 / 6
# Track 2: poisonous predicted non-poisonous: B, C (C via unknown) -> 2 x 100
#          non-poisonous predicted poisonous: D, E              -> 2 x 1
#          (200 + 2) / 6                                         -> 202 / 6 = 33.666...
# Track 3: 4/6 + 202/6                                           -> 206 / 6 = 34.333...
# Track 4: unknown predicted known: D -> 10; known predicted unknown: C -> 0.1;
#          known predicted another known: B, E -> 2 x 1
#          (10 + 0.1 + 2) / 6                                    -> 12.1 / 6 = 2.01666...
HAND_OBS = np.array(["A", "B", "A", "D", "B", "C", "E", "D", "E", "F"])
HAND_Y_IMG = np.array([0, 1, 0, -1, 1, 3, 2, -1, 2, -1])
HAND_LOGITS = np.array(
    [
        [3, 0, 0, 0],
        [0, 2, 1, 0],
        [1, 0, 2, 0],
        [0, 0, 0, 2],
        [0, 0, 3, 0],
        [0.5, 0, 0, 0.5],
        [0, 2, 1, 0],
        [0, 0, 1, 1],
        [0, 1, 0, 0],
        [0.2, 0.4, 0, 0],
    ],
    dtype=np.float32,
)
POISONOUS_OF_CLASS = np.array([False, True, False, True])


def test_aggregate_by_observation_by_hand():
    obs, mean, first = aggregate_by_observation(HAND_OBS, HAND_LOGITS)
    assert obs.tolist() == ["A", "B", "C", "D", "E", "F"]
    assert first.tolist() == [0, 1, 5, 3, 6, 9]
    assert mean.dtype == np.float32
    np.testing.assert_allclose(
        mean,
        [
            [2, 0, 1, 0],
            [0, 1, 2, 0],
            [0.5, 0, 0, 0.5],
            [0, 0, 0.5, 1.5],
            [0, 1.5, 0.5, 0],
            [0.2, 0.4, 0, 0],
        ],
        atol=1e-6,
    )


@pytest.mark.parametrize("seed", range(3))
def test_aggregate_by_observation_matches_loop(seed):
    rng = np.random.default_rng(seed)
    obs_ids = rng.integers(1000, 1040, 250)
    logits = rng.normal(size=(250, 9))
    obs, mean, first = aggregate_by_observation(obs_ids, logits)
    assert obs.tolist() == sorted(set(obs_ids.tolist()))
    for j, o in enumerate(obs):
        rows = np.flatnonzero(obs_ids == o)
        np.testing.assert_allclose(mean[j], logits[rows].mean(0), atol=1e-12)
        assert first[j] == rows[0]


def test_fungiclef_scores_by_hand():
    obs, mean, first = aggregate_by_observation(HAND_OBS, HAND_LOGITS)
    y_true = HAND_Y_IMG[first]
    y_pred = np.where(mean.max(1) >= 1.0, mean.argmax(1), -1)
    assert y_true.tolist() == [0, 1, 3, -1, 2, -1]
    assert y_pred.tolist() == [0, 2, -1, 3, 1, -1]
    poisonous_true = np.where(y_true >= 0, POISONOUS_OF_CLASS[np.maximum(y_true, 0)], False)
    assert poisonous_true.tolist() == [False, True, True, False, False, False]

    got = fungiclef_scores(y_true, y_pred, poisonous_true, POISONOUS_OF_CLASS)
    assert got == {
        "track1": pytest.approx(4 / 6, rel=1e-12),
        "track2": pytest.approx(202 / 6, rel=1e-12),
        "track3": pytest.approx(206 / 6, rel=1e-12),
        "track4": pytest.approx(12.1 / 6, rel=1e-12),
    }
    assert all(type(v) is float for v in got.values())
    # perfect predictions cost nothing on every track
    perfect = fungiclef_scores(y_true, y_true, poisonous_true, POISONOUS_OF_CLASS)
    assert perfect == {"track1": 0.0, "track2": 0.0, "track3": 0.0, "track4": 0.0}
    # Track 1 is 1 - open-set accuracy
    assert openset_accuracy(y_true, y_pred) == pytest.approx(1 - got["track1"])


def _fungiclef_slow(y_true, y_pred, poisonous_true, poisonous_of_class):
    n = len(y_true)
    t1 = t2 = t4 = 0.0
    for t, p, pt in zip(y_true, y_pred, poisonous_true, strict=True):
        pp = bool(poisonous_of_class[p]) if p != -1 else False
        t1 += t != p
        t2 += 100 if (pt and not pp) else 1 if (pp and not pt) else 0
        if t == -1 and p != -1:
            t4 += 10
        elif t != -1 and p == -1:
            t4 += 0.1
        elif t != p:
            t4 += 1
    return {"track1": t1 / n, "track2": t2 / n, "track3": (t1 + t2) / n, "track4": t4 / n}


@pytest.mark.parametrize("seed", range(4))
def test_fungiclef_scores_match_slow_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes = 15
    poisonous_of_class = rng.random(num_classes) < 0.3
    y_true = rng.integers(-1, num_classes, 300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(-1, num_classes, 300))
    poisonous_true = np.where(y_true >= 0, poisonous_of_class[np.maximum(y_true, 0)], False)
    got = fungiclef_scores(y_true, y_pred, poisonous_true, poisonous_of_class)
    expected = _fungiclef_slow(y_true, y_pred, poisonous_true, poisonous_of_class)
    assert got == pytest.approx(expected, rel=1e-12)


def test_fungiclef_scores_rejects_labels_outside_classes():
    with pytest.raises(ValueError, match=r"y_pred label 4 is neither unknown=-1 nor in \[0, 4\)"):
        fungiclef_scores([0], [4], [False], POISONOUS_OF_CLASS)


# --------------------------------------------------------------------------- open set


def test_openset_scores_by_hand():
    # AUROC: knowns [.9, .8, .4] vs unknowns [.7, .3]; known-above-unknown pairs:
    # .9 > both (2), .8 > both (2), .4 > .3 only (1) -> 5 of 6 pairs
    got = openset_scores([1, 1, 1, 0, 0], [0.9, 0.8, 0.4, 0.7, 0.3])
    assert got["auroc"] == pytest.approx(5 / 6)
    # FPR95: 20 knowns scored 1..20 -> keeping ceil(0.95 * 20) = 19 of them needs threshold 2;
    # unknowns [0.5, 1.5, 2, 3, 25] with score >= 2 are accepted: 3 of 5
    known_scores = np.arange(1, 21, dtype=float)
    unknown_scores = np.array([0.5, 1.5, 2.0, 3.0, 25.0])
    got = openset_scores(
        np.r_[np.ones(20, bool), np.zeros(5, bool)], np.r_[known_scores, unknown_scores]
    )
    assert got["fpr95"] == 0.6
    with pytest.raises(ValueError, match="both known and unknown"):
        openset_scores([1, 1], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(4))
def test_openset_scores_match_sklearn_roc_curve(seed):
    rng = np.random.default_rng(seed)
    known = rng.random(400) < 0.7
    scores = rng.normal(size=400) + 1.2 * known
    if seed % 2:
        scores = np.round(scores, 1)  # ties at the threshold
    fpr, tpr, _ = skm.roc_curve(known, scores, drop_intermediate=False)
    expected_fpr95 = fpr[np.argmax(tpr >= 0.95)]  # highest threshold keeping >= 95% knowns
    got = openset_scores(known, scores)
    assert got["fpr95"] == pytest.approx(expected_fpr95, abs=1e-12)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(known, scores), abs=1e-12)


def test_open_and_closed_set_accuracy():
    y_true = [0, 1, 2, -1, -1]
    y_pred = [0, -1, 2, -1, 1]
    assert openset_accuracy(y_true, y_pred) == 3 / 5  # 0, 2 and one unknown right
    assert closed_set_accuracy(y_true, y_pred) == 2 / 3  # knowns only; 1 -> unknown is wrong
    assert closed_set_accuracy([-1], [-1]) is None


# --------------------------------------------------------------------------- plots


def _assert_png(path, min_px=100):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_px and image.shape[1] >= min_px
    assert np.ptp(image[..., :3]) > 0  # something was drawn


def test_plots_write_png_files(tmp_path):
    rng = np.random.default_rng(0)
    num_classes = 40
    f1 = rng.random(num_classes)
    train_counts = rng.integers(0, 500, num_classes)  # includes a class with 0 images
    train_counts[0] = 0
    names = [f"species_{i}" for i in range(num_classes)]
    out = plot_per_class(f1, train_counts, names, tmp_path / "nested" / "per_class.png")
    assert out == tmp_path / "nested" / "per_class.png"
    _assert_png(out)

    history = [
        {"epoch": e, "train_loss": 2 / e, "val_loss": 2.2 / e, "val_top1": 0.1 * e}
        | ({"val_macro_f1": 0.08 * e} if e % 2 == 0 else {})
        for e in range(1, 7)
    ]
    _assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves([], tmp_path / "never.png")

    known = rng.random(300) < 0.6
    curves = {
        "max logit": (known, rng.normal(size=300) + known),
        "knn distance": (known, rng.normal(size=300) + 2 * known),
    }
    _assert_png(plot_roc(curves, str(tmp_path / "roc.png")))


def test_recall_at_k_against_a_hand_computation():
    from heads._metrics import recall_at_k

    scores = np.array(
        [
            [0.5, 0.3, 0.1, 0.1],  # true 1: second best
            [0.1, 0.2, 0.3, 0.4],  # true 0: last
            [0.4, 0.3, 0.2, 0.1],  # true 2: third
            [0.0, 0.0, 0.1, 0.9],  # true 3: best
        ]
    )
    y = [1, 0, 2, 3]
    assert [recall_at_k(y, scores, k) for k in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    # per observation: rows 0 and 1 are one specimen (mean [0.3, 0.25, 0.2, 0.25], true 1:
    # second best), rows 2 and 3 two more
    obs = ["a", "a", "b", "c"]
    assert recall_at_k([1, 1, 2, 3], scores, 1, obs) == pytest.approx(1 / 3)
    assert recall_at_k([1, 1, 2, 3], scores, 2, obs) == pytest.approx(2 / 3)
