"""Ingest throughput: how close `embedstore.ingest` gets to the model's forward-pass ceiling.

Run from the repository root (the first run writes the test images once, to a cache folder):

    python benchmarks/ingest.py                              # 3000 images, default backbones
    python benchmarks/ingest.py --n 60 --workers 1           # a quick check that it works
    python benchmarks/ingest.py --backbones efficientnet-lite0,dinov2-small --device cuda
    python benchmarks/ingest.py --runtimes torch,onnx         # CPU: torch eager vs ONNX Runtime
    python benchmarks/ingest.py --backbones dinov2-small --n 600 --no-marginal \
        --runtimes torch,onnx,onnx-int8 --batch-sweep 32   # DINOv2: float32 and int8 ONNX

The images are N real photos of about 300x400 px: random crops, flips and rescales of the
flowers12 photos (``../shared/data/flowers12``) saved as JPEG quality 90, landscape 400x300 or
portrait 300x400, in ``benchmarks/out/ingest-images-<n>/{a,b}/<species>/`` (gitignored; ``a`` holds
the first half).

For each backbone it measures, in images per second:

- **forward ceiling**: ``backbone.embed`` on a uint8 batch already in memory on the device
  (normalise + forward, CUDA autocast as in ingest), after warm-up, with ``cuda.synchronize``;
- **ingest**: the whole ``embedstore.ingest`` of the folder into a fresh temporary store (scan,
  decode workers, forward, Lance commits, compaction), from its own summary; the same for the
  first half of the images, which splits the time into a fixed cost (worker start-up, scan,
  store creation, compaction) and a marginal rate, what a much larger folder would approach;
  then the time of a second ingest of the whole folder (nothing new: scanning and checking);
- **decode**: the ingest's decode workers alone (its private ``_DecodeDataset``: read + hash +
  decode + preprocess, the same DataLoader settings and worker count, no model), with the time to
  the first batch (worker start-up); and two single-process baselines: the ingest's per-file code,
  and plain PIL (``Image.open().convert("RGB")`` + the same resize/crop, no hashing or EXIF
  handling).

Ingest is reported as a % of the ceiling and of ``min(ceiling, steady decode rate)``, the rate a
perfectly overlapped pipeline would reach.

**Runtimes** (``--runtimes``, default ``torch,onnx`` on the CPU, ``torch`` on CUDA): the forward
ceiling and the whole ingest are measured for each runtime, one after the other in this process
(``embedstore.backbones.with_runtime``: torch eager, or the backbone's cached ONNX export run by
ONNX Runtime with one intra-op thread per core), on the same images, so the comparison holds on a
busy machine. ``--batch-sweep`` times the forward pass of each runtime at several batch sizes.
Each runtime other than torch also gets its embeddings of 64 of the photos compared with
torch's (min cosine, max abs difference): ``onnx`` is torch within float32 rounding,
``onnx-int8`` (quantised) is not, and the row says by how much.
Beside them, the **FLOP ceiling**: the backbone's FLOPs per image (``torch.utils.flop_counter``,
a multiply-add counted as 2) against the CPU's peak (cores x clock x FLOPs per cycle: 32 with
AVX2 + FMA, 64 with AVX-512, i.e. two FMA units; ``--peak-gflops`` to give it). Default
backbones: ``efficientnet-lite0``; on CUDA also ``dinov2-small`` and ``dinov2-large`` with *random*
weights, built from ``Dinov2Config`` at the real sizes and saved with ``save_pretrained`` (so the
ordinary loading path is used, and no network is needed): the speed of a model does not depend on
its weights.

Prints a table and writes ``--out`` (default ``benchmarks/out/ingest.json``) with the machine's
description (``machine_info()``: CPU, GPU, versions, load average at the start).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python benchmarks/ingest.py` puts benchmarks/ first on sys.path; import from the repo root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks._common import FLOWERS, OUT_DIR, machine_info, print_table, write_json  # noqa: E402

# Real DINOv2 sizes (facebook/dinov2-*): hidden, layers, heads; mlp = 4 x hidden, patch 14.
DINOV2_SIZES: dict[str, tuple[int, int, int]] = {
    "dinov2-small": (384, 12, 6),
    "dinov2-base": (768, 12, 12),
    "dinov2-large": (1024, 24, 16),
    "dinov2-giant": (1536, 40, 24),
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# --------------------------------------------------------------------------- test images


def make_images(n: int, dest: Path, source: Path = FLOWERS, seed: int = 0) -> Path:
    """Write ``n`` JPEGs of 400x300 / 300x400 px derived from real photos into ``dest`` (once).

    Each is a random crop (55-100 % of the photo's area, at the target aspect ratio) of one
    flowers12 photo, flipped half the time, resized (bicubic) and saved at quality 90 under
    ``dest/a/<species>/`` (the first half) and ``dest/b/<species>/``. A finished folder holds
    ``.complete`` and is reused as it is.
    """
    if (dest / ".complete").exists() and (dest / "a").is_dir():
        return dest
    photos = sorted(p for p in source.glob("*/*/*.jpg"))
    if not photos:
        raise SystemExit(f"no photos found under {source}/*/*/*.jpg; pass --flowers DIR")
    rng = np.random.default_rng(seed)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    for i in range(n):
        src = photos[i % len(photos)]
        with Image.open(src) as f:
            im = f.convert("RGB")
        out_w, out_h = (400, 300) if rng.random() < 0.5 else (300, 400)
        aspect = out_w / out_h
        w, h = im.size
        area = rng.uniform(0.55, 1.0) * w * h
        cw = min(w, round((area * aspect) ** 0.5))
        ch = min(h, round(cw / aspect))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = im.resize((out_w, out_h), Image.BICUBIC)
        folder = tmp / ("a" if i < n // 2 else "b") / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:06d}.jpg", quality=90)
    (tmp / ".complete").write_text(f"{n}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"wrote {n} images to {dest} in {time.perf_counter() - t0:.1f} s")
    return dest


# --------------------------------------------------------------------------- backbones


def random_dinov2(name: str, folder: Path) -> Path:
    """A DINOv2 of ``name``'s real size with random weights, saved with ``save_pretrained``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    try:  # the same config file; the Pil class avoids a warning when torchvision is absent
        from transformers import BitImageProcessorPil as Processor
    except ImportError:
        from transformers import BitImageProcessor as Processor

    hidden, layers, heads = DINOV2_SIZES[name]
    cfg = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=4,
        patch_size=14,
        image_size=224,
        use_swiglu_ffn=name == "dinov2-giant",  # as the released giant
    )
    torch.manual_seed(0)
    Dinov2Model(cfg).save_pretrained(folder)
    Processor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(folder)
    return folder


def build_backbone(name: str, models_dir: Path) -> Any:
    """``dinov2-*`` short names: random weights at the real size; anything else as registered."""
    import embedstore

    if name in DINOV2_SIZES:
        folder = random_dinov2(name, models_dir / name)
        return embedstore.create_backbone(str(folder), "cls", alias=name)
    return embedstore.create_backbone(name, "cls")


# --------------------------------------------------------------------------- measurements


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_ceiling(
    backbone: Any, files: list[Path], batch_size: int, device: Any, min_seconds: float
) -> dict[str, Any]:
    """``backbone.embed`` images/s on one real uint8 batch already on ``device``."""
    import torch

    arrays = []
    for p in files[:batch_size]:
        with Image.open(p) as f:
            arrays.append(backbone.preprocess(f.convert("RGB")))
    while len(arrays) < batch_size:  # fewer files than a batch: repeat them
        arrays += arrays[: batch_size - len(arrays)]
    x = torch.from_numpy(np.stack(arrays)).to(device)  # (B, 3, H, W) uint8
    for _ in range(2):  # warm-up: allocator, cuDNN / kernel selection, lazy init
        backbone.embed(x)
    _sync(device)
    times: list[float] = []
    t_start, cpu_start = time.perf_counter(), time.process_time()
    while len(times) < 3 or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter()
        backbone.embed(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu_start  # every thread of this process
    per_batch = statistics.median(times)
    return {
        "images_per_s": batch_size / per_batch,
        "seconds_per_batch": per_batch,
        "batches": len(times),
        "input_px": int(x.shape[-1]),
        "images_per_cpu_s": batch_size * len(times) / cpu if cpu > 0 else None,
    }


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (decode workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_ingest(
    folder: Path,
    backbone: Any,
    batch_size: int,
    device: str,
    workers: int | None,
    runtime: str = "auto",
    marginal: bool = True,
) -> dict[str, Any]:
    """``embedstore.ingest`` into fresh temporary stores: the first half, all, all again (no-op).

    Two sizes split the time into a fixed part (worker start-up, scan, store creation,
    compaction) and a marginal rate: ``(n - n_half) / (seconds - seconds_half)``; without
    ``marginal`` the half is skipped.
    """
    import embedstore

    kw = dict(
        backbones=[backbone.name],
        backbone_objects=[backbone],
        batch_size=batch_size,
        device=device,
        runtime=runtime,
        workers=workers,
        progress=False,
    )
    with tempfile.TemporaryDirectory(prefix="embedstore-bench-") as tmp:
        half = (
            embedstore.ingest(folder / "a", Path(tmp) / "half", **kw)
            if marginal
            else {"new_images": 0, "seconds": 0.0}
        )
        store = Path(tmp) / "store"
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        summary = embedstore.ingest(folder, store, **kw)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        t0 = time.perf_counter()
        again = embedstore.ingest(folder, store, **kw)
        rescan = time.perf_counter() - t0
        store_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
    if summary["new_images"] == 0 or summary["skipped"]:
        print(f"warning: ingest stored {summary['new_images']} new, skipped {summary['skipped']}")
    extra_n = summary["new_images"] - half["new_images"]
    extra_s = summary["seconds"] - half["seconds"]
    rate = extra_n / extra_s if marginal and extra_n > 0 and extra_s > 0 else None
    return {
        "images_per_s": summary["images_per_s"],
        "images_per_cpu_s": summary["new_images"] / cpu if cpu > 0 else None,
        "seconds": summary["seconds"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "new_images": summary["new_images"],
        "skipped": summary["skipped"],
        "device": summary["device"],
        "runtimes": summary["runtimes"],
        "half_images": half["new_images"],
        "half_seconds": half["seconds"],
        "marginal_images_per_s": rate,
        "fixed_seconds": summary["seconds"] - summary["new_images"] / rate if rate else None,
        "rescan_seconds": rescan,
        "rescan_new_images": again["new_images"],
        "store_mib": store_mb,
    }


def flops_per_image(backbone: Any) -> float:
    """FLOPs of one image's forward pass (a multiply-add is 2), counted by torch on the torch
    backbone (normalise + model + pooling)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    px = backbone.preprocess.crop_px
    x = torch.zeros((1, 3, px, px), dtype=torch.uint8, device=backbone.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone._forward(backbone.preprocess.normalize(x))
    return float(counter.get_total_flops())


def cpu_peak_gflops(cores: int) -> dict[str, Any]:
    """The CPU's float32 peak: cores x clock x FLOPs per cycle (two FMA units: 32 with AVX2,
    64 with AVX-512), from /proc/cpuinfo; None where it cannot be read."""
    flags, mhz = set(), None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    if not mhz:
        return {"gflops": None, "basis": "unknown CPU"}
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    isa = {64: "AVX-512", 32: "AVX2+FMA", 8: "SSE"}[per_cycle]
    gflops = cores * mhz / 1000 * per_cycle
    return {
        "gflops": gflops,
        "basis": f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} "
        f"FLOP/cycle ({isa}, 2 FMA units)",
    }


def forward_sweep(
    backbone: Any, files: list[Path], batch_sizes: list[int], device: Any, min_seconds: float
) -> dict[int, float]:
    """Forward images/s at each batch size (the same in-memory measurement as the ceiling)."""
    return {
        b: forward_ceiling(backbone, files, b, device, min_seconds)["images_per_s"]
        for b in batch_sizes
    }


def decode_workers(
    files: list[tuple[Path, str]], preprocess: Any, batch_size: int, workers: int, pin: bool
) -> dict[str, Any]:
    """The ingest's decode stage alone: its Dataset and DataLoader settings, no model."""
    import torch

    from embedstore._images import DEFAULT_MAX_PIXELS
    from embedstore.ingestion._decode import _collate, _DecodeDataset, _Work

    work = [_Work(str(p), rel, None) for p, rel in files]
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(work, [preprocess], DEFAULT_MAX_PIXELS),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        multiprocessing_context="spawn" if workers else None,
    )
    n_ok, first = 0, None
    t0 = time.perf_counter()
    for batch in loader:
        n_ok += len(batch["ok"])
        if first is None:
            first = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    steady = (n_ok - batch_size) / (seconds - first) if n_ok > batch_size and first else None
    return {
        "images_per_s": n_ok / seconds,
        "steady_images_per_s": steady,
        "seconds": seconds,
        "first_batch_seconds": first,
        "images": n_ok,
        "workers": workers,
    }


def decode_serial(
    files: list[tuple[Path, str]], preprocess: Any, plain_pil: bool
) -> dict[str, Any]:
    """One process, no DataLoader: the ingest's per-file code, or plain PIL + the same
    resize/crop."""
    from embedstore._images import DEFAULT_MAX_PIXELS
    from embedstore.ingestion._decode import _DecodeDataset, _Work

    ds = _DecodeDataset(
        [_Work(str(p), rel, None) for p, rel in files], [preprocess], DEFAULT_MAX_PIXELS
    )
    t0 = time.perf_counter()
    for i, (p, _) in enumerate(files):
        if plain_pil:
            with Image.open(p) as f:
                preprocess(f.convert("RGB"))
        else:
            ds[i]
    seconds = time.perf_counter() - t0
    return {"images_per_s": len(files) / seconds, "seconds": seconds, "images": len(files)}


# --------------------------------------------------------------------------- main


def _agreement(backbones: dict[str, Any], paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Each non-torch runtime's embeddings of ``paths`` against torch's (when both ran)."""
    import embedstore
    from embedstore.backbones._onnx_export import embedding_agreement

    if "torch" not in backbones or len(backbones) < 2:
        return {}
    images = [embedstore.ingestion.decode_image(Path(p).read_bytes()) for p in paths]
    want = embedstore.search.embed_images(backbones["torch"], images)
    return {
        rt: {
            "images": len(images),
            **embedding_agreement(embedstore.search.embed_images(bb, images), want),
        }
        for rt, bb in backbones.items()
        if rt != "torch"
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(rate: float | None, of: float) -> float | None:
    return None if rate is None else 100 * rate / of


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="number of images (default 3000)")
    ap.add_argument(
        "--backbones",
        default=None,
        help="comma-separated; default efficientnet-lite0 (+ dinov2-small,dinov2-large on CUDA)",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode workers (default: ingest's own default, cores - 1)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=5.0,
        help="time the forward ceiling for at least this long (default 5)",
    )
    ap.add_argument(
        "--decode-serial-n",
        type=int,
        default=300,
        help="images for the single-process decode baselines (default 300)",
    )
    ap.add_argument("--flowers", type=Path, default=FLOWERS, help="source photos (flowers12)")
    ap.add_argument(
        "--images-dir",
        type=Path,
        default=None,
        help="cache folder for the images (default benchmarks/out/ingest-images-<n>)",
    )
    ap.add_argument(
        "--runtimes",
        default=None,
        help="comma-separated torch,onnx (default: both on the CPU, torch on CUDA)",
    )
    ap.add_argument(
        "--batch-sweep",
        default="16,32,64,128",
        help="batch sizes for the forward-only sweep per runtime ('' to skip)",
    )
    ap.add_argument(
        "--no-marginal",
        action="store_true",
        help="skip the half-folder ingest (marginal rate, fixed cost)",
    )
    ap.add_argument(
        "--peak-gflops",
        type=float,
        default=None,
        help="the CPU's float32 peak for the FLOP ceiling (default: from /proc/cpuinfo)",
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR / "ingest.json")
    args = ap.parse_args(argv)

    import torch

    import embedstore
    from embedstore.backbones._onnx import cpu_threads
    from embedstore.ingestion._decode import _default_workers

    info = machine_info()
    device = embedstore.resolve_device(args.device)
    workers = _default_workers() if args.workers is None else max(0, args.workers)
    if args.backbones:
        names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    else:
        names = ["efficientnet-lite0"] + (
            ["dinov2-small", "dinov2-large"] if device.type == "cuda" else []
        )
    default_rt = "torch,onnx" if device.type == "cpu" else "torch"
    runtimes = [r.strip() for r in (args.runtimes or default_rt).split(",") if r.strip()]
    sweep = [int(b) for b in args.batch_sweep.split(",") if b.strip()]
    cores = cpu_threads()
    peak = (
        {"gflops": args.peak_gflops, "basis": "--peak-gflops"}
        if args.peak_gflops
        else cpu_peak_gflops(cores)
    )
    folder = make_images(
        args.n, args.images_dir or OUT_DIR / f"ingest-images-{args.n}", args.flowers
    )
    found = list(embedstore.ingestion.find_images(folder))
    files = [(f.path, f.rel) for f in found]
    paths = [p for p, _ in files]
    print(
        f"{len(files)} images in {folder}; device {device}; {workers} decode workers; "
        f"batch {args.batch_size}; runtimes {', '.join(runtimes)} (ONNX Runtime: {cores} "
        f"intra-op threads); torch threads {torch.get_num_threads()}; load {info['load_avg']}"
    )
    if device.type == "cpu":
        print(f"CPU peak {_fmt(peak['gflops'])} GFLOP/s: {peak['basis']}")

    results: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="embedstore-bench-models-") as models_dir:
        for name in names:
            t0 = time.perf_counter()
            bb = build_backbone(name, Path(models_dir)).to(device)
            build_s = time.perf_counter() - t0
            bb.describe()  # imports transformers once, so no timed ingest pays for it
            flops = flops_per_image(bb)
            flop_ceiling = (
                peak["gflops"] * 1e9 / flops
                if device.type == "cpu" and peak["gflops"] and flops
                else None
            )
            print(
                f"\n[{name}] built in {build_s:.1f} s (dim {bb.dim}, input "
                f"{bb.preprocess.crop_px} px, {flops / 1e9:.2f} GFLOP/image; FLOP ceiling "
                f"{_fmt(flop_ceiling)} img/s)"
            )
            dec = decode_workers(
                files, bb.preprocess, args.batch_size, workers, device.type == "cuda"
            )
            print(
                f"  decode workers   {dec['images_per_s']:8.1f} img/s ({workers} workers, "
                f"first batch after {dec['first_batch_seconds']:.1f} s)"
            )
            sub = files[: args.decode_serial_n]
            ser_lib = decode_serial(sub, bb.preprocess, plain_pil=False)
            ser_pil = decode_serial(sub, bb.preprocess, plain_pil=True)
            print(
                f"  decode 1 process {ser_lib['images_per_s']:8.1f} img/s (ingest code), "
                f"{ser_pil['images_per_s']:.1f} img/s (plain PIL)"
            )
            steady = dec["steady_images_per_s"] or dec["images_per_s"]
            # forward passes first (short), for every runtime; then the long ingests
            ready: dict[str, tuple[Any, float, dict[str, Any], dict[int, float]]] = {}
            for rt in runtimes:
                t0 = time.perf_counter()
                rb = embedstore.backbones.with_runtime(
                    bb, rt, device
                )  # export (or cache) + session
                prep_s = time.perf_counter() - t0
                ceiling = forward_ceiling(rb, paths, args.batch_size, device, args.min_seconds)
                sw = forward_sweep(rb, paths, sweep, device, min(args.min_seconds, 3.0))
                print(
                    f"  {rt:<5} forward  {ceiling['images_per_s']:8.1f} img/s (batch "
                    f"{args.batch_size}; ready in {prep_s:.1f} s); sweep "
                    + ", ".join(f"{b}: {v:.1f}" for b, v in sw.items())
                )
                ready[rt] = (rb, prep_s, ceiling, sw)
            agreement = _agreement({rt: r[0] for rt, r in ready.items()}, paths[:64])
            for rt, (rb, prep_s, ceiling, sw) in ready.items():
                ing = run_ingest(
                    folder,
                    rb,
                    args.batch_size,
                    str(device),
                    args.workers,
                    rt,
                    marginal=not args.no_marginal,
                )
                print(
                    f"  {rt:<5} ingest   {ing['images_per_s']:8.1f} img/s ({ing['seconds']:.1f} s; "
                    f"marginal {_fmt(ing['marginal_images_per_s'])} img/s, "
                    f"fixed {_fmt(ing['fixed_seconds'])} s; "
                    f"re-run with nothing new {ing['rescan_seconds']:.1f} s)"
                )
                fwd = ceiling["images_per_s"]
                bound = min(fwd, steady)
                ing_rate = ing["images_per_s"] or 0.0
                results.append(
                    {
                        "backbone": name,
                        "runtime": rt,
                        "dim": bb.dim,
                        "input_px": bb.preprocess.crop_px,
                        "build_seconds": build_s,
                        "ready_seconds": prep_s,
                        "gflops_per_image": flops / 1e9,
                        "peak_gflops": peak,
                        "flop_ceiling_images_per_s": flop_ceiling,
                        "forward_ceiling": ceiling,
                        "forward_by_batch": sw,
                        "ingest": ing,
                        "decode_workers": dec,
                        "decode_serial_ingest_code": ser_lib,
                        "decode_serial_plain_pil": ser_pil,
                        "ingest_pct_of_ceiling": 100 * ing_rate / fwd,
                        "ingest_pct_of_bound": 100 * ing_rate / bound,
                        "ingest_pct_of_flop_ceiling": _pct(ing_rate, flop_ceiling),
                        "agreement_with_torch": agreement.get(rt),
                    }
                )
                key = {"backbone": name, "runtime": rt}
                rows += [
                    {
                        **key,
                        "measure": f"forward (embed in memory, batch {args.batch_size})",
                        "img_per_s": fwd,
                        "seconds": ceiling["seconds_per_batch"] * ceiling["batches"],
                        "img_per_cpu_s": ceiling["images_per_cpu_s"],
                        "pct_flops": _pct(fwd, flop_ceiling),
                    },
                    *(
                        {
                            **key,
                            "measure": f"forward, batch {b}",
                            "img_per_s": v,
                            "pct_flops": _pct(v, flop_ceiling),
                        }
                        for b, v in sw.items()
                    ),
                    {
                        **key,
                        "measure": "ingest (whole pipeline)",
                        "img_per_s": ing_rate,
                        "img_per_cpu_s": ing["images_per_cpu_s"],
                        "seconds": ing["seconds"],
                        "pct_ceiling": results[-1]["ingest_pct_of_ceiling"],
                        "pct_bound": results[-1]["ingest_pct_of_bound"],
                        "pct_flops": _pct(ing_rate, flop_ceiling),
                    },
                    {
                        **key,
                        "measure": (
                            f"ingest marginal ({ing['half_images']} -> {ing['new_images']} images)"
                        ),
                        "img_per_s": ing["marginal_images_per_s"],
                        "seconds": ing["fixed_seconds"],
                        "pct_ceiling": _pct(ing["marginal_images_per_s"], fwd),
                        "pct_bound": _pct(ing["marginal_images_per_s"], bound),
                    },
                    {
                        **key,
                        "measure": "ingest re-run, nothing new",
                        "img_per_s": None,
                        "seconds": ing["rescan_seconds"],
                    },
                ]
            by_rt = {r["runtime"]: r for r in results if r["backbone"] == name}
            for rt in [r for r in by_rt if r != "torch" and "torch" in by_rt]:
                for what, get in (
                    ("forward", lambda r: r["forward_ceiling"]["images_per_s"]),
                    ("ingest", lambda r: r["ingest"]["images_per_s"]),
                ):
                    rows.append(
                        {
                            "backbone": name,
                            "runtime": f"{rt} / torch",
                            "measure": f"{what} speed-up (x)",
                            "img_per_s": get(by_rt[rt]) / get(by_rt["torch"]),
                        }
                    )
                agree = by_rt[rt].get("agreement_with_torch")
                if agree:
                    rows.append(
                        {
                            "backbone": name,
                            "runtime": f"{rt} / torch",
                            "measure": f"min cosine to torch ({agree['images']} photos; "
                            f"max abs diff {agree['max_abs_diff']:.1e})",
                            "img_per_s": agree["min_cosine"],
                        }
                    )
            rows += [
                {
                    "backbone": name,
                    "runtime": "-",
                    "measure": f"FLOP ceiling ({flops / 1e9:.2f} GFLOP/image)",
                    "img_per_s": flop_ceiling,
                },
                {
                    "backbone": name,
                    "runtime": "-",
                    "measure": f"decode, {workers} workers (ingest DataLoader)",
                    "img_per_s": dec["images_per_s"],
                    "seconds": dec["seconds"],
                },
                {
                    "backbone": name,
                    "runtime": "-",
                    "measure": "decode, steady (after the first batch; s = start-up)",
                    "img_per_s": dec["steady_images_per_s"],
                    "seconds": dec["first_batch_seconds"],
                },
                {
                    "backbone": name,
                    "runtime": "-",
                    "measure": "decode, 1 process, ingest code",
                    "img_per_s": ser_lib["images_per_s"],
                    "seconds": ser_lib["seconds"],
                },
                {
                    "backbone": name,
                    "runtime": "-",
                    "measure": "decode, 1 process, plain PIL",
                    "img_per_s": ser_pil["images_per_s"],
                    "seconds": ser_pil["seconds"],
                },
            ]
            del bb, ready
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print_table(
        rows,
        [
            "backbone",
            "runtime",
            "measure",
            "img_per_s",
            "img_per_cpu_s",
            "seconds",
            "pct_ceiling",
            "pct_bound",
            "pct_flops",
        ],
        title=(
            f"ingest benchmark: {len(files)} images, {device}, {workers} workers, "
            f"batch {args.batch_size}"
        ),
    )
    print(
        "pct_ceiling: ingest as a % of the same runtime's forward rate; pct_bound: of min(forward, "
        "steady decode rate); pct_flops: of the FLOP ceiling; the marginal row's seconds are the "
        "fixed cost: whole-run seconds less images / marginal rate; img_per_cpu_s: images per "
        "CPU-second of this process and its decode workers (steadier than img/s on a busy "
        "machine; x cores = the rate idle cores would allow at best)"
    )
    report = {
        "benchmark": "ingest",
        "settings": {
            "n": len(files),
            "images_dir": str(folder),
            "device": str(device),
            "workers": workers,
            "batch_size": args.batch_size,
            "min_seconds": args.min_seconds,
            "decode_serial_n": min(args.decode_serial_n, len(files)),
            "backbones": names,
            "runtimes": runtimes,
            "batch_sweep": sweep,
            "onnx_threads": cores,
            "marginal": not args.no_marginal,
            "image_sizes_px": "400x300 or 300x400 JPEG q90",
        },
        "machine": info,
        "results": results,
    }
    path = write_json(report, args.out)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
