"""Decoding and preprocessing uploads: threads against a process pool, on the same photos.

    python benchmarks/decode_workers.py                 # 224 px JPEGs and 12 MP JPEGs

The service decodes and preprocesses uploads in its request threads. Whether a process pool
would do better depends on how much of that work holds the GIL: Pillow's decoders and resize
release it, so threads already use every core for the pixel work. This measures images per
second for decode + preprocess (efficientnet-lite0's: shortest side to 224, centre crop) with
1 thread, N threads and N processes (spawned, warmed before timing, the arrays pickled back as
the service would need them; the median of interleaved repeats), on flowers12 photos
re-encoded at 224 x 224 and upscaled to 12 MP (4000 x 3000, what a phone sends). Prints a
table, writes benchmarks/out/decode_workers.json.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import FLOWERS, OUT_DIR, machine_info, print_table, write_json  # noqa: E402
from embedstore._images import decode_image  # noqa: E402
from embedstore.backbones._preprocess import Preprocess  # noqa: E402

PRE = Preprocess(resize_px=224, crop_px=224, mean=(0.5,) * 3, std=(0.5,) * 3, resample="bicubic")


def decode_and_preprocess(data: bytes) -> np.ndarray:
    """What the service does per upload before the forward: (3, 224, 224) uint8."""
    return PRE(decode_image(data))


def _jpeg(path: Path, size: tuple[int, int]) -> bytes:
    im = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rate(datas: list[bytes], pool: Executor | None) -> float:
    t0 = time.perf_counter()
    if pool is None:
        for d in datas:
            decode_and_preprocess(d)
    else:
        list(pool.map(decode_and_preprocess, datas))
    return len(datas) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="threads / processes")
    ap.add_argument("--small", type=int, default=480, help="224 px photos")
    ap.add_argument("--large", type=int, default=24, help="12 MP photos")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved; the median is shown")
    ap.add_argument("--out", default=str(OUT_DIR / "decode_workers.json"))
    args = ap.parse_args()
    photos = sorted(FLOWERS.rglob("*.jpg"))
    if not photos:
        sys.exit(f"{FLOWERS}: flowers12 photos not found")
    info = machine_info()
    sets = {
        "224 x 224 JPEG": [_jpeg(p, (224, 224)) for p in photos[: args.small]],
        "4000 x 3000 JPEG": [_jpeg(p, (4000, 3000)) for p in photos[: args.large]],
    }
    rows: list[dict[str, Any]] = []
    with (
        ThreadPoolExecutor(args.workers) as threads,
        ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as procs,
    ):
        list(procs.map(decode_and_preprocess, sets["224 x 224 JPEG"][: 4 * args.workers]))
        for name, datas in sets.items():
            rates: dict[str, list[float]] = {"one": [], "threads": [], "procs": []}
            for _ in range(args.repeats):  # interleaved: a busy machine's drift hits all three
                rates["one"].append(_rate(datas, None))
                rates["threads"].append(_rate(datas, threads))
                rates["procs"].append(_rate(datas, procs))
            one, t, p = (float(np.median(rates[k])) for k in ("one", "threads", "procs"))
            rows.append(
                {
                    "photos": name,
                    "n": len(datas),
                    "1 thread img/s": one,
                    f"{args.workers} threads img/s": t,
                    f"{args.workers} processes img/s": p,
                    "threads / 1": t / one,
                    "processes / 1": p / one,
                }
            )
    print_table(rows, list(rows[0]), "decode + preprocess (efficientnet-lite0's)")
    print(f"\nmachine: {info}")
    write_json({"machine": info, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
