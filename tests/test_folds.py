"""embedstore.store's fold assignment (numpy only) against scikit-learn's splitters: the same
folds for the same seed, so stores split before this code keep their folds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

import embedstore
from embedstore.store._kfold import stratified_folds, stratified_group_folds
from tests.conftest import make_synthetic_store


def _cases(n_cases: int = 40):
    rng = np.random.default_rng(0)
    for _ in range(n_cases):
        k = int(rng.integers(2, 6))
        y = rng.integers(0, int(rng.integers(2, 8)), int(rng.integers(40, 300)))
        y = y[np.isin(y, np.flatnonzero(np.bincount(y) >= 2 * k))]  # classes the caller keeps
        groups = rng.integers(0, max(len(y) // 3, k + 1), len(y))
        yield k, y, groups, int(rng.integers(0, 1000))


def _folds_of(splits, n: int) -> np.ndarray:
    out = np.full(n, -1)
    for f, (_, val) in enumerate(splits):
        out[val] = f
    return out


def test_stratified_folds_are_scikit_learns():
    for k, y, _, seed in _cases():
        want = _folds_of(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y), len(y))
        np.testing.assert_array_equal(stratified_folds(y, k, seed), want)


def test_stratified_group_folds_are_scikit_learns_and_keep_groups_whole():
    checked = 0
    for k, y, groups, seed in _cases():
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        try:
            want = _folds_of(splitter.split(y, y, groups), len(y))
        except ValueError:  # fewer groups than folds: the caller never asks
            continue
        got = stratified_group_folds(y, groups, k, seed)
        np.testing.assert_array_equal(got, want)
        assert all(len(set(got[groups == g])) == 1 for g in np.unique(groups))
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("group_by", [None, "obs"])
def test_split_writes_the_folds_scikit_learn_would(tmp_path, group_by):
    obs = [f"o{i // 3}" for i in range(120)]
    st = make_synthetic_store(tmp_path / "s", n_classes=4, per_class=30, extra={"obs": obs})
    embedstore.split(st, folds=3, seed=7, group_by=group_by)
    t = st.read(["id", "label", "fold", "obs"])
    labels = np.array(t["label"].to_pylist())
    y = np.unique(labels, return_inverse=True)[1]
    if group_by:
        groups = np.unique(np.array([f"g:{g}" for g in t["obs"].to_pylist()]), return_inverse=True)[
            1
        ]
        splits = StratifiedGroupKFold(3, shuffle=True, random_state=7).split(y, y, groups)
    else:
        splits = StratifiedKFold(3, shuffle=True, random_state=7).split(y, y)
    np.testing.assert_array_equal(np.array(t["fold"].to_pylist()), _folds_of(splits, len(y)))
