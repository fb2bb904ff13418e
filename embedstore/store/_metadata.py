"""Reading a metadata file (CSV or Parquet), typing its columns, and joining it to images.

Every column is kept with a real type: numbers, booleans, dates (parsed; a bad date becomes
null and is counted), latitude/longitude (out of range becomes null and is counted), strings.
Problems never stop an ingest: they are collected as ``warnings`` for the summary.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedstore.errors import BadInput
from embedstore.store._lance import EMB_PREFIX

RESERVED = frozenset(
    {
        "id",
        "path",
        "paths",
        "root",
        "label",
        "split",
        "fold",
        "width",
        "height",
        "bytes",
        "added_at",
    }
)
_JOIN_CANDIDATES = (
    "path",
    "relpath",
    "rel_path",
    "image_path",
    "filepath",
    "file_path",
    "file",
    "filename",
    "file_name",
    "image",
    "image_name",
    "image_id",
    "imageid",
    "id",
)
_DATE_NAME = re.compile(r"(^|_)(date|datetime|time|timestamp|observed_on|eventdate)($|_)", re.I)
_LAT_NAMES = {"lat", "latitude", "decimallatitude"}
_LON_NAMES = {"lon", "lng", "long", "longitude", "decimallongitude"}
_BOOL_TRUE = {"true", "yes", "y", "1", "t"}
_BOOL_FALSE = {"false", "no", "n", "0", "f"}


class MetadataError(BadInput):
    """A metadata file that cannot be used at all; the message says what to do."""


@dataclass
class Metadata:
    """A typed metadata table plus the key that joins it to images."""

    table: pa.Table
    join_column: str
    warnings: list[str] = field(default_factory=list)
    file: str = "metadata"  # the file it was read from, named in messages


def read_metadata(path: str | os.PathLike, join_column: str | None = None) -> Metadata:
    """Read ``path`` (.csv, .tsv or .parquet) into a typed table.

    ``join_column`` names the column holding image paths, file names or ids; by default the
    first of the usual names (path, file, filename, image, image_id, id ...) is used.
    """
    p = Path(path)
    if not p.is_file():
        raise MetadataError(f"{p}: metadata file not found")
    warnings: list[str] = []
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
        elif suffix in (".csv", ".tsv", ".txt"):
            table = _read_csv(p, "\t" if suffix == ".tsv" else ",", warnings)
        else:
            raise MetadataError(
                f"{p}: unsupported metadata format {suffix!r}; use .csv or .parquet"
            )
    except pa.ArrowInvalid as e:
        raise MetadataError(f"{p}: cannot parse metadata: {e}") from e
    if table.num_rows == 0:
        raise MetadataError(f"{p}: metadata file has no rows")
    names = table.column_names
    check_column_names(names, p)
    if join_column is None:
        lower = {n.lower(): n for n in names}
        join_column = next((lower[c] for c in _JOIN_CANDIDATES if c in lower), None)
        if join_column is None:
            raise MetadataError(
                f"{p}: no column to join on; name one with --join-column (columns: "
                f"{', '.join(names)})"
            )
    elif join_column not in names:
        raise MetadataError(
            f"{p}: join column {join_column!r} not found; columns: {', '.join(names)}"
        )
    store_column_names([n for n in names if n != join_column], p)  # clashes: refused now
    table = _type_columns(table, join_column, warnings, p.name)
    return Metadata(table, join_column, warnings, str(p))


def check_column_names(names: list[str], file: str | os.PathLike) -> None:
    """MetadataError unless every column has a name and no name is repeated."""
    seen: set[str] = set()
    for n in names:
        if not n.strip():
            raise MetadataError(f"{file}: a column has no name; give every column a header")
        if n in seen:
            raise MetadataError(
                f"{file}: column {n!r} appears more than once; rename or remove the copies"
            )
        seen.add(n)


def store_column_names(
    names: list[str], file: str | os.PathLike
) -> tuple[dict[str, str], list[str]]:
    """The store column each metadata column is written under, and a warning per rename.

    Names the store uses itself (:data:`RESERVED`), names starting with the embedding prefix
    ``emb_`` and names starting with ``_`` (Lance's ``_rowid``, ``_distance`` ...) are stored as
    ``meta_<name>``; two columns that would land on one name are refused (MetadataError).

    >>> store_column_names(["habitat", "emb_notes", "_rowid"], "m.csv")[0]
    {'habitat': 'habitat', 'emb_notes': 'meta_emb_notes', '_rowid': 'meta_rowid'}
    """
    out: dict[str, str] = {}
    warnings: list[str] = []
    for n in names:
        why = (
            "a column the store writes itself"
            if n in RESERVED
            else f"names starting with {EMB_PREFIX} are embedding columns"
            if n.startswith(EMB_PREFIX)
            else "names starting with _ are Lance's own"
            if n.startswith("_")
            else None
        )
        new = n if why is None else "meta_" + n.lstrip("_")
        if why is not None:
            warnings.append(f"{Path(file).name}: column {n!r} is stored as {new!r} ({why})")
        out[n] = new
    by_new: dict[str, str] = {}
    for n, new in out.items():
        if new in by_new:
            raise MetadataError(
                f"{file}: columns {by_new[new]!r} and {n!r} would both be stored as {new!r}; "
                "rename one of them"
            )
        by_new[new] = n
    return out, warnings


def _read_csv(p: Path, delimiter: str, warnings: list[str]) -> pa.Table:
    import pyarrow.csv as pcsv

    bad: list[int] = []

    def on_invalid(row) -> str:  # malformed rows (wrong field count) are skipped and counted
        bad.append(row.number or -1)
        return "skip"

    # Everything is read as text first; types are decided column by column below so that one
    # bad cell makes one null, not a whole column of strings.
    with open(p, "rb") as f:
        header = f.readline().decode("utf-8", "replace").rstrip("\r\n").split(delimiter)
    table = pcsv.read_csv(
        p,
        parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            column_types={h.strip('"'): pa.string() for h in header}, strings_can_be_null=True
        ),
        read_options=pcsv.ReadOptions(encoding="utf8"),
    )
    if bad:
        shown = ", ".join(str(n) for n in bad[:5])
        warnings.append(f"{p.name}: skipped {len(bad)} malformed row(s) (line {shown})")
    return table


def _type_columns(table: pa.Table, join_column: str, warnings: list[str], fname: str) -> pa.Table:
    cols = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name != join_column and pa.types.is_string(col.type):
            col = _infer(name, col, warnings, fname)
        elif name != join_column and name.lower() in _LAT_NAMES | _LON_NAMES:
            col = _check_range(name, pc.cast(col, pa.float64()), warnings, fname)
        cols[name] = col
    return pa.table(cols)


def _infer(name: str, col: pa.Array, warnings: list[str], fname: str) -> pa.Array:
    """Type one text column: number, bool, date, or string. Bad cells become null."""
    stripped = pc.utf8_trim_whitespace(col)
    valid = pc.and_(pc.is_valid(stripped), pc.not_equal(stripped, ""))
    stripped = pc.if_else(valid, stripped, None)
    n_valid = pc.sum(pc.cast(valid, pa.int64())).as_py() or 0
    if n_valid == 0:
        return stripped
    values = np.array(stripped.to_pylist(), dtype=object)
    present = values[np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)]
    low = {str(v).lower() for v in present}
    if low <= _BOOL_TRUE | _BOOL_FALSE and not low <= {"0", "1"} or low <= {"true", "false"}:
        out = [None if v is None else str(v).lower() in _BOOL_TRUE for v in values]
        return pa.array(out, pa.bool_())
    nums = _to_numbers(values)
    n_num = int(np.sum(~np.isnan(nums)))
    is_geo = name.lower() in _LAT_NAMES | _LON_NAMES
    if n_num >= 0.9 * n_valid or (is_geo and n_num > 0):
        if n_num < n_valid:
            warnings.append(
                f"{fname}: column {name!r}: {n_valid - n_num} non-numeric value(s) set to null"
            )
        integral = n_num > 0 and np.all(np.mod(nums[~np.isnan(nums)], 1) == 0) and not is_geo
        mask = np.isnan(nums)
        if integral and np.all(np.abs(nums[~mask]) < 2**53):
            arr = pa.array(np.where(mask, 0, nums).astype(np.int64), mask=mask)
        else:
            arr = pa.array(nums, mask=mask)
        return _check_range(name, arr, warnings, fname) if is_geo else arr
    if _DATE_NAME.search(name) or _mostly_dates(present):
        import pandas as pd

        parsed = pd.to_datetime(pd.Series(values), errors="coerce", format="mixed")
        n_ok = int(parsed.notna().sum())
        if n_ok >= 0.5 * n_valid:
            if n_ok < n_valid:
                warnings.append(
                    f"{fname}: column {name!r}: {n_valid - n_ok} unparseable date(s) set to null"
                )
            return pa.array(
                parsed.dt.tz_localize(None) if parsed.dt.tz else parsed, pa.timestamp("us")
            )
    return stripped


def _to_numbers(values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except ValueError:
            pass
    out[~np.isfinite(out)] = np.nan
    return out


def _mostly_dates(present: np.ndarray) -> bool:
    sample = [str(v) for v in present[:50]]
    pat = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?)?")
    return bool(sample) and sum(bool(pat.match(s)) for s in sample) >= 0.8 * len(sample)


def _check_range(name: str, arr: pa.Array, warnings: list[str], fname: str) -> pa.Array:
    limit = 90.0 if name.lower() in _LAT_NAMES else 180.0
    a = arr.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.abs(a) > limit
    if bad.any():
        warnings.append(
            f"{fname}: column {name!r}: {int(bad.sum())} value(s) outside +-{limit:g} set to null"
        )
    mask = np.isnan(a) | bad
    return pa.array(np.where(mask, 0.0, a), mask=mask)


@dataclass
class JoinResult:
    """Metadata rows aligned to images (``None`` where an image has no row)."""

    columns: dict[str, pa.Array]
    matched: int
    warnings: list[str]


def join_metadata(meta: Metadata, rel_paths: list[str]) -> JoinResult:
    """Align metadata rows to ``rel_paths`` by relative path, file name, or file stem.

    The matching mode that matches the most images wins. Duplicate keys keep the first row;
    rows that match no image are counted. Returns one array per metadata column (join column
    excluded), under the file's own names (the caller renames reserved ones).
    """
    warnings = list(meta.warnings)
    keys = [
        None if k is None else str(k).strip()
        for k in meta.table.column(meta.join_column).to_pylist()
    ]
    modes = {
        "relative path": [r for r in rel_paths],
        "file name": [r.rsplit("/", 1)[-1] for r in rel_paths],
        "file stem": [os.path.splitext(r.rsplit("/", 1)[-1])[0] for r in rel_paths],
    }
    norm_keys = [None if k is None else k.replace("\\", "/").lstrip("./") for k in keys]
    first: dict[str, int] = {}
    dups = 0
    for i, k in enumerate(norm_keys):
        if k is None or k == "":
            continue
        if k in first:
            dups += 1
        else:
            first[k] = i
    if dups:
        warnings.append(
            f"metadata: {dups} duplicate key(s) in {meta.join_column!r}; kept the first row of each"
        )
    best_mode, best_idx, best_n = None, None, -1
    for mode, img_keys in modes.items():
        idx = np.array([first.get(k, -1) for k in img_keys], dtype=np.int64)
        n = int((idx >= 0).sum())
        if n > best_n:
            best_mode, best_idx, best_n = mode, idx, n
    assert best_idx is not None
    if best_n == 0 and rel_paths:
        warnings.append(
            f"metadata: no image matched column {meta.join_column!r} by relative path, file name "
            "or stem; check --join-column"
        )
    elif best_n < len(rel_paths):
        warnings.append(
            f"metadata: {len(rel_paths) - best_n} image(s) have no metadata row ({best_mode} join)"
        )
    unused = len(first) - len(set(best_idx[best_idx >= 0].tolist()))
    if unused > 0:
        warnings.append(f"metadata: {unused} row(s) match no image")
    take = pa.array(np.where(best_idx >= 0, best_idx, 0))
    mask = pa.array(best_idx < 0)
    columns = {}
    for name in meta.table.column_names:
        if name == meta.join_column:
            continue
        col = meta.table.column(name).combine_chunks()
        taken = col.take(take) if len(col) else pa.nulls(len(rel_paths), col.type)
        taken = pc.if_else(mask, pa.scalar(None, type=col.type), taken) if len(col) else taken
        columns[name] = taken
    return JoinResult(columns, best_n, warnings)
