"""``embedstore check``: every version of every table verified, and the repair of a store whose
newest versions are damaged (back to the last good version)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedstore._results import Result
from embedstore.store._lance import StoreError, import_lance, plain
from embedstore.store._lock import take_lock


@dataclass
class CheckReport(Result):
    """What ``embedstore check`` found: per table, its versions and the damaged ones;
    ``problems`` and ``advice`` in plain words; ``ok`` when nothing is (left) damaged."""

    store: str
    ok: bool
    repaired: bool
    tables: list[dict[str, Any]]
    problems: list[str]
    advice: list[str]


_TABLES = ("images", "files", "skipped", "text_embeddings")


_U64 = 2**64 - 1


def check(store: str | os.PathLike, repair: bool = False) -> CheckReport:
    """Verify every version of every table of ``store``: each manifest can be read and every
    data file it names is there. With ``repair``, a table whose newest versions are damaged
    goes back to its last good version (the damaged manifests are moved to ``STORE/damaged/``;
    images added after that version are ingested again by the next ingest); a damaged file
    index or skipped list with no good version is moved aside too (the next ingest rebuilds it).

    >>> report = check("my-store")
    >>> report = check("my-store", repair=True)
    """
    root = Path(store).expanduser()
    if not root.is_dir():
        raise StoreError(f"{root}: no store here")
    lance = import_lance()
    tables = [_check_table(lance, root, t) for t in _TABLES]
    repaired = False
    if repair and any(t["damaged"] for t in tables):
        fd = take_lock(root, "embedstore check --repair")  # no other writer while it repairs
        try:
            for t in tables:
                repaired |= _repair_table(root, t)
        finally:
            os.close(fd)
        tables = [_check_table(lance, root, t) for t in _TABLES]
    problems, advice = [], []
    for t in tables:
        problems += t.pop("problems")
        if t["damaged"] and t["last_good"] is not None:
            advice.append(
                f"{t['table']}: run `embedstore check --store {root} --repair` to go back to "
                f"version {t['last_good']}, then run the ingest again (it adds what was lost)"
            )
        elif t["damaged"] and t["table"] == "images":
            advice.append(
                "images: no version can be read; ingest the images again into a new store "
                "(`embedstore ingest IMAGES_DIR --store NEW`)"
            )
        elif t["damaged"] and t["table"] == "text_embeddings":
            advice.append(
                f"text_embeddings: run `embedstore check --store {root} --repair` to move the "
                "text cache aside; texts are embedded again when next asked for"
            )
        elif t["damaged"]:
            advice.append(
                f"{t['table']}: run `embedstore check --store {root} --repair` to move it aside; "
                "the next ingest rebuilds it (re-reading the files)"
            )
    ok = not any(t["damaged"] for t in tables)
    return CheckReport(str(root), ok, repaired, tables, problems, advice)


def _manifests(uri: Path) -> dict[int, Path]:
    """Version number -> manifest file, from the names under ``_versions`` (Lance names them
    ``N.manifest``, or ``2**64-1-N.manifest`` in its newer scheme)."""
    out = {}
    for m in (uri / "_versions").glob("*.manifest"):
        try:
            n = int(m.stem)
        except ValueError:
            continue
        out[_U64 - n if n > 2**63 else n] = m
    return out


def _check_table(lance, root: Path, table: str) -> dict[str, Any]:
    uri = root / f"{table}.lance"
    t: dict[str, Any] = {
        "table": table,
        "versions": 0,
        "latest": None,
        "last_good": None,
        "damaged": False,
        "damaged_versions": {},
        "problems": [],
    }
    if not uri.exists():
        if table == "images":
            t["problems"].append("images: there is no images table (nothing ingested yet?)")
        return t
    manifests = _manifests(uri)
    data = uri / "data"
    if not manifests:
        has_data = data.is_dir() and any(data.iterdir())
        if has_data:
            t["damaged"] = True
            t["problems"].append(
                f"{table}: its version history ({uri / '_versions'}) is missing or empty, so Lance "
                "cannot open it although it holds data files"
            )
        return t
    t["versions"], t["latest"] = len(manifests), max(manifests)
    for v in sorted(manifests):
        why = _version_problem(lance, uri, v)
        if why is None:
            t["last_good"] = v
        else:
            t["damaged_versions"][v] = why
    bad_after = {
        v: w
        for v, w in t["damaged_versions"].items()
        if t["last_good"] is None or v > t["last_good"]
    }
    if bad_after:
        t["damaged"] = True
        first = min(bad_after)
        t["problems"].append(
            f"{table}: version(s) {', '.join(map(str, sorted(bad_after)))} of {t['latest']} are "
            f"damaged (version {first}: {bad_after[first]})"
            + (f"; version {t['last_good']} is the last good one" if t["last_good"] else "")
        )
    return t


def _version_problem(lance, uri: Path, version: int) -> str | None:
    """Why ``version`` of the table at ``uri`` cannot be read (None when it can)."""
    try:
        ds = lance.dataset(str(uri), version=version)
        frags = ds.get_fragments()
    except Exception as e:  # noqa: BLE001 - any failure to read it is the answer
        return f"its manifest cannot be read: {plain(e)}"
    for f in frags:
        for d in f.metadata.files:
            p = uri / "data" / d.path
            if not p.is_file() or p.stat().st_size == 0:
                return f"data file {p.name} is missing or empty"
    return None


def _repair_table(root: Path, t: dict[str, Any]) -> bool:
    """Move aside what makes table ``t`` damaged (see :func:`check`); True when it changed."""
    if not t["damaged"]:
        return False
    uri = root / f"{t['table']}.lance"
    aside = root / "damaged" / time.strftime("%Y%m%dT%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    if t["last_good"] is None:
        if t["table"] == "images":
            return False  # nothing Lance can go back to; the advice says what to do
        os.replace(uri, aside / uri.name)
        return True
    manifests = _manifests(uri)
    for v, m in manifests.items():
        if v > t["last_good"]:
            os.replace(m, aside / f"{t['table']}-{m.name}")
    hint = uri / "_versions" / "latest_version_hint.json"
    if hint.exists():
        os.replace(hint, aside / f"{t['table']}-{hint.name}")
    return True
