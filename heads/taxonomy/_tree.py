"""A run's classes placed in the store's taxonomy: each class's name at every rank, the fine
probabilities summed up the tree, and how far apart two classes are (the rank of their lowest
common ancestor, the mistake severity of Bertinetto et al., "Making Better Mistakes", 2020).

>>> tree = Tree.from_taxonomy(taxonomy, run.classes)
>>> genus_probs = tree.rollup(probs)[1]            # (N, genera)
>>> tree.lca_height(y_true, y_pred)                # 0 right, 1 right genus, ... R: nothing shared
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.store import Taxonomy
from heads._errors import HeadsError
from heads.runs._config import RunConfig
from heads.runs._loaded import Ensemble, Predictor
from heads.runs._wrapped import WrappedPredictor

_SHOWN = 5


@dataclass
class Tree:
    """``ranks`` finest first (``ranks[0]``: the run's classes); ``names[r]`` the names at rank
    ``r`` (``names[0]`` the classes, in the run's order; coarser ranks sorted); ``index`` ``(C,
    R)``: each class's position in ``names[r]``."""

    ranks: list[str]
    names: list[list[str]]
    index: np.ndarray  # (C, R) int64

    @classmethod
    def from_taxonomy(cls, tax: Taxonomy, classes: list[str]) -> Tree:
        """The tree of ``classes`` (names at ``tax.ranks[0]``); a class the taxonomy lacks is
        an error that names it."""
        missing = [c for c in classes if c not in tax.parents]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:_SHOWN])
            raise HeadsError(
                f"{len(missing)} class(es) of the run are not in the taxonomy ({tax.source}): "
                f"{shown}{' ...' if len(missing) > _SHOWN else ''}; add them to the taxonomy "
                "(`embedstore taxonomy FILE --store S`) and train again"
            )
        ranks = list(tax.ranks)
        names = [list(classes)]
        cols = [np.arange(len(classes), dtype=np.int64)]
        for r in range(1, len(ranks)):
            up = [tax.parents[c][r - 1] for c in classes]
            level = sorted(set(up))
            pos = {n: i for i, n in enumerate(level)}
            names.append(level)
            cols.append(np.array([pos[n] for n in up], dtype=np.int64))
        return cls(ranks, names, np.stack(cols, axis=1))

    @property
    def depth(self) -> int:
        return len(self.ranks)

    def to_dict(self) -> dict[str, Any]:
        parents = {
            c: [self.names[r][self.index[i, r]] for r in range(1, self.depth)]
            for i, c in enumerate(self.names[0])
        }
        return {"ranks": self.ranks, "classes": self.names[0], "parents": parents}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        tax = Taxonomy(tuple(d["ranks"]), {k: tuple(v) for k, v in d["parents"].items()})
        return cls.from_taxonomy(tax, list(d["classes"]))

    def rollup(self, probs: np.ndarray) -> list[np.ndarray]:
        """Each rank's probabilities: the fine ``(N, C)`` ones summed within each ancestor,
        ``[(N, C), (N, G1), ...]`` (consistent: a genus is as likely as its species together)."""
        out = [probs]
        for r in range(1, self.depth):
            M = np.zeros((len(self.names[0]), len(self.names[r])))  # (C, G): class -> ancestor
            M[np.arange(len(M)), self.index[:, r]] = 1.0
            out.append(probs @ M)  # (N, G)
        return out

    def lca_height(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(N,)`` for class indices ``a`` and ``b``: 0 the same class, ``r`` the first rank
        where they share a name (1: same genus), ``depth`` when they share none."""
        same = self.index[a] == self.index[b]  # (N, R)
        same = np.concatenate([same, np.ones((len(a), 1), bool)], axis=1)
        return np.argmax(same, axis=1)

    def rank_index(self, labels: np.ndarray, tax: Taxonomy | None = None) -> np.ndarray:
        """``(N, R)``: each label's position at every rank, -1 where it is not placed (None, the
        unknown label, a class the run lacks; with ``tax``, a label of the taxonomy outside the
        run's classes is still placed at the coarser ranks the run has)."""
        out = np.full((len(labels), self.depth), -1, dtype=np.int64)
        pos = [{n: i for i, n in enumerate(level)} for level in self.names]
        fine = {c: i for i, c in enumerate(self.names[0])}
        for j, v in enumerate(labels):
            if v is None:
                continue
            i = fine.get(str(v))
            if i is not None:
                out[j] = self.index[i]
            elif tax is not None and str(v) in tax.parents and list(tax.ranks) == self.ranks:
                up = tax.parents[str(v)]
                out[j, 1:] = [pos[r].get(up[r - 1], -1) for r in range(1, self.depth)]
        return out


# ---------------------------------------------------------------------------- a run's taxonomy


def run_taxonomy(model: Predictor) -> tuple[Taxonomy | None, str | None]:
    """The taxonomy a run was trained with (the store's, as recorded in its config) and the
    rank its classes are at (None: the store's labels); an ensemble's are its first member's."""
    while isinstance(model, WrappedPredictor | Ensemble):  # compiled, batched: the model's
        model = model.model if isinstance(model, WrappedPredictor) else model.members[0]
    cfg = model.config
    if not isinstance(cfg, RunConfig) or cfg.taxonomy is None:
        return None, None
    return Taxonomy.from_dict(cfg.taxonomy), cfg.label_rank


def cut(tax: Taxonomy, rank: str | None) -> Taxonomy:
    """``tax`` from ``rank`` up: its names at ``rank`` become the labels (None: ``tax``)."""
    if rank is None or rank == tax.ranks[0]:
        return tax
    r = tax.rank_index(rank)
    if r == len(tax.ranks) - 1:
        raise HeadsError(f"rank {rank!r} is the coarsest of the taxonomy; nothing is above it")
    parents = {p[r - 1]: p[r:] for p in tax.parents.values()}
    return Taxonomy(tax.ranks[r:], parents, tax.source)


def relabel(labels: np.ndarray, tax: Taxonomy, rank: str, keep: str) -> np.ndarray:
    """``labels`` (the store's) as their names at ``rank``; None stays None and ``keep`` (the
    unknown label) stays itself. A label the taxonomy lacks is an error naming it."""
    r = tax.rank_index(rank)
    missing = sorted({str(v) for v in labels if v is not None and v != keep} - set(tax.parents))
    if missing:
        raise HeadsError(
            f"--rank {rank}: {len(missing)} label(s) are not in the store's taxonomy "
            f"({', '.join(repr(m) for m in missing[:_SHOWN])}); add them "
            "(`embedstore taxonomy FILE`) or leave them out with --where"
        )
    out = np.array(
        [v if v is None or v == keep or r == 0 else tax.parents[str(v)][r - 1] for v in labels],
        dtype=object,
    )
    return out


def map_labels(model: Predictor, labels: np.ndarray) -> np.ndarray:
    """The store's labels of rows as ``model`` names them: the same, or, for a run trained at a
    coarser rank (``heads train --rank genus``), their names at that rank (unplaced: None)."""
    tax, rank = run_taxonomy(model)
    if tax is None or rank is None or tax.rank_index(rank) == 0:
        return labels
    r = tax.rank_index(rank)
    keep = model.unknown_label
    return np.array(
        [
            v
            if v is None or v == keep
            else (tax.parents[str(v)][r - 1] if str(v) in tax.parents else None)
            for v in labels
        ],
        dtype=object,
    )


def restrict(tax: Taxonomy, labels: np.ndarray) -> dict[str, Any]:
    """``tax`` as a run records it: the labels among ``labels`` only (a run's store rows)."""
    present = {str(v) for v in labels if v is not None}
    parents = {k: v for k, v in tax.parents.items() if k in present}
    return Taxonomy(tax.ranks, parents, tax.source).to_dict()
