"""Linear discriminant analysis: one Gaussian per class, one shared covariance shrunk by
Ledoit-Wolf, in closed form (seconds, no epochs, nothing to tune).

The embeddings are first centred on the training mean and L2-normalised (``centring="mean"``,
SimpleShot's CL2N: ``heads.estimators._centring``). Then, as scikit-learn's
``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``:

- each class ``c`` has its mean ``mu_c``, its covariance ``S_c`` (divided by ``n_c``) and its
  prior ``p_c = n_c / N``;
- each ``S_c`` is shrunk toward its own diagonal by Ledoit-Wolf's intensity ``a_c``, estimated
  in closed form on the class's standardised features (``StandardScaler`` then ``ledoit_wolf``);
- the shared covariance is ``Sigma = sum_c p_c ((1 - a_c) S_c + a_c mu_c' diag(S_c))``, with
  ``mu_c'`` the mean standardised variance (1 unless a feature is constant in the class);
- the discriminant scores are ``x' Sigma^-1 mu_c - mu_c' Sigma^-1 mu_c / 2 + log p_c``: the
  Gaussian log-posteriors up to a constant of each row, so ``softmax`` gives the posteriors.

``logits`` are those scores (runs and ensembles calibrate them with a temperature fitted on the
validation fold, like every head's); :meth:`LDAHead.mahalanobis` and
:meth:`LDAHead.log_likelihood` give per-class distances and Gaussian log-densities that an
unknown-class detector can read. The fit runs in torch (float64, on ``device``; a few large
products, not one per class), seconds on two cores for 20,000 rows of 1,280 features. What it
keeps (class means and counts, the shrunk covariance, the coefficients) is a JSON config and
tensors, never a pickle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.linalg.blas import dsyrk
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from embedstore import resolve_device
from heads._base import HeadMixin, HeadTags
from heads._registry import register_head
from heads.estimators._centring import centre_l2, fit_centre
from heads.estimators._knn import _jsonable, classes_to_json
from heads.estimators._validation import fit_inputs, predict_input, sklearn_head_tags
from heads.settings import DEFAULTS
from heads.types import Centring

_EPS = float(np.finfo(np.float64).eps)


def _check_shrinkage(shrinkage: Any) -> str | float:
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1]; got {shrinkage!r}")
        return shrinkage
    a = float(shrinkage)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1]; got {shrinkage!r}")
    return a


_CHUNK = 1 << 24  # elements of one padded batch of classes (128 MiB of float64)


def _ledoit_wolf(
    R: torch.Tensor, var: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's Ledoit-Wolf intensity ``a_c`` ``(C,)`` and shrinkage target ``(C, d)``, on
    its standardised features, as scikit-learn's ``_cov(X, "auto")``.

    ``R`` ``(N, d)``: the within-class residuals, rows grouped by class in ``counts`` order;
    ``var`` ``(C, d)``: each class's variances. With ``Y`` the class's standardised residuals
    ``(n, d)``: ``t = ||Y||^2 / n`` (the trace of its correlation matrix), ``delta_ =
    ||Y'Y||_F^2 / n^2`` (through the ``(n, n)`` Gram matrix when ``n <= d``), ``beta_ = sum_i
    ||y_i||^4``; ``beta = (beta_ / n - delta_) / (d n)``, ``delta = (delta_ - t^2 / d) / d``,
    ``a = min(beta, delta) / delta``. The target ``t / d * var`` is scikit-learn's ``mu I``
    rescaled to the class's units.
    """
    C, d = var.shape
    scale = var.sqrt()
    scale = torch.where(scale < 10 * _EPS, torch.ones_like(scale), scale)  # as StandardScaler
    sums = torch.zeros(3, C, dtype=R.dtype, device=R.device)  # delta_, beta_, t of each class
    for classes in _class_batches(counts.tolist(), d):
        idx = torch.as_tensor(classes, device=R.device)
        Y = _padded(R, counts, idx, scale)  # (k, m, d) standardised, zero-padded
        G = Y @ Y.transpose(1, 2) if Y.shape[1] <= d else Y.transpose(1, 2) @ Y
        sq = torch.linalg.vector_norm(Y, dim=2) ** 2  # (k, m) ||y_i||^2
        frob = torch.linalg.matrix_norm(G) ** 2  # (k,) ||Y'Y||_F^2
        sums[:, idx] = torch.stack([frob, (sq * sq).sum(1), sq.sum(1)])
    delta_, beta_, t = sums
    n = counts.to(R.dtype)
    t, delta_ = t / n, delta_ / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - t * t / d) / d
    ok = (delta > 0) & (d > 1)  # one feature, or one image: no shrinkage (scikit-learn's 0)
    a = torch.where(ok, torch.minimum(beta, delta) / torch.where(ok, delta, 1.0), 0.0)
    return a.clamp(0.0, 1.0), (t / d)[:, None] * scale**2  # (C,), (C, d)


def _class_batches(counts: list[int], d: int) -> list[list[int]]:
    """Classes in batches of similar size whose padded ``(k, m, d)`` and ``(k, m, m)`` stay under
    :data:`_CHUNK` elements (one class alone when larger): a few large operations rather than
    C small ones (small ones crawl when the cores are shared)."""
    out: list[list[int]] = []
    for c in sorted(range(len(counts)), key=counts.__getitem__):
        m = counts[c]  # the batch's largest class so far: sorted by size
        if out and (len(out[-1]) + 1) * m * max(d, m) <= _CHUNK:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _padded(
    R: torch.Tensor, counts: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """The rows of classes ``idx`` ``(k,)`` standardised by their class's ``scale``, as
    ``(k, m, d)`` with zero rows after each class's ``n_c`` (``m`` the largest)."""
    starts = torch.cumsum(counts, 0) - counts  # (C,) first row of each class
    n = counts[idx]  # (k,)
    pos = torch.arange(int(n.max()), device=R.device)  # (m,)
    valid = pos[None, :] < n[:, None]  # (k, m)
    rows = (starts[idx][:, None] + pos[None, :])[valid]  # the batch's rows
    Y = torch.zeros(len(idx), len(pos), R.shape[1], dtype=R.dtype, device=R.device)
    Y[valid] = R[rows]
    return Y.div_(scale[idx][:, None, :])  # padding rows stay zero


def _scatter(R: torch.Tensor) -> torch.Tensor:
    """``R' R`` ``(d, d)`` of rows ``R`` ``(N, d)``; on the CPU by BLAS ``syrk`` (one triangle:
    half the work of the matrix product, the largest step of the fit), mirrored."""
    if R.device.type != "cpu" or R.dtype != torch.float64:
        return R.T @ R
    upper = dsyrk(1.0, R.numpy().T, trans=0)  # R.T is Fortran-ordered: no copy
    return torch.from_numpy(np.triu(upper) + np.triu(upper, 1).T)


def shared_gaussians(
    Z: torch.Tensor, counts: torch.Tensor, shrinkage: str | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class means ``(C, d)``, the shrunk shared covariance ``(d, d)`` and each class's shrinkage
    ``(C,)`` of rows ``Z`` ``(N, d)`` grouped by class (``counts`` ``(C,)`` rows each, in
    order). ``Z`` is overwritten: it becomes the weighted residuals."""
    N, d = Z.shape
    n = counts.to(Z.dtype)  # (C,)
    y = torch.repeat_interleave(torch.arange(len(counts), device=Z.device), counts)  # (N,)
    means = torch.zeros(len(counts), d, dtype=Z.dtype, device=Z.device).index_add_(0, y, Z)
    means /= n[:, None]  # (C, d)
    R = Z.sub_(means[y])  # (N, d) within-class residuals, in place
    var = torch.zeros_like(means).index_add_(0, y, R * R) / n[:, None]  # (C, d)
    if shrinkage == "auto":
        a, target = _ledoit_wolf(R, var, counts)
    else:  # scikit-learn's float shrinkage: toward trace(S_c) / d times the identity
        a = torch.full_like(n, float(shrinkage))
        target = (var.sum(dim=1) / d)[:, None].expand(-1, d)
    R.mul_(((1 - a)[y] / N).sqrt()[:, None])  # sum_c p_c (1 - a_c) S_c = R'R
    cov = _scatter(R)  # (d, d)
    cov.diagonal().add_(((n / N * a)[:, None] * target).sum(dim=0))
    return means, cov, a


def discriminants(
    means: torch.Tensor, cov: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``coef`` ``(C, d)`` = ``means Sigma^-1`` and ``intercept`` ``(C,)`` = ``-mu' Sigma^-1 mu / 2
    + log prior``. Cholesky when ``Sigma`` is positive definite (shrinkage makes it so), else
    the minimum-norm least-squares answer, as scikit-learn's ``lstsq``."""
    L, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        coef = torch.cholesky_solve(means.T, L).T  # (C, d)
    else:  # singular: e.g. one image per class leaves no covariance to estimate
        coef = (torch.linalg.pinv(cov, hermitian=True) @ means.T).T
    prior = counts.to(means.dtype) / counts.sum()
    return coef, -0.5 * (means * coef).sum(dim=1) + prior.log()


@register_head("lda")
class LDAHead(HeadMixin, ClassifierMixin, BaseEstimator):
    """Shared-covariance Gaussian classes with Ledoit-Wolf shrinkage (see the module docstring).

    - ``shrinkage``: ``"auto"`` (Ledoit-Wolf per class, as scikit-learn's ``shrinkage="auto"``)
      or a fixed fraction in [0, 1] toward each class's ``trace / d`` times the identity.
    - ``centring``: ``"mean"`` (subtract the training mean, then L2-normalise) or ``"none"``
      (L2-normalise only); ``heads.settings``, chosen out-of-fold (``benchmarks/RESULTS.md``).
    - ``device``: where the fit runs (``auto``: a GPU when there is one); prediction is numpy.

    With stored views (``embedstore ingest --views``), ``heads train`` fits on every view as one
    more image and predicts with the views' mean logits (test-time augmentation).
    """

    HEAD_TAGS = HeadTags()

    def __init__(
        self,
        shrinkage: str | float = "auto",
        centring: Centring = DEFAULTS["centring"],
        device: str | torch.device = "auto",
    ) -> None:
        self.shrinkage = shrinkage
        self.centring = centring
        self.device = device

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
    ) -> LDAHead:
        """Class Gaussians of ``X`` ``(N, d)`` and ``y`` ``(N,)`` in closed form; metadata and
        validation rows are ignored; no ``sample_weight``."""
        shrinkage = _check_shrinkage(self.shrinkage)
        X, y = fit_inputs(self, X, y)
        centre = fit_centre(X, self.centring)
        classes, y_idx = np.unique(y, return_inverse=True)
        order = np.argsort(y_idx.ravel(), kind="stable")  # rows grouped by class
        dev = resolve_device(self.device)
        dtype = torch.float32 if dev.type == "mps" else torch.float64  # mps has no float64
        Z = torch.from_numpy(centre_l2(X[order], centre, np.float64)).to(dev, dtype)  # (N, d)
        counts = torch.from_numpy(np.bincount(y_idx.ravel(), minlength=len(classes))).to(dev)
        means, cov, a = shared_gaussians(Z, counts, shrinkage)
        del Z  # the residuals
        coef, intercept = discriminants(means, cov, counts)
        arrays = {"coef": coef, "intercept": intercept, "means": means, "shrinkage": a}
        host = {k: v.to("cpu", torch.float64).numpy() for k, v in arrays.items()}
        host["covariance"] = cov.to("cpu", torch.float32).numpy()
        host["class_counts"] = counts.cpu().numpy()
        self._set_fitted(classes, centre, host)
        return self

    def _set_fitted(
        self, classes: np.ndarray, centre: np.ndarray | None, arrays: dict[str, np.ndarray]
    ) -> None:
        self.classes_ = classes
        self.centre_ = centre  # (d,) float64, or None without centring
        self.coef_ = arrays["coef"]  # (C, d) float64: means Sigma^-1
        self.intercept_ = arrays["intercept"]  # (C,) float64
        self.means_ = arrays["means"]  # (C, d) class means of the centred, normalised rows
        self.covariance_ = arrays["covariance"]  # (d, d) float32: the shrunk shared covariance
        self.shrinkage_ = arrays["shrinkage"]  # (C,) each class's Ledoit-Wolf intensity
        self.class_counts_ = arrays["class_counts"].astype(np.int64)  # (C,) rows of each class
        self.n_features_in_ = self.coef_.shape[1]
        self._whitening: np.ndarray | None = None  # (d, d), on first use of mahalanobis
        self._logdet = 0.0

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coef_")

    def __sklearn_tags__(self) -> Tags:
        return sklearn_head_tags(super().__sklearn_tags__())

    def _prepare(self, X: Any) -> np.ndarray:
        return centre_l2(predict_input(self, X), self.centre_, np.float64)  # (N, d)

    def logits(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N, C)`` discriminant scores (log-posteriors up to a constant of each row; columns
        = ``classes_``, two for two classes); ``fields`` are ignored."""
        z = self._prepare(X) @ self.coef_.T + self.intercept_  # (N, C)
        return z.astype(np.float32)

    def predict(self, X: Any, fields: Any = None) -> np.ndarray:
        """``(N,)`` labels of the largest discriminant score; ``fields`` are ignored."""
        z = self.logits(X)  # checks that the head is fitted before classes_ is read
        return self.classes_[z.argmax(axis=1)]

    def mahalanobis(self, X: Any) -> np.ndarray:
        """``(N, C)`` squared Mahalanobis distances to each class mean under the shared
        covariance (``-0.5 *`` it ``+ log prior`` is :meth:`logits` less a constant per row)."""
        W, _ = self._gaussian()
        z = self._prepare(X) @ W  # (N, d) whitened
        m = self.means_ @ W  # (C, d)
        d2 = (z * z).sum(axis=1, keepdims=True) - 2 * z @ m.T + (m * m).sum(axis=1)  # (N, C)
        return np.maximum(d2, 0.0)

    def log_likelihood(self, X: Any) -> np.ndarray:
        """``(N, C)`` Gaussian log-densities ``log p(x | c)`` of the centred, normalised rows:
        what an unknown-class detector can threshold (``max_c``: how typical of any class)."""
        _, logdet = self._gaussian()
        d = self.n_features_in_
        return -0.5 * (self.mahalanobis(X) + logdet + d * math.log(2 * math.pi))

    def _gaussian(self) -> tuple[np.ndarray, float]:
        """``W`` ``(d, d)`` with ``W W' = Sigma^-1`` and ``log det Sigma``, from the stored float32
        covariance (the same in a fitted and a reloaded head); computed on first use."""
        check_is_fitted(self)
        if self._whitening is None:
            cov = self.covariance_.astype(np.float64)  # (d, d)
            try:  # Sigma = L L': W = L'^-1
                L = np.linalg.cholesky(cov)
                self._whitening = np.linalg.inv(L).T
                self._logdet = 2.0 * float(np.log(np.diag(L)).sum())
            except np.linalg.LinAlgError:  # singular: the pseudo-inverse, the pseudo-determinant
                lam, V = np.linalg.eigh(cov)
                keep = lam > max(lam.max(), 0.0) * 1e-10
                self._whitening = V[:, keep] / np.sqrt(lam[keep])
                self._logdet = float(np.log(lam[keep]).sum())
        return self._whitening, self._logdet

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON config (settings, classes, class counts) and tensors: ``coef`` ``(C, d)``,
        ``intercept`` ``(C,)``, ``means`` ``(C, d)``, ``covariance`` ``(d, d)`` float32,
        ``shrinkage`` ``(C,)`` and ``centre`` ``(d,)`` when centred (the class sums are
        ``means * class_counts``: the sufficient statistics beside the shrunk covariance)."""
        check_is_fitted(self)
        config = {
            "head": "lda",
            "params": {k: _jsonable(v) for k, v in self.get_params().items()},
            "classes": classes_to_json(self.classes_),
            "class_counts": self.class_counts_.tolist(),
        }
        arrays = {
            "coef": self.coef_,
            "intercept": self.intercept_,
            "means": self.means_,
            "covariance": self.covariance_,
            "shrinkage": self.shrinkage_,
        }
        if self.centre_ is not None:
            arrays["centre"] = self.centre_
        return config, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LDAHead:
        """Rebuild a fitted head from :meth:`get_state` output."""
        head = cls(**config["params"])
        arrays = {k: t.cpu().numpy() for k, t in tensors.items()}
        arrays["class_counts"] = np.asarray(config["class_counts"], dtype=np.int64)
        head._set_fitted(np.asarray(config["classes"]), arrays.pop("centre", None), arrays)
        return head
