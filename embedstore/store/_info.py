"""``embedstore info``: counts, classes (the long tail), backbones and views, folds, warnings,
stale files and size of a store, as :class:`StoreInfo`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from embedstore._results import Result
from embedstore.backbones._text_spec import text_tower_ref
from embedstore.store._lance import EMB_PREFIX, StoreParts


@dataclass
class StoreInfo(Result):
    """What ``embedstore info`` reports: counts, classes (long tail), backbones, version, size."""

    store: str
    exists: bool
    skipped: dict[str, Any]
    images: int
    labelled: int
    unlabelled: int
    classes: dict[str, Any]
    backbones: list[dict[str, Any]]
    version: int
    size_bytes: int
    columns: list[str] | None = None
    folds: dict[str, Any] | None = None
    warnings: list[str] | None = None  # of the last ingest of each folder (metadata problems)
    stale_files: dict[str, int] | None = None  # ingested files gone or changed on disk since
    taxonomy: dict[str, int] | None = None  # ranks above the labels: names per rank, finest first


def store_info(store: StoreParts) -> StoreInfo:
    """What ``embedstore info`` reports about ``store``."""
    out: dict[str, Any] = {"store": str(store.path), "exists": store.exists}
    ds = store.tables.open("images")
    skipped = store.records.skipped()
    reasons: dict[str, int] = {}
    if skipped.num_rows:
        for r in skipped.column("reason").to_pylist():
            key = r.split(":")[0].split("(")[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
    out["skipped"] = {
        "count": skipped.num_rows,
        "by_reason": reasons,
        "file": str(store.path / "skipped.csv"),
    }
    if ds is None:
        out.update(
            images=0, labelled=0, unlabelled=0, classes={"count": 0}, backbones=[], version=0
        )
        out["size_bytes"] = _du(store.path)
        return StoreInfo(**out)
    t = ds.to_table(columns=["label"])
    labels = t.column("label")
    n = t.num_rows
    n_lab = n - labels.null_count
    counts = pc.value_counts(labels.drop_null()).to_pylist() if n_lab else []
    sizes = sorted(((c["counts"], c["values"]) for c in counts), reverse=True)
    cls: dict[str, Any] = {"count": len(sizes)}
    if sizes:
        arr = np.array([s for s, _ in sizes])
        cls.update(
            largest={"label": sizes[0][1], "images": int(sizes[0][0])},
            smallest={"label": sizes[-1][1], "images": int(sizes[-1][0])},
            median_images=float(np.median(arr)),
            under_5_images=int((arr < 5).sum()),
            imbalance_ratio=round(float(arr[0] / arr[-1]), 2),
        )
    backbones = []
    for info in store.embeddings_info().values():
        have = int(ds.count_rows(filter=f"{info.column} IS NOT NULL"))
        backbones.append(
            {
                "name": info.backbone,
                "column": info.column,
                "dim": info.dim,
                "dtype": info.dtype,
                "embedded": have,
                "source": info.describe.get("source"),
                # what made its embeddings: torch, onnx or onnx-int8 (in order)
                "runtimes": info.runtimes,
                "text_tower": _text_tower(store, info.describe),
            }
        )
        if info.views:  # augmented views: name, column and how many images hold it
            backbones[-1]["views"] = [
                {
                    "name": v,
                    "column": c,
                    "embedded": int(ds.count_rows(filter=f"{c} IS NOT NULL"))
                    if c in ds.schema.names
                    else 0,
                }
                for v, c in info.view_columns.items()
            ]
    cols = [f.name for f in ds.schema if not f.name.startswith(EMB_PREFIX)]
    out.update(
        images=n,
        labelled=n_lab,
        unlabelled=n - n_lab,
        classes=cls,
        backbones=backbones,
        version=int(ds.version),
        columns=cols,
        size_bytes=_du(store.path),
        folds=_fold_summary(store.meta.table_metadata().get("folds")),
        taxonomy=_taxonomy_summary(store.meta.table_metadata().get("taxonomy")),
        stale_files=store.records.stale_files(),
        warnings=[
            w for ws in (store.meta.table_metadata().get("warnings") or {}).values() for w in ws
        ],
    )
    return StoreInfo(**out)


def _text_tower(store: StoreParts, describe: dict[str, Any]) -> dict[str, Any] | None:
    """The column's text tower (recorded at ingest, or derived from its backbone) and how many
    texts the store has cached for it; None for an image-only column."""
    ref = text_tower_ref(describe)
    if ref is None:
        return None
    return {**ref.to_dict(), "cached_texts": store.text_cache.count(ref.identity)}


def _fold_summary(folds: dict[str, Any] | None) -> dict[str, Any] | None:
    """The split summary for ``info``; one whose split was killed before it finished says so."""
    if folds is None or folds.get("complete", True):
        return folds
    return {
        **folds,
        "interrupted": True,
        "note": "a split was stopped before it finished: the "
        "fold column may not match this summary; run `embedstore split` again",
    }


def _taxonomy_summary(tax: dict[str, Any] | None) -> dict[str, int] | None:
    """``{rank: names}`` of the store's taxonomy (embedstore.store._taxonomy), finest first."""
    if not tax:
        return None
    parents = list(tax["parents"].values())
    out = {tax["ranks"][0]: len(parents)}
    for r, rank in enumerate(tax["ranks"][1:]):
        out[rank] = len({p[r] for p in parents})
    return out


def _du(path: Path) -> int:
    total = 0
    for dp, _, fns in os.walk(path):
        for f in fns:
            try:
                total += os.path.getsize(os.path.join(dp, f))
            except OSError:
                pass
    return total
