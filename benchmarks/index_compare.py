"""The lookup's ANN index: a Lance vector index inside the dataset against the faiss side file.

Run from the repository root (on a quiet machine: the figures are throughput):

    python benchmarks/index_compare.py                # 100k and 400k x 1,024, 2,000 queries
    python benchmarks/index_compare.py --quick        # 20k only, 300 queries: checks that it works
    python benchmarks/index_compare.py --n-stored 100000 --lance IVF_FLAT:256 IVF_FLAT:512
    python benchmarks/index_compare.py --nprobes 4 16 --pq-max-n 400000 --metric cosine

**What is compared.** ``embedstore index`` today writes a faiss index *next to* the store
(``<store>/indexes/<column>.faiss``: ``NeighborIndex(kind="ivf")``, IVF-flat, inner product on
L2-normalised vectors, ``nlist`` 4 sqrt(N), ``nprobe`` 16). The alternative is a Lance vector
index *inside* the dataset (``LanceDataset.create_index``): versioned with the rows, searched
through the same scanner as a ``where`` filter. Per stored size (``--n-stored``):

- ``faiss exact``: ``NeighborIndex(kind="exact")`` (``IndexFlatIP``), the ground truth and the
  reference speed;
- ``faiss IVF side file``: ``NeighborIndex(kind="ivf")`` at the library's ``nlist`` and each
  ``--nprobes`` (16 is the library's default);
- ``Lance <type> (<P> partitions)``: a Lance dataset holding the vectors in the store's column
  type (``fixed_size_list<float16>[dim]``) with each index of ``--lance`` (``TYPE[:P]``, built
  one after another, each replacing the last; ``P`` defaults to faiss's ``nlist``), searched
  at each ``--nprobes`` (the quantised types with ``--refine-factor``: candidates re-ranked on
  the full vectors). Default: ``IVF_FLAT`` at faiss's ``nlist`` (like for like),
  ``IVF_FLAT+faiss-centroids`` (given the side file's own k-means centroids: the same
  partitions, so the search engines compare), then ``IVF_HNSW_SQ``, ``IVF_PQ`` and ``IVF_FLAT``
  at 256 partitions. Why 256: up to 512 partitions Lance puts every row in its nearest
  centroid's partition (checked against faiss with the same centroids: 100% agreement at 256
  and 512), above that its assignment is approximate (52-55% agreement at 1,024 and 1,264
  partitions on this data, the given centroids kept exactly), which caps recall whatever
  ``nprobes``; rows above 512 partitions carry a note. Lance's own default sizing (about 8,000
  rows a partition: 24 partitions at 100k) suits these isotropic clusters badly (recall 0.63
  at 8 of 24 partitions probed). ``IVF_PQ`` / ``IVF_HNSW_SQ`` are skipped above
  ``--pq-max-n`` / ``--hnsw-max-n`` vectors (their builds are the slowest: at 100k on 2 busy
  cores, 152 s and 61 s against IVF_FLAT's 39 s).

``--metric dot`` (the default) stores the vectors L2-normalised, so dot = cosine as in the side
file; ``--metric cosine`` stores them raw, as the store does today, and lets Lance normalise:
the same neighbours, but its IVF_FLAT build took about 5x longer (100k: 201 s against 39 s).

For each: build seconds (Lance: ``create_index`` on the written dataset; the write itself is
reported apart), recall@k against the exact search over all ``--n-queries`` queries, queries/s
in one batched call (faiss ``search`` on the whole query matrix; Lance ``nearest`` with a 2-D
``q``) and one query at a time over the first ``--loop-queries`` queries (what an interactive
``lookup`` of one image costs, and the fair comparison: Lance's older API had no batch search),
and the index's size on disk.

**Filtered lookups** (``--no-filter`` skips): rows carry a random ``fold`` column (0-9); the
query asks for the k nearest among ``fold = 0`` (10% of the rows). Today ``lookup --where``
ignores the saved index and searches exactly over the filtered rows read from the store (the
row's time includes that read); Lance searches its index with the filter applied first
(``prefilter=True``) or after (``prefilter=False``, which returns fewer than k rows when the
probed candidates fail the filter). For reference, the faiss IVF file can also be restricted to
the filtered row ids (``IDSelectorBatch``), which ``lookup`` does not do today.

**Appends** (``--no-append`` skips): ``--append-share`` more rows are appended to the Lance
dataset; the index does not cover them (Lance searches them flat, so results stay right), then
``optimize_indices()`` adds them to the index. The faiss side file would be stale at that
version and need a full rebuild (its build seconds above).

Data: ``benchmarks/knn.py``'s generator (``--clusters`` Gaussian centres, ``--spread``, float16
as stored), the same defaults as ``knn.py`` so the figures compare with its IVF rows. Lance
datasets are written under a temporary folder (``--workdir`` to choose one). Figures are printed
and written as JSON (``--out``, default ``benchmarks/out/index_compare.json``) with
``machine_info()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import OUT_DIR, Timer, machine_info, print_table, write_json  # noqa: E402
from benchmarks.knn import make_data  # noqa: E402
from embedstore.search._search import NeighborIndex, default_nlist, l2_normalize  # noqa: E402

LANCE_TYPES = ("IVF_FLAT", "IVF_HNSW_SQ", "IVF_PQ", "IVF_FLAT+faiss-centroids")
LANCE_CONFIGS = (  # TYPE[:partitions]; no partitions: faiss's nlist. The last one is kept for
    "IVF_FLAT",  # the filtered and append parts
    "IVF_FLAT+faiss-centroids",
    "IVF_HNSW_SQ:256",
    "IVF_PQ:256",
    "IVF_FLAT:256",
)
EXACT_ASSIGN_MAX_PARTITIONS = 512  # measured: Lance assigns rows to the nearest centroid up to here
FOLDS = 10  # the filter keeps fold 0: 1 / FOLDS of the rows


# --------------------------------------------------------------------------- helpers


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k neighbours among ``found`` (``-1`` slots are misses)."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2) & (found >= 0)  # (Nq, k)
    return float(hits.sum(axis=1).mean() / truth.shape[1])


def dir_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (or of the file ``path``)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mib(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 1)


# --------------------------------------------------------------------------- Lance


def write_lance(
    path: Path, X16: np.ndarray, folds: np.ndarray, start_id: int = 0, mode: str = "create"
) -> Any:
    """Write ``X16`` (N, d) float16 as ``id``, ``fold``, ``vector`` (fixed-size list, as the
    store)."""
    import lance
    import pyarrow as pa

    n, d = X16.shape
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(X16).reshape(-1)), d)
    table = pa.table(
        {
            "id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64)),
            "fold": pa.array(folds.astype(np.int32)),
            "vector": vec,
        }
    )
    return lance.write_dataset(table, str(path), mode=mode)


def lance_index_dir(ds: Any) -> Path:
    return Path(ds.uri) / "_indices"


def lance_batch(ds: Any, Q: np.ndarray, k: int, search: dict[str, Any], **scan: Any) -> np.ndarray:
    """All queries in one ``nearest`` call; ``(Nq, k)`` ids, ``-1`` where fewer than k came back."""
    table = ds.to_table(
        columns=["id"],
        nearest={"column": "vector", "q": Q, "k": k, **search},
        disable_scoring_autoprojection=True,
        **scan,
    )
    qi = table["query_index"].to_numpy()
    ids = table["id"].to_numpy()
    out = np.full((Q.shape[0], k), -1, dtype=np.int64)  # (Nq, k)
    order = np.argsort(qi, kind="stable")  # rows come back best first within a query
    qi, ids = qi[order], ids[order]
    starts = np.searchsorted(qi, np.arange(Q.shape[0]))
    pos = np.arange(qi.size) - starts[qi]
    keep = pos < k
    out[qi[keep], pos[keep]] = ids[keep]
    return out


def lance_loop(ds: Any, Q: np.ndarray, k: int, search: dict[str, Any], **scan: Any) -> float:
    """Seconds for one ``nearest`` call per query (the interactive lookup)."""
    t0 = time.perf_counter()
    for q in Q:
        ds.to_table(
            columns=["id"],
            nearest={"column": "vector", "q": q, "k": k, **search},
            disable_scoring_autoprojection=True,
            **scan,
        )
    return time.perf_counter() - t0


def parse_config(config: str, nlist: int) -> tuple[str, int]:
    """``"IVF_FLAT:256"`` -> ``("IVF_FLAT", 256)``; no ``:N`` means faiss's ``nlist``."""
    index_type, _, parts = config.partition(":")
    if index_type not in LANCE_TYPES:
        raise ValueError(
            f"unknown Lance index type {index_type!r}; valid: {', '.join(LANCE_TYPES)}"
        )
    if parts and index_type.endswith("faiss-centroids"):
        raise ValueError(f"{config}: the faiss centroids fix the partitions at nlist")
    return index_type, int(parts) if parts else nlist


def lance_search_settings(
    index_type: str, nprobes: int, args: argparse.Namespace
) -> dict[str, Any]:
    s: dict[str, Any] = {"nprobes": nprobes}
    if "PQ" in index_type or "SQ" in index_type:
        s["refine_factor"] = args.refine_factor
    if "HNSW" in index_type:  # Lance wants ef >= the candidates it re-ranks (k x refine)
        s["ef"] = max(args.hnsw_ef, args.k * s.get("refine_factor", 1))
    return s


def create_lance_index(
    ds: Any, index_type: str, nlist: int, args: argparse.Namespace, centroids: np.ndarray | None
) -> Any:
    kw: dict[str, Any] = {"metric": args.metric, "num_partitions": nlist, "replace": True}
    base = index_type.split("+")[0]
    if base == "IVF_PQ":
        kw["num_sub_vectors"] = args.pq_sub_vectors
    if centroids is not None:
        kw["ivf_centroids"] = centroids
    return ds.create_index("vector", base, **kw)


# --------------------------------------------------------------------------- one size


def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    k = args.k
    print(f"\n{n:,} stored vectors x {args.dim} dims, {args.n_queries:,} queries, k={k}")
    t_size = t0 = time.perf_counter()
    X16, _, Q16, _ = make_data(n, args.n_queries, args.dim, args.clusters, args.spread, args.seed)
    folds = np.random.default_rng(args.seed + 1).integers(0, FOLDS, n)
    Xn = l2_normalize(X16)  # (N, d) float32, what the side file indexes
    Q = Q16.astype(np.float32)  # (Nq, d): raw queries; every method normalises (or uses cosine)
    Qn = l2_normalize(Q16)
    Ql = Q[: args.loop_queries]
    print(f"  data generated in {time.perf_counter() - t0:.1f} s")
    nlist = default_nlist(n)
    rows: list[dict[str, Any]] = []
    base = {"n_stored": n}

    def add(method: str, **row: Any) -> dict[str, Any]:
        r = {**base, "method": method, **row}
        rows.append(r)
        shown = {a: round(v, 4) if isinstance(v, float) else v for a, v in r.items()}
        print("  " + ", ".join(f"{a}={v}" for a, v in shown.items() if a not in base))
        return r

    def faiss_loop(index: NeighborIndex) -> float:
        t = time.perf_counter()
        for i in range(Ql.shape[0]):
            index.search(Ql[i : i + 1], k)
        return time.perf_counter() - t

    # ---- faiss: exact (ground truth) and the IVF side file
    with Timer() as tb:
        exact = NeighborIndex(kind="exact", backend="faiss", device="cpu").build(X16)
    with Timer() as ts:
        _, truth = exact.search(Q, k)  # (Nq, k)
    loop_s = faiss_loop(exact)
    add(
        "faiss exact (IndexFlatIP)",
        param="-",
        build_s=tb.seconds,
        recall=1.0,
        batch_qps=len(Q) / ts.seconds,
        loop_qps=len(Ql) / loop_s,
        index_mib=_mib(4 * n * args.dim),
    )
    del exact

    with Timer() as tb:
        ivf = NeighborIndex(kind="ivf", backend="faiss", device="cpu", nlist=nlist).build(X16)
    side = workdir / f"side-{n}.faiss"
    ivf.save(side)
    side_mib = _mib(dir_bytes(side))
    for p in args.nprobes:
        ivf.nprobe = p
        with Timer() as ts:
            _, idx = ivf.search(Q, k)
        loop_s = faiss_loop(ivf)
        add(
            f"faiss IVF side file (nlist {nlist})",
            param=f"nprobe {p}",
            build_s=tb.seconds,
            recall=recall_at_k(idx, truth),
            batch_qps=len(Q) / ts.seconds,
            loop_qps=len(Ql) / loop_s,
            index_mib=side_mib,
        )
    centroids = ivf._faiss_index.quantizer.reconstruct_n(0, nlist)  # (nlist, d) unit-norm

    # ---- Lance: the dataset, then one index type at a time
    path = workdir / f"vectors-{n}.lance"
    with Timer() as tw:
        ds = write_lance(path, Xn.astype(np.float16) if args.metric == "dot" else X16, folds)
    data_mib = _mib(dir_bytes(path))
    print(f"  Lance dataset written in {tw.seconds:.1f} s ({data_mib} MiB)")
    lance_write = {"write_s": tw.seconds, "data_mib": data_mib}
    lance_rows: dict[str, tuple[float, float]] = {}  # type -> (build s, index MiB)
    for config in args.lance:
        index_type, parts = parse_config(config, nlist)
        cap = {
            "IVF_PQ": ("--pq-max-n", args.pq_max_n),
            "IVF_HNSW_SQ": ("--hnsw-max-n", args.hnsw_max_n),
        }
        if index_type in cap and n > cap[index_type][1]:
            flag, limit = cap[index_type]
            add(
                f"Lance {index_type} ({parts} partitions)",
                param="-",
                note=f"skipped: build too slow ({flag} {limit:,})",
            )
            continue
        cents = centroids if index_type.endswith("faiss-centroids") else None
        before = dir_bytes(lance_index_dir(ds)) if lance_index_dir(ds).exists() else 0
        with Timer() as tb:
            try:
                ds = create_lance_index(ds, index_type, parts, args, cents)
            except Exception as e:  # an index type this pylance lacks: say so, keep going
                add(f"Lance {config}", param="-", note=f"failed: {type(e).__name__}: {e}")
                continue
        idx_mib = _mib(dir_bytes(lance_index_dir(ds)) - before)  # replaced ones stay on disk
        lance_rows[config] = (tb.seconds, idx_mib)
        for p in args.nprobes:
            search = lance_search_settings(index_type, p, args)
            lance_loop(ds, Q[:5], k, search)  # warm-up: the index is read into Lance's cache
            with Timer() as ts:
                idx = lance_batch(ds, Q, k, search)
            loop_s = lance_loop(ds, Ql, k, search)
            param = ", ".join(f"{a} {v}" for a, v in search.items())
            note = None
            if parts > EXACT_ASSIGN_MAX_PARTITIONS:
                note = f"> {EXACT_ASSIGN_MAX_PARTITIONS} partitions: approximate assignment"
            add(
                f"Lance {index_type} ({parts} partitions, {args.metric})",
                param=param,
                build_s=tb.seconds,
                recall=recall_at_k(idx, truth),
                batch_qps=len(Q) / ts.seconds,
                loop_qps=len(Ql) / loop_s,
                index_mib=idx_mib,
                note=note,
            )
        last_type = f"{index_type} ({parts} partitions)"
    # the dataset keeps the last index built (create_index(replace=True) swaps it)

    # ---- filtered lookups: k nearest among fold = 0
    filtered: list[dict[str, Any]] = []
    if not args.no_filter and lance_rows:
        filtered = bench_filter(ds, last_type, X16, folds, Q, Qn, ivf, nlist, args)
    # ---- appends: the index does not cover new rows until optimize_indices()
    append: dict[str, Any] | None = None
    if not args.no_append and lance_rows:
        append = bench_append(ds, last_type, Xn, Q, Qn, n, args)
    del ivf
    shutil.rmtree(path, ignore_errors=True)
    side.unlink(missing_ok=True)
    for p in workdir.glob(f"side-{n}.faiss*"):
        p.unlink()
    elapsed = time.perf_counter() - t_size
    print(f"  {n:,} done in {elapsed:.0f} s, load {[round(x, 2) for x in os.getloadavg()]}")
    return {
        "n_stored": n,
        "nlist": nlist,
        "metric": args.metric,
        "lance_dataset": lance_write,
        "rows": rows,
        "filtered": filtered,
        "append": append,
        "elapsed_s": elapsed,
        "load_avg_end": list(os.getloadavg()),
    }


def bench_filter(
    ds: Any,
    index_type: str,
    X16: np.ndarray,
    folds: np.ndarray,
    Q: np.ndarray,
    Qn: np.ndarray,
    ivf: NeighborIndex,
    nlist: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """``fold = 0`` lookups: exact over the read rows (today), Lance pre/post-filter, faiss +
    selector."""
    import faiss

    k, where = args.k, "fold = 0"
    n = X16.shape[0]
    keep = np.flatnonzero(folds == 0)
    ex = faiss.IndexFlatIP(X16.shape[1])
    ex.add(l2_normalize(X16[keep]))
    _, pos = ex.search(Qn, k)
    truth = keep[pos]  # (Nq, k) row ids
    del ex
    rows: list[dict[str, Any]] = []
    print(f"  filtered: where {where!r} ({keep.size:,} of {n:,} rows)")

    def add(method: str, **row: Any) -> None:
        r = {"n_stored": n, "method": method, "where": where, **row}
        rows.append(r)
        shown = {a: round(v, 4) if isinstance(v, float) else v for a, v in r.items()}
        print(
            "    "
            + ", ".join(f"{a}={v}" for a, v in shown.items() if a not in ("n_stored", "where"))
        )

    # today: read the filtered rows, normalise, exact search (per call; batched queries)
    with Timer() as tb:
        t = ds.to_table(columns=["id", "vector"], filter=where)
        ids = t["id"].to_numpy()
        V = t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        V = V.reshape(-1, X16.shape[1])
        index = NeighborIndex(kind="exact", backend="faiss", device="cpu").build(V)
        _, pos = index.search(Q, k)
    found = ids[pos]
    del V, index
    one_q = []  # one query per call: the read and the build are paid by every lookup call
    for i in range(3):
        t0 = time.perf_counter()
        t = ds.to_table(columns=["id", "vector"], filter=where)
        V = t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        V = V.reshape(-1, X16.shape[1])
        NeighborIndex(kind="exact", backend="faiss", device="cpu").build(V).search(Q[i : i + 1], k)
        one_q.append(time.perf_counter() - t0)
        del V
    add(
        "today: read filtered rows + faiss exact",
        param="-",
        recall=recall_at_k(found, truth),
        batch_qps=len(Q) / tb.seconds,
        loop_qps=1.0 / float(np.median(one_q)),
    )

    Ql = Q[: args.loop_queries]
    for p in args.nprobes:
        search = lance_search_settings(index_type, p, args)
        for prefilter in (True, False):
            lance_loop(ds, Q[:5], k, search, filter=where, prefilter=prefilter)  # warm-up
            with Timer() as ts:
                found = lance_batch(ds, Q, k, search, filter=where, prefilter=prefilter)
            loop_s = lance_loop(ds, Ql, k, search, filter=where, prefilter=prefilter)
            short = float(np.mean((found < 0).any(axis=1)))
            add(
                f"Lance {index_type} {'prefilter' if prefilter else 'postfilter'}",
                param=", ".join(f"{a} {v}" for a, v in search.items()),
                recall=recall_at_k(found, truth),
                batch_qps=len(Q) / ts.seconds,
                loop_qps=len(Ql) / loop_s,
                short_share=short,
            )

    sel = faiss.IDSelectorBatch(keep.astype(np.int64))
    raw = ivf._faiss_index  # the side file's faiss index (row order = store order here)
    for p in args.nprobes:
        params = faiss.SearchParametersIVF(sel=sel, nprobe=min(p, nlist))
        with Timer() as ts:
            _, found = raw.search(Qn, k, params=params)
        t0 = time.perf_counter()
        for i in range(Ql.shape[0]):
            raw.search(l2_normalize(Ql[i : i + 1]), k, params=params)
        loop_s = time.perf_counter() - t0
        add(
            "faiss IVF side file + IDSelector (not in lookup today)",
            param=f"nprobe {p}",
            recall=recall_at_k(found, truth),
            batch_qps=len(Q) / ts.seconds,
            loop_qps=len(Ql) / loop_s,
        )
    return rows


def bench_append(
    ds: Any,
    index_type: str,
    Xn: np.ndarray,
    Q: np.ndarray,
    Qn: np.ndarray,
    n: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Append rows, search with the unindexed tail, then ``optimize_indices()`` and search again."""
    import faiss
    import lance

    k = args.k
    m = max(1, int(n * args.append_share))
    # new rows: fresh draws from the same clusters (make_data's centres: its seed's first draw)
    centres = (
        np.random.default_rng(args.seed).normal(size=(args.clusters, args.dim)).astype(np.float32)
    )
    rng = np.random.default_rng(args.seed + 2)
    noise = rng.normal(size=(m, args.dim)).astype(np.float32) * args.spread  # (m, d)
    X2 = (centres[rng.integers(0, args.clusters, m)] + noise).astype(np.float16)  # (m, d)
    folds2 = rng.integers(0, FOLDS, m)
    v_before = ds.version
    with Timer() as tw:
        X2w = l2_normalize(X2).astype(np.float16) if args.metric == "dot" else X2
        ds = write_lance(Path(ds.uri), X2w, folds2, start_id=n, mode="append")
    ex = faiss.IndexFlatIP(Xn.shape[1])
    ex.add(Xn)
    ex.add(l2_normalize(X2))
    _, truth = ex.search(Qn, k)
    del ex
    new_in_truth = float(np.mean(truth >= n))
    p = args.nprobes[0]
    search = lance_search_settings(index_type, p, args)
    Ql = Q[: args.loop_queries]
    lance_loop(ds, Q[:5], k, search)  # warm-up
    with Timer() as ts:
        found = lance_batch(ds, Q, k, search)
    loop_s = lance_loop(ds, Ql, k, search)
    stale = {
        "recall": recall_at_k(found, truth),
        "batch_qps": len(Q) / ts.seconds,
        "loop_qps": len(Ql) / loop_s,
    }
    with Timer() as to:
        ds.optimize.optimize_indices()
    ds = lance.dataset(ds.uri)
    lance_loop(ds, Q[:5], k, search)  # warm-up
    with Timer() as ts:
        found = lance_batch(ds, Q, k, search)
    loop_s = lance_loop(ds, Ql, k, search)
    fresh = {
        "recall": recall_at_k(found, truth),
        "batch_qps": len(Q) / ts.seconds,
        "loop_qps": len(Ql) / loop_s,
    }
    out = {
        "index_type": index_type,
        "search": search,
        "appended": m,
        "version_before": v_before,
        "version_after": ds.version,
        "append_s": tw.seconds,
        "share_of_truth_new": new_in_truth,
        "unindexed_tail": stale,
        "optimize_indices_s": to.seconds,
        "after_optimize": fresh,
    }
    print(
        f"  append {m:,} rows ({tw.seconds:.2f} s): unindexed tail recall {stale['recall']:.4f}, "
        f"{stale['loop_qps']:.0f} q/s one at a time; optimize_indices {to.seconds:.1f} s, then "
        f"recall {fresh['recall']:.4f}, {fresh['loop_qps']:.0f} q/s"
    )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-stored", type=int, nargs="+", default=[100_000, 400_000])
    p.add_argument("--n-queries", type=int, default=2000)
    p.add_argument(
        "--loop-queries", type=int, default=300, help="queries for the one-at-a-time loops"
    )
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--nprobes",
        type=int,
        nargs="+",
        default=[16, 64],
        help="IVF lists / Lance partitions probed per query (16: the library's)",
    )
    p.add_argument(
        "--lance",
        nargs="*",
        default=list(LANCE_CONFIGS),
        metavar="TYPE[:PARTITIONS]",
        help=f"Lance indexes to build, in order; types: {', '.join(LANCE_TYPES)}",
    )
    p.add_argument(
        "--metric",
        choices=("dot", "cosine"),
        default="dot",
        help="dot: the column holds L2-normalised vectors; cosine: raw vectors",
    )
    p.add_argument("--pq-sub-vectors", type=int, default=64)
    p.add_argument("--pq-max-n", type=int, default=100_000, help="skip IVF_PQ above this size")
    p.add_argument("--hnsw-max-n", type=int, default=100_000, help="skip IVF_HNSW_SQ above it")
    p.add_argument("--refine-factor", type=int, default=10, help="Lance PQ / SQ re-ranking")
    p.add_argument("--hnsw-ef", type=int, default=64, help="Lance IVF_HNSW_* search beam")
    p.add_argument("--append-share", type=float, default=0.01)
    p.add_argument("--no-filter", action="store_true")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--workdir", type=Path, default=None, help="where the Lance datasets go")
    p.add_argument("--quick", action="store_true", help="20k stored, 300 queries, 100 in loops")
    p.add_argument("--out", type=Path, default=OUT_DIR / "index_compare.json")
    args = p.parse_args(argv)
    for config in args.lance:
        try:
            parse_config(config, 1)
        except ValueError as e:
            p.error(str(e))
    if args.quick:
        args.n_stored, args.n_queries, args.loop_queries = [20_000], 300, 100
    args.loop_queries = min(args.loop_queries, args.n_queries)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    machine["versions"]["pyarrow"] = _pyarrow_version()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB, load "
        f"{machine['load_avg']}, GPU {machine['gpu']['name'] if machine['gpu'] else 'none'}; "
        f"faiss {machine['versions']['faiss']}, lance {machine['versions']['lance']}"
    )
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="index-compare-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        sizes = [bench_size(n, args, workdir) for n in args.n_stored]
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = [r for s in sizes for r in s["rows"]]
    cols = [
        "n_stored",
        "method",
        "param",
        "build_s",
        "recall",
        "batch_qps",
        "loop_qps",
        "index_mib",
        "note",
    ]
    print_table(
        rows,
        cols,
        title=f"lookup index (k={args.k}, {args.n_queries:,} queries; loop: "
        f"first {args.loop_queries:,} one at a time)",
    )
    frows = [r for s in sizes for r in s["filtered"]]
    if frows:
        print_table(
            frows,
            ["n_stored", "method", "param", "recall", "batch_qps", "loop_qps", "short_share"],
            title="filtered lookups (where fold = 0, 10% of rows)",
        )
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f} s")
    result = {
        "benchmark": "index_compare",
        "machine": machine,
        "settings": {a: (str(v) if isinstance(v, Path) else v) for a, v in vars(args).items()},
        "total_s": total,
        "sizes": sizes,
    }
    print(f"wrote {write_json(result, args.out)}")
    return result


def _pyarrow_version() -> str | None:
    try:
        import pyarrow

        return pyarrow.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    os.environ.setdefault("LANCE_LOG", "error")
    main()
