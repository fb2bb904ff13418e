"""Cross-validation folds written into the store as an int column ``fold``.

Values: ``0..K-1`` the fold an image validates in; ``-1`` the held-out test part (no fold ever
trains on it); ``-2`` "always train" (a class too small to split trains in every fold);
null for unlabelled images. Stratified by label; ``group_by`` keeps every image of a group
(an observation, say) in one fold. Deterministic for a seed.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from embedstore._results import Result
from embedstore.store._kfold import stratified_folds, stratified_group_folds
from embedstore.store._store import ALWAYS_TRAIN, HOLDOUT, Store, StoreError, connect


@dataclass
class SplitSummary(Result):
    """The fold assignment written by :func:`split` (also kept in the store's metadata)."""

    folds: int
    holdout: float
    group_by: str | None
    seed: int
    use_split_column: bool
    images_per_fold: dict[str, int]
    holdout_images: int
    always_train_images: int
    small_classes: int
    unlabelled: int
    notes: list[str]


def split(
    store: str | os.PathLike | Store | None = None,
    *,
    folds: int = 5,
    holdout: float = 0.0,
    group_by: str | None = None,
    seed: int = 0,
    use_split_column: bool = False,
) -> SplitSummary:
    """Assign folds to the store's labelled images; returns a summary.

    ``use_split_column`` honours an existing ``split`` column (from train/val/test folders):
    ``test`` becomes the held-out part, ``val`` becomes fold 0 with every ``train`` image in
    training; without a ``val`` part the ``train`` images are split into ``folds`` folds.

    >>> split("my-store", folds=5, holdout=0.1, group_by="observation_id", seed=0)
    """
    st = store if isinstance(store, Store) else connect(store, create=False)
    rows = _read_rows(st, folds, holdout, group_by)
    fold = np.full(len(rows.ids), _UNSET, dtype=np.int64)
    notes: list[str] = []
    if use_split_column:
        pool = _honour_split_column(st, rows, fold, notes)
    else:
        pool = rows.labelled.copy()
        if holdout > 0:
            held = _stratified_group_part(rows.labels, rows.group_key, pool, holdout, int(seed))
            fold[held] = HOLDOUT
            pool &= ~held
    small_classes = _assign_folds(rows, pool, fold, folds, int(seed), bool(group_by))
    summary = _summary(rows, fold, notes, small_classes, folds, holdout, group_by, seed)
    summary.use_split_column = use_split_column
    _write_folds(st, rows.ids, fold, summary)
    return summary


_UNSET = np.iinfo(np.int32).min  # no fold: unlabelled, or not assigned yet
_VAL_NOTE = "val part is fold 0; train part trains in every fold"


@dataclass
class _Rows:
    ids: np.ndarray
    labels: np.ndarray
    labelled: np.ndarray
    group_key: np.ndarray  # one integer per group (an image without a group is its own)
    splits: np.ndarray  # the split column (train/val/test) or None


def _read_rows(st: Store, folds: int, holdout: float, group_by: str | None) -> _Rows:
    """The ids, labels, groups and split values of every row; StoreError for bad settings."""
    if folds < 2:
        raise StoreError(f"--folds must be at least 2, not {folds}")
    if not 0.0 <= holdout < 1.0:
        raise StoreError(f"--holdout must be a fraction in [0, 1), not {holdout}")
    schema = st.schema()
    if schema is None:
        raise StoreError(f"{st.path}: the store is empty; run `embedstore ingest` first")
    has_split = "split" in schema.names
    cols = ["id", "label"] + (["split"] if has_split else []) + ([group_by] if group_by else [])
    if group_by and group_by not in schema.names:
        raise StoreError(
            f"{st.path}: no column {group_by!r} to group by; columns: "
            f"{', '.join(n for n in schema.names if not n.startswith('emb_'))}"
        )
    t = st.read(columns=cols)
    ids = np.array(t.column("id").to_pylist(), dtype=object)
    labels = np.array(t.column("label").to_pylist(), dtype=object)
    labelled = np.array([x is not None for x in labels])
    if not labelled.any():
        raise StoreError(
            f"{st.path}: no labelled images to split; label them by class folders or --label-column"
        )
    if group_by:
        keys = [
            f"g:{g}" if g is not None else f"i:{i}"
            for g, i in zip(t.column(group_by).to_pylist(), ids, strict=True)
        ]
        group_key = np.unique(np.array(keys), return_inverse=True)[1]
    else:
        group_key = np.arange(len(ids))
    splits = np.array(
        t.column("split").to_pylist() if has_split else [None] * len(ids), dtype=object
    )
    return _Rows(ids, labels, labelled, group_key, splits)


def _honour_split_column(st: Store, rows: _Rows, fold: np.ndarray, notes: list[str]) -> np.ndarray:
    """``test`` is held out; ``val`` is fold 0 (``train`` then trains in every fold). Returns
    the rows left to split into folds."""
    labelled, splits = rows.labelled, rows.splits
    if not any(s in ("train", "val", "test") for s in splits[labelled]):
        raise StoreError(
            f"{st.path}: no split column values (train/val/test) to honour; drop --use-split"
        )
    fold[labelled & (splits == "test")] = HOLDOUT
    pool = labelled & (splits != "test")
    if (labelled & (splits == "val")).any():
        fold[labelled & (splits == "val")] = 0
        fold[labelled & (splits != "val") & (splits != "test")] = ALWAYS_TRAIN
        pool = np.zeros_like(pool)
        notes.append(_VAL_NOTE)
    return pool


def _assign_folds(
    rows: _Rows, pool: np.ndarray, fold: np.ndarray, folds: int, seed: int, grouped: bool
) -> int:
    """Stratified (grouped) folds for the ``pool`` rows; classes with fewer groups than folds
    train in every fold. Returns how many classes were that small."""
    if not pool.any():
        return 0
    idx = np.flatnonzero(pool)
    lab, grp = rows.labels[idx], rows.group_key[idx]
    n_groups: Counter = Counter()
    for c, _g in set(zip(lab, grp, strict=True)):
        n_groups[c] += 1
    small = np.array([n_groups[c] < folds for c in lab])
    fold[idx[small]] = ALWAYS_TRAIN
    idx = idx[~small]
    if len(idx):
        y = np.unique(rows.labels[idx].astype(str), return_inverse=True)[1]
        if grouped:
            fold[idx] = stratified_group_folds(y, rows.group_key[idx], folds, seed)
        else:
            fold[idx] = stratified_folds(y, folds, seed)
    return len({c for c, n in n_groups.items() if n < folds})


def _summary(
    rows: _Rows,
    fold: np.ndarray,
    notes: list[str],
    small_classes: int,
    folds: int,
    holdout: float,
    group_by: str | None,
    seed: int,
) -> SplitSummary:
    counts = {int(k): int(v) for k, v in sorted(Counter(fold[fold != _UNSET].tolist()).items())}
    return SplitSummary(
        folds=1 if _VAL_NOTE in notes else folds,
        holdout=holdout,
        group_by=group_by,
        seed=seed,
        use_split_column=False,
        images_per_fold={str(k): v for k, v in counts.items() if k >= 0},
        holdout_images=counts.get(HOLDOUT, 0),
        always_train_images=counts.get(ALWAYS_TRAIN, 0),
        small_classes=small_classes,
        unlabelled=int((~rows.labelled).sum()),
        notes=notes,
    )


def _write_folds(st: Store, ids: np.ndarray, fold: np.ndarray, summary: SplitSummary) -> None:
    mask = fold != _UNSET
    arr = pa.array(np.where(mask, fold, 0).astype(np.int32), mask=~mask)
    with st.writing("embedstore split"):
        # The summary first, marked unfinished, then the column (one commit), then the summary
        # marked done: a split killed in between reads as interrupted (info says so), never as
        # a summary of other folds than the column holds.
        st.meta.set_table_metadata({"folds": {**summary.to_dict(), "complete": False}})
        st.update_columns(ids.tolist(), {"fold": arr})
        st.meta.set_table_metadata({"folds": summary.to_dict()})


def _stratified_group_part(labels, group_key, pool, frac: float, seed: int) -> np.ndarray:
    """A stratified, grouped random part of about ``frac`` of the pool (classes of one group
    stay out)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=bool)
    idx = np.flatnonzero(pool)
    by_class: dict[Any, list[int]] = {}
    for i in idx:
        by_class.setdefault(labels[i], []).append(int(i))
    taken_groups: set[int] = set()
    for c in sorted(by_class, key=str):
        members = np.array(by_class[c])
        groups = np.unique(group_key[members])
        if len(groups) < 2:
            continue  # a class with one group cannot give any to the test part
        rng.shuffle(groups)
        n_take = max(1, int(round(frac * len(groups))))
        n_take = min(n_take, len(groups) - 1)
        taken_groups.update(groups[:n_take].tolist())
    out[idx] = np.isin(group_key[idx], list(taken_groups))
    return out
