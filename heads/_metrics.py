"""Evaluation metrics: top-k, macro-F1, long-tail shot buckets, FungiCLEF 2024 tracks and 2025's
recall@k, open set.

Every function takes numpy arrays (or anything ``np.asarray`` accepts) and returns plain Python
floats, ints, lists and dicts, so a result can go straight into ``json.dump``. The exceptions are
``per_class_f1`` and ``aggregate_by_observation``, which return arrays by design.

Labels are integer class indices ``0 .. C-1``; ``-1`` (the ``unknown`` argument where there is
one) means "unknown species" in open-set data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "aggregate_by_observation",
    "classification_report",
    "closed_set_accuracy",
    "fungiclef_scores",
    "macro_f1",
    "mean_class_accuracy",
    "most_confused",
    "openset_accuracy",
    "openset_scores",
    "per_class_f1",
    "recall_at_k",
    "shot_accuracy",
    "topk_accuracy",
]


# --------------------------------------------------------------------------- input checks


def _labels(y: object, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _pair(y_true: object, y_pred: object) -> tuple[np.ndarray, np.ndarray]:
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    return t, p


def _scores(y_true: np.ndarray, scores: object) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != y_true.shape[0]:
        raise ValueError(f"scores must be (N, C) with N={y_true.shape[0]}, got shape {s.shape}")
    bad = (y_true < 0) | (y_true >= s.shape[1])
    if bad.any():
        raise ValueError(
            f"y_true holds {int(bad.sum())} labels outside [0, {s.shape[1]}) (e.g. "
            f"{int(y_true[bad][0])}); score only known-class samples, e.g. mask y_true >= 0"
        )
    return s


# --------------------------------------------------------------------------- closed set

# What a row of scores holding nan or inf predicts: no class (always wrong, never "unknown").
NO_PREDICTION = -2


def predictions(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(1)``, with :data:`NO_PREDICTION` for a row that is not all finite (an
    argmax over nan would name the first class and could score it as right)."""
    s = np.asarray(scores)
    return np.where(np.isfinite(s).all(1), s.argmax(1), NO_PREDICTION)


def topk_accuracy(y_true: object, scores: object, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    Ties are broken as ``np.argmax`` breaks them (the lower class index ranks first), so
    ``topk_accuracy(y, s, 1)`` equals the accuracy of ``s.argmax(1)``. ``k >= C`` gives 1.0.

    >>> topk_accuracy([0, 2], [[0.1, 0.9, 0.0], [0.5, 0.3, 0.2]], k=2)
    0.5
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t = _labels(y_true, "y_true")
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    s = _scores(t, scores)
    n, c = s.shape
    true_score = s[np.arange(n), t][:, None]  # (N, 1)
    cols = np.arange(c)[None, :]  # (1, C)
    # rank of the true class = classes strictly above it + tied classes with a lower index
    rank = (s > true_score).sum(1) + ((s == true_score) & (cols < t[:, None])).sum(1)  # (N,)
    rank[~np.isfinite(s).all(1)] = c  # a row with nan or inf ranks no class: never right
    return float(np.mean(rank < k))


def recall_at_k(
    y_true: object, scores: object, k: int = 5, observations: object | None = None
) -> float:
    """FungiCLEF 2025's Recall@k: the share of observations whose true species is among the
    ``k`` best labels, an observation scored by the mean of its images' ``(N, C)`` scores
    (``aggregate_by_observation``); per image (top-k accuracy) without ``observations``.

    >>> recall_at_k([0, 1, 1], [[0.1, 0.9], [0.8, 0.2], [0.0, 0.9]], 1, ["a", "b", "b"])
    0.5
    """
    t = _labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if observations is not None:
        _, s, first = aggregate_by_observation(observations, s)
        t = t[first]
    return topk_accuracy(t, s, k)


def _confusion_counts(
    t: np.ndarray, p: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn) per entry of ``labels`` (sorted, unique); labels not listed never match."""
    ti = np.searchsorted(labels, t)
    pi = np.searchsorted(labels, p)
    k = labels.size
    t_in = (ti < k) & (labels[np.minimum(ti, k - 1)] == t)
    p_in = (pi < k) & (labels[np.minimum(pi, k - 1)] == p)
    hit = t == p
    tp = np.bincount(ti[hit & t_in], minlength=k)
    support = np.bincount(ti[t_in], minlength=k)
    predicted = np.bincount(pi[p_in], minlength=k)
    return tp, predicted - tp, support - tp


def per_class_f1(y_true: object, y_pred: object, num_classes: int) -> np.ndarray:
    """F1 of each class ``0 .. num_classes-1``, shape ``(C,)`` float64.

    A class never seen in ``y_true`` nor ``y_pred`` gets 0.0 (sklearn's ``zero_division=0``).
    Labels outside ``[0, C)`` (e.g. -1 unknown) are no class of their own here but still count as
    errors: a class-3 sample predicted -1 is a false negative of class 3.
    """
    t, p = _pair(y_true, y_pred)
    tp, fp, fn = _confusion_counts(t, p, np.arange(num_classes))
    denom = 2 * tp + fp + fn
    return np.divide(2.0 * tp, denom, out=np.zeros(num_classes), where=denom > 0)


def macro_f1(y_true: object, y_pred: object, num_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``.

    Averaging over the union of present labels is what ``sklearn.metrics.f1_score(
    average="macro")`` does without ``labels=``: a class absent from a validation fold neither
    counts as 0 nor dilutes the mean, while a class that is only ever *predicted* scores 0 and
    does. Negative labels (the unknown class, -1) are a class like any other.

    ``num_classes`` does not change which classes are averaged; when given, labels must be
    ``< num_classes`` (a guard against mixing up label spaces).
    """
    t, p = _pair(y_true, y_pred)
    if num_classes is not None and max(t.max(), p.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got {max(t.max(), p.max())}")
    labels = np.union1d(t, p)
    tp, fp, fn = _confusion_counts(t, p, labels)
    return float(np.mean(2.0 * tp / (2 * tp + fp + fn)))  # every label is present: denom > 0


def mean_class_accuracy(y_true: object, y_pred: object) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (balanced accuracy)."""
    t, p = _pair(y_true, y_pred)
    labels, inv, support = np.unique(t, return_inverse=True, return_counts=True)
    correct = np.bincount(inv, weights=(t == p), minlength=labels.size)
    return float(np.mean(correct / support))


def shot_accuracy(
    y_true: object,
    y_pred: object,
    train_counts: object,
    many: int = 100,
    few: int = 20,
) -> dict[str, float | None]:
    """Accuracy on many-shot, medium-shot and few-shot classes (long-tail protocol).

    A class is many-shot with more than ``many`` training images, few-shot with fewer than
    ``few``, medium otherwise. As in ``shot_acc`` of OLTR (Liu et al. 2019, "Large-Scale
    Long-Tailed Recognition in an Open World"; github.com/zhmiao/OpenLongTailRecognition-OLTR,
    ``utils.py``, and the copies in later long-tail code such as Balanced Softmax), a bucket's
    accuracy is the mean of its classes' per-class accuracies over the classes present in
    ``y_true``, not a pooled sample accuracy. (The stored OLTR commit compares ``>= many`` /
    ``<= few``; the later copies and this function use ``> many`` / ``< few``.) A bucket with no
    test class is ``None``. Samples whose label has no training count (e.g. -1) are ignored.

    ``train_counts`` is ``(C,)``: training images per class.
    """
    t, p = _pair(y_true, y_pred)
    counts = np.asarray(train_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_counts must be 1-D (C,), got shape {counts.shape}")
    known = (t >= 0) & (t < counts.size)
    t, p = t[known], p[known]
    labels, inv, support = np.unique(t, return_inverse=True, return_counts=True)
    class_acc = np.bincount(inv, weights=(t == p), minlength=labels.size) / np.maximum(support, 1)
    n_train = counts[labels]
    buckets = {"many": n_train > many, "medium": (n_train >= few) & (n_train <= many)}
    buckets["few"] = n_train < few
    return {k: (float(class_acc[m].mean()) if m.any() else None) for k, m in buckets.items()}


def classification_report(
    y_true: object, scores: object, train_counts: object | None = None
) -> dict[str, float | int | None]:
    """The usual closed-set summary of ``(N, C)`` scores (logits or probabilities).

    Keys: ``top1``, ``top3``, ``macro_f1``, ``mean_class_acc``, ``n``; with ``train_counts``
    also ``many_shot``, ``medium_shot``, ``few_shot`` (``None`` for an empty bucket).
    Predictions are ``scores.argmax(1)`` (none for a row with nan or inf: wrong); all labels
    must be known classes.
    """
    t = _labels(y_true, "y_true")
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    s = _scores(t, scores)
    pred = predictions(s)
    report: dict[str, float | int | None] = {
        "top1": topk_accuracy(t, s, 1),
        "top3": topk_accuracy(t, s, 3),
        "macro_f1": macro_f1(t, pred),
        "mean_class_acc": mean_class_accuracy(t, pred),
        "n": int(t.size),
    }
    if train_counts is not None:
        shots = shot_accuracy(t, pred, train_counts)
        report.update({f"{k}_shot": v for k, v in shots.items()})
    return report


def most_confused(
    y_true: object,
    y_pred: object,
    class_names: Sequence[str],
    top: int = 10,
    unknown: int = -1,
) -> list[dict[str, str | int]]:
    """The ``top`` most frequent (true, predicted) mistakes, most frequent first.

    Each item is ``{"true": name, "predicted": name, "count": n}``; ties are ordered by true
    then predicted class index. The ``unknown`` label is named ``"unknown"``.
    """
    t, p = _pair(y_true, y_pred)
    n_names = len(class_names)
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        bad = (arr != unknown) & ((arr < 0) | (arr >= n_names))
        if bad.any():
            raise ValueError(f"{name} label {int(arr[bad][0])} has no name in class_names")
    wrong = t != p
    if not wrong.any():
        return []
    pairs, counts = np.unique(np.stack([t[wrong], p[wrong]], 1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]  # np.unique sorted pairs lexicographically

    def _name(label: int) -> str:
        return "unknown" if label == unknown else str(class_names[label])

    return [
        {"true": _name(int(pairs[i, 0])), "predicted": _name(int(pairs[i, 1])), "count": int(c)}
        for i, c in zip(order, counts[order], strict=True)
    ]


# --------------------------------------------------------------------------- FungiCLEF 2024


def aggregate_by_observation(
    obs_ids: object, logits: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average per-image logits over each observation's images.

    FungiCLEF scores one prediction per observation (several photos of one specimen).
    Returns ``(unique_obs (M,), mean_logits (M, C), index_of_first (M,))``: observations in
    sorted order, their mean logits, and the row of each observation's first image, so
    per-observation labels are ``y_image[index_of_first]``.

    >>> obs, mean, first = aggregate_by_observation(["b", "a", "b"], [[1.0], [5.0], [3.0]])
    >>> obs.tolist(), mean.ravel().tolist(), first.tolist()
    (['a', 'b'], [5.0, 2.0], [1, 0])
    """
    ids = np.asarray(obs_ids)
    x = np.asarray(logits)
    if ids.ndim != 1 or x.ndim != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"need obs_ids (N,) and logits (N, C), got {ids.shape} and {x.shape}")
    if ids.size == 0:
        raise ValueError("no images: obs_ids is empty")
    unique_obs, first, inv, counts = np.unique(
        ids, return_index=True, return_inverse=True, return_counts=True
    )
    inv = inv.reshape(-1)  # numpy 2.0.x returned inverse in the input's shape
    order = np.argsort(inv, kind="stable")  # images grouped by observation
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)  # (M, C)
    mean = sums / counts[:, None]
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return unique_obs, mean.astype(out_dtype, copy=False), first


def fungiclef_scores(
    y_true: object,
    y_pred: object,
    poisonous_true: object,
    poisonous_of_class: object,
    unknown: int = -1,
    *,
    cost_psc: float = 100.0,
    cost_esc: float = 1.0,
    cost_unknown_as_known: float = 10.0,
    cost_known_as_unknown: float = 0.1,
) -> dict[str, float]:
    """The four FungiCLEF 2024 scores (lower is better) on per-observation predictions.

    ``y_true`` / ``y_pred``: ``(N,)`` class indices, ``unknown`` for the unknown class.
    ``poisonous_true``: ``(N,)`` bool, the true observation's poisonous flag (False for unknown
    observations). ``poisonous_of_class``: ``(C,)`` bool, which predicted classes are poisonous.
    Use ``aggregate_by_observation`` first to get one prediction per observation.

    - ``track1`` classification error, unknown counted as a class: ``mean(y_pred != y_true)``.
    - ``track2`` poisonousness confusion cost:
      ``(100 * #poisonous predicted non-poisonous + 1 * #non-poisonous predicted poisonous) / N``.
      A prediction of unknown is non-poisonous, so a poisonous observation predicted unknown
      costs 100; a poisonous observation predicted as another poisonous species costs 0 here.
    - ``track3`` user-focused loss: ``track1 + track2``.
    - ``track4`` classification error with special cost for unknown:
      ``(10 * #unknown predicted known + 0.1 * #known predicted unknown
      + #known predicted as another known species) / N``.

    Source: the official FungiCLEF 2024 scoring script
    (``huggingface.co/spaces/BVRA/FungiCLEF2024``, also
    ``huggingface.co/picekl/FungiCLEF2024-Sample_Submission`` ``script.py``), read through
    participants' verbatim copies: github.com/Jack-Etheredge/fungiclef2024
    ``fungiclef-effnet/competition_metrics.py`` and github.com/dsgt-kaggle-clef/fungiclef-2024
    ``fungiclef/evaluate/scoring.py``. Track 1 there is ``classification_error_with_unknown``
    with both special costs set to 1 (= the plain error rate), Track 2 ``psc_esc_cost_score``
    (poisonous iff the class id is in the poisonous list, which -1 never is), Track 3 their sum,
    Track 4 ``classification_error_with_unknown`` with costs 10 and 0.1. Scores are per
    observation (the script drops duplicate observation ids). The script also reports macro F1
    (``macro_f1`` here) and rounds to 4 decimals; this function does not round.
    """
    t, p = _pair(y_true, y_pred)
    pois_t = np.asarray(poisonous_true, dtype=bool)
    pois_c = np.asarray(poisonous_of_class, dtype=bool)
    if pois_t.shape != t.shape:
        raise ValueError(f"poisonous_true must be (N,)={t.shape}, got {pois_t.shape}")
    if pois_c.ndim != 1:
        raise ValueError(f"poisonous_of_class must be 1-D (C,), got shape {pois_c.shape}")
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        bad = (arr != unknown) & ((arr < 0) | (arr >= pois_c.size))
        if bad.any():
            raise ValueError(
                f"{name} label {int(arr[bad][0])} is neither unknown={unknown} "
                f"nor in [0, {pois_c.size})"
            )
    n = t.size
    t_unk, p_unk = t == unknown, p == unknown
    pois_p = np.where(p_unk, False, pois_c[np.where(p_unk, 0, p)])  # unknown -> non-poisonous

    track1 = float(np.mean(t != p))
    psc = int(np.sum(pois_t & ~pois_p))  # poisonous species confusion: eaten by mistake
    esc = int(np.sum(~pois_t & pois_p))  # edible species confusion: thrown away
    track2 = (cost_psc * psc + cost_esc * esc) / n
    unknown_as_known = int(np.sum(t_unk & ~p_unk))
    known_as_unknown = int(np.sum(~t_unk & p_unk))
    known_as_other = int(np.sum(~t_unk & ~p_unk & (t != p)))
    track4 = (
        cost_unknown_as_known * unknown_as_known
        + cost_known_as_unknown * known_as_unknown
        + known_as_other
    ) / n
    return {
        "track1": track1,
        "track2": float(track2),
        "track3": float(track1 + track2),
        "track4": float(track4),
    }


# --------------------------------------------------------------------------- open set


def openset_scores(is_known_true: object, scores: object) -> dict[str, float]:
    """How well ``scores`` (higher = more known) separate known from unknown samples.

    - ``auroc``: area under the ROC curve with known as the positive class
      (``sklearn.metrics.roc_auc_score``).
    - ``fpr95``: fraction of unknowns accepted at the threshold that keeps 95% of the knowns,
      i.e. the highest threshold ``t`` with ``mean(known_scores >= t) >= 0.95``; unknowns with
      ``score >= t`` are accepted. ``1 - fpr95`` is the TNR@95%TPR of the FungiTastic paper.
    """
    from sklearn.metrics import roc_auc_score

    known = np.asarray(is_known_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if known.ndim != 1 or s.shape != known.shape:
        raise ValueError(
            f"need is_known_true and scores of the same (N,), got {known.shape}, {s.shape}"
        )
    n_known = int(known.sum())
    if n_known == 0 or n_known == known.size:
        raise ValueError("openset_scores needs both known and unknown samples")
    known_desc = np.sort(s[known])[::-1]
    threshold = known_desc[int(np.ceil(0.95 * n_known)) - 1]
    return {
        "auroc": float(roc_auc_score(known, s)),
        "fpr95": float(np.mean(s[~known] >= threshold)),
    }


def openset_accuracy(y_true: object, y_pred: object, unknown: int = -1) -> float:
    """Accuracy over all samples with the unknown class as one more class (``1 - track1``).

    Needs no special casing: ``unknown`` is simply one more label that ``y_true`` and ``y_pred``
    share; the argument is there so both open-set helpers are called alike.
    """
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def closed_set_accuracy(y_true: object, y_pred: object, unknown: int = -1) -> float | None:
    """Accuracy over the known-class samples only (a known predicted unknown is wrong).

    ``None`` when there is no known sample.
    """
    t, p = _pair(y_true, y_pred)
    known = t != unknown
    return float(np.mean(t[known] == p[known])) if known.any() else None
