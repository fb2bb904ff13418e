"""Typed results: every library call returns a small dataclass with ``to_dict()``.

``to_dict()`` is what ``--json`` prints and the service answers (JSON-able values, the keys of
the 0.1 dicts). Reading a result by key (``summary["new_images"]``) still works, for scripts
written against 0.1; new code reads attributes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from decimal import Decimal
from typing import Any

import numpy as np


@dataclasses.dataclass
class Result:
    """Base of the typed results; subclasses are dataclasses."""

    def items_(self) -> dict[str, Any]:
        """The fields by name, as Python values (subclasses may flatten nested ones)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: what ``--json`` prints and the service answers."""
        return jsonable(self.items_())

    def __getitem__(self, key: str) -> Any:
        return self.items_()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.items_()

    def get(self, key: str, default: Any = None) -> Any:
        return self.items_().get(key, default)


def jsonable(value: Any) -> Any:
    """A value as JSON: results as dicts, dates as ISO strings, NaN as None, bytes as hex."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
