"""Stratified (and grouped) k-fold assignment with numpy alone: the bottom layer does not import
scikit-learn. Each function gives, for the same ``seed``, exactly the folds of scikit-learn's
``StratifiedKFold`` / ``StratifiedGroupKFold`` (``shuffle=True, random_state=seed``), so stores
split before keep their folds (``tests/test_folds.py`` compares them)."""

from __future__ import annotations

import numpy as np


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (``0..k-1``) of each sample: every class spread evenly over the folds, its
    samples shuffled. Every class must have at least ``k`` samples (the caller sets the others
    aside)."""
    rng = np.random.RandomState(seed)
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    # classes numbered by order of appearance, as scikit-learn does
    y_encoded = np.unique(first, return_inverse=True)[1][inverse]
    n_classes = len(first)
    y_order = np.sort(y_encoded)
    allocation = np.asarray(
        [np.bincount(y_order[i::k], minlength=n_classes) for i in range(k)]
    )  # samples of each class in each fold, round robin over the sorted labels
    folds = np.empty(len(y), dtype=np.int64)
    for c in range(n_classes):
        of_class = np.arange(k).repeat(allocation[:, c])
        rng.shuffle(of_class)
        folds[y_encoded == c] = of_class
    return folds


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold of each sample, keeping each group in one fold: groups are taken in a shuffled
    order (most uneven class mix first) and each goes to the fold whose class proportions it
    leaves most even (the smaller fold on a tie)."""
    rng = np.random.RandomState(seed)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, groups_inv = np.unique(groups, return_inverse=True)
    n_groups = int(groups_inv.max()) + 1 if len(groups_inv) else 0
    per_group = np.zeros((n_groups, len(y_cnt)))
    np.add.at(per_group, (groups_inv, y_inv), 1)
    perm = np.arange(n_groups)
    rng.shuffle(perm)
    per_group = per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_groups)
    groups_inv = inv_perm[groups_inv]
    per_fold = np.zeros((k, len(y_cnt)))
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        best = _best_fold(per_fold, y_cnt, per_group[g])
        per_fold[best] += per_group[g]
        fold_of_group[g] = best
    return fold_of_group[groups_inv]


def _best_fold(per_fold: np.ndarray, y_cnt: np.ndarray, counts: np.ndarray) -> int:
    best, min_eval, min_samples = 0, np.inf, np.inf
    for i in range(len(per_fold)):
        per_fold[i] += counts
        fold_eval = np.mean(np.std(per_fold / y_cnt.reshape(1, -1), axis=0))
        per_fold[i] -= counts
        samples = np.sum(per_fold[i])
        if fold_eval < min_eval or (np.isclose(fold_eval, min_eval) and samples < min_samples):
            best, min_eval, min_samples = i, fold_eval, samples
    return best
