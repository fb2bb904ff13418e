"""heads: classifiers, losses, kNN and unknown detectors trained on stored embeddings.

>>> import heads
>>> res = heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30)
>>> heads.evaluate("runs/mlp")["macro_f1"]
>>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)
"""

from heads._encoders import MetadataEncoder
from heads._ensemble import Ensemble, ensemble
from heads._errors import HeadsError
from heads._evaluate import evaluate
from heads._knn import CentroidHead, KNNHead
from heads._neural import NeuralHead
from heads._openset import openset, openset_arrays
from heads._predict import predict
from heads._registry import create_head, list_heads, register_head
from heads._runs import Run, load, train
from heads._search import NeighborIndex
from heads._unknown import create_detector, list_detectors, register_detector
from heads.losses import create_loss, list_losses, register_loss

__all__ = [
    "CentroidHead",
    "Ensemble",
    "HeadsError",
    "KNNHead",
    "MetadataEncoder",
    "NeighborIndex",
    "NeuralHead",
    "Run",
    "create_detector",
    "create_head",
    "create_loss",
    "ensemble",
    "evaluate",
    "list_detectors",
    "list_heads",
    "list_losses",
    "load",
    "openset",
    "openset_arrays",
    "predict",
    "register_detector",
    "register_head",
    "register_loss",
    "train",
]
