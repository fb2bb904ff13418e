"""The run-directory format: what a trained head leaves on disk, written and verified here.

A run directory holds:

- ``config.json``: everything that rebuilds the head (head name and settings, class names and
  training counts, the backbone column and its description, the store path and version, the
  metadata encoder state, the unknown detector settings), a format number, the SHA-256 of each
  weights file, and a checksum of the config itself (an edited config is refused).
- ``head.safetensors`` (and ``detector.safetensors``): tensors only; nothing is ever unpickled.
- ``history.json`` and ``curves.png``: per-epoch metrics.
- ``val.parquet``: the validation rows' ids, labels and logits (and unknown scores).
- ``pseudo.parquet`` (``heads train --pseudo-label``, in the fold ensemble's folder): the rows
  pseudo-labelled in each round, the label they were given, their confidence margin and the
  share of the folds that agreed; each fold run's config records its round (``"pseudo"``).

An ensemble directory has the same ``config.json`` (``"kind": "ensemble"``) and ``val.parquet``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from heads._errors import HeadsError

RUN_FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def _checksum(config: dict[str, Any]) -> str:
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    config = json.loads(json.dumps(config, default=_json_default))
    config["config_sha256"] = _checksum(config)
    tmp = run_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / "config.json")


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and verify ``config.json`` of a run or ensemble directory."""
    d = Path(run_dir)
    p = d / "config.json"
    if not p.is_file():
        raise HeadsError(
            f"{d}: not a run or ensemble directory (no config.json); train one with `heads train`"
        )
    try:
        config = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadsError(f"{p}: not valid JSON ({e}); retrain the run") from e
    fmt = config.get("format")
    if fmt != RUN_FORMAT:
        raise HeadsError(
            f"{p}: run format {fmt!r}, this version reads format {RUN_FORMAT}; "
            "retrain with this version"
        )
    if config.get("config_sha256") != _checksum(config):
        raise HeadsError(
            f"{p}: config.json was edited after training (checksum mismatch); a head is rebuilt "
            "exactly from its config, so retrain instead of editing, or restore the original file"
        )
    return config


def load_tensors(run_dir: Path, name: str, expected_sha: str | None) -> dict[str, torch.Tensor]:
    p = run_dir / name
    if not p.is_file():
        raise HeadsError(f"{p}: weights file missing; retrain the run")
    if expected_sha and _sha256(p) != expected_sha:
        raise HeadsError(
            f"{p}: weights file is corrupt or was replaced (SHA-256 mismatch); retrain the run"
        )
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own error types
        raise HeadsError(f"{p}: cannot read weights ({e}); retrain the run") from e


def save_tensors(run_dir: Path, name: str, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` to ``run_dir/name`` (safetensors); returns the file's SHA-256."""
    path = run_dir / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return _sha256(path)


def replace_dir(new: Path, dest: Path) -> None:
    """Put the complete folder ``new`` at ``dest`` (replacing what was there), so a reader sees
    the old folder or the new one, never a mix and never none: on Linux one atomic exchange
    (``renameat2(RENAME_EXCHANGE)``), after which ``new`` holds the old folder and is removed;
    elsewhere (or on a file system without it) two renames, with a moment without ``dest``."""
    dest = Path(dest)
    if dest.exists() and _exchange(Path(new), dest):
        shutil.rmtree(new, ignore_errors=True)  # the old folder, under the hidden new name
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or file system does not offer it."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False  # not offered here: the caller falls back to two renames
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    (run_dir / "history.json").write_text(json.dumps(history, indent=1, default=_json_default))


def write_val(
    run_dir: Path,
    ids: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    scores: np.ndarray | None = None,
    observation: np.ndarray | None = None,
    poisonous: np.ndarray | None = None,
) -> None:
    """``val.parquet``: validation ids, labels, logits ``(N, C)`` and the optional columns."""
    cols: dict[str, Any] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "label": pa.array([None if v is None else str(v) for v in labels], pa.string()),
        "logits": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(logits, np.float32).reshape(-1)), logits.shape[1]
        ),
    }
    if observation is not None:
        cols["observation"] = pa.array(
            [None if v is None else str(v) for v in observation], pa.string()
        )
    if poisonous is not None:
        cols["poisonous"] = pa.array(
            [None if v is None or v != v else bool(v) for v in poisonous], pa.bool_()
        )
    if scores is not None:
        cols["unknown_score"] = pa.array(np.asarray(scores, dtype=np.float64))
    pq.write_table(pa.table(cols), Path(run_dir) / "val.parquet")


PSEUDO_FILE = "pseudo.parquet"


def write_pseudo(run_dir: Path, rows: dict[str, np.ndarray]) -> None:
    """``pseudo.parquet``: one row per pseudo-labelled row and round: ``id``, ``label`` (the
    predicted class it was trained as), ``round``, ``margin``, ``agreement``."""
    pq.write_table(
        pa.table(
            {
                "id": pa.array([str(i) for i in rows["id"]], pa.string()),
                "label": pa.array([str(v) for v in rows["label"]], pa.string()),
                "round": pa.array(np.asarray(rows["round"], np.int32)),
                "margin": pa.array(np.asarray(rows["margin"], np.float32)),
                "agreement": pa.array(np.asarray(rows["agreement"], np.float32)),
            }
        ),
        Path(run_dir) / PSEUDO_FILE,
    )


def read_pseudo(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The pseudo-labelled rows a ``heads train --pseudo-label`` run recorded (every round):
    ``{"id", "label", "round", "margin", "agreement"}``, each ``(N,)``."""
    p = Path(run_dir) / PSEUDO_FILE
    if not p.is_file():
        raise HeadsError(f"{p}: no pseudo-labelled rows recorded (not a --pseudo-label run)")
    t = pq.read_table(p)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def read_val(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "val.parquet"
    if not p.is_file():
        raise HeadsError(f"{p}: validation predictions missing; retrain the run")
    t = pq.read_table(p)
    n = t.num_rows
    lg = t.column("logits").combine_chunks()
    out: dict[str, Any] = {
        "id": np.array(t.column("id").to_pylist(), dtype=object),
        "label": np.array(t.column("label").to_pylist(), dtype=object),
        "logits": lg.values.to_numpy(zero_copy_only=False).reshape(n, lg.type.list_size)
        if n
        else np.zeros((0, lg.type.list_size), np.float32),
    }
    for c in ("observation", "poisonous", "unknown_score"):
        if c in t.column_names:
            out[c] = np.array(t.column(c).to_pylist(), dtype=object)
    return out
