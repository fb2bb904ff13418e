"""Training heads on a store's folds (``train``), searching their settings (``tune``) and
ensembling runs (``ensemble``).

>>> from heads.training import train, tune, search_space
"""

from heads.training._ensemble import ensemble
from heads.training._folds import build_head
from heads.training._train import FoldResult, TrainResult, train
from heads.training._tune import TUNED_PARAMS, TuneResult, search_space, tune

__all__ = [
    "TUNED_PARAMS",
    "FoldResult",
    "TrainResult",
    "TuneResult",
    "build_head",
    "ensemble",
    "search_space",
    "train",
    "tune",
]
