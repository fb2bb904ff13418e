"""Local priors at prediction time: a species list (allowed or weighted labels) and a prior by a
metadata column (country, region, habitat) learned from the run's training rows.

Both are weights ``w(c)`` on the classifier's probabilities, applied by Bayes' rule as the
test-time ``prior`` of :func:`heads.predict` is (``p(c | x, here) ∝ p(c | x) w(c)``: ``log w``
is added to the logits):

- a **species list**: ``w = 1`` for a listed label (or the weight given beside it), 0 for every
  other, so the answer is never an unlisted label. A list may name species the run does not
  know (a country's checklist is longer than a model's classes): those are skipped.
- a **prior by a column**: ``w(c) = p(c | column = v) / p(c)``, both counted on the run's
  training rows, ``p(c | v)`` smoothed toward ``p(c)`` by ``smoothing`` pseudo-images (a class
  never seen at ``v`` keeps some weight; a value never seen: ``w = 1``). It assumes the photo
  and its place are independent given the species.

The answer keeps the unconstrained top-1 (what the image alone says) beside the constrained
one, and ``unusual_here`` flags an image whose unconstrained top-1 is a species this place
makes unlikely: off the species list, or recorded at the place less than a tenth as often as
its overall share leads to expect (:data:`UNUSUAL_BELOW`; a species never recorded at a place
of 10 records or more): a misidentification, or a record worth a second look.

>>> w = read_species_list("denmark.txt", model.classes)   # (C,) weights
>>> pp = place_prior(model, "country")                      # learned from the training rows
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import embedstore
from embedstore.store import ALWAYS_TRAIN
from heads._errors import HeadsError
from heads.runs._loaded import Predictor

# A place's counts weigh as much as this many images of the overall class distribution.
PLACE_SMOOTHING = 10.0
# An unconstrained top-1 recorded at the place less than this share of the times its overall
# share leads to expect (counted with one pseudo-image: a species never recorded at a place of
# 10 records or more), or weighing less than this on the species list, is ``unusual_here``.
UNUSUAL_BELOW = 0.1
_CACHE: OrderedDict[tuple[Any, ...], PlacePrior] = OrderedDict()
_CACHE_SIZE = 16

SpeciesList = str | os.PathLike | Sequence[str] | Mapping[str, float]


# --------------------------------------------------------------------------- species lists


def read_species_list(spec: SpeciesList, classes: list[str]) -> np.ndarray:
    """``(C,)`` weights from a species list: a file (one label a line; ``label,weight`` CSV rows;
    a JSON list of labels or object of label -> weight), a list of labels, or a mapping.
    Unlisted classes weigh 0; labels the run does not know are skipped."""
    where = "the species list"
    if isinstance(spec, str | os.PathLike):
        where = str(spec)
        spec = _read_list_file(Path(spec))
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = [(str(k), 1.0) for k in spec]
    weights: dict[str, float] = {}
    for label, v in items:
        try:
            w = float(v)
        except (TypeError, ValueError):
            raise HeadsError(f"{where}: weight {v!r} of {label!r} is not a number") from None
        if not np.isfinite(w) or w < 0:
            raise HeadsError(f"{where}: weight of {label!r} must be a number >= 0, not {v!r}")
        weights[label.strip()] = w
    out = np.array([weights.get(c, 0.0) for c in classes])
    if not (out > 0).any():
        shown = ", ".join(list(weights)[:3]) or "nothing"
        raise HeadsError(
            f"{where}: no listed species is a class of the run (listed: {shown}; the run knows "
            f"e.g. {', '.join(classes[:3])}); give labels as the run names them"
        )
    return out


def _read_list_file(p: Path) -> list[str] | dict[str, Any]:
    if not p.is_file():
        raise HeadsError(
            f"{p}: species list not found; give a file with one label a line, label,weight CSV "
            "rows, or a JSON list"
        )
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise HeadsError(f"{p}: not valid JSON ({e}); give a list of labels") from e
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return data
        if isinstance(data, dict):
            return {str(k): v for k, v in data.items()}
        raise HeadsError(f"{p}: give a JSON list of labels or an object of label -> weight")
    rows = [r for r in csv.reader(text.splitlines()) if r and r[0].strip()]
    if rows and len(rows[0]) > 1 and not _is_number(rows[0][1]):
        rows = rows[1:]  # a header row (label,weight)
    if any(len(r) > 1 for r in rows):
        return {r[0]: (r[1] if len(r) > 1 else 1.0) for r in rows}
    return [r[0] for r in rows]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- place priors


@dataclass
class PlacePrior:
    """Counts of each class at each value of ``column`` on the training rows: ``counts``
    ``(V, C)`` over ``values``; :meth:`weights` gives ``p(c | v) / p(c)`` per image."""

    column: str
    classes: list[str]
    values: list[str]
    counts: np.ndarray  # (V, C)
    smoothing: float = PLACE_SMOOTHING

    @classmethod
    def fit(
        cls,
        column: str,
        labels: Sequence[Any],
        values: Sequence[Any],
        classes: list[str],
        smoothing: float = PLACE_SMOOTHING,
    ) -> PlacePrior:
        """Count each (value, class) pair; rows without a value or of another class skipped."""
        index = {c: i for i, c in enumerate(classes)}
        pairs = [
            (str(v), index[str(y)])
            for y, v in zip(labels, values, strict=True)
            if _present(v) and y is not None and str(y) in index
        ]
        vals = sorted({v for v, _ in pairs})
        vi = {v: i for i, v in enumerate(vals)}
        counts = np.zeros((len(vals), len(classes)))
        for v, c in pairs:
            counts[vi[v], c] += 1
        return cls(column, list(classes), vals, counts, float(smoothing))

    def weights(self, values: Sequence[Any], smoothing: float | None = None) -> np.ndarray:
        """``(N, C)`` ``p(c | v) / p(c)`` for each image's value (1 for none or an unseen one),
        ``p(c | v)`` smoothed by ``smoothing`` pseudo-images (default: the prior's)."""
        a = self.smoothing if smoothing is None else smoothing
        total = self.counts.sum(axis=0)  # (C,)
        if total.sum() == 0:
            return np.ones((len(values), len(self.classes)))
        p = total / total.sum()  # (C,) overall class shares
        local = (self.counts + a * p) / (self.counts.sum(axis=1, keepdims=True) + a)  # (V, C)
        ratio = np.divide(local, p, out=np.ones_like(local), where=p > 0)  # (V, C)
        vi = {v: i for i, v in enumerate(self.values)}
        rows = [vi.get(str(v), -1) if _present(v) else -1 for v in values]
        out = np.ones((len(values), len(self.classes)))
        known = np.array([r >= 0 for r in rows], dtype=bool)
        if known.any():
            out[known] = ratio[[r for r in rows if r >= 0]]
        return out


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v) != ""


def place_prior(
    model: Predictor,
    column: str,
    store: str | os.PathLike | embedstore.Store | None = None,
    smoothing: float = PLACE_SMOOTHING,
) -> PlacePrior:
    """The prior by ``column`` learned from the labelled rows the run trained on (its store, its
    ``--where``, the folds: never the held-out part); kept in memory per store version."""
    try:
        st = (
            store
            if isinstance(store, embedstore.Store)
            else embedstore.connect(store or model.store_path, create=False)
        )
    except embedstore.StoreError as e:
        raise HeadsError(f"--prior-by {column}: cannot read the run's store ({e})") from e
    if not st.has_column(column):
        raise HeadsError(
            f"--prior-by {column}: the store {st.path} has no column {column!r}; "
            "give a metadata column it holds (e.g. country, region)"
        )
    where = model.config.store.where
    key = (str(st.path), st.version, column, where, tuple(model.classes), smoothing)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    cols = ["label", column, *(["fold"] if st.has_column("fold") else [])]
    t = st.read(cols, where, labelled=True)
    labels = t.column("label").to_pylist()
    values = t.column(column).to_pylist()
    if "fold" in cols:  # the training part only: the held-out images are the test
        fold = t.column("fold").to_pylist()
        keep = [f is not None and (f >= 0 or f == ALWAYS_TRAIN) for f in fold]
        labels = [v for v, k in zip(labels, keep, strict=True) if k]
        values = [v for v, k in zip(values, keep, strict=True) if k]
    prior = PlacePrior.fit(column, labels, values, model.classes, smoothing)
    if not prior.values:
        raise HeadsError(f"--prior-by {column}: no training image of the run has a {column}")
    _CACHE[key] = prior
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return prior


# --------------------------------------------------------------------------- together


@dataclass
class LocalPriors:
    """What constrains an answer locally: species-list weights ``(C,)`` and a place prior with
    each image's value (``place``: one value for every image, else each image's stored one)."""

    species: np.ndarray | None = None
    place_prior: PlacePrior | None = None
    place: str | None = None

    def weights(self, table_values: Sequence[Any] | None, n: int) -> np.ndarray:
        """``(N, C)`` weights of ``n`` images (``table_values``: their stored values of the
        prior's column, used where no ``place`` is given)."""
        classes = self.place_prior.classes if self.place_prior is not None else None
        w = np.ones((n, len(self.species) if self.species is not None else len(classes or [])))
        if self.species is not None:
            w = w * self.species[None, :]
        if self.place_prior is not None:
            values = (
                [self.place] * n if self.place is not None else list(table_values or [None] * n)
            )
            w = w * self.place_prior.weights(values)
        return w

    def unusual(self, value: Any, label: int) -> bool | None:
        """Whether class ``label`` is unusual for an image whose stored value of the prior's
        column is ``value`` (None when nothing is known of its place)."""
        place = self.place if self.place is not None else value
        if self.species is None and not _present(place):
            return None
        w = 1.0 if self.species is None else float(self.species[label])
        if self.place_prior is not None and _present(place):
            w *= float(self.place_prior.weights([place], smoothing=1.0)[0, label])
        return w < UNUSUAL_BELOW


def local_priors(
    model: Predictor,
    species_list: SpeciesList | None = None,
    prior_by: str | None = None,
    place: str | None = None,
    store: str | os.PathLike | embedstore.Store | None = None,
) -> LocalPriors | None:
    """The local priors asked for (None when neither a species list nor ``prior_by``)."""
    if place is not None and prior_by is None:
        raise HeadsError("--place needs --prior-by COLUMN: the column the place is a value of")
    if species_list is None and prior_by is None:
        return None
    species = None if species_list is None else read_species_list(species_list, model.classes)
    pp = None if prior_by is None else place_prior(model, prior_by, store)
    return LocalPriors(species, pp, place)
