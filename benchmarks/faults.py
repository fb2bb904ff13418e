"""Faults: kill -9 during ingest, two writers at once, kill -9 during a re-train, on real photos.

    python benchmarks/faults.py                   # 20 rounds of each, 48 flowers12 photos
    python benchmarks/faults.py --rounds 5 --images 32

Each round of each fault runs the real commands (``embedstore ingest``, ``heads train``) as
subprocesses:

- **kill during ingest**: ``embedstore ingest`` into a new store is killed (SIGKILL) at a
  random moment after its first commit, then run again to completion;
- **two writers**: two ``embedstore ingest`` of the two halves of the photos start at the same
  moment into one new store; a writer refused because the other holds the store (exit 2, "being
  written by PID ...") is run again afterwards, as a user would;
- **kill during re-train**: ``heads train --fold all --head mlp --overwrite`` into the folder
  of a finished linear fold ensemble is killed at a random moment.

Then it counts images lost (in the folder, not in the store), duplicated (stored twice),
unclear failures (a writer that failed without the one-line lock message) and mixed runs
(a run folder whose folds are not all of one head, or whose scores changed while it is still
the old run). All must be 0. Prints a table and writes ``benchmarks/out/faults.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lance  # noqa: E402

import embedstore  # noqa: E402
from benchmarks._common import FLOWERS, machine_info, print_table, write_json  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared machine: one thread per process


def _photos(dest: Path, n: int, seed: int) -> list[Path]:
    """``n`` flowers12 photos (several classes) copied under ``dest/<class>/``."""
    files = sorted((FLOWERS / "train").glob("*/*.jpg"))
    if not files:
        sys.exit(f"no photos at {FLOWERS}/train; give --data")
    picked = random.Random(seed).sample(files, n)
    out = []
    for f in picked:
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / f.parent.name / f.name)
        out.append(dest / f.parent.name / f.name)
    return out


def _ingest_cmd(images: Path, store: Path, backbone: str) -> list[str]:
    return [
        str(BIN / "embedstore"),
        "ingest",
        str(images),
        "--store",
        str(store),
        "--backbone",
        backbone,
        "--batch-size",
        "4",
        "--commit-every",
        "4",
        "--workers",
        "0",
        "--quiet",
    ]


def _count(store: Path, expected_ids: set[str]) -> tuple[int, int]:
    """(images lost, images duplicated) of ``store`` against the ids that should be there."""
    ids = lance.dataset(str(store / "images.lance")).to_table(columns=["id"])["id"].to_pylist()
    return len(expected_ids - set(ids)), len(ids) - len(set(ids))


def _has_commit(store: Path) -> bool:
    v = store / "images.lance" / "_versions"
    return v.is_dir() and any(v.glob("*.manifest"))


def kill_during_ingest(tmp: Path, images: Path, ids: set[str], backbone: str, rng) -> dict:
    store = tmp / "kill-ingest"
    shutil.rmtree(store, ignore_errors=True)
    proc = subprocess.Popen(
        _ingest_cmd(images, store, backbone),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    while not _has_commit(store) and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 1.5))
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(
        _ingest_cmd(images, store, backbone), env=ENV, capture_output=True, text=True
    )
    lost, dup = _count(store, ids)
    return {"killed": killed, "lost": lost, "duplicated": dup, "unclear": int(r.returncode != 0)}


def two_writers(tmp: Path, halves: list[Path], ids: set[str], backbone: str) -> dict:
    store = tmp / "two-writers"
    shutil.rmtree(store, ignore_errors=True)
    procs = [
        subprocess.Popen(
            _ingest_cmd(h, store, backbone),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in halves
    ]
    refused, unclear = 0, 0
    for p, half in zip(procs, halves, strict=True):
        out, err = p.communicate()
        if p.returncode == 2 and "the store is being written by PID" in err:
            refused += 1
            subprocess.run(_ingest_cmd(half, store, backbone), env=ENV, capture_output=True)
        elif p.returncode != 0:
            unclear += 1
    lost, dup = _count(store, ids)
    return {"refused": refused, "lost": lost, "duplicated": dup, "unclear": unclear}


def _heads_of(run: Path) -> set[str]:
    from heads.runs._rundir import read_config

    cfg = read_config(run)
    if cfg.get("kind") != "ensemble":
        return {cfg["head"]}
    return {read_config(f)["head"] for f in sorted(run.glob("fold*"))}


def kill_during_retrain(tmp: Path, store: Path, run: Path, before: dict, rng) -> dict:
    import heads

    for stale in tmp.glob(f".{run.name}.partial-*"):
        shutil.rmtree(stale)
    if _heads_of(run) != {"linear"}:  # the last round finished before its kill: start over
        shutil.rmtree(run)
        shutil.copytree(tmp / "linear-run", run)
    cmd = [
        str(BIN / "heads"),
        "train",
        "--store",
        str(store),
        "--fold",
        "all",
        "--head",
        "mlp",
        "--epochs",
        "300",
        "--patience",
        "0",
        "--device",
        "cpu",
        "--out",
        str(run),
        "--overwrite",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list(tmp.glob(f".{run.name}.partial-*")) and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kinds = _heads_of(run)
    mixed = len(kinds) > 1 or (
        kinds == {"linear"} and heads.evaluate(run, plots=False).metrics != before
    )
    return {"mixed": int(mixed), "old_run_kept": int(kinds == {"linear"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="Rounds of each fault.")
    ap.add_argument("--images", type=int, default=48, help="flowers12 photos per round.")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/faults.json")
    a = ap.parse_args()
    import heads

    rng = random.Random(a.seed)
    info = machine_info()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        photos = _photos(tmp / "photos", a.images, a.seed)
        ids = {embedstore.ingestion.hash_bytes(p.read_bytes()) for p in photos}
        halves = [tmp / "half0", tmp / "half1"]
        for i, p in enumerate(photos):
            dest = halves[i % 2] / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
        # the store and the linear run every re-train round starts from
        base = tmp / "base"
        embedstore.ingest(tmp / "photos", base, backbones=[a.backbone], workers=0, progress=False)
        embedstore.split(base, folds=3, seed=0)
        run = tmp / "run"
        heads.train(
            base, fold="all", head="linear", out=run, progress=False, epochs=20, device="cpu"
        )
        before = heads.evaluate(run, plots=False).metrics
        shutil.copytree(run, tmp / "linear-run")
        kills, writers, retrains = [], [], []
        for r in range(a.rounds):
            kills.append(kill_during_ingest(tmp, tmp / "photos", ids, a.backbone, rng))
            writers.append(two_writers(tmp, halves, ids, a.backbone))
            retrains.append(kill_during_retrain(tmp, base, run, before, rng))
            print(f"round {r + 1}/{a.rounds}: {kills[-1]} {writers[-1]} {retrains[-1]}", flush=True)
    rows = [
        {
            "fault": "kill -9 during ingest",
            "rounds": len(kills),
            "killed_mid_run": sum(k["killed"] for k in kills),
            "images_lost": sum(k["lost"] for k in kills),
            "duplicated": sum(k["duplicated"] for k in kills),
            "unclear_failures": sum(k["unclear"] for k in kills),
            "mixed_runs": None,
        },
        {
            "fault": "two writers at once",
            "rounds": len(writers),
            "refused_with_pid": sum(w["refused"] for w in writers),
            "images_lost": sum(w["lost"] for w in writers),
            "duplicated": sum(w["duplicated"] for w in writers),
            "unclear_failures": sum(w["unclear"] for w in writers),
            "mixed_runs": None,
        },
        {
            "fault": "kill -9 during re-train",
            "rounds": len(retrains),
            "old_run_kept": sum(r["old_run_kept"] for r in retrains),
            "images_lost": None,
            "duplicated": None,
            "unclear_failures": None,
            "mixed_runs": sum(r["mixed"] for r in retrains),
        },
    ]
    print_table(
        rows,
        [
            "fault",
            "rounds",
            "killed_mid_run",
            "refused_with_pid",
            "old_run_kept",
            "images_lost",
            "duplicated",
            "unclear_failures",
            "mixed_runs",
        ],
        title=f"faults on {a.images} flowers12 photos ({a.backbone})",
    )
    bad = sum(
        r[k] or 0
        for r in rows
        for k in ("images_lost", "duplicated", "unclear_failures", "mixed_runs")
    )
    print("all zero: yes" if bad == 0 else f"NOT all zero: {bad}")
    out = write_json(
        {
            "machine": info,
            "args": vars(a),
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        a.out,
    )
    print(f"wrote {out}")
    sys.exit(0 if bad == 0 else 1)


if __name__ == "__main__":
    main()
