"""Non-parametric heads on L2-normalised embeddings: kNN voting and class centroids.

``KNNHead`` follows the DINOv2 k-NN evaluation protocol: cosine similarity to the training
embeddings, each of the top-k neighbours votes for its class with weight ``exp(sim / T)``, and
the class scores are normalised to probabilities. Several k are scored from one search.
``CentroidHead`` is the nearest-class-mean classifier with cosine logits ``cos / T``.

Both store what they learned as tensors plus a JSON config (``get_state`` / ``from_state``),
never a pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_array, check_is_fitted

from embedstore.search import NeighborIndex, as_float32, l2_normalize
from embedstore.types import IndexKind, SearchBackend, check_choice
from heads._base import HeadMixin, HeadTags
from heads._registry import register_head
from heads.estimators._centring import centre_l2, fit_centre
from heads.estimators._validation import fit_inputs, host_array, predict_input, sklearn_head_tags
from heads.settings import DEFAULTS
from heads.types import REFERENCES, Centring, Reference

DEFAULT_K: int = DEFAULTS["k"]
DEFAULT_KS = (10, 20, 100, 200)
_LOG_EPS = 1e-12  # decision_function = log(max(p, eps)): classes without votes get log(1e-12)


# --------------------------------------------------------------------------- helpers
def classes_to_json(classes: np.ndarray) -> list:
    """Class labels as plain Python ``str``/``int``/``float`` values for a JSON config."""
    return [c.item() if isinstance(c, np.generic) else c for c in np.asarray(classes).tolist()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)
    return value


def _encode_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, y_idx = np.unique(y, return_inverse=True)
    return classes, y_idx.astype(np.int64).ravel()


def _class_sums(X: np.ndarray, y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class sums of rows of ``X`` ``(N, d)`` -> ``(C, d)`` float64 (every class present)."""
    order = np.argsort(y_idx, kind="stable")
    starts = np.searchsorted(y_idx[order], np.arange(n_classes))  # (C,)
    return np.add.reduceat(X[order].astype(np.float64), starts, axis=0)  # (C, d)


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in ``a``'s dtype (float64 kept)."""
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- kNN
@register_head("knn")
class KNNHead(HeadMixin, ClassifierMixin, BaseEstimator):
    """Temperature-weighted kNN voting on cosine similarity (DINOv2 k-NN protocol).

    - ``k``: neighbours used by ``predict``/``predict_proba``; ``ks``: the neighbour counts
      scored together by :meth:`predict_proba_multi_k`.
    - ``k`` or ``ks`` larger than the training set raise ``ValueError`` at ``fit``, except that
      the *defaults* (``k=20``, ``ks=(10, 20, 100, 200)``) are clamped silently to the training
      size, so the default head works on small data (e.g. ``ks_ == (10, 20, 50)`` for 50 rows).
    - ``index``/``backend``/``device``/``batch_size``: passed to :class:`NeighborIndex`.

    Training embeddings are normalised and rounded to float16 at ``fit`` (that is what
    ``get_state`` stores), so a head rebuilt with ``from_state`` predicts identically.
    ``logits`` gives ``log(max(p, 1e-12))`` (``decision_function`` their margin for two
    classes).
    """

    HEAD_TAGS = HeadTags(multi_k=True)

    def __init__(
        self,
        k: int = DEFAULT_K,
        ks: Sequence[int] = DEFAULT_KS,
        temperature: float = 0.07,
        index: IndexKind = "auto",
        backend: str = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 4096,
    ) -> None:
        self.k = k
        self.ks = ks
        self.temperature = temperature
        self.index = index
        self.backend = backend
        self.device = device
        self.batch_size = batch_size

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        fields: Any = None,
        aux: Any = None,
        X_val: Any = None,
        y_val: Any = None,
        fields_val: Any = None,
        aux_val: Any = None,
        progress: Any = None,
    ) -> KNNHead:
        """Store ``X`` ``(N, d)`` and labels ``y`` ``(N,)``; metadata and validation are ignored.

        ``sample_weight`` is not accepted (a TypeError rather than weights silently ignored).
        """
        X, y = fit_inputs(self, X, y)
        emb = l2_normalize(X).astype(np.float16)  # (N, d)
        classes, y_idx = _encode_labels(y)
        self._set_fitted(classes, emb, y_idx)
        return self

    def _set_fitted(self, classes: np.ndarray, emb16: np.ndarray, y_idx: np.ndarray) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        self.k_, self.ks_ = self._resolve_ks(emb16.shape[0])
        self.classes_ = classes
        self.embeddings_ = emb16  # (N, d) float16, unit norm up to rounding
        self.labels_ = y_idx  # (N,) int64 indices into classes_
        self.n_features_in_ = emb16.shape[1]
        self.index_ = NeighborIndex(
            kind=self.index, backend=cast(SearchBackend, self.backend), device=self.device
        )
        self.index_.build(emb16.astype(np.float32))

    def _resolve_ks(self, n: int) -> tuple[int, tuple[int, ...]]:
        k, ks = int(self.k), tuple(int(v) for v in self.ks)
        if k < 1 or not ks or min(ks) < 1:
            raise ValueError(f"k and ks must be >= 1 (ks non-empty); got k={k}, ks={ks}")
        if k > n:
            if k != DEFAULT_K:
                raise ValueError(
                    f"k={k} is larger than the training set ({n} stored embeddings); use k <= {n}"
                )
            k = n
        too_big = [v for v in ks if v > n]
        if too_big and ks != DEFAULT_KS:
            raise ValueError(
                f"ks={too_big} larger than the training set ({n} stored embeddings); use k <= {n}"
            )
        return k, tuple(sorted({min(v, n) for v in ks}))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "index_")

    def __sklearn_tags__(self) -> Tags:
        return sklearn_head_tags(super().__sklearn_tags__())

    def predict_proba_multi_k(
        self, X: Any, ks: Sequence[int] | None = None
    ) -> dict[int, np.ndarray]:
        """Class probabilities ``{k: (N, C)}`` for every k in ``ks`` (default ``ks_``), one search.

        The search fetches ``max(ks)`` neighbours; each k uses the first k of them.
        """
        X = predict_input(self, X)
        ks = self.ks_ if ks is None else tuple(sorted({int(v) for v in ks}))
        n = self.labels_.shape[0]
        if ks[-1] > n:
            raise ValueError(f"k={ks[-1]} is larger than the training set ({n} stored embeddings)")
        sims, idx = self.index_.search(X, ks[-1], batch_size=self.batch_size)  # (N, K), (N, K)
        out = {k: np.empty((sims.shape[0], len(self.classes_)), np.float32) for k in ks}
        for start in range(0, sims.shape[0], self.batch_size):  # bounds the (B, C) temporaries
            rows = slice(start, start + self.batch_size)
            for k, P in self._vote(sims[rows], idx[rows], ks).items():
                out[k][rows] = P
        return out

    def _vote(
        self, sims: np.ndarray, idx: np.ndarray, ks: tuple[int, ...]
    ) -> dict[int, np.ndarray]:
        N, C = sims.shape[0], len(self.classes_)
        valid = idx >= 0  # ANN indices may miss neighbours (-1)
        labels = self.labels_[np.where(valid, idx, 0)]  # (N, K)
        # exp(sim / T) relative to the best neighbour: same ratios, no overflow for small T.
        top = np.where(np.isfinite(sims[:, :1]), sims[:, :1], 0.0)  # (N, 1)
        w = np.where(valid, np.exp((sims - top) / self.temperature), 0.0)  # (N, K)
        flat = labels + np.arange(N)[:, None] * C  # (N, K) positions in a flattened (N, C)
        scores = np.zeros(N * C, dtype=np.float64)
        out, prev = {}, 0
        for k in ks:  # ascending: add only the votes of neighbours prev..k
            scores += np.bincount(flat[:, prev:k].ravel(), w[:, prev:k].ravel(), minlength=N * C)
            S = scores.reshape(N, C)
            total = S.sum(axis=1, keepdims=True)  # (N, 1)
            P = np.divide(S, total, out=np.full_like(S, 1.0 / C), where=total > 0)
            out[k], prev = P.astype(np.float32), k
        return out

    def predict_proba(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N, C)`` vote shares of the ``k_`` nearest training embeddings; columns =
        ``classes_``; ``fields`` are ignored."""
        check_is_fitted(self)
        return self.predict_proba_multi_k(X, (self.k_,))[self.k_]

    def logits(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N, C)`` log-probabilities, floored at ``log(1e-12)``; ``fields`` are ignored."""
        return np.log(np.maximum(self.predict_proba(X), _LOG_EPS))

    def predict(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N,)`` labels from ``classes_``; ``fields`` are ignored."""
        best = self.predict_proba(X).argmax(axis=1)  # (N,)
        return self.classes_[best]

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON config and tensors (``embeddings`` float16 ``(N, d)``, ``labels`` int64
        ``(N,)``)."""
        check_is_fitted(self)
        config = {
            "head": "knn",
            "params": {k: _jsonable(v) for k, v in self.get_params().items()},
            "classes": classes_to_json(self.classes_),
            "k_": self.k_,
            "ks_": list(self.ks_),
        }
        tensors = {
            "embeddings": torch.from_numpy(np.ascontiguousarray(self.embeddings_)),
            "labels": torch.from_numpy(np.ascontiguousarray(self.labels_)),
        }
        return config, tensors

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> KNNHead:
        """Rebuild a fitted head from :meth:`get_state` output (the index is rebuilt)."""
        params = dict(config["params"])
        params["ks"] = tuple(params["ks"])
        head = cls(**params)
        emb16 = tensors["embeddings"].to(torch.float16).cpu().numpy()
        labels = tensors["labels"].to(torch.int64).cpu().numpy()
        head._set_fitted(np.asarray(config["classes"]), emb16, labels)
        return head


# --------------------------------------------------------------------------- centroids
@register_head("centroid")
class CentroidHead(HeadMixin, ClassifierMixin, BaseEstimator):
    """Nearest class prototype: prototype = normalised mean of normalised embeddings.

    ``logits`` gives cosine logits ``cos(x, prototype_c) / temperature``;
    ``predict_proba`` is their softmax. ``centring="mean"`` (the default, SimpleShot's CL2N)
    first subtracts the mean of the training embeddings from every embedding, then
    L2-normalises; ``"none"`` L2-normalises only (chosen out-of-fold: ``benchmarks/RESULTS.md``).
    The options the FungiCLEF 2025 winners used on frozen embeddings:

    - ``reference="train+val"``: the prototypes are built from ``X`` and the validation rows
      ``X_val``/``y_val`` passed to ``fit`` (``heads train`` scores its folds on their training
      part and puts every fold in the refit's prototypes).
    - ``transductive=True``: every prediction first moves the prototypes toward the query set
      it is given (the rows of that ``predict`` call), ``transductive_rounds`` rounds of soft
      k-means started from the class prototypes: query j is assigned to class c with weight
      ``softmax_c(ccos(x_j, p_c) / transductive_temperature)``, and
      ``p_c = normalise(n_c * p0_c + transductive_weight * sum_j w_jc x_j)`` with ``n_c`` the
      class's labelled images and ``p0_c`` its labelled prototype (a query image counts
      ``transductive_weight`` labelled images; a few queries barely move a prototype). ``ccos``
      is the cosine after centring the queries on their mean and the prototypes on theirs,
      which also gives the logits ``ccos / temperature``; without centring, the common
      direction of the embeddings makes every soft assignment near-uniform and the update
      pulls all prototypes together. The stored prototypes never change; predictions depend
      on the batch they come in. The defaults (3 rounds, temperature 0.05, weight 0.5): a sweep
      out-of-fold on grocery81 and a shifted query set (``benchmarks/RESULTS.md``).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        reference: Reference = DEFAULTS["reference"],
        transductive: bool = DEFAULTS["transductive"],
        transductive_rounds: int = 3,
        transductive_temperature: float = 0.05,
        transductive_weight: float = 0.5,
        centring: Centring = DEFAULTS["centring"],
    ) -> None:
        self.temperature = temperature
        self.reference = reference
        self.transductive = transductive
        self.transductive_rounds = transductive_rounds
        self.transductive_temperature = transductive_temperature
        self.transductive_weight = transductive_weight
        self.centring = centring

    def _check_settings(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        check_choice(self.reference, REFERENCES, "reference")
        if self.transductive_temperature <= 0 or self.transductive_weight < 0:
            raise ValueError(
                "transductive_temperature must be > 0 and transductive_weight >= 0; got "
                f"{self.transductive_temperature} and {self.transductive_weight}"
            )
        if int(self.transductive_rounds) < 0:
            raise ValueError(f"transductive_rounds must be >= 0; got {self.transductive_rounds}")

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        fields: Any = None,
        aux: Any = None,
        X_val: Any = None,
        y_val: Any = None,
        fields_val: Any = None,
        aux_val: Any = None,
        progress: Any = None,
    ) -> CentroidHead:
        """Class prototypes from ``X`` ``(N, d)`` and ``y`` ``(N,)`` (and ``X_val``/``y_val`` with
        ``reference="train+val"``); no ``sample_weight``."""
        self._check_settings()
        X, y = fit_inputs(self, X, y)
        if self.reference == "train+val" and X_val is not None and y_val is not None:
            Xv = check_array(host_array(X_val), input_name="X_val", dtype=np.float32)  # (M, d)
            if Xv.shape[1] != X.shape[1]:
                raise ValueError(f"X_val has {Xv.shape[1]} features, X has {X.shape[1]}")
            X, y = np.concatenate([X, Xv]), np.concatenate([y, np.asarray(y_val).reshape(-1)])
        self.centre_ = fit_centre(X, self.centring)  # (d,), None without centring
        Xn = centre_l2(X, self.centre_)  # (N, d)
        classes, y_idx = _encode_labels(y)
        self.classes_ = classes
        self.prototypes_ = l2_normalize(_class_sums(Xn, y_idx, len(classes)))  # (C, d)
        self.class_counts_ = np.bincount(y_idx, minlength=len(classes)).astype(np.int64)  # (C,)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "prototypes_")

    def __head_tags__(self) -> HeadTags:
        if self.reference != "train+val":
            return HeadTags()
        # the folds are scored with prototypes of their training part; the refit's use every fold
        return HeadTags(needs_refit=True, fold_settings={"reference": "train"})

    def __sklearn_tags__(self) -> Tags:
        return sklearn_head_tags(super().__sklearn_tags__())

    def transductive_prototypes(self, X: Any) -> np.ndarray:
        """``(C, d)`` prototypes moved toward the queries ``X`` ``(N, d)`` by soft k-means."""
        return self._transduce(self._prepare(X).astype(np.float64))[0]

    def _transduce(self, Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Updated prototypes ``(C, d)`` and the queries' centred cosines to them ``(N, C)``."""
        p0 = self.prototypes_.astype(np.float64)  # (C, d)
        anchor = self.class_counts_[:, None] * p0  # (C, d): the labelled images' weight
        p = p0
        for _ in range(int(self.transductive_rounds)):
            w = _softmax(self._centred_cos(Xn, p) / self.transductive_temperature)  # (N, C)
            p = _unit(anchor + self.transductive_weight * (w.T @ Xn))  # (C, d)
        return p.astype(np.float32), self._centred_cos(Xn, p).astype(np.float32)

    def _centred_cos(self, Xn: np.ndarray, p: np.ndarray) -> np.ndarray:
        """``(N, C)`` cosines of the queries centred on their mean and the prototypes on theirs.

        Centring removes what the query set shares (a shift of camera or season) from the
        comparison; the query mean is shrunk toward the prototypes' mean by C pseudo-queries,
        so a batch of one or a few images is compared as without transduction.
        """
        n = self.class_counts_.astype(np.float64)
        mp = (n[:, None] * p).sum(axis=0) / n.sum()  # (d,) count-weighted prototype mean
        mq = (Xn.sum(axis=0) + len(p) * mp) / (len(Xn) + len(p))  # (d,)
        return _unit(Xn - mq) @ _unit(p - mp).T  # (N, C)

    def _prepare(self, X: Any) -> np.ndarray:
        return centre_l2(predict_input(self, X), self.centre_)  # (N, d) float32

    def _logits(self, X: Any) -> np.ndarray:
        Xn = self._prepare(X)  # (N, d)
        if self.transductive:  # float64: the same answer whatever the order of the queries
            return self._transduce(Xn.astype(np.float64))[1] / np.float32(self.temperature)
        return (Xn @ self.prototypes_.T) / np.float32(self.temperature)  # (N, C)

    def logits(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N, C)`` cosine logits ``cos / T``; columns = ``classes_`` (two for two classes);
        ``fields`` are ignored."""
        return self._logits(X)

    def predict_proba(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N, C)`` softmax of the cosine logits; ``fields`` are ignored."""
        return _softmax(self._logits(X))

    def predict(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N,)`` labels of the nearest prototypes; ``fields`` are ignored."""
        best = self._logits(X).argmax(axis=1)  # (N,)
        return self.classes_[best]

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON config (settings, classes, class counts) and tensors (``prototypes`` ``(C, d)``;
        ``centre`` ``(d,)`` with centring)."""
        check_is_fitted(self)
        config = {
            "head": "centroid",
            "params": {k: _jsonable(v) for k, v in self.get_params().items()},
            "classes": classes_to_json(self.classes_),
            "class_counts": self.class_counts_.tolist(),
        }
        tensors = {"prototypes": torch.from_numpy(np.ascontiguousarray(self.prototypes_))}
        if self.centre_ is not None:
            tensors["centre"] = torch.from_numpy(self.centre_)
        return config, tensors

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CentroidHead:
        """Rebuild a fitted head from :meth:`get_state` output."""
        # runs saved before the centring setting were not centred
        head = cls(**{"centring": "none", **config["params"]})
        head.classes_ = np.asarray(config["classes"])
        centre = tensors.get("centre")
        head.centre_ = None if centre is None else centre.to(torch.float64).cpu().numpy()
        head.prototypes_ = as_float32(tensors["prototypes"])
        head.n_features_in_ = head.prototypes_.shape[1]
        counts = config.get("class_counts") or [1] * len(head.classes_)  # runs before the option
        head.class_counts_ = np.asarray(counts, dtype=np.int64)
        return head
