"""Photos the unknown detector rejects, clustered into candidate new classes (``heads unknowns``):
do they group by their true class, and which clustering says so best?

Run from the repository root:

    python benchmarks/unknown_clusters.py --store /work/stores/flowers12-plain

For each pair of flowers12 classes held out from training, a linear head with the default
detector (energy-knn) is trained on the other ten (fold 0 of a copy of the store), and the photos
of the two held-out classes plus the held-out test part are shown to it. The photos it rejects
are clustered with what ``heads unknowns`` uses (HDBSCAN, min_cluster_size 5) and, for the
record, with average-linkage (cosine) and Ward agglomerative clustering at a few thresholds
(clusters under 5 photos count as unclustered, as HDBSCAN's noise). Scores: purity (share of the
clustered photos in their cluster's most common true class), the share clustered, the adjusted
Rand index on the clustered photos, and whether the two largest clusters are the two held-out
classes. Written to ``--out`` (default ``benchmarks/out/unknown_clusters.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import csv  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import OUT_DIR, machine_info, print_table, write_json  # noqa: E402

PAIRS = [("tigerlily", "bluebell"), ("pansy", "tigerlily"), ("fritillary", "sunflower")]
MIN_SIZE = 5


def scores(labels: np.ndarray, truth: np.ndarray, new: tuple[str, str]) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    m = labels >= 0
    sizes = Counter(labels[m].tolist())
    top = [k for k, _ in sizes.most_common(2)]
    major = [Counter(truth[labels == k]).most_common(1)[0][0] for k in top]
    agree = sum(Counter(truth[labels == k]).most_common(1)[0][1] for k in sizes)
    return {
        "clusters": len(sizes),
        "clustered": float(m.mean()),
        "purity": float(agree / m.sum()) if m.any() else None,
        "ari": float(adjusted_rand_score(truth[m], labels[m])) if m.any() else None,
        "two_largest_are_new": sorted(major) == sorted(new),
    }


def small_as_noise(labels: np.ndarray) -> np.ndarray:
    sizes = np.bincount(labels)
    return np.where(sizes[labels] >= MIN_SIZE, labels, -1)


def one_pair(store: Path, work: Path, new: tuple[str, str]) -> list[dict[str, Any]]:
    from sklearn.cluster import AgglomerativeClustering

    import embedstore
    import heads
    from embedstore.search import l2_normalize

    run = work / f"run-{new[0]}-{new[1]}"
    heads.train(
        store, fold=0, head="linear", unknown="default", where=f"label NOT IN {new!r}",
        out=run, epochs=20, progress=False, device="cpu",
    )  # fmt: skip
    where = f"label IN {new!r} OR fold = -1"
    res = heads.evaluation.cluster_unknowns(run, where=where, out=work / f"u-{new[0]}")
    with open(res.csv, newline="") as f:
        got = list(csv.DictReader(f))
    truth = np.array([r["label"] for r in got], dtype=object)
    hdb = np.array([int(r["cluster"]) for r in got])
    n_new = sum(1 for r in got if r["label"] in new)
    base = {"held out": " + ".join(new), "rejected": res.rejected, "of new rejected": n_new}
    out = [{**base, "method": "HDBSCAN, min_cluster_size 5", **scores(hdb, truth, new)}]
    ids = [r["id"] for r in got]
    X, cols = embedstore.connect(store).embeddings(ids=ids, columns=("id",))
    X = l2_normalize(X[[list(cols["id"]).index(i) for i in ids]])
    for t in (0.6, 0.8):
        c = AgglomerativeClustering(None, distance_threshold=t, linkage="average", metric="cosine")
        labels = small_as_noise(c.fit_predict(X))
        out.append(
            {**base, "method": f"average linkage, cosine < {t}", **scores(labels, truth, new)}
        )
    for t in (1.5, 2.0):
        c = AgglomerativeClustering(None, distance_threshold=t, linkage="ward")
        labels = small_as_noise(c.fit_predict(X))
        out.append({**base, "method": f"Ward, distance < {t}", **scores(labels, truth, new)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("/work/stores/flowers12-plain"))
    ap.add_argument("--out", type=Path, default=OUT_DIR / "unknown_clusters.json")
    args = ap.parse_args()
    machine = machine_info()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="unknowns-") as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(args.store, store, ignore=shutil.ignore_patterns("write.lock"))
        for new in PAIRS:
            rows += one_pair(store, Path(tmp), new)
    cols = ["held out", "method", "rejected", "of new rejected", "clusters", "clustered"]
    print_table(rows, [*cols, "purity", "ari", "two_largest_are_new"], "rejected photos, clustered")
    write_json({"machine": machine, "rows": rows}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
