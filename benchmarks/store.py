"""Store read speed: a whole embedding column into memory, as numpy and as a torch tensor.

    python benchmarks/store.py                 # 100,000 x 1,024 float16
    python benchmarks/store.py --n 20000 --dim 512

Writes N random fp16 embeddings through the store API (as ingest does, in 10 chunks), then
times ``Store.embeddings()`` (numpy float16 and float32, torch, and a filtered read) against
the baseline of ``np.load`` on the same array saved as ``.npy`` in the same process.
Prints a table and writes ``benchmarks/out/store.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import embedstore  # noqa: E402
from benchmarks._common import machine_info, print_table, write_json  # noqa: E402


def _best(f, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/out/store.json")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        st = embedstore.connect(Path(tmp) / "store")
        field = st.meta.embedding_field(
            "emb_bench", a.dim, "float16", {"backbone": "bench", "source": "random", "dim": a.dim}
        )
        X = rng.standard_normal((a.n, a.dim), dtype=np.float32).astype(np.float16)
        for part in np.array_split(np.arange(a.n), 10):
            t = pa.Table.from_arrays(
                [
                    pa.array([f"{i:064x}" for i in part]),
                    pa.array([f"c{i % 1000}" for i in part]),
                    pa.FixedSizeListArray.from_arrays(pa.array(X[part].reshape(-1)), a.dim),
                ],
                schema=pa.schema([("id", pa.string()), ("label", pa.string()), field]),
            )
            st.insert_images(t)
        st.compact(min_fragments=2)
        np.save(Path(tmp) / "X.npy", X)
        rows = [
            {
                "read": "np.load .npy (baseline)",
                "seconds": _best(lambda: np.load(Path(tmp) / "X.npy")),
            },
            {
                "read": "store.embeddings fp16 numpy",
                "seconds": _best(lambda: st.embeddings("bench", columns=["id"], dtype="float16")),
            },
            {
                "read": "store.embeddings fp32 numpy",
                "seconds": _best(lambda: st.embeddings("bench", columns=["id", "label"])),
            },
            {
                "read": "store.embeddings fp32 torch",
                "seconds": _best(lambda: st.embeddings("bench", columns=[], as_torch=True)),
            },
            {
                "read": "filtered (label = 'c7')",
                "seconds": _best(
                    lambda: st.embeddings("bench", where="label = 'c7'", columns=["id"])
                ),
            },
        ]
        got, _ = st.embeddings("bench", columns=["id"], dtype="float16")
        assert got.shape == X.shape
    for r in rows:
        r["rows_per_s"] = a.n / r["seconds"] if "filtered" not in r["read"] else None
    print_table(
        rows, ["read", "seconds", "rows_per_s"], title=f"store read, {a.n:,} x {a.dim} float16"
    )
    path = write_json({"n": a.n, "dim": a.dim, "rows": rows, "machine": machine_info()}, a.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
