"""How much ``--runtime onnx-int8`` changes a transformer's embeddings, on real photos.

    python benchmarks/onnx_int8.py                        # dinov2-small (random weights), flowers12
    python benchmarks/onnx_int8.py --backbone /path/to/a/saved/model --n 200

Embeds the flowers12 photos (train and test, 960) with torch eager (float32) and with the int8
export (``embedstore.backbones.with_runtime(bb, "onnx-int8")``), then reports, int8 against torch:

- cosine of each photo's two embeddings (min, 1st percentile, median);
- neighbour agreement: the share of each photo's 10 nearest photos (cosine, itself excluded)
  that both embeddings find, and how often the nearest one is the same;
- leave-one-out 1-NN and 10-NN top-1 accuracy of the species label, for each runtime;
- the forward rate of each (batch 64, same process), beside the agreement.

``dinov2-*`` short names are built at the real size with random weights (as in
``benchmarks/ingest.py``: the hub is not reachable here); give a saved checkpoint folder to
measure real weights. Writes ``--out`` (default ``benchmarks/out/onnx_int8.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import FLOWERS, OUT_DIR, machine_info, print_table, write_json  # noqa: E402
from benchmarks.ingest import build_backbone  # noqa: E402


def neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest rows by cosine, itself excluded: (n, k) indices."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :k]


def knn_accuracy(nn: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out top-1 accuracy of a majority vote over the ``k`` nearest (ties: nearest)."""
    right = 0
    for i, row in enumerate(nn[:, :k]):
        votes: dict[Any, int] = {}
        for j in row:
            votes[labels[j]] = votes.get(labels[j], 0) + 1
        best = max(votes.values())
        pred = next(labels[j] for j in row if votes[labels[j]] == best)
        right += pred == labels[i]
    return right / len(labels)


def rate(bb: Any, batch: np.ndarray, rounds: int = 3) -> float:
    """Images per second of ``bb.embed`` on one in-memory uint8 batch (median of rounds)."""
    import torch

    x = torch.from_numpy(batch)
    bb.embed(x)  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        bb.embed(x)
        times.append(time.perf_counter() - t0)
    return len(batch) / float(np.median(times))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import embedstore
    from embedstore.backbones._onnx_export import embedding_agreement

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backbone",
        default="dinov2-small",
        help="a dinov2-* size (random weights) or a saved model folder / hub id",
    )
    ap.add_argument("--n", type=int, default=None, help="use the first N photos (default all)")
    ap.add_argument("--flowers", type=Path, default=FLOWERS)
    ap.add_argument("--out", type=Path, default=OUT_DIR / "onnx_int8.json")
    args = ap.parse_args(argv)

    files = sorted(args.flowers.glob("*/*/*.jpg"))[: args.n]
    if not files:
        sys.exit(f"{args.flowers}: no photos (expected flowers12/{{train,test}}/<species>/*.jpg)")
    labels = np.array([f.parent.name for f in files])
    info = machine_info()
    print(f"{len(files)} photos of {len(set(labels))} species; load {info['load_avg']}")
    with tempfile.TemporaryDirectory(prefix="embedstore-int8-") as models:
        bb = build_backbone(args.backbone, Path(models)).to("cpu")
        runs = {"torch": bb, "onnx-int8": embedstore.backbones.with_runtime(bb, "onnx-int8", "cpu")}
        images = [embedstore.ingestion.decode_image(f.read_bytes()) for f in files]
        batch = np.stack([bb.preprocess(im) for im in images[:64]])
        emb, speed = {}, {}
        for rt, b in runs.items():
            t0 = time.perf_counter()
            emb[rt] = embedstore.search.embed_images(b, images, batch_size=64)
            print(f"  {rt:<9} embedded {len(images)} photos in {time.perf_counter() - t0:.1f} s")
            speed[rt] = rate(b, batch)
    a, b = emb["onnx-int8"], emb["torch"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    nn = {rt: neighbours(x, 10) for rt, x in emb.items()}
    overlap = np.mean(
        [len(set(p) & set(q)) / 10 for p, q in zip(nn["onnx-int8"], nn["torch"], strict=True)]
    )
    same_first = float(np.mean(nn["onnx-int8"][:, 0] == nn["torch"][:, 0]))
    rows = [
        {
            "measure": "cosine int8 vs torch: min / 1st pct / median",
            "torch": None,
            "onnx_int8": f"{cos.min():.4f} / {np.percentile(cos, 1):.4f} / {np.median(cos):.5f}",
        },
        {
            "measure": "max abs difference",
            "torch": None,
            "onnx_int8": f"{embedding_agreement(a, b)['max_abs_diff']:.3g}",
        },
        {"measure": "10 nearest photos shared with torch's", "torch": 1.0, "onnx_int8": overlap},
        {"measure": "nearest photo the same as torch's", "torch": 1.0, "onnx_int8": same_first},
        *(
            {
                "measure": f"leave-one-out {k}-NN top-1 (species)",
                "torch": knn_accuracy(nn["torch"], labels, k),
                "onnx_int8": knn_accuracy(nn["onnx-int8"], labels, k),
            }
            for k in (1, 10)
        ),
        {
            "measure": "forward img/s (batch 64, in memory)",
            "torch": speed["torch"],
            "onnx_int8": speed["onnx-int8"],
        },
    ]
    print_table(
        rows,
        ["measure", "torch", "onnx_int8"],
        title=f"onnx-int8 against torch: {args.backbone}, {len(files)} flowers12 photos",
    )
    report = {
        "benchmark": "onnx_int8",
        "backbone": args.backbone,
        "photos": len(files),
        "rows": rows,
        "cosine": {
            "min": float(cos.min()),
            "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)),
        },
        "machine": info,
    }
    print(f"wrote {write_json(report, args.out)}")
    return report


if __name__ == "__main__":
    main()
