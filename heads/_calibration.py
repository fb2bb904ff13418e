"""Temperature scaling: the one temperature that calibrates a head's out-of-fold logits, used
by ensembles (each member calibrated before averaging), refits and the taxonomy's fallback."""

from __future__ import annotations

from typing import Any

import numpy as np

from heads.runs._loaded import log_softmax


def fit_temperature(val: dict[str, Any], classes: list[str]) -> float:
    """The temperature T minimising the log-loss of ``softmax(logits / T)`` on the validation
    rows of known classes (1.0 when there are none): a golden-section search on log T."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(str(v), -1) if v is not None else -1 for v in val["label"]])
    known = y >= 0
    if not known.any():
        return 1.0
    z, y = val["logits"][known].astype(np.float64), y[known]

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t))[np.arange(len(y)), y].mean())

    lo, hi = np.log(1e-3), np.log(1e3)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))
