"""Import time of ``embedstore`` and ``heads`` in fresh interpreters, against their heavy
dependencies.

Run from the repository root (on a quiet machine):

    python benchmarks/import_time.py                 # 5 runs of each, medians
    python benchmarks/import_time.py --runs 9

Each statement runs in a new ``python -c`` subprocess (the interpreter running this script, so
the same virtual environment), timed with ``time.perf_counter`` around the whole subprocess;
the median of ``--runs`` runs of ``python -c pass`` (interpreter start-up) is subtracted. Runs
are interleaved (one of each statement per round) so a slow moment hits every row alike.
Statements:

- ``import torch, pyarrow, PIL.Image``: the baseline, the heavy libraries both packages need;
- ``import embedstore`` (light: its names load on first use), ``embedstore.connect`` and
  ``embedstore.ingest`` (what using them loads) and ``import heads``: what a script pays;
- ``import cli``: what ``heads --help`` or a command's ``--help`` pays;
- a check (one subprocess, not timed) of which optional heavy modules ``import embedstore``
  leaves in ``sys.modules``: ``sklearn`` (the store should not need it), and for information
  ``faiss``, ``lance``, ``lancedb``, ``transformers``.

Prints a table and writes JSON (``--out``, default ``benchmarks/out/import_time.json``) with
``machine_info()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks._common import OUT_DIR, REPO, machine_info, print_table, write_json  # noqa: E402

STATEMENTS = {
    "python -c pass (start-up)": "pass",
    "import torch, pyarrow, PIL.Image (baseline)": "import torch, pyarrow, PIL.Image",
    "import embedstore": "import embedstore",
    # the package loads what is used on first use (PEP 562): the store, then a whole run's needs
    "embedstore.connect (the store's modules)": "import embedstore; embedstore.connect",
    "embedstore.ingest (+ backbones, torch)": "import embedstore; embedstore.ingest",
    "import heads": "import heads",
    # what `heads --help` and `embedstore ingest --help` pay: the CLI module and its options
    "import cli (the command line, --help)": "import cli",
}
CHECK_MODULES = ("sklearn", "faiss", "lance", "lancedb", "transformers", "torch", "pyarrow")


def _env() -> dict[str, str]:
    """The subprocess environment: the repository importable, no bytecode writing races."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.pop("PYTHONSTARTUP", None)
    return env


def run_once(code: str) -> float:
    """Seconds for ``python -c code`` in a fresh interpreter; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed:\n{proc.stderr.strip()}")
    return seconds


def loaded_after(statement: str, modules: tuple[str, ...]) -> dict[str, bool]:
    """Which of ``modules`` are in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    code = (
        f"{statement}\nimport json, sys\n"
        f"print(json.dumps({{m: m in sys.modules for m in {list(modules)!r}}}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{statement!r} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs of each statement (median kept)")
    p.add_argument("--out", type=Path, default=OUT_DIR / "import_time.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_avg']}; "
        f"python {machine['python']} ({sys.executable})"
    )
    for code in STATEMENTS.values():  # warm the OS file cache and any .pyc writing once
        run_once(code)
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    for _ in range(args.runs):
        for name, code in STATEMENTS.items():
            times[name].append(run_once(code))
    startup = statistics.median(times["python -c pass (start-up)"])
    baseline = statistics.median(times["import torch, pyarrow, PIL.Image (baseline)"]) - startup
    rows = []
    for name, code in STATEMENTS.items():
        med = statistics.median(times[name])
        row = {
            "statement": name,
            "median_s": med,
            "import_s": None if code == "pass" else med - startup,
            "min_s": min(times[name]),
            "max_s": max(times[name]),
        }
        if code not in ("pass",) and not name.endswith("(baseline)"):
            row["over_baseline_s"] = med - startup - baseline
        rows.append(row)
    print_table(
        rows,
        ["statement", "median_s", "import_s", "over_baseline_s", "min_s", "max_s"],
        title=f"import time, fresh interpreter, median of {args.runs} (import_s: minus "
        f"start-up {startup:.3f} s)",
    )
    after = loaded_after("import embedstore", CHECK_MODULES)
    print(
        "\nafter `import embedstore`, in sys.modules: "
        + ", ".join(f"{m} {'yes' if v else 'no'}" for m, v in after.items())
    )
    print(f"sklearn imported by `import embedstore`: {after['sklearn']}")
    result = {
        "benchmark": "import_time",
        "machine": machine,
        "settings": {"runs": args.runs, "python": sys.executable},
        "startup_s": startup,
        "rows": rows,
        "runs_s": times,
        "modules_after_import_embedstore": after,
        "sklearn_after_import_embedstore": after["sklearn"],
    }
    print(f"\nwrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
