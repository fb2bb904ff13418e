"""Data-quality checks at scale: ``embedstore duplicates`` and ``heads issues`` against baselines.

Run from the repository root (on a quiet machine: the figures are times):

    python benchmarks/quality_checks.py                      # 100k and 400k vectors, issues at 100k
    python benchmarks/quality_checks.py --quick              # small sizes: checks that it works
    python benchmarks/quality_checks.py --sizes 100000 --no-issues

**Duplicates.** A store of ``--sizes`` synthetic vectors of ``--dim`` dims (``--clusters``
clustered Gaussians, points = centre + ``--spread`` x N(0, 1), so two images of one cluster
have a cosine similarity of about 0.8, as look-alike photos do) with 1% of the rows near-copies
of others (cosine 0.95-0.99), written through the store API as float16 like ingest writes.
``embedstore.find_duplicates`` (threshold 0.90, k 10, CSV written, no PNG) runs in a child
process, so its time and peak memory (max RSS) are its own; its pairs are checked against the
planted ones (recall) and, on a random ``--subset`` of rows, against the **brute-force all-pairs
baseline** (the full ``subset x subset`` similarity matrix, thresholded: what a tool that holds
every similarity in RAM does), whose time and memory are also extrapolated to the whole store
(quadratic in N).

**Issues.** A store of ``--issues-size`` vectors in ``--issues-classes`` classes with 5% of the
labels flipped, 5 folds, a centroid head (``heads train --fold all``), then ``heads.find_issues``
(cleanlab label issues + kNN outliers, no PNG) against cleanlab called directly on the same
out-of-fold probabilities (``find_label_issues`` + ``get_label_quality_scores``), and our kNN
outlier step against cleanlab's ``OutOfDistribution`` on the same embeddings (scikit-learn
nearest neighbours); the label-error recall (flipped images in the top 2x) is reported too.

Figures are printed and written as JSON (``--out``, default ``benchmarks/out/quality_checks.json``)
with the machine they ran on.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks._common import OUT_DIR, machine_info, print_table, write_json  # noqa: E402

THRESHOLD = 0.90


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # kB -> GiB


def synthetic(n: int, dim: int, clusters: int, spread: float, seed: int, dup_rate: float = 0.01):
    """``(X (n, dim) float32, labels (n,), planted (m, 2) rows)``: the last ``m`` rows are
    near-copies of random earlier ones."""
    rng = np.random.default_rng(seed)
    m = int(n * dup_rate)
    base = n - m
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)
    y = rng.integers(0, clusters, base)
    X = np.empty((n, dim), np.float32)
    for s in range(0, base, 50_000):  # in chunks: bounded temporary memory
        e = min(base, s + 50_000)
        X[s:e] = centres[y[s:e]] + spread * rng.normal(0, 1, (e - s, dim)).astype(np.float32)
    src = rng.choice(base, m, replace=False)
    noise = rng.uniform(0.1, 0.3, (m, 1)).astype(np.float32)  # cosine 0.95-0.99 to the source
    X[base:] = X[src] + noise * rng.normal(0, 1, (m, dim)).astype(np.float32)
    labels = np.concatenate([y, y[src]])
    X = X.astype(np.float16).astype(np.float32)  # as the store keeps them: both sides see the same
    return X, labels, np.stack([src, np.arange(base, n)], axis=1)


def write_store(path: Path, X: np.ndarray, labels: np.ndarray, extra: dict | None = None):
    """A store of ``X`` written through the store API, float16, in chunks (as ingest writes)."""
    import embedstore

    st = embedstore.connect(path)
    dim = X.shape[1]
    field = st.meta.embedding_field(
        "emb_synthetic",
        dim,
        "float16",
        {"backbone": "synthetic", "source": "benchmark", "dim": dim},
    )
    for s in range(0, len(X), 100_000):
        e = min(len(X), s + 100_000)
        cols = {
            "id": pa.array([f"{i:064x}" for i in range(s, e)]),
            "path": pa.array([f"img_{i}.jpg" for i in range(s, e)]),
            "label": pa.array([f"c{v}" for v in labels[s:e]], pa.string()),
        }
        for k, v in (extra or {}).items():
            cols[k] = pa.array(v[s:e])
        emb = pa.FixedSizeListArray.from_arrays(
            pa.array(X[s:e].astype(np.float16).reshape(-1)), dim
        )
        fields = [pa.field(k, a.type) for k, a in cols.items()] + [field]
        st.insert_images(pa.Table.from_arrays([*cols.values(), emb], schema=pa.schema(fields)))
    st.compact(min_fragments=2)
    return st


# ---------------------------------------------------------------------------- duplicates


def child_duplicates(store: str, out: str) -> None:
    """In a child process: one find_duplicates call, its time, peak memory and pairs."""
    import embedstore

    t0 = time.perf_counter()
    res = embedstore.find_duplicates(store, threshold=THRESHOLD, plots=False, out=out)
    seconds = time.perf_counter() - t0
    a = np.array([int(p.id_a, 16) for p in res.pairs], np.int64)
    b = np.array([int(p.id_b, 16) for p in res.pairs], np.int64)
    np.save(
        Path(out) / "pairs.npy", np.stack([a, b], axis=1) if len(a) else np.zeros((0, 2), np.int64)
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "max_rss_gib": _rss_gib(),
                "index": res.index,
                "pairs": res.pairs_found,
                "groups": res.groups_found,
                "saturated_note": bool(res.notes),
            }
        )
    )


def brute_force(X: np.ndarray, threshold: float) -> tuple[set, float, float]:
    """All pairs at or above ``threshold`` from the full similarity matrix: pairs, s, GiB."""
    t0 = time.perf_counter()
    V = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = V @ V.T  # (m, m): every similarity in RAM
    i, j = np.nonzero(np.triu(S >= threshold, 1))
    seconds = time.perf_counter() - t0
    return set(zip(i.tolist(), j.tolist(), strict=True)), seconds, S.nbytes / 2**30


def bench_duplicates(n: int, args: argparse.Namespace) -> dict[str, Any]:
    X, labels, planted = synthetic(n, args.dim, args.clusters, args.spread, args.seed)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        write_store(Path(tmp) / "store", X, labels)
        write_s = time.perf_counter() - t0
        out = Path(tmp) / "dups"
        out.mkdir()
        cmd = [sys.executable, __file__, "--child-duplicates", str(Path(tmp) / "store"), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        pairs = np.load(out / "pairs.npy")
    found = {(int(a), int(b)) for a, b in pairs}
    planted_set = {(int(min(a, b)), int(max(a, b))) for a, b in planted}
    recall_planted = len(planted_set & found) / len(planted_set)
    # the brute-force baseline on a random subset, and our pairs inside that subset
    rng = np.random.default_rng(args.seed + 1)
    sub = np.sort(rng.choice(n, min(args.subset, n), replace=False))
    pos = {int(r): i for i, r in enumerate(sub)}
    brute, brute_s, brute_gib = brute_force(X[sub], THRESHOLD)
    ours_sub = {(pos[a], pos[b]) for a, b in found if a in pos and b in pos}
    scale = (n / len(sub)) ** 2
    return {
        "vectors": n,
        "dim": args.dim,
        "planted_pairs": len(planted_set),
        "index": child["index"],
        "store_write_s": round(write_s, 1),
        "duplicates_s": round(child["seconds"], 1),
        "duplicates_max_rss_gib": child["max_rss_gib"],
        "pairs_found": child["pairs"],
        "recall_planted": round(recall_planted, 4),
        "subset": len(sub),
        "brute_pairs_in_subset": len(brute),
        "recall_vs_brute_in_subset": round(len(brute & ours_sub) / max(1, len(brute)), 4),
        "extra_vs_brute_in_subset": len(ours_sub - brute),
        "brute_subset_s": round(brute_s, 2),
        "brute_subset_matrix_gib": round(brute_gib, 2),
        "brute_full_s_extrapolated": round(brute_s * scale, 0),
        "brute_full_matrix_gib": round(n * n * 4 / 2**30, 1),
    }


# ---------------------------------------------------------------------------- issues


def bench_issues(args: argparse.Namespace) -> dict[str, Any]:
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores

    import embedstore
    import heads
    from heads.runs._loaded import log_softmax
    from heads.runs._rundir import read_val

    n, c = args.issues_size, args.issues_classes
    X, y, _ = synthetic(n, args.dim, c, args.issues_spread, args.seed + 2, dup_rate=0.0)
    rng = np.random.default_rng(args.seed + 3)
    flip = rng.choice(n, int(0.05 * n), replace=False)
    given = y.copy()
    given[flip] = (y[flip] + rng.integers(1, c, len(flip))) % c
    flipped_ids = {f"{i:064x}" for i in flip}
    out: dict[str, Any] = {"images": n, "classes": c, "dim": args.dim, "flipped": len(flip)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        st = write_store(Path(tmp) / "store", X, given)
        embedstore.split(st, folds=5, seed=0)
        t0 = time.perf_counter()
        res = heads.train(st, fold="all", head="centroid", out=Path(tmp) / "run", progress=False)
        out["train_centroid_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        issues = heads.find_issues(res.ensemble, top=2 * len(flip), plots=False)
        out["heads_issues_s"] = round(time.perf_counter() - t0, 1)
        out.update({f"heads_issues_{k}": v for k, v in issues.seconds_by_step.items()})
        out["label_error_recall_top2x"] = round(
            len({s.id for s in issues.label_issues} & flipped_ids) / len(flip), 4
        )
        out["cleanlab_flagged"] = issues.flagged
        # cleanlab alone, on the same out-of-fold probabilities
        val = read_val(Path(res.ensemble))
        classes = heads.load(res.ensemble, "cpu").classes
        idx = {k: i for i, k in enumerate(classes)}
        labels = np.array([idx[v] for v in val["label"]])
        probs = np.exp(log_softmax(np.asarray(val["logits"], np.float64)))
        t0 = time.perf_counter()
        find_label_issues(labels, probs, n_jobs=1)
        get_label_quality_scores(labels, probs)
        out["cleanlab_label_issues_s"] = round(time.perf_counter() - t0, 2)
        # outliers: cleanlab's kNN (scikit-learn) on the same embeddings, on --ood-subset rows
        Xs, _ = st.embeddings("synthetic", columns=("id",))
        m = min(args.ood_subset, n)
        if m:  # --ood-subset 0 skips it (about 16 minutes at 100,000 x 384 on 2 busy cores)
            t0 = time.perf_counter()
            OutOfDistribution().fit_score(features=Xs[:m])
            out["cleanlab_ood_rows"] = m
            out["cleanlab_ood_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            embedstore.explore.self_join_index(m, m).build(Xs[:m]).search(
                Xs[:m], 11
            )  # as find_issues
            out["ours_knn_same_rows_s"] = round(time.perf_counter() - t0, 1)
    return out


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.5, help="noise / centre scale (cosine ~0.8)")
    p.add_argument("--subset", type=int, default=20_000, help="rows for the brute-force baseline")
    p.add_argument("--issues-size", type=int, default=100_000)
    p.add_argument("--issues-classes", type=int, default=100)
    p.add_argument("--issues-spread", type=float, default=1.0)
    p.add_argument("--ood-subset", type=int, default=100_000, help="rows for cleanlab's OOD kNN")
    p.add_argument("--no-issues", action="store_true")
    p.add_argument("--no-duplicates", action="store_true")
    p.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the temporary stores")
    p.add_argument("--out", type=Path, default=OUT_DIR / "quality_checks.json")
    p.add_argument("--child-duplicates", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.subset, a.issues_size, a.ood_subset = [5000, 20000], 3000, 5000, 5000
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_duplicates:
        child_duplicates(*args.child_duplicates)
        return
    report: dict[str, Any] = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if not args.no_duplicates:
        rows = []
        for n in args.sizes:
            rows.append(bench_duplicates(n, args))
            print(json.dumps(rows[-1]), flush=True)
        report["duplicates"] = rows
        print_table(
            rows,
            [
                "vectors",
                "index",
                "duplicates_s",
                "duplicates_max_rss_gib",
                "recall_planted",
                "recall_vs_brute_in_subset",
                "brute_subset_s",
                "brute_full_s_extrapolated",
                "brute_full_matrix_gib",
            ],
            title=f"duplicates (threshold {THRESHOLD}, {args.dim}-d)",
        )
    if not args.no_issues:
        report["issues"] = bench_issues(args)
        print(json.dumps(report["issues"], indent=1))
    print(f"written {write_json(report, args.out)}")


if __name__ == "__main__":
    main()
