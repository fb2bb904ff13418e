"""The HTTP service under load, on loopback: latency and throughput against one process per
request and against the library called in-process, in one run.

    python benchmarks/service.py                       # flowers12, efficientnet-lite0, CPU
    python benchmarks/service.py --requests 64 --concurrency 1 8

Ingests ../shared/data/flowers12 into benchmarks/out/service-store once (reused), trains a
centroid run and an MLP run on it, starts the real server (``embedstore serve``) in a
subprocess on 127.0.0.1, then for each scenario (predict by stored id, predict on an uploaded
224 px JPEG, lookup on an upload) sends a bounded number of requests at each concurrency and
stops. Baselines in the same run: ``heads predict`` as one process per request, the library
in-process (``heads.predict`` with the run loaded once), and the backbone's own forward rate
(the ceiling for uploads). Memory is the server's resident set at start, after each row and
at the end; ``--rounds 2`` runs every scenario twice, which tells a high-water mark (flat in
the second round) from a leak (still growing).
Prints tables and writes benchmarks/out/service.json.
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
    if not (runs / "mlp" / "config.json").exists():
        shutil.rmtree(runs, ignore_errors=True)
        embedstore.split(store, folds=3, use_split_column=True, seed=0)
        heads.train(
            store,
            fold=0,
            head="mlp",
            out=runs / "mlp",
            epochs=30,
            unknown="energy",
            progress=False,
            device=device,
        )
    return store, runs


def _load(url: str, concurrency: int, n: int, send) -> dict[str, Any]:
    """``n`` requests, ``concurrency`` at a time; latency percentiles (ms) and requests/s."""
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
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 95, 99])
    return {
        "requests": n,
        "concurrency": concurrency,
        "p50_ms": q[0],
        "p95_ms": q[1],
        "p99_ms": q[2],
        "req_per_s": n / wall,
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
                    data={"run": "mlp", "top_k": "3"},
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
                data={"run": "mlp", "top_k": "3"},
            ),
        )
    finally:
        stop.set()
        t.join(timeout=60)
    row = _row(0, "predict upload 224px during a hostile stream", r, pid)
    row["hostile_requests"] = sent[0]
    print(f"    (meanwhile {sent[0]} hostile 1 x 60000 PNGs were answered)")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--requests", type=int, default=160, help="requests per scenario and concurrency"
    )
    ap.add_argument("--upload-requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--processes", type=int, default=3, help="`heads predict` process runs")
    ap.add_argument("--rounds", type=int, default=1, help="run every scenario this many times")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="scenarios to run, e.g. 'GET /health' 'predict by stored id'",
    )
    ap.add_argument("--out", default=str(OUT_DIR / "service.json"))
    args = ap.parse_args()
    if not (FLOWERS / "train").is_dir():
        sys.exit(f"{FLOWERS}: flowers12 photos not found")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    store, runs = _prepare(OUT_DIR, args.device)
    st = embedstore.connect(store)
    ids = st.read(["id"], part="holdout").column("id").to_pylist()
    photos = sorted((FLOWERS / "test").rglob("*.jpg"))[:64]
    uploads = [_jpeg_224(p) for p in photos]
    strip = _strip_png()

    # ---- the server
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli import embedstore_cli; embedstore_cli()",
            "serve",
            "--store",
            str(store),
            "--runs",
            str(runs),
            "--port",
            str(port),
            "--device",
            args.device,
            "--max-batch",
            "32",
            "--max-wait-ms",
            "10",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.perf_counter()
    try:
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.perf_counter() - t0 > 300:
                sys.exit("the server did not start")
            time.sleep(0.2)
        start_s = time.perf_counter() - t0
        mem_start = _rss_mib(server.pid)
        scenarios = {
            # the floor: what uvicorn + FastAPI + this client cost for a request that does nothing
            "GET /health": (args.requests, lambda c, i: c.get("/health")),
            "predict by stored id": (
                args.requests,
                lambda c, i: c.post(
                    "/v1/predict", json={"run": "mlp", "ids": [ids[i % len(ids)]], "top_k": 3}
                ),
            ),
            "predict upload 224px": (
                args.upload_requests,
                lambda c, i: c.post(
                    "/v1/predict",
                    files=[("images", ("p.jpg", uploads[i % len(uploads)]))],
                    data={"run": "mlp", "top_k": "3"},
                ),
            ),
            "predict upload 1x60000 png": (
                args.upload_requests,
                lambda c, i: c.post(
                    "/v1/predict",
                    files=[("images", ("strip.png", strip))],
                    data={"run": "mlp", "top_k": "3"},
                ),
            ),
            "lookup upload 224px": (
                args.upload_requests,
                lambda c, i: c.post(
                    "/v1/lookup",
                    files=[("images", ("p.jpg", uploads[i % len(uploads)]))],
                    data={"k": "10"},
                ),
            ),
        }
        scenarios = {k: v for k, v in scenarios.items() if not args.only or k in args.only}
        rows = []
        for rnd in range(1, args.rounds + 1):
            for name, (n, send) in scenarios.items():
                for conc in args.concurrency:
                    r = _load(url, conc, n, send)
                    rows.append(_row(rnd, name, r, server.pid))
        if not args.only or "hostile stream" in args.only:
            rows.append(_during_hostile_stream(url, args, uploads, strip, server.pid))
        mem_end = _rss_mib(server.pid)
    finally:
        server.kill()
        server.wait()

    # ---- baselines in the same run
    bb = embedstore.backbones.backbone_from_description(st.resolve_backbone(None).describe).to(
        args.device
    )
    x = torch.from_numpy(
        np.stack([bb.preprocess(Image.open(io.BytesIO(u)).convert("RGB")) for u in uploads[:32]])
    )
    bb.embed(x)
    t0 = time.perf_counter()
    for _ in range(3):
        bb.embed(x)
    forward_rate = 3 * len(x) / (time.perf_counter() - t0)
    model = heads.load(runs / "mlp", device=args.device)
    resident = embedstore.Resident(st, list(model.backbone_columns()), model.columns)
    lib_ms = []
    for i in range(50):
        t = time.perf_counter()
        heads.predict(model, ids=[ids[i % len(ids)]], top_k=3, resident=resident)
        lib_ms.append((time.perf_counter() - t) * 1000)
    cache: dict[str, Any] = {}
    lib_up = []
    for i in range(10):
        t = time.perf_counter()
        heads.predict(model, [uploads[i]], top_k=3, resident=resident, backbones=cache)
        lib_up.append((time.perf_counter() - t) * 1000)
    proc_s = []
    for i in range(args.processes):
        t = time.perf_counter()
        subprocess.run(
            [
                str(Path(sys.executable).parent / "heads"),
                "predict",
                str(runs / "mlp"),
                str(photos[i]),
                "--json",
            ],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        proc_s.append(time.perf_counter() - t)
    up32 = next(
        (
            r
            for r in rows
            if r["scenario"] == "predict upload 224px"
            and r["concurrency"] == max(args.concurrency)
            and r["round"] == args.rounds
        ),
        {"concurrency": max(args.concurrency), "req_per_s": float("nan")},
    )
    base = [
        {
            "what": "heads predict, one process per request (1 photo)",
            "ms": 1000 * statistics.mean(proc_s),
        },
        {"what": "library in-process, predict by stored id", "ms": statistics.median(lib_ms)},
        {"what": "library in-process, predict on an upload", "ms": statistics.median(lib_up)},
        {"what": "backbone forward, batch 32 (images/s)", "ms": None, "rate": forward_rate},
        {
            "what": f"service uploads at concurrency {up32['concurrency']} (images/s)",
            "ms": None,
            "rate": up32["req_per_s"],
            "share_of_forward": up32["req_per_s"] / forward_rate,
        },
        {
            "what": "server memory MiB at start / end",
            "ms": None,
            "rate": None,
            "mem_start_mib": mem_start,
            "mem_end_mib": mem_end,
        },
        {"what": "server start-up to /ready (s)", "ms": None, "rate": start_s},
    ]
    print_table(
        rows,
        [
            "round",
            "scenario",
            "concurrency",
            "requests",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "req_per_s",
            "errors",
            "rss_mib",
            "peak_mib",
        ],
        "service on loopback",
    )
    print_table(
        base,
        ["what", "ms", "rate", "share_of_forward", "mem_start_mib", "mem_end_mib"],
        "baselines (same run)",
    )
    info = machine_info()
    print(f"\nmachine: {info}")
    write_json({"machine": info, "rows": rows, "baselines": base}, args.out)


if __name__ == "__main__":
    main()
