"""heads: classifiers, losses, kNN and unknown detectors trained on stored embeddings.

Built on ``embedstore`` (imports run one way: ``heads`` uses ``embedstore``, never the reverse).

>>> import heads
>>> res = heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30)
>>> heads.evaluate("runs/mlp").metrics["macro_f1"]
>>> heads.predict("runs/mlp", ["photo.jpg"], top_k=3)[0].label

The rest lives in public subpackages, each with its ``__all__``: ``heads.estimators`` (the
heads, detectors and encoders), ``heads.runs`` (the run format, loading, a folder of runs),
``heads.training``, ``heads.evaluation``, ``heads.prediction``, ``heads.taxonomy`` (answers at
every rank of a taxonomy, the fallback); ``heads.losses``,
``heads.settings`` (the training settings, declared once), ``heads.text`` (prompts and class
text weights for the zero-shot head) and ``heads.types``.
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
    "HeadsError": ("heads._errors", "HeadsError"),
    "HEADS": ("heads._registry", "HEADS"),
    "create_head": ("heads._registry", "create_head"),
    "list_heads": ("heads._registry", "list_heads"),
    "register_head": ("heads._registry", "register_head"),
    "create_detector": ("heads.estimators._unknown", "create_detector"),
    "list_detectors": ("heads.estimators._unknown", "list_detectors"),
    "register_detector": ("heads.estimators._unknown", "register_detector"),
    "create_loss": ("heads.losses", "create_loss"),
    "list_losses": ("heads.losses", "list_losses"),
    "register_loss": ("heads.losses", "register_loss"),
    "Ensemble": ("heads.runs._loaded", "Ensemble"),
    "Predictor": ("heads.runs._loaded", "Predictor"),
    "Run": ("heads.runs._loaded", "Run"),
    "load": ("heads.runs._loaded", "load"),
    "TrainResult": ("heads.training._train", "TrainResult"),
    "train": ("heads.training._train", "train"),
    "TuneResult": ("heads.training._tune", "TuneResult"),
    "tune": ("heads.training._tune", "tune"),
    "ensemble": ("heads.training._ensemble", "ensemble"),
    "distill": ("heads.training._distill", "distill"),
    "EvalResult": ("heads.evaluation._evaluate", "EvalResult"),
    "evaluate": ("heads.evaluation._evaluate", "evaluate"),
    "IssuesResult": ("heads.evaluation._issues", "IssuesResult"),
    "find_issues": ("heads.evaluation._issues", "find_issues"),
    "openset": ("heads.evaluation._openset", "openset"),
    "ReportResult": ("heads.evaluation._report", "ReportResult"),
    "report": ("heads.evaluation._report", "report"),
    "BatchPrediction": ("heads.prediction._batch", "BatchPrediction"),
    "predict_batch": ("heads.prediction._batch", "predict_batch"),
    "Prediction": ("heads.prediction._predict", "Prediction"),
    "predict": ("heads.prediction._predict", "predict"),
    "predict_embeddings": ("heads.prediction._predict", "predict_embeddings"),
}
# Names `heads.X` still answers (scripts, the command line and the service use them) whose
# public home is a subpackage: `heads.X` is `heads.<subpackage>.X`.
_MOVED: dict[str, str] = {
    "CentroidHead": "heads.estimators",
    "KNNHead": "heads.estimators",
    "ZeroShotHead": "heads.estimators",
    "NeuralHead": "heads.estimators",
    "MetadataEncoder": "heads.estimators",
    "ENCODERS": "heads.estimators",
    "DETECTORS": "heads.estimators",
    "DEFAULT_DETECTOR": "heads.estimators",
    "LOSSES": "heads.losses",
    "list_runs": "heads.runs",
    "read_eval": "heads.runs",
    "replace_run": "heads.runs",
    "run_checksum": "heads.runs",
    "search_space": "heads.training",
    "FoldResult": "heads.training",
    "MEASURES": "heads.evaluation",
    "Outlier": "heads.evaluation",
    "Suspect": "heads.evaluation",
    "format_openset_table": "heads.evaluation",
    "openset_arrays": "heads.evaluation",
    "PREDICTION_SCHEMA": "heads.prediction",
    "write_predictions_csv": "heads.prediction",
}
_SUBPACKAGES = (
    "estimators",
    "runs",
    "training",
    "evaluation",
    "prediction",
    "losses",
    "taxonomy",
    "text",
)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _MOVED:
        value = getattr(importlib.import_module(_MOVED[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"heads.{name}")
    else:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MOVED))


if TYPE_CHECKING:  # what type checkers and IDEs read
    from heads._base import Head, HeadMixin, HeadTags
    from heads._errors import HeadsError
    from heads._registry import HEADS, create_head, list_heads, register_head
    from heads.estimators._unknown import create_detector, list_detectors, register_detector
    from heads.evaluation._evaluate import EvalResult, evaluate
    from heads.evaluation._issues import IssuesResult, find_issues
    from heads.evaluation._openset import openset
    from heads.evaluation._report import ReportResult, report
    from heads.losses import create_loss, list_losses, register_loss
    from heads.prediction._batch import BatchPrediction, predict_batch
    from heads.prediction._predict import Prediction, predict, predict_embeddings
    from heads.runs._loaded import Ensemble, Predictor, Run, load
    from heads.training._distill import distill
    from heads.training._ensemble import ensemble
    from heads.training._train import TrainResult, train
    from heads.training._tune import TuneResult, tune

__all__ = [
    "HEADS",
    "BatchPrediction",
    "Ensemble",
    "EvalResult",
    "Head",
    "HeadMixin",
    "HeadTags",
    "HeadsError",
    "IssuesResult",
    "Prediction",
    "Predictor",
    "ReportResult",
    "Run",
    "TrainResult",
    "TuneResult",
    "create_detector",
    "create_head",
    "create_loss",
    "distill",
    "ensemble",
    "evaluate",
    "find_issues",
    "list_detectors",
    "list_heads",
    "list_losses",
    "load",
    "openset",
    "predict",
    "predict_batch",
    "predict_embeddings",
    "register_detector",
    "register_head",
    "register_loss",
    "report",
    "train",
    "tune",
]
