"""Answering at every rank of the store's taxonomy (species < genus < family): a run's classes
placed in the tree (``Tree``), each rank's probabilities (the fine ones summed up the tree, or a
run trained at that rank), the fallback to the finest rank whose confidence clears its
threshold, fitted out-of-fold (``fit_hierarchy`` writes ``RUN/hierarchy.json``;
``load_hierarchy`` reads it).

>>> from heads.taxonomy import fit_hierarchy
>>> fit_hierarchy("runs/mlp", target=0.9).oof["answered"]
{'label': 0.81, 'coarse_class': 0.16, 'none': 0.03}
>>> heads.predict("runs/mlp", ["photo.jpg"], fallback=True)[0].rank
'coarse_class'
"""

from heads.taxonomy._fallback import (
    DEFAULT_MIN_COUNT,
    DEFAULT_TARGET,
    RankThresholds,
    answered_rank,
    fit_thresholds,
    threshold_for,
)
from heads.taxonomy._fit import HierarchyResult, fit_hierarchy
from heads.taxonomy._hierarchy import HIERARCHY_FILE, Hierarchy, RankSource, load_hierarchy
from heads.taxonomy._tree import Tree, map_labels, run_taxonomy

__all__ = [
    "DEFAULT_MIN_COUNT",
    "DEFAULT_TARGET",
    "HIERARCHY_FILE",
    "Hierarchy",
    "HierarchyResult",
    "RankSource",
    "RankThresholds",
    "Tree",
    "answered_rank",
    "fit_hierarchy",
    "fit_thresholds",
    "load_hierarchy",
    "map_labels",
    "run_taxonomy",
    "threshold_for",
]
