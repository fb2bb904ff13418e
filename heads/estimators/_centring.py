"""SimpleShot's centring (Wang et al. 2019, "CL2N"): subtract the training mean, then
L2-normalise, before anything else; what the centroid and LDA heads do to each embedding.

Frozen embeddings share a large common direction (the mean of everything the backbone has
seen); cosines between raw embeddings are dominated by it. Subtracting the mean of the training
embeddings leaves what tells the classes apart, and L2-normalising after it puts every image on
the sphere around that mean. ``centring="none"`` L2-normalises only (the heads' earlier form).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedstore.search import l2_normalize
from embedstore.types import check_choice
from heads.types import CENTRINGS, Centring


def fit_centre(X: np.ndarray, centring: Centring) -> np.ndarray | None:
    """The centre ``(d,)`` float64 of the training rows ``X`` ``(N, d)`` (None: no centring)."""
    check_choice(centring, CENTRINGS, "centring")
    return X.mean(axis=0, dtype=np.float64) if centring == "mean" else None


def centre_l2(X: Any, centre: np.ndarray | None, dtype: Any = np.float32) -> np.ndarray:
    """Rows of ``X`` ``(N, d)`` less ``centre``, scaled to unit L2 norm (all-zero rows stay zero),
    in ``dtype``. Without a centre in float32: exactly :func:`embedstore.search.l2_normalize`."""
    if centre is None and np.dtype(dtype) == np.float32:
        return l2_normalize(X)
    Z = np.array(X, dtype=np.float64)  # (N, d), a copy worked on in place
    if centre is not None:
        Z -= centre
    Z /= np.maximum(np.sqrt(np.einsum("nd,nd->n", Z, Z)), 1e-12)[:, None]
    return np.ascontiguousarray(Z.astype(dtype, copy=False))
