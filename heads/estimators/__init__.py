"""The heads and unknown-class detectors themselves (scikit-learn estimators), and the metadata
encoders that feed them: the plug-ins behind ``heads.create_head`` / ``heads.create_detector``.

>>> from heads.estimators import NeuralHead, KNNHead, LDAHead, ZeroShotHead
"""

from heads.estimators._encoders import ENCODERS, MetadataEncoder
from heads.estimators._knn import CentroidHead, KNNHead
from heads.estimators._lda import LDAHead
from heads.estimators._neural import DEFAULT_LR, NeuralHead
from heads.estimators._unknown import (
    DEFAULT_DETECTOR,
    DETECTORS,
    UnknownDetector,
    create_detector,
    detector_from_state,
    list_detectors,
    register_detector,
)
from heads.estimators._unknown_embedding import (  # registers the embedding detectors
    EnergyKNNDetector,
    KNNDetector,
    MahalanobisDetector,
    RelativeMahalanobisDetector,
)
from heads.estimators._zeroshot import BLEND_GRID, ZeroShotHead

__all__ = [
    "BLEND_GRID",
    "DEFAULT_DETECTOR",
    "DEFAULT_LR",
    "DETECTORS",
    "EnergyKNNDetector",
    "KNNDetector",
    "MahalanobisDetector",
    "RelativeMahalanobisDetector",
    "ENCODERS",
    "CentroidHead",
    "KNNHead",
    "LDAHead",
    "MetadataEncoder",
    "NeuralHead",
    "UnknownDetector",
    "ZeroShotHead",
    "create_detector",
    "detector_from_state",
    "list_detectors",
    "register_detector",
]
