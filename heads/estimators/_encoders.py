"""Metadata encoders: one-hot categories, cyclical dates, geohash cells and standardised numbers
(each in ``heads.estimators._fields``), and :class:`MetadataEncoder`, which maps a table's columns
to them.

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
from typing import Any

import numpy as np

from heads.estimators._fields import (
    _DATE_KINDS,
    ENCODERS,
    KINDS,
    AllMissingError,
    CategoricalEncoder,
    CyclicalDoyEncoder,
    CyclicalMonthEncoder,
    GeohashEncoder,
    Kind,
    NumberEncoder,
    _Encoder,
    _to_float,
    create_encoder,
    encoder_from_state,
    geohash_encode,
    missing_mask,
    to_dates,
)

__all__ = [
    "ENCODERS",
    "KINDS",
    "AllMissingError",
    "CategoricalEncoder",
    "CyclicalDoyEncoder",
    "CyclicalMonthEncoder",
    "GeohashEncoder",
    "Kind",
    "MetadataEncoder",
    "NumberEncoder",
    "create_encoder",
    "encoder_from_state",
    "geohash_encode",
    "missing_mask",
    "to_dates",
]


# --------------------------------------------------------------------------- the table encoder

_LAT = re.compile(r"^(.*?)(latitude|lat)$", re.IGNORECASE)
_LON = re.compile(r"^(.*?)(longitude|long|lon|lng)$", re.IGNORECASE)


def _column(table: Any, name: str) -> np.ndarray:
    try:
        col = table[name]
    except (KeyError, IndexError, ValueError):
        have = list(table.keys()) if hasattr(table, "keys") else []
        raise ValueError(f"column {name!r} is not in the table; it has {have}") from None
    return np.asarray(col).reshape(-1)


def _column_dtype_kind(table: Any, name: str) -> str:
    """numpy-style dtype kind, also for pandas extension dtypes (Int64 -> 'i')."""
    dtype = getattr(table[name], "dtype", None)
    kind = getattr(dtype, "kind", None)
    return kind if isinstance(kind, str) else np.asarray(table[name]).dtype.kind


def _infer_fields(table: Any, names: Sequence[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """``(field name, columns, kind)`` for each field, from dtypes and column names."""
    lats = {m[1].lower(): n for n in names if (m := _LAT.match(n))}
    lons = {m[1].lower(): n for n in names if (m := _LON.match(n))}
    pairs = {lats[p]: lons[p] for p in lats if p in lons}
    paired = set(pairs) | set(pairs.values())
    fields: list[tuple[str, tuple[str, ...], str]] = []
    for n in names:
        if n in pairs:
            fields.append((f"{n}+{pairs[n]}", (n, pairs[n]), "geohash"))
            continue
        if n in paired:
            continue
        kind = _column_dtype_kind(table, n)
        low = n.lower()
        is_date = kind == "M"
        if kind in "OUS" and "date" in low:
            col = _column(table, n)
            miss = missing_mask(col)
            is_date = bool((~miss).any()) and not np.isnat(to_dates(col[~miss])).any()
        if is_date:
            fields += [(f"{n}:{k}", (n,), k) for k in _DATE_KINDS]
        elif kind in "iuf" and low == "month":
            fields.append((n, (n,), "cyclical-month"))
        elif kind in "iuf" and low in ("doy", "dayofyear", "day_of_year"):
            fields.append((n, (n,), "cyclical-doy"))
        elif kind in "iuf":
            fields.append((n, (n,), "number"))
        else:
            fields.append((n, (n,), "categorical"))
    return fields


def _explicit_fields(columns: Mapping[Any, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    fields: list[tuple[str, tuple[str, ...], str]] = []
    for key, kinds in columns.items():
        cols = tuple(key) if isinstance(key, tuple | list) else tuple(str(key).split("+"))
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        kinds = [k for kind in kinds for k in (_DATE_KINDS if kind == "date" else (kind,))]
        for kind in kinds:
            ENCODERS.get(kind)  # an unknown kind: RegistryError naming the valid ones
            if (kind == "geohash") != (len(cols) == 2):
                raise ValueError(
                    f"{key!r}: geohash takes two columns (latitude, longitude), e.g. "
                    f"'Latitude+Longitude'; every other kind takes one"
                )
            base = "+".join(cols)
            fields.append((base if len(kinds) == 1 else f"{base}:{kind}", cols, kind))
    return fields


class MetadataEncoder:
    """Encode a table's metadata columns into one float32 block per field.

    ``columns`` is either a dict ``{column: kind or [kinds]}`` (a geohash field names its two
    columns as ``"lat+lon"`` or a tuple; kind ``"date"`` means month and day of year) or a list
    of column names whose kinds are inferred at ``fit``: datetimes (or ISO strings in a column
    named ``*date*``) give month and day-of-year fields, a latitude/longitude pair (``lat`` /
    ``latitude`` with ``lon`` / ``lng`` / ``longitude``, same prefix) a geohash field, numbers a
    number field (``month`` / ``doy`` columns a cyclical one), anything else categorical.
    ``None`` uses every column of the table.
    """

    def __init__(
        self,
        columns: Mapping[Any, Any] | Sequence[str] | None = None,
        *,
        max_categories: int = 256,
        geohash_precisions: Sequence[int] = (2, 3, 4),
        max_geohash_cells: int = 1024,
    ) -> None:
        self.columns = columns
        self.max_categories = max_categories
        self.geohash_precisions = tuple(geohash_precisions)
        self.max_geohash_cells = max_geohash_cells

    def _new(self, kind: str) -> _Encoder:
        if kind == "categorical":
            return CategoricalEncoder(max_categories=self.max_categories)
        if kind == "geohash":
            return GeohashEncoder(self.geohash_precisions, max_cells=self.max_geohash_cells)
        return create_encoder(kind)  # type: ignore[arg-type]

    @staticmethod
    def _values(table: Any, cols: tuple[str, ...]) -> np.ndarray:
        if len(cols) == 1:
            return _column(table, cols[0])
        return np.stack([_to_float(_column(table, c)) for c in cols], axis=1)  # (N, 2)

    def fit(self, table: Any) -> MetadataEncoder:
        """Fit every field's encoder on ``table`` (a dict of arrays or a pandas DataFrame)."""
        if isinstance(self.columns, Mapping):
            specs = _explicit_fields(self.columns)
        else:
            names = list(table.keys()) if self.columns is None else list(self.columns)
            for n in names:
                _column(table, n)
            specs = _infer_fields(table, names)
        if not specs:
            raise ValueError("no metadata columns to encode")
        self.fields_: list[tuple[str, tuple[str, ...], _Encoder]] = []
        for name, cols, kind in specs:
            try:
                enc = self._new(kind).fit(self._values(table, cols))
            except AllMissingError:
                raise ValueError(
                    f"column {'+'.join(cols)!r} has no usable value in the training data (all "
                    f"missing for a {kind!r} field); drop it from the metadata columns"
                ) from None
            self.fields_.append((name, cols, enc))
        return self

    def transform(self, table: Any) -> list[np.ndarray]:
        """One float32 block ``(N, d_i)`` per field, in :attr:`field_names` order."""
        self._check_fitted()
        return [enc.transform(self._values(table, cols)) for _, cols, enc in self.fields_]

    def fit_transform(self, table: Any) -> list[np.ndarray]:
        return self.fit(table).transform(table)

    @property
    def field_names(self) -> list[str]:
        self._check_fitted()
        return [name for name, _, _ in self.fields_]

    @property
    def field_dims(self) -> list[int]:
        self._check_fitted()
        return [enc.dim for _, _, enc in self.fields_]

    def _check_fitted(self) -> None:
        if not hasattr(self, "fields_"):
            raise RuntimeError("MetadataEncoder is not fitted; call fit(table) first")

    def get_state(self) -> dict[str, Any]:
        """JSON-able description of the fitted encoder (settings and every field's state)."""
        self._check_fitted()
        return {
            "max_categories": self.max_categories,
            "geohash_precisions": list(self.geohash_precisions),
            "max_geohash_cells": self.max_geohash_cells,
            "fields": [
                {"name": name, "columns": list(cols), "state": enc.get_state()}
                for name, cols, enc in self.fields_
            ],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MetadataEncoder:
        columns: dict[str, list[str]] = {}
        for f in state["fields"]:
            columns.setdefault("+".join(f["columns"]), []).append(f["state"]["kind"])
        enc = cls(
            columns,
            max_categories=state["max_categories"],
            geohash_precisions=state["geohash_precisions"],
            max_geohash_cells=state["max_geohash_cells"],
        )
        enc.fields_ = [
            (f["name"], tuple(f["columns"]), encoder_from_state(f["state"]))
            for f in state["fields"]
        ]
        return enc
