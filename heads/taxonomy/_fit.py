"""Fitting a run's hierarchy out-of-fold (``heads hierarchy RUN``; ``heads train`` runs it
when the store has a taxonomy): calibrate, choose each coarser rank's source, fit the
fallback thresholds, and write ``RUN/hierarchy.json`` (heads.taxonomy._hierarchy).

Everything is fitted on the run's validation part (``val.parquet``: out-of-fold predictions
for a fold ensemble), never on the store's held-out part, which ``heads eval`` then scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import Result
from embedstore.store import Taxonomy, read_taxonomy
from heads._calibration import fit_temperature
from heads._errors import HeadsError
from heads.runs._loaded import Predictor, load
from heads.runs._rundir import read_val
from heads.taxonomy._fallback import (
    DEFAULT_MIN_COUNT,
    DEFAULT_TARGET,
    answered_rank,
    fallback_summary,
    fit_thresholds,
)
from heads.taxonomy._hierarchy import (
    HIERARCHY_FORMAT,
    Hierarchy,
    RankSource,
    align,
    softmax,
)
from heads.taxonomy._tree import Tree, cut, run_taxonomy
from heads.types import Bound


@dataclass
class HierarchyResult(Result):
    """A fitted hierarchy: the ranks (names per rank), where each coarser rank's probabilities
    come from with the out-of-fold top-1 that chose it, the thresholds, and how the fallback
    answered the validation rows it was fitted on (``oof``: in-sample for the thresholds; the
    held-out part in ``heads eval`` is the honest figure)."""

    run: str
    file: str
    ranks: list[str]
    names_per_rank: dict[str, int]
    temperature: float
    target: float
    min_count: int
    bound: str
    sources: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]
    oof: dict[str, Any]
    rank_top1: dict[str, float | None] = field(default_factory=dict)


def fit_hierarchy(
    run: str | os.PathLike,
    *,
    rank_runs: dict[str, str | os.PathLike] | None = None,
    target: float = DEFAULT_TARGET,
    min_count: int = DEFAULT_MIN_COUNT,
    bound: Bound = "none",
    store: str | os.PathLike | None = None,
    device: str = "auto",
) -> HierarchyResult:
    """Fit ``run``'s hierarchy on its validation part and write ``RUN/hierarchy.json``.

    The taxonomy is the one the run was trained with (else its store's, or ``store``'s).
    Coarser ranks take the fine probabilities summed up the tree, unless ``rank_runs`` names a
    run trained at that rank (``heads train --rank genus``, same store and folds) that is more
    accurate out-of-fold. The fallback thresholds are set so that the answers at each rank are
    right ``target`` of the time out-of-fold, per predicted class where it has ``min_count``
    rows, else per rank (heads.taxonomy._fallback); ``bound="wilson"`` asks the one-sided 95%
    lower bound of that share to reach ``target`` (a margin for small validation parts).

    >>> heads.taxonomy.fit_hierarchy("runs/mlp", rank_runs={"genus": "runs/genus"}).oof
    """
    path = Path(run)
    model = load(path, device)
    tree = Tree.from_taxonomy(_taxonomy(model, store), model.classes)
    val = read_val(path)
    truth = tree.rank_index(val["label"])  # (N, R)
    known = truth[:, 0] >= 0
    if not known.any():
        raise HeadsError(
            f"{path}: no validation rows of the run's classes to fit a hierarchy on; train "
            "with --fold all (or a fold with rows)"
        )
    temperature = fit_temperature(val, model.classes)
    P = tree.rollup(softmax(val["logits"][known], temperature))
    truth = truth[known]
    ids = np.asarray(val["id"], dtype=object)[known]
    sources = [
        _choose_source(tree, r, P, truth, ids, (rank_runs or {}).get(rank), device)
        for r, rank in enumerate(tree.ranks[1:], start=1)
    ]
    pred = np.stack([p.argmax(axis=1) for p in P], axis=1)
    conf = np.stack([p.max(axis=1) for p in P], axis=1)
    right = pred == truth
    th = fit_thresholds(
        conf, pred, right, tree.names, tree.ranks, target=target, min_count=min_count, bound=bound
    )
    oof = fallback_summary(answered_rank(conf, pred, th, tree.names), right, tree.ranks)
    hier = Hierarchy(
        {
            "format": HIERARCHY_FORMAT,
            "run_sha256": model.config.config_sha256,
            "tree": tree.to_dict(),
            "temperature": temperature,
            "sources": [s.to_dict() for s in sources],
            "thresholds": [t.to_dict() for t in th],
            "target": target,
            "min_count": min_count,
            "bound": bound,
            "oof": oof,
        }
    )
    file = hier.write(path)
    return HierarchyResult(
        str(path),
        str(file),
        tree.ranks,
        {r: len(n) for r, n in zip(tree.ranks, tree.names, strict=True)},
        temperature,
        target,
        min_count,
        bound,
        [s.to_dict() for s in sources],
        [_shown(t.to_dict()) for t in th],
        oof,
        {rank: float(right[:, r].mean()) for r, rank in enumerate(tree.ranks)},
    )


def _taxonomy(model: Predictor, store: str | os.PathLike | None) -> Taxonomy:
    """The run's taxonomy (recorded at training), else the store's, from the run's rank up."""
    tax, rank = run_taxonomy(model)
    if tax is None:
        tax = read_taxonomy(store or model.store_path)
    if tax is None:
        raise HeadsError(
            f"{model.path}: neither the run nor its store {store or model.store_path} has a "
            "taxonomy; set one with `embedstore taxonomy FILE --store S` (or --rank COLUMN)"
        )
    return cut(tax, rank)


def _choose_source(
    tree: Tree,
    r: int,
    P: list[np.ndarray],
    truth: np.ndarray,
    ids: np.ndarray,
    rank_run: str | os.PathLike | None,
    device: str,
) -> RankSource:
    """Rank ``r``'s source: the roll-up, or ``rank_run`` if it is more accurate out-of-fold on
    the same images (then ``P[r]`` becomes its probabilities)."""
    rank = tree.ranks[r]
    rollup = float(np.mean(P[r].argmax(axis=1) == truth[:, r]))
    src = RankSource(rank, oof_top1={"rollup": rollup})
    if rank_run is None:
        return src
    m = load(rank_run, device)
    _, m_rank = run_taxonomy(m)
    if m_rank != rank:
        raise HeadsError(
            f"--rank-run {rank}={rank_run}: that run's classes are at rank {m_rank or 'label'}, "
            f"not {rank}; train one with `heads train --rank {rank}`"
        )
    val = read_val(Path(rank_run))
    pos = {str(i): k for k, i in enumerate(val["id"])}
    missing = [i for i in ids if str(i) not in pos]
    if missing:
        raise HeadsError(
            f"--rank-run {rank}={rank_run}: {len(missing)} of the run's validation images are "
            "not in its validation part; train it on the same store and folds (--fold all)"
        )
    rows = np.array([pos[str(i)] for i in ids])
    t = fit_temperature(val, m.classes)
    Pr = align(softmax(val["logits"][rows], t), m.classes, tree.names[r])
    own = float(np.mean(Pr.argmax(axis=1) == truth[:, r]))
    src.oof_top1["run"] = own
    if own > rollup:  # a tie keeps the roll-up (consistent)
        P[r] = Pr
        src.source, src.run, src.temperature = "run", str(Path(rank_run).resolve()), t
        src.run_sha256 = m.config.config_sha256
    return src


def _shown(t: dict[str, Any]) -> dict[str, Any]:
    """A rank's thresholds as a result shows them: the rank's, and how many classes have
    their own (the file holds them all)."""
    own = [v for v in t["classes"].values() if v is not None]
    return {
        "rank": t["rank"],
        "threshold": t["threshold"],
        "classes_with_own": len(t["classes"]),
        "own_range": [min(own), max(own)] if own else None,
        "rows": t["rows"],
    }
