"""The zero-shot head: class weights made of words, moved by whatever labelled images there are.

An image-text model (CLIP, SigLIP, BioCLIP 2) classifies without a labelled image: each class's
weight is the normalised mean of its prompts' text embeddings (``heads.text.class_texts``), and
an image's logits are the model's own, ``logit_scale * cos(project(x), t_c) (+ logit_bias)``,
where ``project`` maps the stored column into the text space (CLIP's visual projection; the
identity for SigLIP). With labelled images, the text weights are the prior that they move
(the Tip-Adapter / text-prior family, in its simplest form)::

    w_c = (1 - a) * t_c + a * m_c        logits = logit_scale * project(x) @ w_c (+ logit_bias)

``m_c`` is the normalised mean of the class's projected images (``t_c`` itself for a class
without one, so such a class keeps its text weight whatever ``a``). ``a = 0`` is pure
zero-shot, ``a = 1`` nearest-prototype on the labelled images. ``blend=None`` chooses ``a``
from :data:`BLEND_GRID` out-of-fold on the training rows (``blend_folds`` folds, stratified;
the best top-1, the smaller ``a`` on a tie: the prior unless images prove better); the choice
and each value's score are kept (``blend_``, ``blend_scores_``, ``training_record().chosen``).

The weights arrive as ``fit(X, y, text=ClassTexts)``, built by ``heads.train`` with the column's
text tower; the head keeps the text weights, the prototypes and the projection as tensors, so a
loaded run predicts from the stored column with no tower. ``fit`` without ``text`` (plain
scikit-learn use) has no prior: it is the nearest-prototype classifier (``a = 1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from embedstore.search import as_float32, l2_normalize
from heads._base import HeadMixin, HeadTags, TrainingRecord
from heads._registry import register_head
from heads.estimators._knn import _class_sums, _jsonable, classes_to_json
from heads.estimators._validation import fit_inputs, host_array, predict_input, sklearn_head_tags
from heads.settings import DEFAULTS
from heads.text._class_texts import ClassTexts

BLEND_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # a, tried out-of-fold
NO_TEXT_SCALE = 1 / 0.07  # logit scale without a text prior (CLIP's initial temperature)


@register_head("zeroshot")
class ZeroShotHead(HeadMixin, ClassifierMixin, BaseEstimator):
    """Zero-shot class weights from prompts, blended with class prototypes (module docstring).

    - ``templates``, ``classes``, ``names``, ``name_columns``, ``coarse_column``: what
      ``heads.train`` builds the class weights from (the prompts' templates, the class list,
      each class's names, store columns holding names and coarse groups); recorded with the
      run, unused by ``fit`` itself.
    - ``blend``: ``a`` in ``[0, 1]``, or None: chosen out-of-fold from :data:`BLEND_GRID`.
    - ``blend_folds``: the folds of that choice; ``seed``: their shuffle.
    """

    HEAD_TAGS = HeadTags(text_prior=True)

    def __init__(
        self,
        templates: Sequence[str] | None = DEFAULTS["templates"],
        classes: Sequence[str] | None = DEFAULTS["classes"],
        names: Mapping[str, Sequence[str]] | None = DEFAULTS["names"],
        name_columns: Sequence[str] | None = DEFAULTS["name_columns"],
        coarse_column: str | None = DEFAULTS["coarse_column"],
        blend: float | None = DEFAULTS["blend"],
        blend_folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.templates = templates
        self.classes = classes
        self.names = names
        self.name_columns = name_columns
        self.coarse_column = coarse_column
        self.blend = blend
        self.blend_folds = blend_folds
        self.seed = seed

    def _check_settings(self) -> None:
        if self.blend is not None and not 0.0 <= float(self.blend) <= 1.0:
            raise ValueError(
                f"blend must be in [0, 1] (or None: chosen out-of-fold); got {self.blend}"
            )
        if int(self.blend_folds) < 2:
            raise ValueError(f"blend_folds must be >= 2; got {self.blend_folds}")

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        text: ClassTexts | None = None,
        fields: Any = None,
        aux: Any = None,
        X_val: Any = None,
        y_val: Any = None,
        fields_val: Any = None,
        aux_val: Any = None,
        progress: Any = None,
    ) -> ZeroShotHead:
        """Class prototypes of ``X`` ``(N, D_image)`` by ``y`` ``(N,)`` and, with ``text``, the
        class text weights they blend with (``N`` may be 0 then: pure zero-shot; the classes are
        ``text.classes``, and every label must be one). No ``sample_weight``."""
        self._check_settings()
        if text is None:
            X, y = fit_inputs(self, X, y)
            self.classes_, y_idx = np.unique(y, return_inverse=True)
            self._set_text(None, X.shape[1])
        else:
            X, y = self._text_inputs(X, y, text)
            self.classes_ = np.unique(np.asarray(text.classes, dtype=str))
            missing = sorted(set(y.tolist()) - set(self.classes_.tolist()))
            if missing:
                raise ValueError(f"labels without class text: {', '.join(missing[:5])}")
            y_idx = np.searchsorted(self.classes_, y)
            order = {c: i for i, c in enumerate(text.classes)}
            self._set_text(text, X.shape[1], [order[c] for c in self.classes_])
        Z = self._project(X)  # (N, D)
        C = len(self.classes_)
        self.class_counts_ = np.bincount(y_idx.ravel(), minlength=C).astype(np.int64)  # (C,)
        self.prototypes_ = self._prototypes(Z, y_idx.ravel(), C)  # (C, D)
        self.blend_, self.blend_scores_ = self._choose_blend(Z, y_idx.ravel())
        self._set_weights()
        return self

    def _text_inputs(self, X: Any, y: Any, text: ClassTexts) -> tuple[np.ndarray, np.ndarray]:
        """``X`` and ``y`` checked as at any fit; no rows at all is allowed with a text prior."""
        y = np.asarray(host_array(y)).reshape(-1)
        if len(y) == 0:
            X = as_float32(host_array(X), "X")  # (0, D_image)
            if len(X):
                raise ValueError(f"X has {len(X)} rows and y none")
            self.n_features_in_ = X.shape[1]
        else:
            X, y = fit_inputs(self, X, y)
        if X.shape[1] != text.image_dim:
            raise ValueError(
                f"X has {X.shape[1]} features; the class texts compare with {text.image_dim}"
            )
        return X, y.astype(str)

    def _set_text(self, text: ClassTexts | None, n_features: int, order: Any = None) -> None:
        if text is None:
            self.text_weights_, self.projection_ = None, None
            self.logit_scale_, self.logit_bias_, self.text_model_ = NO_TEXT_SCALE, None, ""
            return
        self.text_weights_ = np.asarray(text.weights, np.float32)[order]  # (C, D), classes_
        self.projection_ = None if text.projection is None else as_float32(text.projection)
        self.logit_scale_, self.logit_bias_ = float(text.logit_scale), text.logit_bias
        self.text_model_ = text.model
        self.n_features_in_ = n_features

    def _project(self, X: np.ndarray) -> np.ndarray:
        """Stored embeddings ``(N, D_image)`` -> unit rows ``(N, D)`` in the text space."""
        P = self.projection_
        return l2_normalize(X if P is None else np.asarray(X, np.float32) @ P.T)

    def _prototypes(self, Z: np.ndarray, y_idx: np.ndarray, C: int) -> np.ndarray:
        """``(C, D)`` normalised class means of ``Z``; a class without rows: its text weight
        (zeros without text)."""
        out = np.zeros((C, Z.shape[1]), np.float32) if self.text_weights_ is None else (
            self.text_weights_.copy()
        )  # fmt: skip
        have = np.unique(y_idx)
        if len(have):
            sums = _class_sums(Z, np.searchsorted(have, y_idx), len(have))  # (H, D)
            out[have] = l2_normalize(sums)
        return out

    def _choose_blend(self, Z: np.ndarray, y_idx: np.ndarray) -> tuple[float, dict[str, float]]:
        """``a`` and each grid value's out-of-fold top-1 on the labelled rows (empty when given
        or without a choice to make)."""
        if self.text_weights_ is None:
            return 1.0, {}  # no prior: the prototypes alone
        if self.blend is not None:
            return float(self.blend), {}
        if not len(y_idx):
            return 0.0, {}  # nothing labelled: the text weights alone
        folds = _stratified_folds(y_idx, int(self.blend_folds), int(self.seed))
        T = self.text_weights_  # (C, D)
        correct = np.zeros(len(BLEND_GRID))
        for k in np.unique(folds):
            tr, va = folds != k, folds == k
            M = self._prototypes(Z[tr], y_idx[tr], len(T))  # (C, D)
            for i, a in enumerate(BLEND_GRID):
                pred = (Z[va] @ ((1 - a) * T + a * M).T).argmax(axis=1)  # (n_va,)
                correct[i] += float((pred == y_idx[va]).sum())
        acc = correct / len(y_idx)
        best = int(np.flatnonzero(acc == acc.max())[0])  # the smallest a among the best
        scores = {f"{a:g}": round(float(s), 6) for a, s in zip(BLEND_GRID, acc, strict=True)}
        return BLEND_GRID[best], scores

    def _set_weights(self) -> None:
        a, M = np.float32(self.blend_), self.prototypes_
        T = M if self.text_weights_ is None else self.text_weights_
        self.weights_ = ((1 - a) * T + a * M).astype(np.float32)  # (C, D)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "weights_")

    def __sklearn_tags__(self) -> Tags:
        return sklearn_head_tags(super().__sklearn_tags__())

    def training_record(self) -> TrainingRecord:
        """No epochs; ``chosen`` holds the blend and, when chosen out-of-fold, its scores."""
        check_is_fitted(self)
        chosen: dict[str, Any] = {"blend": self.blend_}
        if self.blend_scores_:
            chosen["blend_top1"] = dict(self.blend_scores_)
        return TrainingRecord(chosen=chosen)

    def logits(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N, C)``: ``logit_scale * project(X) @ weights.T (+ logit_bias)``; columns =
        ``classes_``; ``fields`` are ignored."""
        Z = self._project(predict_input(self, X))  # (N, D)
        z = np.float32(self.logit_scale_) * (Z @ self.weights_.T)  # (N, C)
        return z if self.logit_bias_ is None else z + np.float32(self.logit_bias_)

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON config (settings, classes, blend and its scores, scale, bias, the text model)
        and tensors: ``prototypes`` ``(C, D)``, ``text`` ``(C, D)`` and ``projection``
        ``(D, D_image)`` where there are some."""
        check_is_fitted(self)
        config = {
            "head": "zeroshot",
            "params": {k: _jsonable(v) for k, v in self.get_params().items()},
            "classes": classes_to_json(self.classes_),
            "class_counts": self.class_counts_.tolist(),
            "blend_": self.blend_,
            "blend_scores_": self.blend_scores_,
            "logit_scale_": self.logit_scale_,
            "logit_bias_": self.logit_bias_,
            "text_model_": self.text_model_,
            "n_features_in_": int(self.n_features_in_),
        }
        tensors = {"prototypes": torch.from_numpy(np.ascontiguousarray(self.prototypes_))}
        if self.text_weights_ is not None:
            tensors["text"] = torch.from_numpy(np.ascontiguousarray(self.text_weights_))
        if self.projection_ is not None:
            tensors["projection"] = torch.from_numpy(np.ascontiguousarray(self.projection_))
        return config, tensors

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ZeroShotHead:
        """Rebuild a fitted head from :meth:`get_state` output."""
        params = dict(config["params"])
        if isinstance(params.get("names"), dict):  # JSON keeps the mapping; lists stay lists
            params["names"] = {k: list(v) for k, v in params["names"].items()}
        head = cls(**params)
        head.classes_ = np.asarray(config["classes"])
        head.class_counts_ = np.asarray(config["class_counts"], dtype=np.int64)
        head.prototypes_ = as_float32(tensors["prototypes"])
        head.text_weights_ = as_float32(tensors["text"]) if "text" in tensors else None
        head.projection_ = as_float32(tensors["projection"]) if "projection" in tensors else None
        head.blend_, head.blend_scores_ = float(config["blend_"]), dict(config["blend_scores_"])
        head.logit_scale_, head.logit_bias_ = float(config["logit_scale_"]), config["logit_bias_"]
        head.text_model_ = config.get("text_model_", "")
        head.n_features_in_ = int(config["n_features_in_"])
        head._set_weights()
        return head


def _stratified_folds(y_idx: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``(N,)`` fold of each row: each class's rows, shuffled, dealt round the ``min(k, N)``
    folds from a place that moves with the class (a class of one row is validated once, and
    then has no prototype: it is scored on its text weight, as an unlabelled class is)."""
    n = len(y_idx)
    k = max(1, min(k, n))
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(y_idx[order], kind="stable")]  # grouped by class, shuffled within
    y_sorted = y_idx[order]
    starts = np.searchsorted(y_sorted, y_sorted, side="left")  # each row's class's first place
    rank = np.arange(n) - starts  # (N,) rank within its class
    folds = np.empty(n, np.int64)
    folds[order] = (rank + y_sorted) % k
    return folds
