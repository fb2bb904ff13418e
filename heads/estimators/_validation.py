"""Input validation shared by the heads, the scikit-learn way (``validate_data``,
``check_is_fitted``, ``check_classification_targets``), and the tags that declare what a head
does not take."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def host_array(a: Any) -> Any:
    """A torch tensor as a numpy array on the host (what scikit-learn's checks read); else ``a``."""
    if not isinstance(a, torch.Tensor):
        return a
    t = a.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16


def fit_inputs(head: BaseEstimator, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as dense, finite float32 ``(N, d)`` and ``y`` as class labels ``(N,)``, checked the
    scikit-learn way; records ``n_features_in_``."""
    X, y = validate_data(head, host_array(X), host_array(y), dtype=np.float32)
    check_classification_targets(y)
    return X, y


def predict_input(head: BaseEstimator, X: Any) -> np.ndarray:
    """``X`` checked as at fit, for a fitted ``head``, with ``n_features_in_`` columns."""
    check_is_fitted(head)
    return validate_data(head, host_array(X), reset=False, dtype=np.float32)


def sklearn_head_tags(tags: Tags) -> Tags:
    """What a head takes: one dense, finite float matrix of embeddings and one label per row."""
    tags.input_tags.sparse = False  # scipy.sparse input: TypeError from check_array
    tags.input_tags.allow_nan = False  # NaN / Inf rows: ValueError
    tags.input_tags.string = False
    tags.input_tags.categorical = False
    tags.target_tags.multi_output = False  # a column-vector y is raveled with a warning
    tags.classifier_tags.multi_label = False
    return tags
