"""The HTTP service under load, on loopback, each figure beside its floor measured in the same
run: every row against ``GET /health`` at the same concurrency (what uvicorn + FastAPI + this
client cost for a request that does nothing), uploads against the backbone's own forward rate
and ``embedstore ingest``'s rate on the same photos. Ratios hold on any machine; absolute
figures only on the machine that made them.

    python benchmarks/service.py --requests 500                 # ~3 min on a quiet 2-core CPU
    python benchmarks/service.py --requests 500 --rounds 2      # memory: flat in round 2?
    python benchmarks/service.py --requests 64 --concurrency 8 --only "GET /health" \\
        "predict by stored id"

Ingests ../shared/data/flowers12 into benchmarks/out/service-store once (reused), splits it in
5 folds and trains a 5-fold MLP ensemble with the default unknown detector (energy-knn) on it,
starts the real server (``embedstore serve``) in a subprocess on 127.0.0.1, then for each
scenario (health, predict by stored id, predict on an uploaded 224 px JPEG, a hostile 1 x 60000
PNG, lookup on an upload) sends a bounded number of requests at each concurrency and stops.
The uploads are the flowers12 photos re-encoded at 224 px; before the server starts, the same
files are ingested into a scratch store (the ingest rate) and embedded in batches of 32 by the
backbone as the service builds it (the forward rate). Baselines after the server stops:
``heads predict`` as one process per request and the library in-process. Memory is the server's
resident set after each row; ``--rounds 2`` runs every scenario twice, which tells a high-water
mark (flat in the second round) from a leak (still growing). Ends with the issue's checks
(predict by id at concurrency 8 against /health, uploads at 32 against the forward rate,
memory) and writes benchmarks/out/service.json.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import embedstore  # noqa: E402
import heads  # noqa: E402
from benchmarks._common import FLOWERS, OUT_DIR, REPO, machine_info, print_table, write_json  # noqa: E402

RUN = "mlp5"  # the 5-fold MLP ensemble every prediction row asks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib(pid: int) -> float:
    """The server's peak resident set so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _strip_png() -> bytes:
    """The hostile image: a 1 x 60000 px PNG of a few hundred bytes (a naive resize to 224 on
    the short side makes 224 x 13.4M px)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 60000)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_224(path: Path) -> bytes:
    im = Image.open(path).convert("RGB").resize((224, 224))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _prepare(out: Path, device: str) -> tuple[Path, Path]:
    store, runs = out / "service-store", out / "service-runs"
    if not (store / "images.lance").exists():
        embedstore.ingest(FLOWERS, store, progress=True, device=device)
    cfg = runs / RUN / "config.json"
    if not cfg.exists() or heads.runs.read_run_config(runs / RUN).kind != "ensemble":
        shutil.rmtree(runs, ignore_errors=True)
        embedstore.split(store, folds=5, use_split_column=True, seed=0)
        heads.train(
            store,
            fold="all",  # the 5 folds' runs and their ensemble
            head="mlp",
            out=runs / RUN,
            epochs=30,
            unknown="energy-knn",
            progress=False,
            device=device,
        )
    return store, runs


def _upload_photos(out: Path, n: int) -> list[Path]:
    """flowers12's photos re-encoded as 224 x 224 JPEGs (made once): what the uploads send."""
    folder = out / "service-uploads-224"
    src = sorted(FLOWERS.rglob("*.jpg"))[:n]
    files = [folder / f"{k:04d}.jpg" for k in range(len(src))]
    for p, f in zip(src, files, strict=True):
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(_jpeg_224(p))
    return files


def _ingest_rate(files: list[Path], out: Path, device: str) -> float:
    """``embedstore ingest`` of ``files`` into a scratch store: images per second, end to end."""
    scratch = out / "service-ingest-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.perf_counter()
    s = embedstore.ingest(files[0].parent, scratch, progress=False, device=device)
    rate = s.new_images / (time.perf_counter() - t0)
    shutil.rmtree(scratch, ignore_errors=True)
    return rate


def _forward_rate(st: embedstore.Store, files: list[Path], device: str) -> tuple[float, float]:
    """The backbone as the service builds it (runtime ``auto``: ONNX Runtime on the CPU, arena
    off), on batches of 32 of ``files`` preprocessed beforehand: images per second, and CPU
    milliseconds per image."""
    info = st.resolve_backbone(None)
    bb = embedstore.backbones.with_runtime(
        embedstore.backbones.backbone_from_description(info.describe),
        embedstore.backbones.runtime_for_column("auto", info.describe, device),
        device,
        memory_arena=False,
    )
    x = np.stack([bb.preprocess(Image.open(f).convert("RGB")) for f in files])
    batches = [torch.from_numpy(x[s : s + 32]) for s in range(0, len(x) - 31, 32)]
    bb.embed(batches[0])  # warm
    t0, cpu0 = time.perf_counter(), time.process_time()
    for b in batches:
        bb.embed(b)
    n = 32 * len(batches)
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - cpu0) / n


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(url: str, concurrency: int, n: int, send, pid: int) -> dict[str, Any]:
    """``n`` requests, ``concurrency`` at a time; latency percentiles (ms), requests/s and the
    server's CPU time per request (less sensitive to other load than the wall clock)."""
    lat: list[float] = []
    errors = 0

    def one(i: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            r = send(client, i)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        lat.append((time.perf_counter() - t0) * 1000)
        errors += 0 if ok else 1

    with httpx.Client(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)
    ) as client:
        send(client, 0)  # warm
        t0, cpu0 = time.perf_counter(), _cpu_s(pid)
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(n)))
        wall, cpu = time.perf_counter() - t0, _cpu_s(pid) - cpu0
    q = np.percentile(lat, [50, 95, 99])
    return {
        "requests": n,
        "concurrency": concurrency,
        "p50_ms": q[0],
        "p95_ms": q[1],
        "p99_ms": q[2],
        "req_per_s": n / wall,
        "server_cpu_ms": 1000 * cpu / n,
        "errors": errors,
    }


def _row(rnd: int, name: str, r: dict[str, Any], pid: int) -> dict[str, Any]:
    row = {
        "round": rnd,
        "scenario": name,
        **r,
        "rss_mib": _rss_mib(pid),
        "peak_mib": _peak_mib(pid),
    }
    print(
        f"[{rnd}] {name:<26} c={r['concurrency']:<3} p50 {r['p50_ms']:.1f} ms  p99 "
        f"{r['p99_ms']:.1f} ms  {r['req_per_s']:.1f} req/s  errors {r['errors']}  server "
        f"{row['rss_mib']:.0f} MiB (peak {row['peak_mib']:.0f})"
    )
    return row


def _during_hostile_stream(
    url: str, args: argparse.Namespace, uploads: list[bytes], strip: bytes, pid: int
) -> dict[str, Any]:
    """8 clients predicting on ordinary photos while another client sends 1 x 60000 PNGs as
    fast as it can: their p99 against the same row without the stream."""
    stop, sent = threading.Event(), [0]

    def hostile() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                c.post(
                    "/v1/predict",
                    files=[("images", ("strip.png", strip))],
                    data={"run": RUN, "top_k": "3"},
                )
                sent[0] += 1

    t = threading.Thread(target=hostile, daemon=True)
    t.start()
    try:
        r = _load(
            url,
            8,
            args.upload_requests,
            lambda c, i: c.post(
                "/v1/predict",
                files=[("images", ("p.jpg", uploads[i % len(uploads)]))],
                data={"run": RUN, "top_k": "3"},
            ),
            pid,
        )
    finally:
        stop.set()
        t.join(timeout=60)
    row = _row(0, "predict upload 224px during a hostile stream", r, pid)
    row["hostile_requests"] = sent[0]
    print(f"    (meanwhile {sent[0]} hostile 1 x 60000 PNGs were answered)")
    return row


def _start_server(
    store: Path, runs: Path, device: str, forwards: int = 1
) -> tuple[subprocess.Popen, str, float]:
    """``embedstore serve`` in a subprocess on a free loopback port, once ``/ready``."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from cli import embedstore_cli; embedstore_cli()", "serve"]
    cmd += ["--store", str(store), "--runs", str(runs), "--port", str(port), "--device", device]
    cmd += ["--max-batch", "32", "--max-wait-ms", "10", "--forwards", str(forwards)]
    server = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    t0 = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return server, url, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.perf_counter() - t0 > 300:
            server.kill()
            sys.exit("the server did not start")
        time.sleep(0.2)


def _scenarios(args: argparse.Namespace, ids: list[str], uploads: list[bytes], strip: bytes):
    def upload(name: str, data: bytes | None = None):
        return lambda c, i: c.post(
            "/v1/predict",
            files=[("images", (name, data or uploads[i % len(uploads)]))],
            data={"run": RUN, "top_k": "3"},
        )

    out = {
        # the floor: what uvicorn + FastAPI + this client cost for a request that does nothing
        "GET /health": (args.requests, lambda c, i: c.get("/health")),
        "predict by stored id": (
            args.requests,
            lambda c, i: c.post(
                "/v1/predict", json={"run": RUN, "ids": [ids[i % len(ids)]], "top_k": 3}
            ),
        ),
        "predict upload 224px": (args.upload_requests, upload("p.jpg")),
        "predict upload 1x60000 png": (args.upload_requests, upload("strip.png", strip)),
        "lookup upload 224px": (
            args.upload_requests,
            lambda c, i: c.post(
                "/v1/lookup",
                files=[("images", ("p.jpg", uploads[i % len(uploads)]))],
                data={"k": "10"},
            ),
        ),
    }
    return {k: v for k, v in out.items() if not args.only or k in args.only}


def _forwards(url: str) -> tuple[int, int]:
    """The backbone's forward passes and images embedded so far (``GET /v1/backbones``)."""
    cols = httpx.get(f"{url}/v1/backbones", timeout=30).json()["store"]
    return sum(c["forward_passes"] for c in cols), sum(c["images_embedded"] for c in cols)


def _with_ratios(rows: list[dict[str, Any]], forward: float, ingest: float) -> None:
    """Each row beside the ``GET /health`` row of the same round and concurrency (throughput
    and p99 ratios), and image rows beside the forward and ingest rates."""
    floor = {(r["round"], r["concurrency"]): r for r in rows if r["scenario"] == "GET /health"}
    for r in rows:
        h = floor.get((r["round"], r["concurrency"]))
        r["rps_vs_health"] = r["req_per_s"] / h["req_per_s"] if h else None
        r["p99_vs_health"] = r["p99_ms"] / h["p99_ms"] if h else None
        images = "upload" in r["scenario"] or "hostile" in r["scenario"]
        r["vs_forward"] = r["req_per_s"] / forward if images and forward else None
        r["vs_ingest"] = r["req_per_s"] / ingest if images and ingest else None


def _checks(rows: list[dict[str, Any]], mem_start: float) -> list[dict[str, Any]]:
    """The issue's targets, read from this run's rows (the last round's)."""
    last = max((r["round"] for r in rows), default=1)

    def row(name: str, c: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r["scenario"] == name and r["concurrency"] == c and r["round"] == last
            ),
            None,
        )

    out = []
    by_id = row("predict by stored id", 8)
    if by_id and by_id["rps_vs_health"] is not None:
        out.append(
            {
                "check": "predict by id, c=8: throughput >= 50% of /health's",
                "value": by_id["rps_vs_health"],
                "met": by_id["rps_vs_health"] >= 0.5,
            }
        )
        out.append(
            {
                "check": "predict by id, c=8: p99 <= 2x /health's",
                "value": by_id["p99_vs_health"],
                "met": by_id["p99_vs_health"] <= 2.0,
            }
        )
    up = row("predict upload 224px", 32)
    if up and up["vs_forward"] is not None:
        out.append(
            {
                "check": "uploads, c=32: >= 80% of the forward rate",
                "value": up["vs_forward"],
                "met": up["vs_forward"] >= 0.8,
            }
        )
    if last > 1:  # memory: the server's resident set at the end of each round
        ends = [[r for r in rows if r["round"] == k][-1]["rss_mib"] for k in range(1, last + 1)]
        grew = ends[-1] - ends[-2]
        n = sum(r["requests"] for r in rows if r["round"] == last)
        out.append(
            {
                "check": f"memory flat: round {last} ({n:,} requests) ends within 5% of round "
                f"{last - 1}'s end (MiB at start, then each round's end: {mem_start:.0f}, "
                + ", ".join(f"{e:.0f}" for e in ends)
                + "); growth MiB",
                "value": grew,
                "met": grew <= 0.05 * ends[-2],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--requests", type=int, default=500, help="requests per scenario and concurrency"
    )
    ap.add_argument("--upload-requests", type=int, default=192)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--photos", type=int, default=960, help="flowers12 photos the uploads send")
    ap.add_argument("--processes", type=int, default=2, help="`heads predict` process runs")
    ap.add_argument("--rounds", type=int, default=1, help="run every scenario this many times")
    ap.add_argument("--forwards", type=int, default=2, help="the server's --forwards")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="scenarios to run, e.g. 'GET /health' 'predict by stored id' 'hostile stream'",
    )
    ap.add_argument("--out", default=str(OUT_DIR / "service.json"))
    args = ap.parse_args()
    if not (FLOWERS / "train").is_dir():
        sys.exit(f"{FLOWERS}: flowers12 photos not found")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    info = machine_info()  # the load average as the run starts
    store, runs = _prepare(OUT_DIR, args.device)
    st = embedstore.connect(store)
    ids = st.read(["id"], part="holdout").column("id").to_pylist()
    files = _upload_photos(OUT_DIR, args.photos)
    uploads = [f.read_bytes() for f in files]
    strip = _strip_png()
    # ---- the floors of the upload rows, on the same photos, before the server starts
    ingest_rate = _ingest_rate(files, OUT_DIR, args.device)
    forward_rate, forward_cpu_ms = _forward_rate(st, files, args.device)
    print(
        f"ingest {ingest_rate:.1f} img/s, backbone forward {forward_rate:.1f} img/s "
        f"({forward_cpu_ms:.1f} CPU ms per image)"
    )

    # ---- the server
    server, url, start_s = _start_server(store, runs, args.device, args.forwards)
    try:
        mem_start = _rss_mib(server.pid)
        rows = []
        for rnd in range(1, args.rounds + 1):
            for name, (n, send) in _scenarios(args, ids, uploads, strip).items():
                for conc in args.concurrency:
                    before = _forwards(url)
                    r = _load(url, conc, n, send, server.pid)
                    passes, images = (b - a for a, b in zip(before, _forwards(url), strict=True))
                    r["images_per_forward"] = images / passes if passes else None
                    rows.append(_row(rnd, name, r, server.pid))
        if not args.only or "hostile stream" in args.only:
            rows.append(_during_hostile_stream(url, args, uploads, strip, server.pid))
        mem_end = _rss_mib(server.pid)
    finally:
        server.kill()
        server.wait()
    _with_ratios(rows, forward_rate, ingest_rate)

    # ---- baselines after the server stops
    model = heads.load(runs / RUN, device=args.device)
    resident = embedstore.Resident(st, list(model.backbone_columns()), model.columns)
    lib_ms = []
    for i in range(50):
        t = time.perf_counter()
        heads.predict(model, ids=[ids[i % len(ids)]], top_k=3, resident=resident)
        lib_ms.append((time.perf_counter() - t) * 1000)
    fast = heads.runs.compile_predictor(model)
    fast_ms = []
    for i in range(50):
        t = time.perf_counter()
        heads.predict(fast, ids=[ids[i % len(ids)]], top_k=3, resident=resident)
        fast_ms.append((time.perf_counter() - t) * 1000)
    proc_s = []
    for i in range(args.processes):
        t = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "heads"), "predict", str(runs / RUN), str(files[i])]
            + ["--json"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        proc_s.append(time.perf_counter() - t)
    base = [
        {
            "what": "heads predict, one process per request (1 photo)",
            "ms": 1000 * statistics.mean(proc_s),
        },
        {
            "what": "library in-process, predict by stored id (torch)",
            "ms": statistics.median(lib_ms),
        },
        {
            "what": "library in-process, predict by stored id (compiled)",
            "ms": statistics.median(fast_ms),
        },
        {"what": "backbone forward, batches of 32 (images/s)", "rate": forward_rate},
        {"what": "backbone forward, CPU ms per image", "ms": forward_cpu_ms},
        {"what": "embedstore ingest of the same photos (images/s)", "rate": ingest_rate},
        {
            "what": "server memory MiB at start / end",
            "mem_start_mib": mem_start,
            "mem_end_mib": mem_end,
        },
        {"what": "server start-up to /ready (s)", "rate": start_s},
    ]
    checks = _checks(rows, mem_start)
    print_table(
        rows,
        [
            "round",
            "scenario",
            "concurrency",
            "requests",
            "p50_ms",
            "p99_ms",
            "req_per_s",
            "rps_vs_health",
            "p99_vs_health",
            "vs_forward",
            "vs_ingest",
            "server_cpu_ms",
            "images_per_forward",
            "errors",
            "rss_mib",
        ],
        "service on loopback (ratios: to GET /health at the same concurrency, to the forward and "
        "ingest rates)",
    )
    print_table(
        base, ["what", "ms", "rate", "mem_start_mib", "mem_end_mib"], "baselines (same run)"
    )
    print_table(checks, ["check", "value", "met"], "the issue's checks")
    print(f"\nmachine: {info}\nload average at the end: {os.getloadavg()}")
    write_json({"machine": info, "rows": rows, "baselines": base, "checks": checks}, args.out)


if __name__ == "__main__":
    main()
