"""heads: classifiers, losses, kNN and unknown detectors trained on stored embeddings.

Built on ``embedstore`` (imports run one way: ``heads`` uses ``embedstore``, never the reverse).

>>> import heads
>>> res = heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30)
>>> heads.evaluate("runs/mlp").metrics["macro_f1"]
>>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)[0].label
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# What `heads.X` is, loaded on first use (PEP 562): `import heads.types` (the option vocabulary
# the command line reads) costs nothing, and torch loads only with the first head or run.
_EXPORTS: dict[str, tuple[str, str]] = {
    "Head": ("heads._base", "Head"),
    "HeadMixin": ("heads._base", "HeadMixin"),
    "HeadTags": ("heads._base", "HeadTags"),
    "list_runs": ("heads._runs", "list_runs"),
    "read_eval": ("heads._runs", "read_eval"),
    "replace_run": ("heads._runs", "replace_run"),
    "run_checksum": ("heads._runs", "run_checksum"),
    "PREDICTION_SCHEMA": ("heads._batch_predict", "PREDICTION_SCHEMA"),
    "BatchPrediction": ("heads._batch_predict", "BatchPrediction"),
    "predict_batch": ("heads._batch_predict", "predict_batch"),
    "ENCODERS": ("heads._encoders", "ENCODERS"),
    "MetadataEncoder": ("heads._encoders", "MetadataEncoder"),
    "ensemble": ("heads._ensemble", "ensemble"),
    "HeadsError": ("heads._errors", "HeadsError"),
    "MEASURES": ("heads._evaluate", "MEASURES"),
    "EvalResult": ("heads._evaluate", "EvalResult"),
    "evaluate": ("heads._evaluate", "evaluate"),
    "IssuesResult": ("heads._issues", "IssuesResult"),
    "Outlier": ("heads._issues", "Outlier"),
    "Suspect": ("heads._issues", "Suspect"),
    "find_issues": ("heads._issues", "find_issues"),
    "CentroidHead": ("heads._knn", "CentroidHead"),
    "KNNHead": ("heads._knn", "KNNHead"),
    "Ensemble": ("heads._loaded", "Ensemble"),
    "Predictor": ("heads._loaded", "Predictor"),
    "Run": ("heads._loaded", "Run"),
    "load": ("heads._loaded", "load"),
    "NeuralHead": ("heads._neural", "NeuralHead"),
    "format_openset_table": ("heads._openset", "format_table"),
    "openset": ("heads._openset", "openset"),
    "openset_arrays": ("heads._openset", "openset_arrays"),
    "Prediction": ("heads._predict", "Prediction"),
    "predict": ("heads._predict", "predict"),
    "predict_embeddings": ("heads._predict", "predict_embeddings"),
    "write_predictions_csv": ("heads._predict", "write_predictions_csv"),
    "HEADS": ("heads._registry", "HEADS"),
    "create_head": ("heads._registry", "create_head"),
    "list_heads": ("heads._registry", "list_heads"),
    "register_head": ("heads._registry", "register_head"),
    "ReportResult": ("heads._report", "ReportResult"),
    "report": ("heads._report", "report"),
    "FoldResult": ("heads._train", "FoldResult"),
    "TrainResult": ("heads._train", "TrainResult"),
    "train": ("heads._train", "train"),
    "TuneResult": ("heads._tune", "TuneResult"),
    "search_space": ("heads._tune", "search_space"),
    "tune": ("heads._tune", "tune"),
    "DEFAULT_DETECTOR": ("heads._unknown", "DEFAULT_DETECTOR"),
    "DETECTORS": ("heads._unknown", "DETECTORS"),
    "create_detector": ("heads._unknown", "create_detector"),
    "list_detectors": ("heads._unknown", "list_detectors"),
    "register_detector": ("heads._unknown", "register_detector"),
    "LOSSES": ("heads.losses", "LOSSES"),
    "create_loss": ("heads.losses", "create_loss"),
    "list_losses": ("heads.losses", "list_losses"),
    "register_loss": ("heads.losses", "register_loss"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'heads' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs read
    from heads._base import Head, HeadMixin, HeadTags
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
    from heads._runs import list_runs, read_eval, replace_run, run_checksum
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
    "Head",
    "HeadMixin",
    "HeadTags",
    "list_runs",
    "read_eval",
    "replace_run",
    "run_checksum",
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
