"""Training heads on a store's folds (``train``, with ``pseudo_label``: the unlabelled rows'
most confident predictions as labels), searching their settings (``tune``), ensembling runs
(``ensemble``) and distilling an ensemble into one head (``distill``).

>>> from heads.training import train, tune, search_space
"""

from heads.training._distill import DistillResult, distill
from heads.training._ensemble import ensemble
from heads.training._folds import build_head
from heads.training._pseudo import PSEUDO_FRACTIONS, PSEUDO_WEIGHTS, PseudoResult
from heads.training._train import FoldResult, TrainResult, train
from heads.training._tune import TUNED_PARAMS, TuneResult, search_space, tune

__all__ = [
    "PSEUDO_FRACTIONS",
    "PSEUDO_WEIGHTS",
    "TUNED_PARAMS",
    "DistillResult",
    "FoldResult",
    "PseudoResult",
    "TrainResult",
    "TuneResult",
    "build_head",
    "distill",
    "ensemble",
    "search_space",
    "train",
    "tune",
]
