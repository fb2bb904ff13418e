"""A 2-D map of the collection: UMAP (PCA for tiny stores) of one backbone's embeddings.

The coordinates are written back into the store as the columns ``map_x`` and ``map_y`` (float32,
null for rows without that backbone's embedding), so any Lance reader can plot them; the table
metadata (``map``) says which backbone and method made them. A PNG colours the points by a column
(``label``, ``split``, ``fold`` or any other), naming the largest values in a legend and drawing
the rest grey.

umap-learn (which brings numba) is an optional dependency, imported when a map is made:
``pip install 'embedstore[map]'``. The first UMAP in a process compiles its kernels (about 20 s).

>>> res = embedstore.map_store("flowers", color="label", out="map.png")
>>> lance.dataset("flowers/images.lance").to_table(columns=["map_x", "map_y", "label"])
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embedstore._results import Result
from embedstore.search._indexes import open_store
from embedstore.search._search import l2_normalize
from embedstore.store._store import ALWAYS_TRAIN, HOLDOUT, Store, StoreError
from embedstore.types import MAP_METHODS, MapMethod, check_choice

MAP_COLUMNS = ("map_x", "map_y")
PCA_BELOW = 100  # method="auto": PCA under this many images (UMAP needs more than its neighbours)
UMAP_INPUT_DIMS = 50  # UMAP runs on the first principal components (faster, same picture)
_UMAP_HINT = "UMAP needs umap-learn: pip install 'embedstore[map]' (or pip install umap-learn)"
_GREY, _NONE_GREY = "#b0b0b0", "#e0e0e0"


@dataclass
class MapResult(Result):
    """A map written into the store (``columns``) and drawn (``png``); ``legend``: the named
    values with their counts and colours, largest first."""

    store: str
    backbone: str
    method: str
    color: str
    images: int
    columns: list[str]
    png: str | None
    legend: list[dict[str, Any]]
    store_version: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def map_store(
    store: Store | str | os.PathLike,
    *,
    backbone: str | None = None,
    color: str = "label",
    out: str | os.PathLike | None = None,
    method: MapMethod = "auto",
    top: int = 12,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
) -> MapResult:
    """Lay every image with ``backbone`` embeddings out in 2-D, store ``map_x``/``map_y``, draw
    a PNG coloured by ``color`` (``out``, default ``STORE/map.png``).

    ``method``: ``"umap"`` (cosine neighbourhoods, ``n_neighbors``, ``min_dist``), ``"pca"``, or
    ``"auto"`` (PCA under 100 images, UMAP otherwise). ``top``: values named in the legend
    (at most 18 colours; the rest are grey).

    >>> embedstore.map_store("flowers", color="split").png
    """
    t0 = time.perf_counter()
    check_choice(method, MAP_METHODS, "map method")
    st = open_store(store)
    info = st.resolve_backbone(backbone)
    if not st.has_column(color):
        schema = st.schema()
        assert schema is not None  # resolve_backbone found an embedding column
        names = [n for n in schema.names if not n.startswith("emb_")]
        raise StoreError(
            f"{st.path}: no column {color!r} to colour by; columns: {', '.join(names)}"
        )
    X, t = st.embeddings(info.backbone, columns=list(dict.fromkeys(["id", color])))  # (N, d)
    if len(X) < 3:
        raise StoreError(
            f"{st.path}: {len(X)} image(s) with {info.backbone} embeddings; a map needs 3"
        )
    notes: list[str] = []
    used = _method(method, len(X), notes)
    Y = umap_2d(X, n_neighbors, min_dist, seed) if used == "umap" else pca(l2_normalize(X), 2)
    st.update_columns(
        list(t["id"]), {c: pa.array(Y[:, i], pa.float32()) for i, c in enumerate(MAP_COLUMNS)}
    )
    st.meta.set_table_metadata(
        {
            "map": {
                "backbone": info.backbone,
                "column": info.column,
                "method": used,
                "images": len(X),
                "seed": seed,
            }
        }
    )
    png = Path(out) if out is not None else st.path / "map.png"
    legend = plot_map(
        Y,
        t[color],
        color,
        png,
        top=top,
        title=f"{st.path.name}: {len(X)} images, {info.backbone}, {used.upper()}",
    )
    return MapResult(
        str(st.path),
        info.backbone,
        used,
        color,
        len(X),
        list(MAP_COLUMNS),
        str(png),
        legend,
        st.version,
        round(time.perf_counter() - t0, 3),
        notes,
    )


def _method(method: str, n: int, notes: list[str]) -> str:
    if method == "pca" or (method == "auto" and n < PCA_BELOW):
        return "pca"
    if importlib.util.find_spec("umap") is None:
        if method == "umap":
            raise ImportError(_UMAP_HINT)
        notes.append(f"umap-learn is not installed: drew a PCA map instead. {_UMAP_HINT}")
        return "pca"
    return "umap"


def pca(X: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` principal-component coordinates of ``X`` (N, d), float32 (N, dims)."""
    Xc = X - X.mean(axis=0, dtype=np.float64).astype(np.float32)  # (N, d)
    dims = min(dims, *Xc.shape)
    if Xc.shape[0] <= Xc.shape[1]:
        U, S, _ = np.linalg.svd(Xc, full_matrices=False)
        Z = U[:, :dims] * S[:dims]
    else:
        cov = np.zeros((Xc.shape[1], Xc.shape[1]))  # (d, d), accumulated in chunks
        for s in range(0, len(Xc), 65536):
            c = Xc[s : s + 65536].astype(np.float64)
            cov += c.T @ c
        _, vecs = np.linalg.eigh(cov)
        Z = Xc @ vecs[:, ::-1][:, :dims].astype(np.float32)
    return np.ascontiguousarray(Z, dtype=np.float32)


def umap_2d(
    X: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0
) -> np.ndarray:
    """UMAP of L2-normalised ``X`` (through its first 50 principal components), (N, 2)."""
    try:
        umap = importlib.import_module("umap")
    except ImportError as e:
        raise ImportError(_UMAP_HINT) from e
    Z = pca(l2_normalize(X), UMAP_INPUT_DIMS)  # (N, <=50)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(Z) - 1),
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state" and such
        return np.asarray(reducer.fit_transform(Z), dtype=np.float32)


def _display(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "(none)"
    if column == "fold":
        return {HOLDOUT: "held out", ALWAYS_TRAIN: "always train"}.get(int(value), f"fold {value}")
    return str(value)


def plot_map(
    Y: np.ndarray,
    values: np.ndarray,
    column: str,
    path: str | os.PathLike,
    *,
    top: int = 10,
    title: str = "",
) -> list[dict[str, Any]]:
    """Scatter ``Y`` (N, 2) coloured by ``values``: the ``top`` most frequent values named, the
    rest grey; numbers with many distinct values get a colour bar. Returns the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 7.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = len(Y)
    size = float(np.clip(6000 / max(n, 1), 0.5, 24))
    alpha = 0.8 if n < 20000 else 0.4
    legend: list[dict[str, Any]] = []
    numeric = [
        v for v in values if isinstance(v, int | float | np.number) and not isinstance(v, bool)
    ]
    if column != "fold" and len(numeric) == len(values) and len(set(numeric)) > 12:
        v = np.asarray(numeric, dtype=np.float64)
        sc = ax.scatter(Y[:, 0], Y[:, 1], c=v, s=size, alpha=alpha, cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax, label=column)
    else:
        legend = _categorical(ax, Y, values, column, top, size, alpha)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("map_x")
    ax.set_ylabel("map_y")
    ax.set_xticks([])
    ax.set_yticks([])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return legend


def _categorical(
    ax: Any,
    Y: np.ndarray,
    values: np.ndarray,
    column: str,
    top: int,
    size: float,
    alpha: float,
) -> list[dict[str, Any]]:
    """The ``top`` most frequent values in colours, the rest grey, and the legend (named first)."""
    legend: list[dict[str, Any]] = []
    names = np.array([_display(v, column) for v in values], dtype=object)
    uniq, counts = np.unique(names, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    named = [u for u in uniq[order] if u != "(none)"][: min(top, 18)]
    palette = _palette(len(named))
    rest = ~np.isin(names, named)
    if rest.any():
        none = names == "(none)"
        n_other = len([u for u in uniq if u not in named and u != "(none)"])
        for mask, col, label in (
            (rest & ~none, _GREY, f"other ({n_other} values)"),
            (none, _NONE_GREY, "(none)"),
        ):
            if mask.any():
                ax.scatter(
                    Y[mask, 0],
                    Y[mask, 1],
                    s=size,
                    c=col,
                    alpha=alpha,
                    linewidths=0,
                    label=f"{label}: {int(mask.sum())}",
                )
                legend.append({"value": label, "count": int(mask.sum()), "color": col})
    for name, col in zip(named, palette, strict=True):
        m = names == name
        ax.scatter(
            Y[m, 0],
            Y[m, 1],
            s=size,
            color=col,
            alpha=alpha,
            linewidths=0,
            label=f"{name}: {int(m.sum())}",
        )
        legend.append({"value": name, "count": int(m.sum()), "color": col})
    handles, labels = ax.get_legend_handles_labels()
    k = len(legend) - len(named)  # the grey entries were drawn first, underneath
    handles, labels = handles[k:] + handles[:k], labels[k:] + labels[:k]  # named first
    ax.legend(
        handles,
        labels,
        title=column,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize=9,
        markerscale=max(1.0, 6 / max(size, 0.1) ** 0.5),
        frameon=False,
    )
    legend.sort(key=lambda d: (d["color"] in (_GREY, _NONE_GREY), -d["count"]))
    return legend


# tab10 without its grey, then colours picked greedily for the largest CIELAB distance (hue and
# chroma weighted over lightness) to those before them and to the greys: a light tint of a
# colour already used (tab20's second half) reads as the same colour in a cloud of small dots.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#f032e6", "#637939", "#000080", "#008856", "#9a6324", "#f6a600", "#e68fac",
    "#882d17", "#4363d8",
)  # fmt: skip


def _palette(n: int) -> list[str]:
    """``n`` well-separated colours, none grey (grey is for the values not named); the most
    distinct first, so 12 classes get 12 different hues."""
    return [_PALETTE[i % len(_PALETTE)] for i in range(n)]
