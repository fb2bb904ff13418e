"""Batch prediction into a Lance table: every image of a store, or of a folder, with a run or an
ensemble, in this process or on a Ray cluster.

``predict_batch(run, "predictions.lance")`` predicts every stored image that holds the run's
backbone embeddings (or the files given, or every image under ``images_dir``) and writes one
row per image: ``id, path, label, probability, top_k, unknown, error``. ``probability`` is the
top class's probability (the label can differ from that class with a cost matrix, or be the
run's unknown label); ``top_k`` lists ``{label, probability}``.

With ``engine="ray"`` the store is read by the cluster (lance-ray, through
:meth:`embedstore.Store.ray_dataset`), an actor pool loads the run once per actor
(:func:`heads.load`) and predicts each batch with :func:`heads.predict_embeddings`, and the
workers write the table (:func:`embedstore.store.write_ray_dataset`); folders are read and hashed in
Ray tasks and embedded by the actors (:func:`embedstore.embed_inputs`: stored images reuse their
stored embeddings). ``engine="local"`` computes the same rows with the same functions here.

>>> heads.predict_batch("runs/mlp", "preds.lance", store="flowers", engine="ray")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import embedstore
from embedstore import Result
from embedstore.types import ENGINES, Engine, Runtime, check_choice
from heads._errors import HeadsError
from heads.prediction._predict import Prediction, predict_embeddings, read_cost_matrix, read_prior
from heads.runs._loaded import Predictor, load

_TOP = pa.struct([("label", pa.string()), ("probability", pa.float64())])
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("path", pa.string()),
        pa.field("label", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("top_k", pa.list_(_TOP)),
        pa.field("unknown", pa.bool_()),
        pa.field("error", pa.string()),
    ]
)


@dataclass
class BatchPrediction(Result):
    """What a batch prediction wrote: ``images`` rows in ``out``, of which ``errors`` could not
    be predicted and ``unknown`` were rejected by the run's detector."""

    run: str
    out: str
    source: str  # "store" or "files"
    engine: str
    images: int
    errors: int
    unknown: int
    seconds: float
    images_per_s: float | None


def predict_batch(
    run: str | os.PathLike | Predictor,
    out: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    images: list[str | os.PathLike] | None = None,
    images_dir: str | os.PathLike | None = None,
    top_k: int = 5,
    prior: str | None = None,
    cost_matrix: str | None = None,
    device: str = "auto",
    runtime: Runtime = "auto",
    batch_size: int = 256,
    engine: Engine = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    overwrite: bool = False,
) -> BatchPrediction:
    """Predict a whole store (default: the run's) or the given files / folder, and write the
    predictions as a Lance table at ``out``; returns what was written.

    ``engine="ray"`` runs on a Ray cluster (``ray_address``: None, ``"auto"`` or
    ``"HOST:PORT"``; ``actors`` each holding ``gpus_per_actor`` GPUs and ``cpus_per_actor``
    CPUs): ``pip install 'embedstore[ray]'``. ``prior``, ``cost_matrix``, ``top_k`` as in
    :func:`heads.predict`.
    """
    t0 = time.perf_counter()
    try:
        check_choice(engine, ENGINES, "engine")
    except ValueError as e:
        raise HeadsError(f"--engine: {e}") from None
    if engine == "local" and (ray_address or actors or gpus_per_actor is not None):
        raise HeadsError("--ray-address, --actors and --gpus-per-actor need --engine ray")
    if top_k < 1:
        raise HeadsError(f"--top-k must be at least 1, not {top_k}")
    if batch_size < 1:
        raise HeadsError(f"--batch-size must be at least 1, not {batch_size}")
    model = run if isinstance(run, Predictor) else load(run, "cpu" if engine == "ray" else device)
    pri = read_prior(prior, model.classes) if prior else None
    cost = read_cost_matrix(cost_matrix, model.classes) if cost_matrix else None
    files = _files(images, images_dir)
    source = "files" if files is not None else "store"
    st = _open_store(store if store is not None else model.store_path, required=files is None)
    settings = {"top_k": top_k, "prior": pri, "cost": cost}
    if engine == "ray":
        ray_kw = {
            "address": ray_address,
            "actors": actors,
            "gpus_per_actor": gpus_per_actor,
            "cpus_per_actor": cpus_per_actor,
            "device": device,
        }
        _predict_ray(model, out, st, files, settings, runtime, batch_size, ray_kw, overwrite)
    elif files is None:
        assert st is not None  # required without files
        embs, table = st.embedding_rows(_dims(model), ["id", "path", *_meta(model, st)])
        t = prediction_rows(model, embs, table, settings)
        embedstore.store.write_table(out, t, overwrite=overwrite)
    else:
        inputs = embedstore.read_inputs(list(files))  # a list of str | PathLike | bytes
        t = file_predictions(
            model, st, inputs, settings, device=device, runtime=runtime, batch_size=batch_size
        )
        embedstore.store.write_table(out, t, overwrite=overwrite)
    t = embedstore.store.read_table(out, ["unknown", "error"])
    seconds = time.perf_counter() - t0
    return BatchPrediction(
        run=str(getattr(model, "path", run)),
        out=str(Path(out).expanduser()),
        source=source,
        engine=engine,
        images=t.num_rows,
        errors=t.num_rows - t.column("error").null_count,
        unknown=int(np.sum(t.column("unknown").fill_null(False).to_numpy(zero_copy_only=False))),
        seconds=round(seconds, 2),
        images_per_s=round(t.num_rows / seconds, 1) if seconds else None,
    )


def prediction_rows(
    model: Predictor,
    embs: dict[str, np.ndarray],
    table: dict[str, np.ndarray],
    settings: dict[str, Any],
) -> pa.Table:
    """Predictions (:data:`PREDICTION_SCHEMA`) of stored rows: ``embs`` ``{column: (N, dim)}``
    and ``table`` with ``id``, ``path`` and the run's metadata columns (``embedding_rows``)."""
    n = len(table["id"])
    inputs = [
        embedstore.search.Input(str(p), str(i))
        for p, i in zip(table["path"], table["id"], strict=True)
    ]
    batch = embedstore.search.EmbeddedInputs(
        inputs,
        {c: np.asarray(x, np.float32) for c, x in embs.items()},
        {c: np.ones(n, bool) for c in embs},
        np.ones(n, bool),
        {c: v for c, v in table.items() if c not in ("id", "path")},
    )
    return _table(predict_embeddings(model, batch, **settings))


def file_predictions(
    model: Predictor,
    st: embedstore.Store | None,
    inputs: list[embedstore.search.Input],
    settings: dict[str, Any],
    *,
    device: str = "auto",
    runtime: Runtime = "auto",
    batch_size: int = 32,
    backbones: dict[str, Any] | None = None,
) -> pa.Table:
    """Predictions (:data:`PREDICTION_SCHEMA`) of read files (:func:`embedstore.read_inputs`):
    stored images by their stored embeddings, others embedded with the run's backbones
    (``backbones``: a cache kept across calls)."""
    embedded = embedstore.embed_inputs(
        st,
        inputs,
        _columns(model),
        meta_columns=model.columns,
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        backbones=backbones,
    )
    return _table(predict_embeddings(model, embedded, **settings))


def _table(preds: list[Prediction]) -> pa.Table:
    rows = [
        {
            "id": p.id,
            "path": p.path,
            "label": p.label,
            "top_k": p.top_k,
            "unknown": p.unknown,
            "probability": p.top_k[0]["probability"] if p.top_k else None,
            "error": p.error,
        }
        for p in preds
    ]
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def _files(images: list | None, images_dir: str | os.PathLike | None) -> list[str] | None:
    if not images and images_dir is None:
        return None
    files = [str(p) for p in images or []]
    if images_dir is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise HeadsError(f"{root}: --images folder not found")
        files += [str(f.path) for f in embedstore.ingestion.find_images(root) if f.supported]
    if not files:
        raise HeadsError(f"{images_dir}: no image files found")
    return files


def _open_store(path: str | os.PathLike, *, required: bool) -> embedstore.Store | None:
    try:
        return embedstore.connect(path, create=False)
    except embedstore.StoreError:
        if required:
            raise
        return None  # the run's store is gone: files are embedded anew


def _dims(model: Predictor) -> dict[str, int]:
    return {c: int(b["dim"]) for c, b in model.backbone_columns().items()}


def _columns(model: Predictor) -> dict[str, dict[str, Any]]:
    return {c: {**b["describe"], "dim": b["dim"]} for c, b in model.backbone_columns().items()}


def _meta(model: Predictor, st: embedstore.Store) -> list[str]:
    return [c for c in model.columns if st.has_column(c) and c not in ("id", "path")]


# ---------------------------------------------------------------------- on a Ray cluster


def _predict_ray(
    model: Predictor,
    out: str | os.PathLike,
    st: embedstore.Store | None,
    files: list[str] | None,
    settings: dict[str, Any],
    runtime: Runtime,
    batch_size: int,
    ray_kw: dict[str, Any],
    overwrite: bool,
) -> None:
    try:
        cluster = embedstore.ingestion.connect_ray(ray_kw.pop("address"), quiet=True)
        layout = embedstore.ingestion.actor_layout(cluster, **ray_kw)
    except embedstore.ingestion.EngineError as e:
        raise HeadsError(str(e)) from None
    ray = embedstore.ingestion.import_ray()
    common = {"run": str(model.path), "device": layout.device, "settings": settings}
    pool = {
        "batch_format": "pyarrow",
        "batch_size": batch_size,
        "num_cpus": layout.cpus,
        "num_gpus": layout.gpus,
        "compute": ray.data.ActorPoolStrategy(size=layout.actors),
    }
    if files is None:
        assert st is not None  # required without files
        columns = ["id", "path", *_meta(model, st), *_dims(model)]
        ds = st.ray_dataset(columns, embedded=list(_dims(model)))
        ds = ds.map_batches(_StorePredictor, fn_constructor_kwargs=common, **pool)
    else:
        t = pa.table({"name": pa.array(files, pa.string())})
        ds = ray.data.from_arrow([t.slice(s, batch_size) for s in range(0, len(files), batch_size)])
        ds = ds.map_batches(_read_files, batch_format="pyarrow", batch_size=None, num_cpus=1)
        kw = {
            **common,
            "store_path": None if st is None else str(st.path),
            "runtime": runtime,
            "batch_size": batch_size,
        }
        ds = ds.map_batches(_FilePredictor, fn_constructor_kwargs=kw, **pool)
    embedstore.store.write_ray_dataset(ds, out, schema=PREDICTION_SCHEMA, overwrite=overwrite)


class _StorePredictor:
    """Ray actor: the run loaded once; stored rows (their embeddings and metadata) to rows of
    predictions."""

    def __init__(self, *, run: str, device: str, settings: dict[str, Any]) -> None:
        self.model, self.settings = load(run, device), settings
        self.dims = _dims(self.model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        embs = {}
        for c, dim in self.dims.items():
            flat = batch.column(c).combine_chunks().values.to_numpy(zero_copy_only=False)
            embs[c] = flat.reshape(batch.num_rows, dim)  # (B, dim)
        table = embedstore.store.numpy_columns(
            batch, [c for c in batch.column_names if c not in self.dims]
        )
        return prediction_rows(self.model, embs, table, self.settings)


def _read_files(batch: pa.Table) -> pa.Table:
    """Ray task: read and hash files (:func:`embedstore.read_inputs`)."""
    inputs = embedstore.read_inputs(batch.column("name").to_pylist())
    return pa.table(
        {
            "name": pa.array([q.name for q in inputs], pa.string()),
            "id": pa.array([q.id for q in inputs], pa.string()),
            "data": pa.array([q.data for q in inputs], pa.binary()),
            "error": pa.array([q.error for q in inputs], pa.string()),
        }
    )


class _FilePredictor:
    """Ray actor: the run and its backbones loaded once; files to rows of predictions, stored
    images by their stored embeddings (:func:`embedstore.embed_inputs`)."""

    def __init__(
        self,
        *,
        run: str,
        device: str,
        settings: dict[str, Any],
        store_path: str | None,
        runtime: Runtime,
        batch_size: int,
    ) -> None:
        self.model, self.settings = load(run, device), settings
        self.store = None if store_path is None else embedstore.connect(store_path, create=False)
        self.device, self.runtime, self.batch_size = device, runtime, batch_size
        self.backbones: dict[str, Any] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = {c: batch.column(c).to_pylist() for c in ("name", "id", "data", "error")}
        inputs = [embedstore.search.Input(*row) for row in zip(*cols.values(), strict=True)]
        return file_predictions(
            self.model,
            self.store,
            inputs,
            self.settings,
            device=self.device,
            runtime=self.runtime,
            batch_size=self.batch_size,
            backbones=self.backbones,
        )


__all__ = [
    "PREDICTION_SCHEMA",
    "BatchPrediction",
    "file_predictions",
    "predict_batch",
    "prediction_rows",
]
