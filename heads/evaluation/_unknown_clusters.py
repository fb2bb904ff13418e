"""Photos a run's unknown detector rejects, grouped into candidate new classes
(``heads unknowns RUN --store S``): a reviewer looks at one contact sheet per cluster, names
it, and the cluster's ids are what labelling it takes.

The rejected photos' embeddings (each backbone's L2-normalised, side by side, as the head
reads them) are clustered with HDBSCAN (scikit-learn): it needs no distance threshold (the
scale of "one kind of thing" differs between backbones and collections) nor a number of
clusters, only ``min_cluster_size`` in photos, and it leaves photos that fit no group
unclustered (cluster -1) instead of forcing junk into a class. On flowers12 with two classes
held out from training, average-linkage agglomerative clustering needed its cosine threshold
tuned per run (0.6: 2 clusters; 0.8: everything in one), Ward's gave 3-7 clusters for 2
classes, and HDBSCAN with its default 5 found the two classes with no mixed cluster
(benchmarks/RESULTS.md).

Written to ``out`` (default ``RUN/unknowns``): ``clusters.csv`` (``cluster,id,path,label,
unknown_score``, the photos nearest their cluster's centre first: the cluster -> ids a label
call takes), ``cluster_names.csv`` (``cluster,size,sheet,new_label``: the reviewer fills
``new_label``) and ``cluster_<k>.png`` per cluster (``unclustered.png`` for the rest). The
labelling call that reads them (name a cluster, label its photos in one step) does not exist
yet; these files are what it will take.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import HDBSCAN

import embedstore
from embedstore import Result
from embedstore.explore import Tile, contact_sheet, load_thumbnail
from embedstore.search import l2_normalize
from embedstore.store import HOLDOUT
from heads._data import concat_backbones
from heads._errors import HeadsError
from heads.runs._loaded import Predictor, load

DEFAULT_MIN_CLUSTER_SIZE = 5
TILES_PER_ROW = 8


@dataclass
class UnknownCluster(Result):
    """One candidate class: its photos (nearest the centre first), its sheet, and the labels
    they already carry in the store, if any (a check, not what a reviewer needs)."""

    cluster: int
    size: int
    sheet: str | None
    ids: list[str]
    stored_labels: dict[str, int] = field(default_factory=dict)


@dataclass
class UnknownClusters(Result):
    """What ``heads unknowns`` found: rows examined, those rejected, the clusters."""

    run: str
    store: str
    rows: int
    rejected: int
    clustered: int
    clusters: list[UnknownCluster]
    out: str
    csv: str
    names_csv: str
    method: str
    # with stored labels on the rejected photos: share of the clustered ones in their
    # cluster's most common label (1.0: every cluster is one class)
    purity: float | None = None
    notes: list[str] = field(default_factory=list)


def cluster_unknowns(
    run: str | os.PathLike | Predictor,
    *,
    store: str | os.PathLike | None = None,
    where: str | None = None,
    out: str | os.PathLike | None = None,
    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE,
    tiles: int = 24,
    device: str = "auto",
) -> UnknownClusters:
    """Cluster the store photos ``run``'s unknown detector rejects into candidate new classes.

    ``where`` selects the photos to look at (default: the unlabelled ones and the held-out
    part, which no fold trained on). ``min_cluster_size``: the fewest photos a cluster holds.
    ``tiles``: thumbnails per contact sheet. Files go to ``out`` (default ``RUN/unknowns``).

    >>> res = heads.evaluation.cluster_unknowns("runs/mlp", store="flowers")
    >>> res.clusters[0].sheet, res.csv
    """
    if min_cluster_size < 2:
        raise HeadsError(f"--min-cluster-size must be at least 2, not {min_cluster_size}")
    model = run if isinstance(run, Predictor) else load(run, device)
    st = embedstore.connect(store or model.store_path, create=False)
    rows = _rejected_rows(model, st, where)
    n_rows, keep = len(rows["id"]), rows.pop("rejected")
    rows = {k: v[keep] for k, v in rows.items()}
    folder = Path(out) if out is not None else Path(model.path) / "unknowns"
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if len(rows["id"]) < min_cluster_size:
        notes.append(
            f"{len(rows['id'])} photo(s) rejected, fewer than --min-cluster-size "
            f"{min_cluster_size}: nothing to cluster"
        )
        labels = np.full(len(rows["id"]), -1, dtype=np.int64)
    else:
        labels = _cluster(rows["X"], min_cluster_size)
    order = _nearest_first(rows["X"], labels)
    clusters = _write_sheets(rows, labels, order, folder, tiles, str(model.path))
    csv_path, names_path = _write_csvs(rows, labels, order, clusters, folder)
    return UnknownClusters(
        str(model.path),
        str(st.path),
        n_rows,
        int(len(labels)),
        int(np.sum(labels >= 0)),
        clusters,
        str(folder),
        str(csv_path),
        str(names_path),
        f"HDBSCAN (min_cluster_size {min_cluster_size}) on L2-normalised embeddings",
        _purity(rows["label"], labels),
        notes,
    )


def _rejected_rows(model: Predictor, st: embedstore.Store, where: str | None) -> dict[str, Any]:
    """The selected rows' ids, paths, stored labels, clustering input ``X`` and unknown scores,
    and which the detector rejects (``rejected``)."""
    if model.threshold is None:
        raise HeadsError(
            f"{model.path}: the run has no unknown detector; train one with `heads train "
            "--unknown` (the photos it rejects are what `heads unknowns` groups)"
        )
    select: dict[str, Any] = {"where": where}
    if where is None:
        t = st.read(["id", "label", *(["fold"] if st.has_column("fold") else [])])
        fold = t.column("fold").to_pylist() if "fold" in t.column_names else [None] * t.num_rows
        lab = t.column("label").to_pylist()
        ids = t.column("id").to_pylist()
        select = {
            "ids": [i for i, v, f in zip(ids, lab, fold, strict=True) if v is None or f == HOLDOUT]
        }
        if not select["ids"]:
            raise HeadsError(
                f"{st.path}: no unlabelled or held-out photos to look at; choose some with --where"
            )
    cols = model.backbone_columns()
    meta = list(model.columns)
    where_from = [c for c in ("path", "root") if st.has_column(c)]  # the thumbnails' files
    embs, t = st.embedding_rows(
        {c: b["dim"] for c, b in cols.items()}, ["id", "label", *where_from, *meta], **select
    )
    if not len(t["id"]):
        raise HeadsError(f"{st.path}: no photos with the run's embeddings match --where {where!r}")
    table = {c: np.asarray(t[c], dtype=object) for c in meta}
    logits = model.logits(embs, table)
    scores = model.unknown_scores(embs, logits, table)
    assert scores is not None  # the run has a detector (a threshold)
    main = [embs[c] for c, b in cols.items() if "view" not in b]
    return {
        "id": np.asarray(t["id"], dtype=object),
        "label": np.asarray(t["label"], dtype=object),
        "path": np.asarray(t.get("path", [None] * len(t["id"])), dtype=object),
        "root": np.asarray(t.get("root", [None] * len(t["id"])), dtype=object),
        "score": np.asarray(scores, dtype=np.float64),
        "X": concat_backbones(main) if len(main) > 1 else l2_normalize(main[0]),
        "rejected": model.is_unknown(scores, logits.argmax(axis=1)),
    }


def _cluster(X: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels ``(N,)`` (-1: unclustered), renumbered 0.. by cluster size, largest first.
    On L2-normalised rows the Euclidean distance is a function of the cosine."""
    raw = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(X)
    sizes = Counter(int(c) for c in raw if c >= 0)
    rank = {c: k for k, (c, _) in enumerate(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))}
    return np.array([rank.get(int(c), -1) for c in raw], dtype=np.int64)


def _nearest_first(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row order: by cluster (unclustered last), nearest the cluster's centre first."""
    sim = np.zeros(len(labels))
    for k in set(labels.tolist()):
        m = labels == k
        centre = l2_normalize(X[m].mean(axis=0, keepdims=True))[0]
        sim[m] = X[m] @ centre
    key = np.where(labels < 0, np.iinfo(np.int64).max, labels)
    return np.lexsort((-sim, key))


def _write_sheets(
    rows: dict[str, Any],
    labels: np.ndarray,
    order: np.ndarray,
    folder: Path,
    tiles: int,
    run: str,
) -> list[UnknownCluster]:
    """A contact sheet per cluster (and one of the unclustered photos); the clusters."""
    out = []
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    for k in [*range(n_clusters), -1]:
        idx = order[labels[order] == k]
        if not len(idx):
            continue
        name = f"cluster_{k}.png" if k >= 0 else "unclustered.png"
        shown = [
            Tile(
                load_thumbnail(rows["root"][i], rows["path"][i]),
                [_name(rows["path"][i], rows["id"][i]), f"score {rows['score'][i]:.3f}"],
            )
            for i in idx[:tiles]
        ]
        sheet_rows = [
            (
                f"photos {s + 1}-{s + len(shown[s : s + TILES_PER_ROW])}",
                shown[s : s + TILES_PER_ROW],
            )
            for s in range(0, len(shown), TILES_PER_ROW)
        ]
        shown_n = f"{min(tiles, len(idx))} shown"
        title = (
            f"cluster {k}: {len(idx)} photos the unknown detector of {run} rejected (nearest "
            f"the centre first; {shown_n}). Name it in cluster_names.csv."
            if k >= 0
            else f"{len(idx)} rejected photos that fit no cluster of at least the minimum size "
            f"({shown_n}): look at them one by one."
        )
        sheet = contact_sheet(sheet_rows, folder / name, title=title, caption_lines=2)
        stored = Counter(str(v) for v in rows["label"][idx] if v is not None)
        if k >= 0:
            out.append(
                UnknownCluster(
                    k,
                    int(len(idx)),
                    str(sheet),
                    [str(i) for i in rows["id"][idx]],
                    dict(stored.most_common()),
                )
            )
    return out


def _name(path: str | None, image_id: str) -> str:
    """A tile's caption: the file's name, or the start of its id without one."""
    return Path(str(path)).name if path else str(image_id)[:12]


def _write_csvs(
    rows: dict[str, Any],
    labels: np.ndarray,
    order: np.ndarray,
    clusters: list[UnknownCluster],
    folder: Path,
) -> tuple[Path, Path]:
    """``clusters.csv`` (every rejected photo) and ``cluster_names.csv`` (one row per
    cluster, ``new_label`` left for the reviewer)."""
    csv_path, names_path = folder / "clusters.csv", folder / "cluster_names.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cluster", "id", "path", "label", "unknown_score"])
        for i in order:
            v = rows["label"][i]
            w.writerow(
                [
                    int(labels[i]),
                    rows["id"][i],
                    rows["path"][i],
                    "" if v is None else v,
                    f"{rows['score'][i]:.6f}",
                ]
            )
    with open(names_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cluster", "size", "sheet", "new_label"])
        for c in clusters:
            w.writerow([c.cluster, c.size, Path(c.sheet).name if c.sheet else "", ""])
    return csv_path, names_path


def _purity(stored: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of clustered photos with their cluster's most common stored label (None when the
    clustered photos carry no labels)."""
    m = (labels >= 0) & np.array([v is not None for v in stored], dtype=bool)
    if not m.any():
        return None
    agree = sum(
        Counter(stored[m & (labels == k)]).most_common(1)[0][1] for k in set(labels[m].tolist())
    )
    return float(agree / m.sum())
