"""A folder of runs, as the service and scripts see it: list, checksum, scores, replace.

What a complete run is (a folder with ``config.json``, not hidden, not being trained) is
decided here, so the service never reads a run's files itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from heads.runs._rundir import replace_dir

PARTIAL = ".partial-"  # a run being trained: never listed, renamed into place when complete
# The hidden folder ``heads.train`` fills before swapping it in: ``.<run>.partial-p<PID>-<hex>``
# (the process id tells a folder being written from one a killed process left).
_WORK = re.compile(r"^\.(?P<run>.+)\.partial-p(?P<pid>\d+)-[0-9a-f]+$")


def work_dir(base: Path) -> Path:
    """Where ``heads.train`` writes the run ``base`` before swapping it in whole."""
    return base.parent / f".{base.name}{PARTIAL}p{os.getpid()}-{uuid.uuid4().hex[:8]}"


def collect_partial_runs(folder: str | os.PathLike) -> list[str]:
    """Remove the hidden work folders in ``folder`` whose training process is gone (killed);
    those of a live process are kept. Returns the names removed."""
    d = Path(folder)
    if not d.is_dir():
        return []
    gone = []
    for p in d.iterdir():
        m = _WORK.match(p.name)
        if m and p.is_dir() and not _alive(int(m.group("pid"))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return sorted(gone)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_runs(folder: str | os.PathLike) -> list[str]:
    """Names of the complete runs and ensembles in ``folder`` (sorted; none if it is absent)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    return sorted(
        p.name
        for p in d.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()
    )


def run_checksum(path: str | os.PathLike) -> str | None:
    """The checksum recorded in a run's ``config.json``: it changes whenever the run does."""
    return json.loads((Path(path) / "config.json").read_text()).get("config_sha256")


def read_eval(path: str | os.PathLike) -> dict[str, Any] | None:
    """The scores ``heads eval`` wrote beside a run (``eval.json``), or None before it ran."""
    ev = Path(path) / "eval.json"
    return json.loads(ev.read_text()) if ev.is_file() else None


def replace_run(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the complete run folder ``new`` at ``dest``; a reader never finds ``dest`` missing."""
    replace_dir(Path(new), Path(dest))
