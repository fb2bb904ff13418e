"""Unknown-class detectors on embeddings: kNN distance, energy + kNN fused, (relative)
Mahalanobis (registered in ``heads.estimators.DETECTORS`` beside the logit detectors of
``heads.estimators._unknown``)."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.exceptions import NotFittedError

from embedstore.search import NeighborIndex, as_float32, l2_normalize
from embedstore.types import IndexKind, SearchBackend
from heads.estimators._unknown import (
    DetectorNeeds,
    UnknownDetector,
    _as_logits,
    _fit_sample,
    free_energy,
    register_detector,
)


# --------------------------------------------------------------------------- embedding detectors
@register_detector("knn")
class KNNDetector(UnknownDetector):
    """Deep kNN (Sun et al. 2022): cosine similarity to the k-th nearest training embedding.

    On unit vectors this ranks exactly like the paper's negative Euclidean k-th-NN distance
    (``||a - b||^2 = 2 - 2 cos``). Training embeddings are kept in float16 (as saved).
    """

    def __init__(
        self,
        k: int = 10,
        index: IndexKind = "auto",
        backend: str = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 4096,
    ) -> None:
        self.k = k
        self.index = index
        self.backend = backend
        self.device = device
        self.batch_size = batch_size

    def _fit(self, embeddings: Any, labels: Any, logits: Any) -> None:
        self._set_store(l2_normalize(embeddings, "embeddings").astype(np.float16))

    def _set_store(self, emb16: np.ndarray) -> None:
        if not 1 <= int(self.k) <= emb16.shape[0]:
            raise ValueError(
                f"k={self.k} must be between 1 and the training set size "
                f"({emb16.shape[0]} embeddings)"
            )
        self.embeddings_ = emb16  # (N, d) float16
        self.index_ = NeighborIndex(
            kind=self.index, backend=cast(SearchBackend, self.backend), device=self.device
        )
        self.index_.build(emb16.astype(np.float32))

    def _score(self, embeddings: Any, logits: Any) -> np.ndarray:
        if not hasattr(self, "index_"):
            raise NotFittedError("knn detector is not fitted: call fit(embeddings, labels) first")
        sims, _ = self.index_.search(embeddings, int(self.k), self.batch_size)  # (N, k)
        return sims[:, -1].astype(np.float64)

    def _fit_scores(self, embeddings: Any, logits: Any) -> np.ndarray:
        # Leave-one-out: each training row finds itself first, so take the (k+1)-th neighbour.
        X = self.embeddings_.astype(np.float32)
        rows = _fit_sample(X.shape[0])
        kk = min(int(self.k) + 1, X.shape[0])
        sims, _ = self.index_.search(X if rows is None else X[rows], kk, self.batch_size)
        return sims[:, -1].astype(np.float64)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {"embeddings": torch.from_numpy(np.ascontiguousarray(self.embeddings_))}

    def _load_tensors(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self._set_store(tensors["embeddings"].to(torch.float16).cpu().numpy())


@register_detector("energy-knn")
class EnergyKNNDetector(KNNDetector):
    """A logit score fused with a feature score (in the spirit of ViM, Wang et al. 2022).

    score = ``weight * (E - mean_E) / std_E + (1 - weight) * (S - mean_S) / std_S`` where
    ``E = T logsumexp(logits / T)`` is the energy and ``S`` the cosine similarity to the k-th
    nearest training embedding (deep kNN); means and stds are those of the training scores
    (``S`` leave-one-out), so both parts are in training standard deviations. On fine-grained
    data the head's logits miss unknowns that look like a known class, and kNN misses those far
    from every image but close to a class boundary; the sum catches more than either (grocery81,
    ``heads openset``: AUROC 0.88 against 0.83 for entropy and 0.64 for ``knn``; trained on the
    train split and scored on the test split, no photo session shared: 0.72 against 0.70 for
    energy). ``k=1`` and ``weight=0.5`` were chosen on grocery81's training part only. Needs
    ``logits=`` at fit and at scoring.
    """

    needs: ClassVar[DetectorNeeds] = "both"

    def __init__(
        self,
        k: int = 1,
        weight: float = 0.5,
        temperature: float = 1.0,
        index: IndexKind = "auto",
        backend: str = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 4096,
    ) -> None:
        super().__init__(k=k, index=index, backend=backend, device=device, batch_size=batch_size)
        self.weight = weight
        self.temperature = temperature

    def _energy(self, logits: Any) -> np.ndarray:
        return free_energy(_as_logits(logits, self.name), self.temperature)  # (N,)

    def _fit(self, embeddings: Any, labels: Any, logits: Any) -> None:
        if not 0.0 <= float(self.weight) <= 1.0:
            raise ValueError(f"weight must be in [0, 1]; got {self.weight!r}")
        energy = self._energy(logits)
        super()._fit(embeddings, labels, None)
        if energy.shape[0] != self.embeddings_.shape[0]:
            raise ValueError(
                f"logits have {energy.shape[0]} rows, the embeddings {self.embeddings_.shape[0]}"
            )
        sims = super()._fit_scores(embeddings, None)  # (n,) leave-one-out, on the fit sample
        rows = _fit_sample(energy.shape[0])
        energy = energy if rows is None else energy[rows]
        # (4,) mean and std of the training energy, then of the training kNN similarity
        self.standardize_ = np.array(
            [energy.mean(), max(energy.std(), 1e-12), sims.mean(), max(sims.std(), 1e-12)]
        )
        self._train_scores: np.ndarray | None = self._fuse(energy, sims)

    def _fuse(self, energy: np.ndarray, sims: np.ndarray) -> np.ndarray:
        me, se, ms, ss = self.standardize_
        w = float(self.weight)
        return w * (energy - me) / se + (1 - w) * (sims - ms) / ss

    def _fit_scores(self, embeddings: Any, logits: Any) -> np.ndarray:
        scores, self._train_scores = self._train_scores, None
        assert scores is not None  # set by _fit, which fit calls just before
        return scores

    def _score(self, embeddings: Any, logits: Any) -> np.ndarray:
        energy = self._energy(logits)
        sims = super()._score(embeddings, None)  # (N,)
        if energy.shape != sims.shape:
            raise ValueError(f"logits have {energy.shape[0]} rows, the embeddings {sims.shape[0]}")
        return self._fuse(energy, sims)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._state_tensors(), "standardize": torch.from_numpy(self.standardize_)}

    def _load_tensors(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super()._load_tensors(config, tensors)
        self.standardize_ = tensors["standardize"].double().numpy()


def _whitening(cov: np.ndarray) -> np.ndarray:
    """``W`` ``(d, d)`` with ``W W^T = cov^-1``, so that ``MD(x, mu) = ||(x - mu) W||^2``."""
    lam, V = np.linalg.eigh(cov)
    lam = np.maximum(lam, lam.max() * 1e-10)  # guard against round-off below zero
    return V / np.sqrt(lam)  # (d, d)


def _covariance(X: np.ndarray, shrinkage: str | float, centered: bool) -> np.ndarray:
    """Shrunk covariance of rows of ``X`` ``(N, d)``: Ledoit-Wolf, or a fixed ridge fraction."""
    if shrinkage == "ledoit-wolf":
        return LedoitWolf(assume_centered=centered, store_precision=False).fit(X).covariance_
    a = float(shrinkage)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shrinkage must be 'ledoit-wolf' or a float in [0, 1]; got {shrinkage!r}")
    Xc = X if centered else X - X.mean(axis=0)
    S = Xc.T @ Xc / X.shape[0]  # (d, d)
    return (1 - a) * S + a * (np.trace(S) / S.shape[0]) * np.eye(S.shape[0])


@register_detector("mahalanobis")
class MahalanobisDetector(UnknownDetector):
    """Class-conditional Gaussians with one shared covariance (Lee et al. 2018).

    score = ``-min_c (x - mu_c)^T Sigma^-1 (x - mu_c)``. ``Sigma`` is the within-class scatter
    shrunk towards a scaled identity, by Ledoit-Wolf (default) or a fixed fraction
    (``shrinkage=0.1``: ``0.9 S + 0.1 tr(S)/d I``), which keeps it invertible when
    d is close to N. ``normalize=True`` L2-normalises embeddings first, which helps on large
    pretrained backbones (Mueller & Hein 2025, "Mahalanobis++").
    """

    def __init__(
        self, normalize: bool = True, shrinkage: str | float = "ledoit-wolf", batch_size: int = 4096
    ) -> None:
        self.normalize = normalize
        self.shrinkage = shrinkage
        self.batch_size = batch_size

    def _prepare(self, embeddings: Any) -> np.ndarray:
        X = (
            l2_normalize(embeddings, "embeddings")
            if self.normalize
            else as_float32(embeddings, "embeddings")
        )
        return X.astype(np.float64)  # (N, d)

    def _fit(self, embeddings: Any, labels: Any, logits: Any) -> None:
        X = self._prepare(embeddings)
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.shape != (X.shape[0],):
            raise ValueError(f"labels must have shape ({X.shape[0]},); got {labels.shape}")
        _, y = np.unique(labels, return_inverse=True)
        y = y.ravel()
        counts = np.bincount(y)  # (C,), every class present
        order = np.argsort(y, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (C,) first row of each class
        means = np.add.reduceat(X[order], starts, axis=0) / counts[:, None]  # (C, d)
        resid = X - means[y]
        if self.shrinkage == "ledoit-wolf":
            lw = LedoitWolf(assume_centered=True, store_precision=False).fit(resid)
            self.shrinkage_ = float(lw.shrinkage_)
        else:
            self.shrinkage_ = float(self.shrinkage)
        cov = _covariance(resid, self.shrinkage_, centered=True)
        self._set_gaussians(means, _whitening(cov))
        self._fit_background(X)

    def _fit_background(self, X: np.ndarray) -> None:
        pass

    def _set_gaussians(self, means: np.ndarray, whitening: np.ndarray) -> None:
        self.means_ = means  # (C, d)
        self.whitening_ = whitening  # (d, d)
        wm = means @ whitening  # (C, d) whitened class means
        self._wmeans = wm
        self._wmeans_sq = (wm**2).sum(axis=1)  # (C,)

    def _min_class_distance(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` min_c squared Mahalanobis distance, in query batches."""
        out = np.empty(X.shape[0])
        for s in range(0, X.shape[0], self.batch_size):
            z = X[s : s + self.batch_size] @ self.whitening_  # (B, d)
            d2 = (
                (z**2).sum(axis=1, keepdims=True) - 2 * z @ self._wmeans.T + self._wmeans_sq
            )  # (B, C)
            out[s : s + self.batch_size] = np.maximum(d2.min(axis=1), 0.0)
        return out

    def _score(self, embeddings: Any, logits: Any) -> np.ndarray:
        if not hasattr(self, "means_"):
            raise NotFittedError(
                f"{self.name} detector is not fitted: call fit(embeddings, labels) first"
            )
        X = self._prepare(embeddings)
        if X.shape[1] != self.means_.shape[1]:
            raise ValueError(
                f"embeddings have {X.shape[1]} features, the detector was fit on "
                f"{self.means_.shape[1]}"
            )
        return self._score_prepared(X)

    def _score_prepared(self, X: np.ndarray) -> np.ndarray:
        return -self._min_class_distance(X)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "means": torch.from_numpy(self.means_),
            "whitening": torch.from_numpy(self.whitening_),
        }

    def _load_tensors(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self._set_gaussians(
            tensors["means"].double().numpy(), tensors["whitening"].double().numpy()
        )


@register_detector("relative-mahalanobis")
class RelativeMahalanobisDetector(MahalanobisDetector):
    """Relative Mahalanobis distance (Ren et al. 2021): ``-min_c (MD_c - MD_0)``.

    ``MD_0`` is the distance to one background Gaussian fit to all training embeddings, which
    cancels directions where every class looks alike. Both covariances use the same shrinkage
    intensity (Ledoit-Wolf's, estimated once on the within-class residuals): estimated
    separately when d is close to N, the two distances end up on different scales and the
    score inverts (flowers12, 1280-d, ~580 images: AUROC 0.25 before, see DEVELOPERS.md).
    """

    def _fit_background(self, X: np.ndarray) -> None:
        mean0 = X.mean(axis=0)  # (d,)
        self.background_mean_ = mean0
        self.background_whitening_ = _whitening(
            _covariance(X - mean0, self.shrinkage_, centered=True)
        )

    def _score_prepared(self, X: np.ndarray) -> np.ndarray:
        md_class = self._min_class_distance(X)  # (N,) min_c MD_c
        md0 = np.empty(X.shape[0])  # (N,) MD_0
        for s in range(0, X.shape[0], self.batch_size):
            z = (X[s : s + self.batch_size] - self.background_mean_) @ self.background_whitening_
            md0[s : s + self.batch_size] = (z**2).sum(axis=1)
        return md0 - md_class

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            **super()._state_tensors(),
            "background_mean": torch.from_numpy(self.background_mean_),
            "background_whitening": torch.from_numpy(self.background_whitening_),
        }

    def _load_tensors(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super()._load_tensors(config, tensors)
        self.background_mean_ = tensors["background_mean"].double().numpy()
        self.background_whitening_ = tensors["background_whitening"].double().numpy()
