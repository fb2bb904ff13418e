"""Field encoders: one-hot categories, cyclical dates, geohash cells and standardised numbers,
and their registry (``ENCODERS``); :class:`heads.estimators.MetadataEncoder` maps a table's
columns to them (``heads.estimators._encoders``).

Every encoder is fitted on the training part only and describes itself as JSON (no pickle):
``fit(values) -> self``, ``transform(values) -> float32 (N, d)``, ``get_state() -> dict`` and
``from_state(state)``. :class:`MetadataEncoder` maps the columns of a table to encoders and gives
one float32 block per field: the ``fields=`` every head accepts.

>>> enc = MetadataEncoder(["eventDate", "Latitude", "Longitude", "Habitat"]).fit(train_df)
>>> enc.field_names
['eventDate:cyclical-month', 'eventDate:cyclical-doy', 'Latitude+Longitude', 'Habitat']
>>> fields = enc.transform(val_df)  # list of (N, d_i) float32
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from embedstore import Registry
from embedstore.errors import BadInput

__all__ = [
    "CategoricalEncoder",
    "CyclicalDoyEncoder",
    "CyclicalMonthEncoder",
    "GeohashEncoder",
    "NumberEncoder",
    "create_encoder",
    "encoder_from_state",
    "geohash_encode",
]

Kind = Literal["categorical", "cyclical-month", "cyclical-doy", "geohash", "number"]
KINDS: tuple[str, ...] = get_args(Kind)
_DATE_KINDS = ("cyclical-month", "cyclical-doy")
_GEOHASH_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
_ISO_DATE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})")


class AllMissingError(BadInput):
    """Raised by ``fit`` when no training value is usable."""


# --------------------------------------------------------------------------- value helpers


def _is_missing_scalar(v: Any) -> bool:
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    if isinstance(v, float | np.floating):
        return bool(np.isnan(v))
    if isinstance(v, np.datetime64):
        return bool(np.isnat(v))
    return type(v).__name__ in ("NAType", "NaTType")  # pandas.NA / pandas.NaT


def missing_mask(values: Any) -> np.ndarray:
    """Boolean ``(N,)``: None, NaN, NaT, pandas.NA and empty strings are missing."""
    a = np.asarray(values)
    if a.dtype.kind == "f":
        return np.isnan(a)
    if a.dtype.kind in "mM":
        return np.isnat(a)
    if a.dtype.kind in "US":
        return np.char.strip(a.astype(str)) == ""
    if a.dtype.kind == "O":
        return np.frompyfunc(_is_missing_scalar, 1, 1)(a).astype(bool)
    return np.zeros(a.shape, dtype=bool)  # ints and bools are never missing


def _to_float(values: Any) -> np.ndarray:
    """float64 ``(N,)`` with NaN where a value is missing or not a finite number."""
    a = np.asarray(values)
    if a.dtype.kind in "biuf":
        out = a.astype(np.float64)
    else:
        miss = missing_mask(a)
        out = np.full(a.shape, np.nan)
        for i in np.flatnonzero(~miss):
            try:
                out[i] = float(a[i])
            except (TypeError, ValueError):
                pass
    out[~np.isfinite(out)] = np.nan
    return out


def _parse_date(v: Any) -> np.datetime64:
    if _is_missing_scalar(v):
        return np.datetime64("NaT", "D")
    if all(hasattr(v, a) for a in ("year", "month", "day")):  # date, datetime, pandas.Timestamp
        return np.datetime64(f"{v.year:04d}-{v.month:02d}-{v.day:02d}", "D")
    m = _ISO_DATE.match(str(v))
    if m is None:
        return np.datetime64("NaT", "D")
    try:
        return np.datetime64(f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", "D")
    except ValueError:
        return np.datetime64("NaT", "D")


def to_dates(values: Any) -> np.ndarray:
    """``datetime64[D]`` ``(N,)`` from datetimes, dates or ISO strings; NaT where unparsable."""
    a = np.asarray(values)
    if a.dtype.kind == "M":
        return a.astype("datetime64[D]")
    uniq, inv = np.unique(a.astype(object).astype(str), return_inverse=True)
    # parse each distinct value once; keep the original objects for date-like values
    first = np.zeros(uniq.size, dtype=np.int64)
    first[inv[::-1]] = np.arange(a.size)[::-1]
    parsed = np.array([_parse_date(a.flat[i]) for i in first], dtype="datetime64[D]")
    return parsed[inv.reshape(-1)].reshape(a.shape)


def _looks_numeric(a: np.ndarray) -> bool:
    return a.dtype.kind in "iuf"


# --------------------------------------------------------------------------- geohash


def _geohash_ints(lat: np.ndarray, lon: np.ndarray, precision: int) -> np.ndarray:
    """Geohash cells as int64 ``(N,)`` (5 bits per character); inputs must be valid."""
    nbits = 5 * precision
    nlon, nlat = (nbits + 1) // 2, nbits // 2  # bits alternate lon, lat, lon, ...
    lon_i = np.floor((lon + 180.0) / 360.0 * 2.0**nlon).astype(np.int64).clip(0, 2**nlon - 1)
    lat_i = np.floor((lat + 90.0) / 180.0 * 2.0**nlat).astype(np.int64).clip(0, 2**nlat - 1)
    code = np.zeros(lat_i.shape, dtype=np.int64)
    for k in range(nbits):
        src, width = (lon_i, nlon) if k % 2 == 0 else (lat_i, nlat)
        code = (code << 1) | ((src >> (width - 1 - k // 2)) & 1)
    return code


def _cells_to_str(cells: np.ndarray, precision: int) -> list[str]:
    return [
        "".join(
            _GEOHASH_ALPHABET[(int(c) >> (5 * (precision - 1 - i))) & 31] for i in range(precision)
        )
        for c in cells
    ]


def _str_to_cells(strings: Sequence[str]) -> np.ndarray:
    out = np.zeros(len(strings), dtype=np.int64)
    for j, s in enumerate(strings):
        for ch in s:
            out[j] = (out[j] << 5) | _GEOHASH_ALPHABET.index(ch)
    return out


def _valid_latlon(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)


def geohash_encode(lat: Any, lon: Any, precision: int = 11) -> np.ndarray:
    """Geohash strings ``(N,)`` of latitude/longitude arrays; ``""`` where invalid.

    >>> geohash_encode([57.64911], [10.40744], 11)
    array(['u4pruydqqvj'], dtype='<U11')
    """
    if not 1 <= precision <= 12:
        raise ValueError(f"precision must be in [1, 12], got {precision}")
    lat, lon = np.atleast_1d(_to_float(lat)), np.atleast_1d(_to_float(lon))
    ok = _valid_latlon(lat, lon)
    out = np.full(lat.shape, "", dtype=f"<U{precision}")
    out[ok] = _cells_to_str(_geohash_ints(lat[ok], lon[ok], precision), precision)
    return out


# --------------------------------------------------------------------------- encoders


class _Encoder:
    """Base: ``kind`` names the encoder in its state; ``dim`` is the output width."""

    kind: str = ""

    def fit(self, values: Any) -> _Encoder:
        raise NotImplementedError

    def transform(self, values: Any) -> np.ndarray:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Encoder:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(values) first")


def _all_missing(n: int) -> AllMissingError:
    return AllMissingError(f"all {n} values are missing")


class CategoricalEncoder(_Encoder):
    """One-hot over the ``max_categories`` most frequent training values (ties: sorted order).

    Values are compared as strings; unseen and missing values encode as all zeros.
    """

    kind = "categorical"

    def __init__(self, max_categories: int = 256) -> None:
        if max_categories < 1:
            raise ValueError(f"max_categories must be >= 1, got {max_categories}")
        self.max_categories = max_categories

    @staticmethod
    def _keys(values: Any) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(values).reshape(-1)
        return a.astype(object).astype(str), missing_mask(a)

    def fit(self, values: Any) -> CategoricalEncoder:
        keys, miss = self._keys(values)
        if miss.all():
            raise _all_missing(keys.size)
        uniq, counts = np.unique(keys[~miss], return_counts=True)
        order = np.argsort(-counts, kind="stable")[: self.max_categories]  # ties keep sorted order
        self.categories_: list[str] = uniq[order].tolist()
        self.fitted_ = True
        return self

    def transform(self, values: Any) -> np.ndarray:
        self._check_fitted()
        keys, miss = self._keys(values)
        index = {c: i for i, c in enumerate(self.categories_)}
        uniq, inv = np.unique(keys, return_inverse=True)
        col = np.array([index.get(u, -1) for u in uniq], dtype=np.int64)[inv.reshape(-1)]  # (N,)
        col[miss] = -1
        out = np.zeros((keys.size, len(self.categories_)), dtype=np.float32)  # (N, K)
        rows = np.flatnonzero(col >= 0)
        out[rows, col[rows]] = 1.0
        return out

    @property
    def dim(self) -> int:
        self._check_fitted()
        return len(self.categories_)

    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "kind": self.kind,
            "max_categories": self.max_categories,
            "categories": self.categories_,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CategoricalEncoder:
        enc = cls(max_categories=state["max_categories"])
        enc.categories_ = list(state["categories"])
        enc.fitted_ = True
        return enc


class _CyclicalEncoder(_Encoder):
    """``[sin, cos, missing]`` of a periodic value; missing encodes as ``[0, 0, 1]``."""

    period: float = 1.0
    lo: float = 0.0
    hi: float = 0.0

    def _values(self, values: Any) -> np.ndarray:
        raise NotImplementedError

    def fit(self, values: Any) -> _CyclicalEncoder:
        v = self._values(values)
        if np.isnan(v).all():
            raise _all_missing(v.size)
        self.fitted_ = True
        return self

    def transform(self, values: Any) -> np.ndarray:
        self._check_fitted()
        v = self._values(values)  # (N,) with NaN where missing
        miss = np.isnan(v)
        angle = 2.0 * np.pi * (np.where(miss, self.lo, v) - self.lo) / self.period
        out = np.stack([np.sin(angle), np.cos(angle), miss], axis=1).astype(np.float32)  # (N, 3)
        out[miss, :2] = 0.0
        return out

    @property
    def dim(self) -> int:
        return 3

    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {"kind": self.kind}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _CyclicalEncoder:
        enc = cls()
        enc.fitted_ = True
        return enc

    def _from_numbers_or_dates(self, values: Any, from_dates: Any) -> np.ndarray:
        a = np.asarray(values).reshape(-1)
        if _looks_numeric(a) or (a.dtype.kind == "O" and not np.isnan(_to_float(a)).all()):
            v = _to_float(a)
        else:
            v = from_dates(to_dates(a))
        with np.errstate(invalid="ignore"):
            v[(v < self.lo) | (v > self.hi)] = np.nan
        return v


class CyclicalMonthEncoder(_CyclicalEncoder):
    """Month (1-12, or dates) on the unit circle: December sits next to January."""

    kind = "cyclical-month"
    period, lo, hi = 12.0, 1.0, 12.0

    def _values(self, values: Any) -> np.ndarray:
        def month(d: np.ndarray) -> np.ndarray:
            m = (d.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.float64)
            m[np.isnat(d)] = np.nan
            return m

        return self._from_numbers_or_dates(values, month)


class CyclicalDoyEncoder(_CyclicalEncoder):
    """Day of year (1-366, or dates) on the unit circle, period 365.25 days."""

    kind = "cyclical-doy"
    period, lo, hi = 365.25, 1.0, 366.0

    def _values(self, values: Any) -> np.ndarray:
        def doy(d: np.ndarray) -> np.ndarray:
            days = (d - d.astype("datetime64[Y]")).astype(np.int64) + 1
            out = days.astype(np.float64)
            out[np.isnat(d)] = np.nan
            return out

        return self._from_numbers_or_dates(values, doy)


class GeohashEncoder(_Encoder):
    """Latitude/longitude ``(N, 2)`` as one-hot geohash cells at several ``precisions``.

    Each precision is one-hot over the (at most ``max_cells``, most frequent) cells seen in
    training; the blocks are concatenated coarse to fine. Invalid coordinates (NaN, ``|lat| > 90``,
    ``|lon| > 180``) and unseen cells give zeros.
    """

    kind = "geohash"

    def __init__(self, precisions: Sequence[int] = (2, 3, 4), max_cells: int = 1024) -> None:
        if not precisions or any(not 1 <= p <= 12 for p in precisions):
            raise ValueError(f"precisions must be a non-empty list in [1, 12], got {precisions}")
        self.precisions = tuple(sorted(set(int(p) for p in precisions)))
        self.max_cells = max_cells

    def _cells(self, values: Any) -> tuple[np.ndarray, np.ndarray]:
        """Finest-precision cells ``(N,)`` and a validity mask ``(N,)``."""
        a = np.asarray(values)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"geohash values must be (N, 2) [latitude, longitude], got {a.shape}")
        lat, lon = _to_float(a[:, 0]), _to_float(a[:, 1])
        ok = _valid_latlon(lat, lon)
        cells = np.zeros(lat.shape, dtype=np.int64)
        cells[ok] = _geohash_ints(lat[ok], lon[ok], self.precisions[-1])
        return cells, ok

    def _at(self, cells: np.ndarray, p: int) -> np.ndarray:
        return cells >> (5 * (self.precisions[-1] - p))  # (N,) prefix cells at precision p

    def fit(self, values: Any) -> GeohashEncoder:
        cells, ok = self._cells(values)
        if not ok.any():
            raise _all_missing(ok.size)
        self.cells_: dict[int, list[str]] = {}
        for p in self.precisions:
            uniq, counts = np.unique(self._at(cells[ok], p), return_counts=True)
            keep = np.sort(uniq[np.argsort(-counts, kind="stable")[: self.max_cells]])
            self.cells_[p] = _cells_to_str(keep, p)
        self.fitted_ = True
        return self

    def transform(self, values: Any) -> np.ndarray:
        self._check_fitted()
        cells, ok = self._cells(values)
        blocks = []
        for p in self.precisions:
            known = _str_to_cells(self.cells_[p])  # (K_p,) sorted
            c = self._at(cells, p)
            pos = np.searchsorted(known, c).clip(0, max(known.size - 1, 0))
            hit = ok & (known[pos] == c)  # (N,)
            block = np.zeros((c.size, known.size), dtype=np.float32)  # (N, K_p)
            block[np.flatnonzero(hit), pos[hit]] = 1.0
            blocks.append(block)
        return np.concatenate(blocks, axis=1)  # (N, sum K_p)

    @property
    def dim(self) -> int:
        self._check_fitted()
        return sum(len(v) for v in self.cells_.values())

    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "kind": self.kind,
            "precisions": list(self.precisions),
            "max_cells": self.max_cells,
            "cells": {str(p): v for p, v in self.cells_.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GeohashEncoder:
        enc = cls(precisions=state["precisions"], max_cells=state["max_cells"])
        enc.cells_ = {int(p): list(v) for p, v in state["cells"].items()}
        enc.fitted_ = True
        return enc


class NumberEncoder(_Encoder):
    """``[(x - mean) / std, missing]`` with the training mean/std; missing gives ``[0, 1]``."""

    kind = "number"

    def fit(self, values: Any) -> NumberEncoder:
        v = _to_float(np.asarray(values).reshape(-1))
        if np.isnan(v).all():
            raise _all_missing(v.size)
        self.mean_ = float(np.nanmean(v))
        std = float(np.nanstd(v))
        self.std_ = std if std > 0 else 1.0
        self.fitted_ = True
        return self

    def transform(self, values: Any) -> np.ndarray:
        self._check_fitted()
        v = _to_float(np.asarray(values).reshape(-1))
        miss = np.isnan(v)
        z = np.where(miss, 0.0, (np.where(miss, self.mean_, v) - self.mean_) / self.std_)
        return np.stack([z, miss], axis=1).astype(np.float32)  # (N, 2)

    @property
    def dim(self) -> int:
        return 2

    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {"kind": self.kind, "mean": self.mean_, "std": self.std_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> NumberEncoder:
        enc = cls()
        enc.mean_, enc.std_ = float(state["mean"]), float(state["std"])
        enc.fitted_ = True
        return enc


ENCODERS: Registry = Registry("encoder kind", "kinds")
for _kind, _cls in {
    "categorical": CategoricalEncoder,
    "cyclical-month": CyclicalMonthEncoder,
    "cyclical-doy": CyclicalDoyEncoder,
    "geohash": GeohashEncoder,
    "number": NumberEncoder,
}.items():
    ENCODERS.register(_kind, _cls)
register_encoder = ENCODERS.register
list_encoders = ENCODERS.list


def create_encoder(kind: Kind, **kwargs: Any) -> _Encoder:
    """An unfitted encoder of ``kind`` with its settings ``kwargs``."""
    return ENCODERS.create(kind, **kwargs)


def encoder_from_state(state: Mapping[str, Any]) -> _Encoder:
    """Rebuild a fitted encoder from :meth:`get_state`'s dict."""
    return ENCODERS.get(state.get("kind", "")).from_state(state)
