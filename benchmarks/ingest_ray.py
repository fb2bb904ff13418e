"""Ray ingest against local ingest on this machine, and the measured inputs of the capacity model.

Run from the repository root, with the extra installed (``pip install -e '.[ray]'``); the
images are the 3,000 photos of ``benchmarks/ingest.py`` (written once, to the same cache folder):

    python benchmarks/ingest_ray.py                        # 3,000 photos, everything below
    python benchmarks/ingest_ray.py --n 200 --append-rows 20000     # a quick check

In one process, on the same images and backbone (efficientnet-lite0, ``runtime="auto"``):

- **Ray start-up**: ``ray.init(num_cpus=C)``, a local cluster on this machine's C cores;
- **local ingest** (``engine="local"``) and **Ray ingest** (``engine="ray"`` on that cluster:
  one embedding actor holding one CPU, decode tasks on the others): the fixed start-up cost
  (median of ``--repeats`` ingests of ``--small-n`` images into fresh stores: worker or actor
  start-up, model load, scan, store creation, compaction), then all of the folder into a fresh
  store (images/s as its summary reports it) and the marginal rate
  ``n / (seconds - fixed)``, what a much larger folder approaches; then a second ingest of the
  folder (nothing new);
- **decode per core**: the ingest's ``decode_file`` (read, SHA-256, decode, resize, crop) in
  one process;
- **Lance appends**: a table of DINOv2-B-shaped rows (768-d float16 + the image columns) grown
  chunk by chunk to ``--append-rows``, the two ways ingest writes: ``Store.add_images``
  (merge-insert keyed on id: the local ingest) and ``write_image_fragments`` +
  ``Store.fragments.append_fragments`` (fragments written by workers, one commit per chunk: the Ray
  ingest); rows/s and MB/s over the whole run and over its last tenth;
- **PQ recall**: recall@10 of product-quantised codes (faiss ``IndexIVFPQ``) against exact
  inner-product search, on the real embeddings the Ray ingest stored, with and without an exact
  re-ranking of the top 100 (what an IVF-PQ index at 100M images keeps in memory).

Prints tables and writes ``--out`` (default ``benchmarks/out/ingest_ray.json``) with
``machine_info()`` (the load average at the start says whether the machine was quiet).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python benchmarks/ingest_ray.py` puts benchmarks/ first on sys.path; import from the repo root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import FLOWERS, OUT_DIR, machine_info, print_table, write_json  # noqa: E402
from benchmarks.ingest import make_images  # noqa: E402


def run_engine(
    folder: Path, engine: str, tmp: Path, batch_size: int, small: Path, repeats: int
) -> dict[str, Any]:
    """``engine``'s fixed cost (the median of ``repeats`` ingests of the ``small`` folder into
    fresh stores: start-up, scan, store creation, compaction) and its rate on all of
    ``folder`` (a fresh store), then the time of a second ingest of it (nothing new)."""
    import embedstore

    kw: dict[str, Any] = {"batch_size": batch_size, "progress": False, "engine": engine}
    if engine == "ray":
        kw["actors"] = 1
    smalls = [
        embedstore.ingest(small, tmp / f"{engine}-small-{r}", **kw).seconds for r in range(repeats)
    ]
    fixed = float(np.median(smalls))
    full = embedstore.ingest(folder, tmp / f"{engine}-all", **kw)
    t0 = time.perf_counter()
    again = embedstore.ingest(folder, tmp / f"{engine}-all", **kw)
    rescan = time.perf_counter() - t0
    marginal = full.new_images / (full.seconds - fixed) if full.seconds > fixed else None
    return {
        "engine": engine,
        "images": full.new_images,
        "images_per_s": full.images_per_s,
        "seconds": full.seconds,
        "fixed_seconds": fixed,
        "fixed_runs": smalls,
        "small_images": sum(1 for _ in embedstore.ingestion.find_images(small)),
        "marginal_images_per_s": marginal,
        "again_seconds": rescan,
        "again_new": again.new_images,
        "runtimes": full.runtimes,
        "store": str(tmp / f"{engine}-all"),
    }


def small_folder(paths: list[str], dest: Path, n: int) -> Path:
    """``n`` of the images (hard links, else copies) in one class folder: a start-up probe."""
    (dest / "probe").mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(paths[:n]):
        target = dest / "probe" / f"{k:03d}.jpg"
        try:
            os.link(p, target)
        except OSError:
            target.write_bytes(Path(p).read_bytes())
    return dest


def decode_per_core(paths: list[str], n: int) -> dict[str, Any]:
    """The ingest's per-file decode (read, hash, decode, preprocess) in this one process."""
    from embedstore import create_backbone
    from embedstore.ingestion._decode import decode_file

    pre = [create_backbone("efficientnet-lite0").preprocess]
    paths = paths[:n]
    t0 = time.perf_counter()
    for p in paths:
        r = decode_file(p, None, pre, 89_478_485)
        assert "error" not in r, r
    s = time.perf_counter() - t0
    return {"images": len(paths), "seconds": s, "images_per_s": len(paths) / s}


def _rows(start: int, n: int, dim: int, rng: np.random.Generator) -> tuple[list[dict], np.ndarray]:
    rows = [
        {
            "id": f"{i:064x}",
            "path": f"x/{i}.jpg",
            "paths": [f"x/{i}.jpg"],
            "root": "/data",
            "label": f"c{i % 100}",
            "split": None,
            "width": 400,
            "height": 300,
            "bytes": 50_000,
            "added_at": "2026-01-01T00:00:00Z",
        }
        for i in range(start, start + n)
    ]
    return rows, rng.standard_normal((n, dim)).astype(np.float16)


def lance_appends(tmp: Path, rows_total: int, chunk: int, dim: int) -> list[dict[str, Any]]:
    """Grow a table chunk by chunk both ways ingest writes; rates overall and at the end."""
    import embedstore
    from embedstore.store import image_table, write_image_fragments

    describe = {"backbone": "dinov2-base", "source": "benchmark", "dim": dim}
    out = []
    for way in ("merge-insert (local ingest)", "fragments + append commit (Ray ingest)"):
        st = embedstore.connect(tmp / f"append-{len(out)}")
        rng = np.random.default_rng(0)
        times: list[float] = []
        commits: list[float] = []  # the driver's part: the commit alone (fragments way)
        for start in range(0, rows_total, chunk):
            rows, X = _rows(start, min(chunk, rows_total - start), dim, rng)
            t0 = time.perf_counter()
            if way.startswith("merge") or not st.exists:
                st.add_images(rows, embeddings={"emb_x": X}, describes={"emb_x": describe})
            else:
                t = image_table(rows, embeddings={"emb_x": X}, describes={"emb_x": describe})
                frags = write_image_fragments(st.path, t)  # what a worker does
                t1 = time.perf_counter()
                st.fragments.append_fragments(frags, ids=[r["id"] for r in rows])
                commits.append(time.perf_counter() - t1)
            times.append(time.perf_counter() - t0)
        nbytes = sum(f.stat().st_size for f in (st.path / "images.lance").rglob("*") if f.is_file())
        tail = max(1, len(times) // 10)
        out.append(
            {
                "way": way,
                "rows": rows_total,
                "chunk": chunk,
                "commits": len(times),
                "rows_per_s": rows_total / sum(times),
                "rows_per_s_last_10pct": tail * chunk / sum(times[-tail:]),
                "ms_per_commit_first": 1000 * float(np.median(times[1 : 1 + tail])),
                "ms_per_commit_last": 1000 * float(np.median(times[-tail:])),
                "mb_per_s": nbytes / 2**20 / sum(times),
                "bytes_per_row": nbytes / rows_total,
                "ms_commit_only_first": 1000 * float(np.median(commits[:tail]))
                if commits
                else None,
                "ms_commit_only_last": 1000 * float(np.median(commits[-tail:]))
                if commits
                else None,
            }
        )
    return out


def pq_recall(store: str, k: int = 10) -> list[dict[str, Any]]:
    """recall@k of IVF-PQ codes vs exact search over the stored real embeddings (every image
    queries the rest), bare and with an exact re-ranking of the 100 best codes."""
    import faiss

    import embedstore

    X, _ = embedstore.connect(store).embeddings(None)
    X = embedstore.search.l2_normalize(X).astype(np.float32)
    n, d = X.shape
    if n < 1000:  # 256 centroids per sub-quantiser need a few thousand vectors to train
        return []
    exact = faiss.IndexFlatIP(d)
    exact.add(X)
    _, truth = exact.search(X, k + 1)
    truth = truth[:, 1:]  # drop the query itself
    out = []
    nlist = max(1, int(np.sqrt(n) / 2))
    for m in (32, 80, 160):
        if d % m:
            continue
        for refine in (0, 100):
            coarse = faiss.IndexFlatIP(d)
            pq = faiss.IndexIVFPQ(coarse, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            pq.nprobe = nlist  # every list: what the codes alone lose, not the partitioning
            index = pq
            if refine:  # re-rank the best `refine` codes by exact inner products
                index = faiss.IndexRefineFlat(pq)
                index.k_factor = refine / (k + 1)
            index.train(X)
            index.add(X)
            _, found = index.search(X, k + 1)
            rec = np.mean(
                [
                    len(set(t) & set(f[f != q])) / k
                    for q, (t, f) in enumerate(zip(truth, found, strict=True))
                ]
            )
            out.append(
                {
                    "bytes_per_vector": m,
                    "dim": d,
                    "vectors": n,
                    "rerank": refine,
                    "recall_at_10": float(rec),
                }
            )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="number of images (default 3000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="the local cluster's CPUs")
    ap.add_argument("--append-rows", type=int, default=100_000)
    ap.add_argument("--append-chunk", type=int, default=512)
    ap.add_argument("--decode-n", type=int, default=300)
    ap.add_argument(
        "--small-n", type=int, default=16, help="images of the start-up probe (default 16)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="start-up probes per engine (median)")
    ap.add_argument("--flowers", type=Path, default=FLOWERS, help="source photos (flowers12)")
    ap.add_argument(
        "--images-dir",
        type=Path,
        default=None,
        help="cache folder for the images (default benchmarks/out/ingest-images-<n>)",
    )
    ap.add_argument(
        "--skip-ingest",
        action="store_true",
        help="only decode per core and Lance appends (no Ray, no ingest, no PQ)",
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR / "ingest_ray.json")
    args = ap.parse_args(argv)

    import ray

    import embedstore

    info = machine_info()
    folder = make_images(
        args.n, args.images_dir or OUT_DIR / f"ingest-images-{args.n}", args.flowers
    )
    paths = [str(f.path) for f in embedstore.ingestion.find_images(folder)]
    print(f"{len(paths)} images in {folder}; load {info['load_avg']}")
    ray_start, engines, pq = None, [], []
    if not args.skip_ingest:
        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        ray_start = time.perf_counter() - t0
        embedstore.ingestion.connect_ray()  # Ray Data settings (no progress bars)
        print(f"ray.init(num_cpus={args.cpus}): {ray_start:.1f} s")
    with tempfile.TemporaryDirectory(prefix="embedstore-bench-ray-") as tmp:
        tmp = Path(tmp)
        if not args.skip_ingest:
            # ONNX export once, outside both timings (both engines load it from the cache)
            embedstore.backbones.with_runtime(
                embedstore.create_backbone("efficientnet-lite0"), "auto", "cpu"
            )
            small = small_folder(paths, tmp / "small", args.small_n)
            engines = [
                run_engine(folder, e, tmp, args.batch_size, small, args.repeats)
                for e in ("local", "ray")
            ]
            print_table(
                engines,
                [
                    "engine",
                    "images",
                    "images_per_s",
                    "seconds",
                    "fixed_seconds",
                    "marginal_images_per_s",
                    "again_seconds",
                ],
                "ingest, local vs Ray",
            )
            pq = pq_recall(engines[1]["store"])
            print_table(
                pq, ["bytes_per_vector", "dim", "vectors", "rerank", "recall_at_10"], "PQ recall"
            )
        decode = decode_per_core(paths, args.decode_n)
        print(f"\ndecode per core: {decode['images_per_s']:.0f} img/s ({decode['images']} images)")
        appends = lance_appends(tmp, args.append_rows, args.append_chunk, 768)
        print_table(
            appends,
            [
                "way",
                "rows",
                "chunk",
                "rows_per_s",
                "rows_per_s_last_10pct",
                "ms_per_commit_first",
                "ms_per_commit_last",
                "ms_commit_only_first",
                "ms_commit_only_last",
                "mb_per_s",
                "bytes_per_row",
            ],
            "Lance appends (768-d float16 rows)",
        )
    result = {
        "machine": info,
        "ray_init_seconds": ray_start,
        "cluster_cpus": args.cpus,
        "engines": engines,
        "decode_per_core": decode,
        "appends": appends,
        "pq": pq,
    }
    write_json(result, args.out)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
