"""Reading a store's embeddings, labels, folds and metadata once for training, and the rows of
each fold's training and validation parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore import Store, connect
from embedstore.explore import DUPLICATE_THRESHOLD, near_duplicate_pairs
from embedstore.search import l2_normalize
from embedstore.store import ALWAYS_TRAIN, HOLDOUT, EmbeddingInfo
from heads._errors import HeadsError

POISON_COLUMNS = ("poisonous", "is_poisonous", "poison")
OBS_COLUMNS = ("observation_id", "observationid", "observation", "obs_id")
NO_FOLD = np.iinfo(np.int32).min  # unlabelled rows, or a store split before they were added


@dataclass
class FoldData:
    """Everything read from the store once, for all folds."""

    X: np.ndarray  # (N, D) float32
    ids: np.ndarray
    labels: np.ndarray  # object, None for unlabelled
    fold: np.ndarray  # int64, min int for null
    table: dict[str, np.ndarray]  # metadata / aux / observation / poisonous columns
    backbone: EmbeddingInfo
    store_path: str
    store_version: int
    backbones: list[EmbeddingInfo] = field(default_factory=list)  # all of them, in order
    obs_column: str | None = None  # the observation id column, if the store has one
    poison_column: str | None = None  # the poisonous flag column, if the store has one
    # views trained on as augmentation and averaged at prediction (heads.training._train.use_views)
    train_views: list[str] = field(default_factory=list)
    tta_views: list[str] = field(default_factory=list)
    # augmented views of X (``ingest --views``): (N, V, D) float32, a row lacking a view holds
    # its main embedding there; None when not read. ``view_names`` names the V views in order.
    views: np.ndarray | None = None
    view_names: list[str] = field(default_factory=list)
    # class text weights (heads.text.ClassTexts) for a head with HeadTags.text_prior: built once
    # from the column's text tower; its classes are every fold's classes
    text: Any = None


def _find_column(names: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


def load_fold_data(
    store: Any,
    backbone: str | list[str] | None,
    columns: list[str],
    where: str | None = None,
    views: bool = False,
) -> FoldData:
    """Read one backbone's embeddings with labels, folds and ``columns`` from a store; with
    ``views`` also the augmented views stored beside them (:attr:`FoldData.views`).

    Several backbones (a list): the rows holding every one of them, each backbone's embedding
    L2-normalised and concatenated in the order given (:func:`concat_backbones`);
    ``data.backbone`` is the first, ``data.backbones`` all of them.
    """
    st = store if isinstance(store, Store) else connect(store, create=False)
    given = backbone if isinstance(backbone, list | tuple) else [backbone]
    infos = [st.resolve_backbone(b) for b in given]
    if len({i.column for i in infos}) < len(infos):
        raise HeadsError(
            f"--backbone: a backbone is named twice ({', '.join(map(str, given))}); name each once"
        )
    info = infos[0]
    schema = st.schema()
    assert schema is not None  # the store has embeddings (resolve_backbone), so a table
    names = schema.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise HeadsError(
            f"{st.path}: no column(s) {', '.join(missing)}; columns: "
            f"{', '.join(n for n in names if not n.startswith('emb_'))}"
        )
    extra_cols = [
        c for c in (_find_column(names, OBS_COLUMNS), _find_column(names, POISON_COLUMNS)) if c
    ]
    cols = list(
        dict.fromkeys(
            ["id", "label", *(["fold"] if "fold" in names else []), *columns, *extra_cols]
        )
    )
    if len(infos) == 1:
        X, t = st.embeddings(info.backbone, where=where, columns=cols, dtype="float32")
        mains = [X]
    else:
        embs, t = st.embedding_rows({i.column: i.dim for i in infos}, cols, where=where)
        mains = [embs[i.column] for i in infos]
        X = concat_backbones(mains)
    fold = t.get("fold")
    if fold is None:
        fold_arr = np.full(len(X), NO_FOLD, dtype=np.int64)
    else:
        fold_arr = np.array([NO_FOLD if v is None else int(v) for v in fold], dtype=np.int64)
    data = FoldData(
        X,
        t["id"],
        t["label"],
        fold_arr,
        t,
        info,
        str(st.path),
        st.version,
        backbones=infos,
        obs_column=_find_column(names, OBS_COLUMNS),
        poison_column=_find_column(names, POISON_COLUMNS),
    )
    if views:
        data.view_names, data.views = read_views(st, infos, data.ids, mains)
    return data


@dataclass
class Unlabelled:
    """Rows read without their labels (to pseudo-label, or to distil on): ids and embeddings
    only. The label column is never read for them (:func:`load_unlabelled`)."""

    ids: np.ndarray  # (M,)
    X: np.ndarray  # (M, D) float32, made as FoldData.X is (several backbones concatenated)
    views: np.ndarray | None = None  # (M, V, D): the views FoldData.view_names names, if read


def load_unlabelled(data: FoldData, where: str) -> Unlabelled:
    """The rows ``where`` selects (the unlabelled predicate of
    :func:`embedstore.store.unlabelled_predicates`), with the backbones (and, when ``data``
    trains on or predicts with views, the views) of ``data``. Reads the ``id`` column and the
    embeddings, nothing else: whatever label such a row holds in the store is not read."""
    st = connect(data.store_path, create=False)
    infos = data.backbones or [data.backbone]
    if len(infos) == 1:
        X, t = st.embeddings(infos[0].backbone, where=where, columns=["id"], dtype="float32")
        mains = [X]
    else:
        embs, t = st.embedding_rows({i.column: i.dim for i in infos}, ["id"], where=where)
        mains = [embs[i.column] for i in infos]
        X = concat_backbones(mains)
    ids = np.asarray(t["id"], dtype=object)
    check_finite(X, ids, infos[0].column)
    views = None
    if data.train_views or data.tta_views:
        names, views = read_views(st, infos, ids, mains)
        if names != data.view_names:  # the same views as the labelled rows, in the same order
            raise HeadsError(
                f"{data.store_path}: the unlabelled rows hold the views {', '.join(names)}, "
                f"the labelled ones {', '.join(data.view_names)}; add the missing views with "
                "`embedstore ingest --views`, or train with --no-views --no-tta"
            )
    return Unlabelled(ids, X, views)


def read_views(
    st: Store, infos: list[Any], ids: np.ndarray, mains: list[np.ndarray]
) -> tuple[list[str], np.ndarray]:
    """The views stored for every one of the backbones ``infos`` (named in the first's order):
    ``(names, (N, V, D))``. A row stored before a view was added holds its main embedding
    (``mains[i]``, that backbone's ``(N, Di)``) there. Several backbones: each view is made as
    the main input is, each backbone's part L2-normalised and concatenated."""
    per = [st.view_embeddings(i.backbone, ids) for i in infos]  # [(names_i, (N, Vi, Di))]
    names = [v for v in per[0][0] if all(v in n for n, _ in per[1:])]
    parts = []
    for (have, V), main in zip(per, mains, strict=True):
        V = V[:, [have.index(v) for v in names], :]  # (N, V, Di), a copy
        missing = np.isnan(V).any(axis=2)  # (N, V): rows stored before the view was added
        V[missing] = np.broadcast_to(main[:, None, :], V.shape)[missing]
        parts.append(V)
    if len(parts) == 1:
        return names, parts[0]
    n, v = len(ids), len(names)
    return names, np.concatenate(
        [l2_normalize(P.reshape(n * v, P.shape[2])).reshape(P.shape) for P in parts], axis=2
    )


def concat_backbones(arrays: list[np.ndarray]) -> np.ndarray:
    """``(N, D1 + D2 + ...)`` float32: each backbone's ``(N, Di)`` embedding L2-normalised, side
    by side, so that no backbone outweighs another by the scale of its features."""
    return np.concatenate([l2_normalize(a) for a in arrays], axis=1)


def check_finite(X: np.ndarray, ids: np.ndarray, column: str) -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise HeadsError(
            f"{int(bad.sum())} row(s) of {column} hold NaN or Inf embeddings "
            f"(first id {ids[bad][0]}); "
            "re-ingest those images or leave them out with --where"
        )


def aux_matrix(
    table: dict[str, np.ndarray], cols: list[str], rows: np.ndarray
) -> np.ndarray | None:
    if not cols:
        return None
    out = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
    for j, c in enumerate(cols):
        v = table[c][rows]
        for i, x in enumerate(v):
            if x is None or (isinstance(x, float) and np.isnan(x)):
                continue
            out[i, j] = (
                float(bool(x))
                if not isinstance(x, str)
                else float(x.strip().lower() in ("1", "true", "yes", "y"))
            )
    return out


def meta_table(
    table: dict[str, np.ndarray], cols: list[str], rows: np.ndarray
) -> dict[str, np.ndarray]:
    return {c: table[c][rows] for c in cols}


def fold_rows(data: FoldData, k: int | None, unknown_label: str) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)`` of fold ``k``: training takes every labelled known-class row
    outside fold ``k`` and the held-out part (``ALWAYS_TRAIN`` rows train in every fold);
    validation takes every labelled row of fold ``k``, unknowns included. ``k=None`` (a refit):
    every fold trains, no row validates."""
    labelled = np.array([v is not None for v in data.labels])
    is_unknown = labelled & np.array([v == unknown_label for v in data.labels])
    in_fold = (data.fold >= 0) | (data.fold == ALWAYS_TRAIN)
    not_k = np.ones(len(data.fold), bool) if k is None else data.fold != k
    train_rows = np.flatnonzero(labelled & ~is_unknown & in_fold & not_k & (data.fold != HOLDOUT))
    val_rows = np.flatnonzero(labelled & (data.fold == k)) if k is not None else np.zeros(0, int)
    return train_rows, val_rows


def holdout_leakage(data: FoldData, threshold: float = DUPLICATE_THRESHOLD) -> list[str]:
    """A warning when held-out images (fold -1) have near-duplicates among the training folds'
    images (cosine similarity >= ``threshold``): their held-out scores would be optimistic.
    One kNN search of the held-out part against the rest; no warning, an empty list."""
    held = np.flatnonzero(data.fold == HOLDOUT)
    train = np.flatnonzero((data.fold >= 0) | (data.fold == ALWAYS_TRAIN))
    if not len(held) or not len(train):
        return []
    p = near_duplicate_pairs(data.X[train], queries=data.X[held], threshold=threshold, k=1)
    if not len(p.first):
        return []
    a, b = str(data.ids[held[p.first[0]]]), str(data.ids[train[p.second[0]]])
    t = connect(data.store_path, create=False).read(["id", "path"], ids=[a, b]).to_pylist()
    path = {r["id"]: r["path"] for r in t}
    return [
        f"{len(p.first)} of the {len(held)} held-out images have a near-duplicate (cosine >= "
        f"{threshold}) among the training folds' images, e.g. {path.get(a, a)} ~ "
        f"{path.get(b, b)} ({p.similarity[0]:.3f}): held-out scores will be optimistic. List "
        f"them with `embedstore duplicates --store {data.store_path}`"
    ]
