"""heads: classifiers, losses, kNN and unknown detectors trained on stored embeddings.

Built on ``embedstore`` (imports run one way: ``heads`` uses ``embedstore``, never the reverse).

>>> import heads
>>> res = heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30)
>>> heads.evaluate("runs/mlp").metrics["macro_f1"]
>>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)[0].label
"""

from heads._batch_predict import PREDICTION_SCHEMA, BatchPrediction, predict_batch
from heads._encoders import ENCODERS, MetadataEncoder
from heads._ensemble import ensemble
from heads._errors import HeadsError
from heads._evaluate import MEASURES, EvalResult, evaluate
from heads._issues import IssuesResult, Outlier, Suspect, find_issues
from heads._knn import CentroidHead, KNNHead
from heads._loaded import Ensemble, Predictor, Run, load
from heads._neural import NeuralHead
from heads._openset import format_table as format_openset_table
from heads._openset import openset, openset_arrays
from heads._predict import Prediction, predict, predict_embeddings, write_predictions_csv
from heads._registry import HEADS, create_head, list_heads, register_head
from heads._report import ReportResult, report
from heads._train import FoldResult, TrainResult, train
from heads._tune import TuneResult, search_space, tune
from heads._unknown import (
    DEFAULT_DETECTOR,
    DETECTORS,
    create_detector,
    list_detectors,
    register_detector,
)
from heads.losses import LOSSES, create_loss, list_losses, register_loss

__all__ = [
    "PREDICTION_SCHEMA",
    "BatchPrediction",
    "predict_batch",
    "MEASURES",
    "IssuesResult",
    "Outlier",
    "ReportResult",
    "Suspect",
    "find_issues",
    "report",
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "ENCODERS",
    "HEADS",
    "LOSSES",
    "CentroidHead",
    "Ensemble",
    "EvalResult",
    "FoldResult",
    "HeadsError",
    "KNNHead",
    "MetadataEncoder",
    "NeuralHead",
    "Prediction",
    "Predictor",
    "Run",
    "TrainResult",
    "TuneResult",
    "create_detector",
    "create_head",
    "create_loss",
    "ensemble",
    "format_openset_table",
    "evaluate",
    "list_detectors",
    "list_heads",
    "list_losses",
    "load",
    "openset",
    "openset_arrays",
    "predict",
    "predict_embeddings",
    "register_detector",
    "register_head",
    "register_loss",
    "search_space",
    "train",
    "tune",
    "write_predictions_csv",
]
