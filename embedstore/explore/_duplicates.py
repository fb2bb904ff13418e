"""Near-duplicate images and the leakage they cause between splits, folds and labels.

Exact duplicates are already one row (identity is the SHA-256 of the bytes); this finds images
whose embeddings are nearly the same: a re-encoded, resized, cropped or mirrored copy. Each image
asks the nearest-neighbour index (:class:`NeighborIndex`, or the store's saved index from
``embedstore index``) for its ``k`` nearest neighbours, so the cost is one kNN search of the
store, never the N x N similarity matrix; pairs at or above ``threshold`` (cosine similarity,
as ``lookup`` reports it) are gathered into groups around a first image (:func:`star_groups`).

A pair **leaks** when its two images sit in different splits (``train`` / ``test``), on both
sides of the held-out part (fold -1 against a training fold), in different folds, or carry
different labels (likely one of them is mislabelled).

>>> res = embedstore.find_duplicates("flowers", threshold=0.9)
>>> res.leakage  # {"split": 12, "holdout": 12, "fold": 3, "label": 1}
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore._results import Result
from embedstore.explore._sheets import Tile, contact_sheet, load_thumbnail
from embedstore.search._indexes import open_store, saved_index
from embedstore.search._search import NeighborIndex, l2_normalize
from embedstore.store._store import ALWAYS_TRAIN, HOLDOUT, Store
from embedstore.types import LOOKUP_INDEXES, IndexKind, LookupIndex, check_choice

# Measured on flowers12 with efficientnet-lite0: a JPEG re-encode at quality 30, a 75% resize,
# a 10% crop or a mirror image keeps a cosine similarity of 0.87-0.99 to its original (median
# 0.95); 0.90 finds 92% of such copies (benchmarks/RESULTS.md, "Near-duplicates").
DEFAULT_THRESHOLD = 0.90
DEFAULT_K = 10
IVF_FROM = 20_000  # kind="auto": an IVF index from this many vectors (a self-join), exact below
LEAK_KINDS = ("split", "holdout", "fold", "label")
_HELD_OUT_COLOR, _TRAIN_COLOR = "#ff7f0e", "#1f77b4"
_TILES_PER_GROUP = 8


@dataclass
class NearPairs(Result):
    """Pairs of rows ``(first[i], second[i])`` with cosine ``similarity[i] >= threshold``, most
    similar first. ``saturated``: query rows whose k-th neighbour was still above the threshold
    (they may have more pairs than were found)."""

    first: np.ndarray  # (P,) int64
    second: np.ndarray  # (P,) int64
    similarity: np.ndarray  # (P,) float32
    saturated: int
    index: str


def near_duplicate_pairs(
    X: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    k: int = DEFAULT_K,
    queries: Any = None,
    index: NeighborIndex | None = None,
    kind: IndexKind = "auto",
    device: str | torch.device = "cpu",
) -> NearPairs:
    """Pairs of near-duplicate rows by cosine similarity, from one kNN search.

    Without ``queries``: pairs ``i < j`` within ``X`` (N, d). With ``queries`` (M, d): pairs
    ``(query row, X row)`` across the two sets. ``index`` is a NeighborIndex already holding
    ``X`` (e.g. the store's saved one); otherwise one of ``kind`` is built (``"auto"``: see
    :func:`self_join_index`).

    >>> p = near_duplicate_pairs(X, threshold=0.9)
    >>> list(zip(p.first, p.second, p.similarity))[:3]
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if index is None:
        n_queries = len(X) if queries is None else len(queries)
        index = self_join_index(len(X), n_queries, kind, device).build(X)
    n = index.ntotal
    self_join = queries is None
    Q = X if self_join else queries
    empty = np.zeros(0, np.int64)
    if n == 0 or len(Q) == 0:
        return NearPairs(empty, empty, np.zeros(0, np.float32), 0, index.kind_ or index.kind)
    kk = min(n, k + 1 if self_join else k)  # a row finds itself first
    sims, idx = index.search(Q, kk)  # (M, kk), (M, kk)
    rows = np.repeat(np.arange(len(Q), dtype=np.int64), kk)
    s, j = sims.reshape(-1), idx.reshape(-1)
    keep = (s >= threshold) & (j >= 0)
    if self_join:
        keep &= j != rows
    rows, j, s = rows[keep], j[keep], s[keep]
    saturated = int((sims[:, -1] >= threshold).sum()) if kk < n else 0
    if self_join:
        rows, j, s = unique_pairs(rows, j, s)
    order = np.argsort(-s, kind="stable")
    return NearPairs(
        rows[order], j[order], s[order].astype(np.float32), saturated, index.kind_ or index.kind
    )


def self_join_index(
    n: int, n_queries: int, kind: IndexKind = "auto", device: str | torch.device = "cpu"
) -> NeighborIndex:
    """The index for ``n_queries`` kNN queries over ``n`` vectors that are mostly the same
    vectors (near-duplicates, kNN density of every image).

    ``"auto"``: exact below :data:`IVF_FROM` vectors, or when there are few queries, or on a
    GPU (brute force is fast there); otherwise IVF with ``sqrt(n)`` lists. A self-join asks
    every vector, so the k-means training (proportional to ``n x lists``) and the search
    (``n x n / lists x nprobe``) cost the same at about ``sqrt(n)`` lists: at 400,000 vectors
    that is 2.5x less work than the ``4 sqrt(n)`` lookups use. A near-duplicate is so close to
    its pair that the two fall in the same or a probed list (recall against the brute-force
    all-pairs baseline: ``benchmarks/RESULTS.md``, "Near-duplicates").
    """
    if kind != "auto":
        return NeighborIndex(kind=kind, device=device)
    dev = resolve_device(device)
    if dev.type == "cuda" or n < IVF_FROM or n_queries < n // 10:
        return NeighborIndex(kind="exact", device=dev)
    return NeighborIndex(kind="ivf", device=dev, nlist=max(1, round(math.sqrt(n))))


def unique_pairs(
    a: np.ndarray, b: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j)`` and ``(j, i)`` as one pair ``i < j``, kept once with its best similarity."""
    a, b = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-s, b, a))
    a, b, s = a[order], b[order], s[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    order = np.argsort(-s[first], kind="stable")
    return a[first][order], b[first][order], s[first][order]


def star_groups(first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> list[list[int]]:
    """Groups of rows around a first member, each row in one group, from pairs most similar first.

    A pair of two ungrouped rows starts a group (its first row leads); an ungrouped row joins a
    group when it pairs with that group's first row. So every member is a near-duplicate of its
    group's first image: no chains of look-alikes (connected components would join a whole
    class of similar photos through intermediate ones). A row that pairs only with other
    groups' non-first members joins the group of its most similar partner.
    """
    pair_sim = {}
    for a, b, s in zip(first.tolist(), second.tolist(), similarity.tolist(), strict=True):
        pair_sim[(a, b)] = pair_sim[(b, a)] = s
    group_of: dict[int, int] = {}
    groups: list[list[int]] = []
    order = np.argsort(-similarity, kind="stable")
    for a, b in zip(first[order].tolist(), second[order].tolist(), strict=True):
        ga, gb = group_of.get(a), group_of.get(b)
        if ga is None and gb is None:
            group_of[a] = group_of[b] = len(groups)
            groups.append([a, b])
        elif ga is None and gb is not None and (groups[gb][0], a) in pair_sim:
            group_of[a] = gb
            groups[gb].append(a)
        elif gb is None and ga is not None and (groups[ga][0], b) in pair_sim:
            group_of[b] = ga
            groups[ga].append(b)
    for a, b in zip(first[order].tolist(), second[order].tolist(), strict=True):
        for x, y in ((a, b), (b, a)):  # most similar partner first, as pairs are sorted
            if x not in group_of:
                group_of[x] = group_of[y]
                groups[group_of[y]].append(x)
    return groups


def leaks_of_pair(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What a near-duplicate pair leaks across (a subset of :data:`LEAK_KINDS`), from the two
    rows' ``split``, ``fold`` and ``label``."""
    out = []
    sa, sb = a.get("split"), b.get("split")
    if sa is not None and sb is not None and sa != sb:
        out.append("split")
    fa, fb = a.get("fold"), b.get("fold")
    if fa is not None and fb is not None:
        trains_a, trains_b = fa >= 0 or fa == ALWAYS_TRAIN, fb >= 0 or fb == ALWAYS_TRAIN
        if (fa == HOLDOUT and trains_b) or (fb == HOLDOUT and trains_a):
            out.append("holdout")
        elif fa >= 0 and fb >= 0 and fa != fb:
            out.append("fold")
    la, lb = a.get("label"), b.get("label")
    if la is not None and lb is not None and la != lb:
        out.append("label")
    return out


@dataclass
class DuplicatePair(Result):
    """Two near-duplicate images and what they leak across."""

    id_a: str
    id_b: str
    similarity: float
    leaks: list[str]
    path_a: str | None = None
    path_b: str | None = None


@dataclass
class DuplicateGroup(Result):
    """Near-duplicates of the group's first image. ``similarity``: the group's best pair;
    ``leaks``: every kind of leak among its pairs. Member lists are aligned;
    ``similarity_to_first`` is each member's cosine similarity to the first member (below the
    threshold for a member that joined through another member). ``linked_to``: the earlier
    member each one pairs with (the first when it does, else its most similar partner; None
    for the first), at ``similarity_to_link`` (at or above the threshold)."""

    group: int
    size: int
    similarity: float
    leaks: list[str]
    ids: list[str]
    paths: list[str | None]
    labels: list[str | None]
    splits: list[str | None]
    folds: list[int | None]
    similarity_to_first: list[float]
    linked_to: list[int | None] = field(default_factory=list)
    similarity_to_link: list[float | None] = field(default_factory=list)

    def link_caption(self, i: int) -> str:
        """``#1 first``, ``#3 sim 0.951 to #1``: member ``i``'s number and the pair that puts it
        in the group (at or above the threshold, unlike its similarity to the first)."""
        if i == 0:
            return "#1 first"
        j = self.linked_to[i] if i < len(self.linked_to) else None
        s = self.similarity_to_link[i] if i < len(self.similarity_to_link) else None
        if j is None or s is None:  # no pair inside the group was found (not expected)
            return f"#{i + 1} sim {self.similarity_to_first[i]:.3f} to #1"
        return f"#{i + 1} sim {s:.3f} to #{j + 1}"


@dataclass
class DuplicatesResult(Result):
    """Near-duplicate groups of a store, and the leakage among their pairs.

    ``leakage``: pairs per kind of leak; ``holdout_images``: held-out images with a
    near-duplicate in a training fold. Every pair is in ``csv`` (and in :attr:`pairs`, which
    ``to_dict()`` leaves out: it lists the leaking pairs only).
    """

    store: str
    backbone: str
    column: str
    threshold: float
    k: int
    index: str
    images: int
    pairs_found: int
    groups_found: int
    images_in_groups: int
    leakage: dict[str, int]
    holdout_images: int
    groups: list[DuplicateGroup]
    leaking_pairs: list[DuplicatePair]
    csv: str | None = None
    png: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    pairs: list[DuplicatePair] = field(default_factory=list, repr=False)

    def items_(self) -> dict[str, Any]:
        out = super().items_()
        out.pop("pairs")
        return out


def find_duplicates(
    store: Store | str | os.PathLike,
    *,
    backbone: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    k: int = DEFAULT_K,
    index: LookupIndex = "auto",
    where: str | None = None,
    out: str | os.PathLike | None = None,
    top: int = 12,
    plots: bool = True,
    device: str | torch.device = "cpu",
) -> DuplicatesResult:
    """Near-duplicate groups of a store's images and the leakage they cause.

    ``index="auto"`` uses the store's saved index (``embedstore index``) when it is up to date,
    else builds one (exact below 20,000 images, IVF with ``sqrt(N)`` lists above:
    :func:`self_join_index`); ``"exact"``, ``"ivf"``, ``"hnsw"`` choose. Writes
    ``duplicates.csv`` (every pair) and ``duplicates.png`` (the ``top`` groups: those leaking
    across train/test, the held-out part or labels first, then across folds) into ``out``
    (default ``STORE/duplicates``); ``plots=False`` writes the CSV only.

    >>> res = embedstore.find_duplicates("flowers")
    >>> res.leakage["split"], res.groups[0].paths
    """
    t0 = time.perf_counter()
    check_choice(index, LOOKUP_INDEXES, "index")
    st = open_store(store)
    info = st.resolve_backbone(backbone)
    schema = st.schema()
    assert schema is not None  # resolve_backbone found an embedding column
    names = set(schema.names)
    cols = [c for c in ("id", "path", "root", "label", "split", "fold") if c in names]
    X, t = st.embeddings(info.backbone, where=where, columns=cols)  # (N, d)
    n = len(X)
    notes: list[str] = []
    pairs = _pairs(st, info, X, t["id"], index, where, threshold, k, device, notes)
    if pairs.saturated:
        notes.append(
            f"{pairs.saturated} image(s) have {k} or more near-duplicates; some of their pairs "
            f"may be missing (raise k to list more)"
        )
    rows = _rows(t, n)
    pair_objs, leakage, held_out = _leaks(pairs, rows)
    groups = _groups(X, rows, pairs, pair_objs)
    res = DuplicatesResult(
        store=str(st.path),
        backbone=info.backbone,
        column=info.column,
        threshold=threshold,
        k=k,
        index=pairs.index,
        images=n,
        pairs_found=len(pair_objs),
        groups_found=len(groups),
        images_in_groups=sum(g.size for g in groups),
        leakage=leakage,
        holdout_images=len(held_out),
        groups=groups,
        leaking_pairs=[p for p in pair_objs if p.leaks],
        notes=notes,
        pairs=pair_objs,
    )
    out_dir = Path(out) if out is not None else st.path / "duplicates"
    out_dir.mkdir(parents=True, exist_ok=True)
    res.csv = str(_write_csv(out_dir / "duplicates.csv", pairs, rows, groups))
    if plots:
        res.png = str(_plot_groups(out_dir / "duplicates.png", groups[:top], rows, res))
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _pairs(
    st: Store,
    info: Any,
    X: np.ndarray,
    ids: np.ndarray,
    index: LookupIndex,
    where: str | None,
    threshold: float,
    k: int,
    device: str | torch.device,
    notes: list[str],
) -> NearPairs:
    """The near-duplicate pairs among ``X``'s rows, from the saved index when it is fresh."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    saved, _ = saved_index(st, info, index, where, dev, notes) if len(X) else (None, False)
    if saved is None:
        kind = "auto" if index == "auto" else index
        return near_duplicate_pairs(X, threshold=threshold, k=k, kind=kind, device=device)
    idx, saved_ids = saved
    # the saved index holds the rows in its own order: search it with every row, then map
    pairs = near_duplicate_pairs(X, threshold=threshold, k=k + 1, queries=X, index=idx)
    pos = {i: r for r, i in enumerate(ids.tolist())}
    remap = np.array([pos.get(i, -1) for i in saved_ids], dtype=np.int64)
    second = remap[pairs.second]
    ok = (second >= 0) & (second != pairs.first)
    a, b, s = unique_pairs(pairs.first[ok], second[ok], pairs.similarity[ok])
    return NearPairs(a, b, s, pairs.saturated, f"saved {pairs.index}")


def _leaks(
    pairs: NearPairs, rows: list[dict[str, Any]]
) -> tuple[list[DuplicatePair], dict[str, int], set[int]]:
    """Each pair with what it leaks across, the count per kind of leak, and the held-out rows
    that have a near-duplicate outside the held-out part."""
    pair_objs = []
    leakage = dict.fromkeys(LEAK_KINDS, 0)
    held_out: set[int] = set()
    for a, b, s in zip(
        pairs.first.tolist(), pairs.second.tolist(), pairs.similarity.tolist(), strict=True
    ):
        leaks = leaks_of_pair(rows[a], rows[b])
        for kind_ in leaks:
            leakage[kind_] += 1
        if "holdout" in leaks:
            held_out.add(a if rows[a].get("fold") == HOLDOUT else b)
        pair_objs.append(
            DuplicatePair(
                rows[a]["id"],
                rows[b]["id"],
                round(float(s), 4),
                leaks,
                rows[a].get("path"),
                rows[b].get("path"),
            )
        )
    return pair_objs, leakage, held_out


def _rows(t: dict[str, np.ndarray], n: int) -> list[dict[str, Any]]:
    out = [{c: t[c][i] for c in t} for i in range(n)]
    for r in out:
        f = r.get("fold")
        r["fold"] = None if f is None or (isinstance(f, float) and np.isnan(f)) else int(f)
    return out


def _groups(
    X: np.ndarray, rows: list[dict[str, Any]], pairs: NearPairs, pair_objs: list[DuplicatePair]
) -> list[DuplicateGroup]:
    comps = star_groups(pairs.first, pairs.second, pairs.similarity)
    group_of = {int(m): g for g, comp in enumerate(comps) for m in comp}
    best = [0.0] * len(comps)
    leaks: list[set[str]] = [set() for _ in comps]
    pair_sim: dict[tuple[int, int], float] = {}
    for a, b, p in zip(pairs.first.tolist(), pairs.second.tolist(), pair_objs, strict=True):
        pair_sim[(a, b)] = pair_sim[(b, a)] = p.similarity
        g = group_of[a]
        if group_of[b] != g:
            continue  # a pair across two groups: counted in the leakage totals, not in a group
        best[g] = max(best[g], p.similarity)
        leaks[g].update(p.leaks)
    out = []
    for g, comp in enumerate(comps):
        V = l2_normalize(X[comp])  # (m, d)
        sim0 = (V @ V[0]).tolist()
        links = _links(comp, pair_sim)
        out.append(
            DuplicateGroup(
                group=0,
                size=len(comp),
                similarity=round(best[g], 4),
                leaks=[k for k in LEAK_KINDS if k in leaks[g]],
                ids=[rows[m]["id"] for m in comp],
                paths=[rows[m].get("path") for m in comp],
                labels=[rows[m].get("label") for m in comp],
                splits=[rows[m].get("split") for m in comp],
                folds=[rows[m].get("fold") for m in comp],
                similarity_to_first=[round(float(s), 4) for s in sim0],
                linked_to=[j for j, _ in links],
                similarity_to_link=[None if v is None else round(v, 4) for _, v in links],
            )
        )
    out.sort(key=lambda d: (_severity(d.leaks), -d.similarity, -d.size))
    for i, d in enumerate(out, 1):
        d.group = i
    return out


def _links(
    comp: list[int], pair_sim: dict[tuple[int, int], float]
) -> list[tuple[int | None, float | None]]:
    """Per member of a group: the earlier member it pairs with (the first when it does, else
    the most similar one) and that pair's similarity; ``(None, None)`` for the first.
    :func:`star_groups` adds a member after the partner it joins through, so one exists."""
    out: list[tuple[int | None, float | None]] = [(None, None)]
    for i, m in enumerate(comp[1:], 1):
        if (comp[0], m) in pair_sim:
            out.append((0, pair_sim[(comp[0], m)]))
            continue
        cands = [(pair_sim[(comp[j], m)], j) for j in range(i) if (comp[j], m) in pair_sim]
        s, j = max(cands, key=lambda c: (c[0], -c[1])) if cands else (None, None)
        out.append((j, s))
    return out


def _severity(leaks: list[str]) -> int:
    """0: leaks across train/test, the held-out part or labels; 1: across folds only; 2: none."""
    return 0 if set(leaks) - {"fold"} else (1 if leaks else 2)


def _write_csv(
    path: Path, pairs: NearPairs, rows: list[dict[str, Any]], groups: list[DuplicateGroup]
) -> Path:
    group_of = {i: g.group for g in groups for i in g.ids}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        side = ("id", "path", "label", "split", "fold")
        w.writerow(
            ["group", "similarity", *(f"{c}_a" for c in side), *(f"{c}_b" for c in side), "leaks"]
        )
        for a, b, s in zip(
            pairs.first.tolist(), pairs.second.tolist(), pairs.similarity.tolist(), strict=True
        ):
            ra, rb = rows[a], rows[b]
            w.writerow(
                [
                    group_of.get(ra["id"]),
                    f"{s:.4f}",
                    *(ra.get(c) for c in side),
                    *(rb.get(c) for c in side),
                    ";".join(leaks_of_pair(ra, rb)),
                ]
            )
    os.replace(tmp, path)
    return path


def _plot_groups(
    path: Path, groups: list[DuplicateGroup], rows: list[dict[str, Any]], res: DuplicatesResult
) -> Path:
    sheet = _sheet_rows(groups, rows, csv_name=Path(res.csv).name if res.csv else None)
    if not sheet:
        sheet = [(f"no near-duplicates at similarity >= {res.threshold}", [])]
    leak = ", ".join(f"{k} {v}" for k, v in res.leakage.items() if v) or "none"
    title = (
        f"{res.groups_found} near-duplicate groups ({res.pairs_found} pairs, cosine >= "
        f"{res.threshold}) in {res.images} images; leaking pairs: {leak}. "
        "Orange border: held-out / test; blue: training. Tiles are numbered; "
        "'sim 0.93 to #1' is the pair that puts a tile in its group"
    )
    return contact_sheet(sheet, path, title=title)


def _sheet_rows(
    groups: list[DuplicateGroup], rows: list[dict[str, Any]], csv_name: str | None = None
) -> list[tuple[str, list[Tile]]]:
    """One contact-sheet row per group: up to :data:`_TILES_PER_GROUP` tiles, each captioned
    with the pair that links it into the group (always at or above the threshold), and a
    heading that says how many members are not shown."""
    by_id = {r["id"]: r for r in rows}
    sheet = []
    for g in groups:
        shown = min(g.size, _TILES_PER_GROUP)
        head = f"group {g.group}: {g.size} images, best similarity {g.similarity:.3f}"
        if shown < g.size:
            where = f" (all in {csv_name})" if csv_name else ""
            head += f"; {shown} shown, +{g.size - shown} more{where}"
        if g.leaks:
            head += "   LEAK: " + ", ".join(g.leaks)
        tiles = []
        for i in range(shown):
            r = by_id[g.ids[i]]
            held = g.folds[i] == HOLDOUT or g.splits[i] == "test"
            tiles.append(
                Tile(
                    load_thumbnail(r.get("root"), r.get("path")),
                    [str(g.labels[i]), _part(g.splits[i], g.folds[i]), g.link_caption(i)],
                    _HELD_OUT_COLOR if held else _TRAIN_COLOR,
                )
            )
        sheet.append((head, tiles))
    return sheet


def _part(split: str | None, fold: int | None) -> str:
    f = {None: "no fold", HOLDOUT: "held out", ALWAYS_TRAIN: "always train"}.get(
        fold, f"fold {fold}"
    )
    return f"{split or '-'} / {f}"
