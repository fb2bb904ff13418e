"""Lance tables written beside a store: batch predictions (:func:`write_table`,
:func:`read_table`, and from Ray workers :func:`write_ray_dataset`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from embedstore.store._lance import StoreError, has_version, import_lance, import_lance_ray
from embedstore.store._sql import check_predicate


def _check_out(path: str | os.PathLike, overwrite: bool) -> tuple[str, str]:
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise StoreError(f"{p}: already exists; remove it, choose another --out, or overwrite")
    if p.exists() and not has_version(str(p)):
        raise StoreError(f"{p}: exists and is not a Lance table; choose another --out")
    return str(p), "overwrite" if p.exists() else "create"


def write_table(path: str | os.PathLike, table: pa.Table, *, overwrite: bool = False) -> str:
    """Write ``table`` as a new Lance table at ``path`` (a ``.lance`` folder), e.g. a batch of
    predictions; an existing one is replaced only with ``overwrite``. Returns the path."""
    uri, mode = _check_out(path, overwrite)
    import_lance().write_dataset(table, uri, mode=mode)
    return uri


def read_table(
    path: str | os.PathLike, columns: list[str] | None = None, where: str | None = None
) -> pa.Table:
    """A Lance table written by :func:`write_table` or :func:`write_ray_dataset` (a batch of
    predictions, say) as pyarrow: ``columns`` (default all) of the rows matching ``where``."""
    p = Path(path).expanduser()
    if not has_version(str(p)):
        raise StoreError(f"{p}: no Lance table here")
    filt = f"({check_predicate(where)})" if where is not None else None
    return import_lance().dataset(str(p)).to_table(columns=columns, filter=filt)


def write_ray_dataset(
    ds: Any, path: str | os.PathLike, *, schema: pa.Schema, overwrite: bool = False
) -> str:
    """Write a Ray Dataset as a Lance table at ``path``, from the workers in parallel, with
    lance-ray's ``write_lance`` (Ray 2.60's own ``Dataset.write_lance`` fails with pylance 14).
    Returns the path."""
    uri, mode = _check_out(path, overwrite)
    import_lance_ray().write_lance(ds, uri, schema=schema, mode=mode)
    return uri
