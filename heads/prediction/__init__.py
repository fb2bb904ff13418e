"""Labels for images: a few files or ids (``predict``, ``predict_embeddings``) or a whole store
or folder into a Lance table (``predict_batch``).

>>> from heads.prediction import predict, write_predictions_csv
"""

from heads.prediction._batch import PREDICTION_SCHEMA, BatchPrediction, predict_batch
from heads.prediction._predict import (
    Prediction,
    predict,
    predict_embeddings,
    write_predictions_csv,
)

__all__ = [
    "PREDICTION_SCHEMA",
    "BatchPrediction",
    "Prediction",
    "predict",
    "predict_batch",
    "predict_embeddings",
    "write_predictions_csv",
]
