"""Shared helpers for the benchmark scripts: what machine ran them, JSON output, a text table."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "out"
FLOWERS = REPO.parent / "shared" / "data" / "flowers12"

_PACKAGES = {
    "torch": ("torch",),
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu", "faiss"),
    "lance": ("pylance",),
    "lancedb": ("lancedb",),
    "transformers": ("transformers",),
    "numpy": ("numpy",),
    "scikit-learn": ("scikit-learn",),
    "pillow": ("pillow", "Pillow", "pillow-simd"),
}


def _version(dists: Sequence[str]) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, GPU and library versions: what a result needs to be compared fairly.

    ``load_avg`` is the 1/5/15-minute load when the benchmark started; figures taken while other
    jobs ran (load above the core count) are not comparable with figures from a quiet machine.
    """
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
        }
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": _ram_gib(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
        "versions": {name: _version(dists) for name, dists in _PACKAGES.items()},
    }


def _jsonable(o: Any) -> Any:
    """Numpy scalars and arrays, paths and sets as plain JSON values."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (Path, set, frozenset)):
        return str(o) if isinstance(o, Path) else sorted(o)
    return str(o)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON to ``path`` (parent folders created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable, allow_nan=True)
        f.write("\n")
    return p


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0 or abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.4f}" if abs(v) >= 1e-3 else f"{v:.2e}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """Print ``rows`` (dicts) as an aligned text table of ``columns``; missing values show ``-``.

    >>> print_table([{"name": "a", "images_per_s": 812.3}], ["name", "images_per_s"])
    """
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    if title:
        print(f"\n{title}")
    print(line(list(columns)))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; calls ``sync()`` (CUDA) at both ends."""

    def __init__(self, sync: Any = None) -> None:
        self.sync = sync
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        if self.sync is not None:
            self.sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sync is not None:
            self.sync()
        self.seconds = time.perf_counter() - self._t0
