"""Labels for images: a few files or ids (``predict``, ``predict_embeddings``) or a whole store
or folder into a Lance table (``predict_batch``); conformal prediction sets (``calibrate_sets``)
and local priors (species lists, a prior by a metadata column: ``local_priors``).

>>> from heads.prediction import predict, write_predictions_csv
"""

from heads.prediction._batch import PREDICTION_SCHEMA, BatchPrediction, predict_batch
from heads.prediction._predict import (
    Prediction,
    predict,
    predict_embeddings,
    write_predictions_csv,
)
from heads.prediction._priors import (
    LocalPriors,
    PlacePrior,
    local_priors,
    place_prior,
    read_species_list,
)
from heads.prediction._sets import (
    SetCalibration,
    calibrate_probs,
    calibrate_sets,
    label_scores,
    set_scores,
)

__all__ = [
    "PREDICTION_SCHEMA",
    "BatchPrediction",
    "LocalPriors",
    "PlacePrior",
    "Prediction",
    "SetCalibration",
    "calibrate_probs",
    "calibrate_sets",
    "label_scores",
    "local_priors",
    "place_prior",
    "predict",
    "predict_batch",
    "predict_embeddings",
    "read_species_list",
    "set_scores",
    "write_predictions_csv",
]
