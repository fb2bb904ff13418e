"""Likely label errors and outliers among a run's validation images.

**Label errors** come from cleanlab's confident learning on the run's out-of-fold
probabilities (``val.parquet``: for a fold ensemble, every image predicted by the model that did
not train on it): ``cleanlab.filter.find_label_issues`` flags the images, and
``cleanlab.rank.get_label_quality_scores`` (self-confidence: the probability the model gives the
image's own label) ranks them, flagged ones first.

**Outliers** come from the embeddings: an image whose nearest stored neighbours are far (low
mean cosine similarity to its ``k`` nearest neighbours) sits in an empty part of the space, and
one far from every class centroid belongs to no class well. The kNN search is
:func:`embedstore.explore.self_join_index` (exact below 20,000 images, IVF above) over the store's
embeddings of the run's backbone.

>>> res = heads.find_issues("runs/mlp", top=20)
>>> [(s.path, s.given, s.suggested) for s in res.label_issues[:3]]
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import embedstore
from embedstore import Result
from embedstore.explore import Tile, contact_sheet, load_thumbnail, self_join_index
from embedstore.search import l2_normalize
from heads._errors import HeadsError
from heads.runs._loaded import Predictor, load, log_softmax
from heads.runs._rundir import read_val

_CLEANLAB_HINT = "heads issues needs cleanlab: pip install cleanlab"
_SHEET_ROWS = 24  # rows drawn in a PNG at most (the CSV has every image)
_SHEET_NEIGHBORS = 5


@dataclass
class Suspect(Result):
    """A validation image whose label is likely wrong: its ``given`` label, the model's
    ``suggested`` one, cleanlab's ``label_quality`` (lower: more suspect) and whether cleanlab's
    filter ``flagged`` it; ``neighbors``: its 5 nearest stored images. ``reason`` says why it is
    suspect: the model prefers another class, or (``agrees``) it keeps the given label but gives
    it a low probability, with the ``runner_up`` class close behind (near the decision
    boundary): worth a look, less likely an error."""

    rank: int
    id: str
    path: str | None
    given: str
    suggested: str
    label_quality: float
    given_probability: float
    suggested_probability: float
    flagged: bool
    neighbors: list[dict[str, Any]] = field(default_factory=list)
    agrees: bool = False
    runner_up: str = ""
    runner_up_probability: float = 0.0
    reason: str = ""


def _reason(given: str, pg: float, suggested: str, ps: float, runner: str, pr: float) -> str:
    """Why a row is suspect, in words (:class:`Suspect`)."""
    if suggested != given:
        return f"the model prefers {suggested} (p {ps:.2f}) to the given {given} (p {pg:.2f})"
    return (
        f"the model agrees but is unsure: p {pg:.2f} for {given}, {runner} next at {pr:.2f} "
        "(low self-confidence, near the decision boundary)"
    )


@dataclass
class Outlier(Result):
    """A validation image far from the rest: ``knn_similarity`` (mean cosine similarity to its
    ``k`` nearest stored images; lower: emptier neighbourhood) and its most similar class
    centroid (``nearest_class``, ``class_similarity``)."""

    rank: int
    id: str
    path: str | None
    label: str
    knn_similarity: float
    nearest_class: str
    class_similarity: float
    neighbors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IssuesResult(Result):
    """Suspected label errors (flagged first, then by label quality) and outliers of a run.

    ``flagged``: images cleanlab's filter flags; ``label_issues`` and ``outliers``: the ``top``
    of each ranking; ``csv``: every validation image with its scores; ``seconds_by_step``: time
    spent in cleanlab, in the kNN search, in drawing.
    """

    run: str
    images: int
    classes: int
    flagged: int
    label_issues: list[Suspect]
    outliers: list[Outlier]
    csv: str | None = None
    png: str | None = None
    outliers_png: str | None = None
    seconds: float = 0.0
    seconds_by_step: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def label_issue_ranking(
    labels: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, flagged, quality)`` for integer ``labels`` (N,) and probabilities ``probs`` (N, C).

    ``flagged`` (N,) bool: cleanlab's ``find_label_issues``; ``quality`` (N,): cleanlab's
    self-confidence label quality; ``order``: every row, flagged ones first, each part by
    quality (lowest first).
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as e:
        raise ImportError(_CLEANLAB_HINT) from e
    flagged = np.asarray(find_label_issues(labels, probs, n_jobs=1), dtype=bool)
    quality = np.asarray(get_label_quality_scores(labels, probs, method="self_confidence"))
    order = np.lexsort((quality, ~flagged))
    return order, flagged, quality


def find_issues(
    run: str | os.PathLike,
    *,
    top: int = 20,
    k: int = 10,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    plots: bool = True,
    device: str = "cpu",
) -> IssuesResult:
    """Likely label errors and outliers among the validation images of a run or ensemble.

    Writes ``issues.csv`` (every validation image, ranked), ``issues.png`` (the ``top`` suspects
    with their given and suggested labels beside their nearest neighbours) and ``outliers.png``
    into ``out`` (default ``RUN/issues``). ``store`` overrides the store the run was trained on.

    >>> heads.find_issues("runs/mlp", top=10).label_issues[0].suggested
    """
    t0 = time.perf_counter()
    path = Path(run)
    model = load(path, "cpu")
    classes = list(model.classes)
    val = read_val(path)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(str(v), -1) if v is not None else -1 for v in val["label"]])
    keep = y >= 0
    if keep.sum() < 2:
        raise HeadsError(f"{path}: fewer than 2 validation images of known classes to check")
    ids, y = val["id"][keep], y[keep]
    probs = np.exp(log_softmax(np.asarray(val["logits"], np.float64)[keep]))  # (N, C)
    steps: dict[str, float] = {}
    t = time.perf_counter()
    order, flagged, quality = label_issue_ranking(y, probs)
    steps["cleanlab_s"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    st = embedstore.connect(store or model.store_path, create=False)
    near = _neighbours(model, st, ids, y, len(classes), k, device)
    steps["knn_s"] = round(time.perf_counter() - t, 3)
    meta = near["meta"]
    suggested = probs.argmax(axis=1)
    suspects = _suspects(
        order[:top], ids, meta, classes, y, suggested, quality, probs, flagged, near
    )
    outliers = _outliers(
        np.argsort(near["density"], kind="stable")[:top], ids, meta, classes, y, near
    )
    res = IssuesResult(
        str(path),
        int(len(y)),
        len(classes),
        int(flagged.sum()),
        suspects,
        outliers,
        notes=near["notes"],
    )
    out_dir = Path(out) if out is not None else path / "issues"
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    res.csv = str(
        _write_csv(
            out_dir / "issues.csv", order, ids, y, suggested, quality, flagged, near, classes
        )
    )
    if plots:
        res.png = str(_plot_suspects(out_dir / "issues.png", suspects, meta, near, ids, res))
        res.outliers_png = str(_plot_outliers(out_dir / "outliers.png", outliers, near, ids))
    steps["files_s"] = round(time.perf_counter() - t, 3)
    res.seconds_by_step = steps
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _suspects(
    rows: np.ndarray,
    ids: np.ndarray,
    meta: list[dict[str, Any]],
    classes: list[str],
    y: np.ndarray,
    suggested: np.ndarray,
    quality: np.ndarray,
    probs: np.ndarray,
    flagged: np.ndarray,
    near: dict[str, Any],
) -> list[Suspect]:
    """The likely label errors at ``rows`` (ranked), with their given and suggested labels and
    why each is suspect."""
    out = []
    for rank, i in enumerate(rows.tolist()):
        p = probs[i].copy()
        p[suggested[i]] = -np.inf
        r = int(p.argmax()) if len(p) > 1 else int(suggested[i])  # the runner-up class
        pg, ps, pr = (round(float(probs[i, c]), 4) for c in (y[i], suggested[i], r))
        given, sugg, runner = classes[y[i]], classes[suggested[i]], classes[r]
        s = Suspect(
            rank + 1,
            str(ids[i]),
            meta[i]["path"],
            given,
            sugg,
            round(float(quality[i]), 4),
            pg,
            ps,
            bool(flagged[i]),
            near["neighbors"](i),
            agrees=given == sugg,
            runner_up=runner,
            runner_up_probability=pr,
            reason=_reason(given, pg, sugg, ps, runner, pr),
        )
        out.append(s)
    return out


def _outliers(
    rows: np.ndarray,
    ids: np.ndarray,
    meta: list[dict[str, Any]],
    classes: list[str],
    y: np.ndarray,
    near: dict[str, Any],
) -> list[Outlier]:
    """The least dense images at ``rows`` (ranked), with their nearest other class."""
    return [
        Outlier(
            rank + 1,
            str(ids[i]),
            meta[i]["path"],
            classes[y[i]],
            round(float(near["density"][i]), 4),
            classes[near["nearest_class"][i]],
            round(float(near["class_similarity"][i]), 4),
            near["neighbors"](i),
        )
        for rank, i in enumerate(rows.tolist())
    ]


def _nearest(
    S: np.ndarray, rows: np.ndarray, found: np.ndarray, k: int, device: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` nearest other stored rows of each found row (``(n, k)`` rows, -1: none, and
    similarities) and the kNN density ``(n,)`` (mean similarity to them; NaN: not found)."""
    n = len(rows)
    density = np.full(n, np.nan)
    nb_idx = np.full((n, k), -1, np.int64)  # (n, k) stored rows, nearest first (-1: none)
    nb_sim = np.full((n, k), np.nan, np.float32)  # (n, k)
    if not found.any() or len(S) <= 1:
        return nb_idx, nb_sim, density
    kk = min(k + 1, len(S))
    index = self_join_index(len(S), int(found.sum()), device=device).build(S)
    sims, idx = index.search(S[rows[found]], kk)  # (n_found, kk)
    other = (idx != rows[found][:, None]) & (idx >= 0)  # drop the image itself
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # others first, in rank order
    j = np.take_along_axis(idx, order, 1)
    sj = np.take_along_axis(sims, order, 1)
    ok = np.take_along_axis(other, order, 1)
    nb_idx[found, : j.shape[1]] = np.where(ok, j, -1)
    nb_sim[found, : j.shape[1]] = np.where(ok, sj, np.nan)
    with np.errstate(invalid="ignore"):
        density = np.nanmean(nb_sim, axis=1)  # (n,) mean similarity to the k nearest
    return nb_idx, nb_sim, density


def _class_similarity(
    S: np.ndarray, rows: np.ndarray, found: np.ndarray, y: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each found row's nearest class centroid (of the validation images' given labels) and
    its cosine to it."""
    n = len(rows)
    nearest_class = np.zeros(n, np.int64)
    class_sim = np.full(n, np.nan)
    if not found.any() or len(S) <= 1:
        return nearest_class, class_sim
    V = l2_normalize(S[rows[found]])  # (n_found, d)
    yf = y[found]
    C = np.zeros((n_classes, V.shape[1]), np.float32)
    np.add.at(C, yf, V)
    C = l2_normalize(C)  # (C, d) class centroids of the validation images' given labels
    cs = V @ C.T  # (n_found, C)
    cs[:, np.bincount(yf, minlength=n_classes) == 0] = -np.inf
    nearest_class[found] = cs.argmax(axis=1)
    class_sim[found] = cs.max(axis=1)
    return nearest_class, class_sim


def _neighbours(
    model: Predictor,
    st: embedstore.Store,
    ids: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    k: int,
    device: str,
) -> dict[str, Any]:
    """Nearest stored images of each validation image, its kNN density and class similarity."""
    column, desc = next(iter(model.backbone_columns().items()))
    cols = [c for c in ("id", "path", "root", "label") if st.has_column(c)]
    embs, t = st.embedding_rows({column: desc["dim"]}, cols)
    none = np.full(len(t["id"]), None, dtype=object)
    t = {"path": none, "root": none, **t}  # a store of vectors only: no files to show
    S = embs[column]  # (M, d) every stored image with this backbone
    pos = {i: r for r, i in enumerate(t["id"].tolist())}
    rows = np.array([pos.get(str(i), -1) for i in ids])
    notes = []
    if (rows < 0).any():
        notes.append(
            f"{int((rows < 0).sum())} validation image(s) are no longer in the store; "
            "they have no neighbours or outlier score"
        )
    meta = [
        {"path": t["path"][r], "root": t["root"][r]} if r >= 0 else {"path": None, "root": None}
        for r in rows
    ]
    found = rows >= 0
    nb_idx, nb_sim, density = _nearest(S, rows, found, k, device)
    nearest_class, class_sim = _class_similarity(S, rows, found, y, n_classes)
    density = np.where(np.isnan(density), np.inf, density)  # images not found rank last

    def neighbors(r: int) -> list[dict[str, Any]]:
        """The nearest stored images of validation row ``r`` (for the top rows only)."""
        return [
            {
                "id": t["id"][jj],
                "path": t["path"][jj],
                "root": t["root"][jj],
                "label": t["label"][jj],
                "similarity": round(float(ss), 4),
            }
            for jj, ss in zip(
                nb_idx[r, :_SHEET_NEIGHBORS].tolist(),
                nb_sim[r, :_SHEET_NEIGHBORS].tolist(),
                strict=True,
            )
            if jj >= 0
        ]

    return {
        "meta": meta,
        "density": density,
        "nearest_class": nearest_class,
        "class_similarity": class_sim,
        "neighbors": neighbors,
        "notes": notes,
    }


def _write_csv(
    path: Path,
    order: np.ndarray,
    ids: np.ndarray,
    y: np.ndarray,
    suggested: np.ndarray,
    quality: np.ndarray,
    flagged: np.ndarray,
    near: dict[str, Any],
    classes: list[str],
) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "rank",
                "id",
                "path",
                "given",
                "suggested",
                "label_quality",
                "flagged",
                "knn_similarity",
                "nearest_class",
                "class_similarity",
            ]
        )
        for rank, i in enumerate(order.tolist(), 1):
            d = near["density"][i]
            w.writerow(
                [
                    rank,
                    ids[i],
                    near["meta"][i]["path"],
                    classes[y[i]],
                    classes[suggested[i]],
                    f"{quality[i]:.4f}",
                    bool(flagged[i]),
                    "" if not np.isfinite(d) else f"{d:.4f}",
                    classes[near["nearest_class"][i]],
                    f"{near['class_similarity'][i]:.4f}",
                ]
            )
    os.replace(tmp, path)
    return path


def _neighbour_tiles(neighbors: list[dict[str, Any]]) -> list[Tile]:
    return [
        Tile(
            load_thumbnail(nb["root"], nb["path"]),
            [str(nb["label"]), f"sim {nb['similarity']:.3f}"],
        )
        for nb in neighbors[:_SHEET_NEIGHBORS]
    ]


def _plot_suspects(
    path: Path,
    suspects: list[Suspect],
    meta: list[dict[str, Any]],
    near: dict[str, Any],
    ids: np.ndarray,
    res: IssuesResult,
) -> Path:
    row_of = {str(i): r for r, i in enumerate(ids.tolist())}
    rows = []
    for s in suspects[:_SHEET_ROWS]:
        m = meta[row_of[s.id]]
        says = (
            f"model agrees but is unsure (p={s.given_probability:.2f}, next '{s.runner_up}' "
            f"{s.runner_up_probability:.2f}: near the decision boundary"
            if s.agrees
            else f"model says '{s.suggested}' (p={s.suggested_probability:.2f}"
        )
        head = (
            f"#{s.rank}  given '{s.given}', {says}; quality {s.label_quality:.3f}"
            f"{', flagged by cleanlab' if s.flagged else ''})  -  nearest neighbours:"
        )
        tile = Tile(
            load_thumbnail(m["root"], m["path"]),
            [f"given: {s.given}", f"suggested: {s.suggested}", Path(m["path"] or "?").name],
            "#d62728",
        )
        rows.append((head, [tile, *_neighbour_tiles(s.neighbors)]))
    title = (
        f"Suspected label errors: {res.flagged} of {res.images} validation images flagged by "
        f"cleanlab; top {len(rows)} shown (red: the suspect, then its nearest neighbours)"
    )
    return contact_sheet(rows, path, title=title)


def _plot_outliers(
    path: Path, outliers: list[Outlier], near: dict[str, Any], ids: np.ndarray
) -> Path:
    row_of = {str(i): r for r, i in enumerate(ids.tolist())}
    rows = []
    for o in outliers[:_SHEET_ROWS]:
        m = near["meta"][row_of[o.id]]
        head = (
            f"#{o.rank}  '{o.label}': mean similarity to its neighbours {o.knn_similarity:.3f}; "
            f"closest class '{o.nearest_class}' ({o.class_similarity:.3f})"
        )
        tile = Tile(
            load_thumbnail(m["root"], m["path"]),
            [f"label: {o.label}", Path(m["path"] or "?").name],
            "#9467bd",
        )
        rows.append((head, [tile, *_neighbour_tiles(o.neighbors)]))
    title = (
        "Outliers: validation images in the emptiest neighbourhoods (purple), then their neighbours"
    )
    return contact_sheet(rows, path, title=title)
