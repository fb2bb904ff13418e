"""Run directories: train a head on one fold of a store, save it, load it back exactly.

A run directory holds:

- ``config.json``: everything that rebuilds the head (head name and settings, class names and
  training counts, the backbone column and its description, the store path and version, the
  metadata encoder state, the unknown detector settings), a format number, the SHA-256 of each
  weights file, and a checksum of the config itself (an edited config is refused).
- ``head.safetensors`` (and ``detector.safetensors``): tensors only; nothing is ever unpickled.
- ``history.json`` and ``curves.png``: per-epoch metrics.
- ``val.parquet``: the validation rows' ids, labels and logits (and unknown scores).

``heads.train(store, fold=0, head="mlp")`` is the library call behind ``heads train``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from embedstore._folds import HOLDOUT
from heads._errors import HeadsError
from heads._registry import create_head, head_class, list_heads

RUN_FORMAT = 1
POISON_COLUMNS = ("poisonous", "is_poisonous", "poison")
OBS_COLUMNS = ("observation_id", "observationid", "observation", "obs_id")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def _checksum(config: dict[str, Any]) -> str:
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    config = json.loads(json.dumps(config, default=_json_default))
    config["config_sha256"] = _checksum(config)
    tmp = run_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / "config.json")


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and verify ``config.json`` of a run or ensemble directory."""
    d = Path(run_dir)
    p = d / "config.json"
    if not p.is_file():
        raise HeadsError(
            f"{d}: not a run or ensemble directory (no config.json); train one with `heads train`"
        )
    try:
        config = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadsError(f"{p}: not valid JSON ({e}); retrain the run") from e
    fmt = config.get("format")
    if fmt != RUN_FORMAT:
        raise HeadsError(
            f"{p}: run format {fmt!r}, this version reads format {RUN_FORMAT}; retrain with this version"
        )
    if config.get("config_sha256") != _checksum(config):
        raise HeadsError(
            f"{p}: config.json was edited after training (checksum mismatch); a head is rebuilt "
            "exactly from its config, so retrain instead of editing, or restore the original file"
        )
    return config


def _load_tensors(run_dir: Path, name: str, expected_sha: str | None) -> dict[str, torch.Tensor]:
    p = run_dir / name
    if not p.is_file():
        raise HeadsError(f"{p}: weights file missing; retrain the run")
    if expected_sha and _sha256(p) != expected_sha:
        raise HeadsError(
            f"{p}: weights file is corrupt or was replaced (SHA-256 mismatch); retrain the run"
        )
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own error types
        raise HeadsError(f"{p}: cannot read weights ({e}); retrain the run") from e


# ---------------------------------------------------------------------------- data


@dataclass
class FoldData:
    """Everything read from the store once, for all folds."""

    X: np.ndarray  # (N, D) float32
    ids: np.ndarray
    labels: np.ndarray  # object, None for unlabelled
    fold: np.ndarray  # int64, min int for null
    table: dict[str, np.ndarray]  # metadata / aux / observation / poisonous columns
    backbone: Any  # EmbeddingInfo
    store_path: str
    store_version: int
    extra: dict[str, Any] = field(default_factory=dict)


def _find_column(names: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


def load_fold_data(
    store: Any, backbone: str | None, columns: list[str], where: str | None = None
) -> FoldData:
    """Read one backbone's embeddings with labels, folds and ``columns`` from a store."""
    import embedstore

    st = store if isinstance(store, embedstore.Store) else embedstore.connect(store, create=False)
    info = st.resolve_backbone(backbone)
    names = st.schema().names
    missing = [c for c in columns if c not in names]
    if missing:
        raise HeadsError(
            f"{st.path}: no column(s) {', '.join(missing)}; columns: "
            f"{', '.join(n for n in names if not n.startswith('emb_'))}"
        )
    extra_cols = [
        c for c in (_find_column(names, OBS_COLUMNS), _find_column(names, POISON_COLUMNS)) if c
    ]
    cols = list(
        dict.fromkeys(
            ["id", "label", *(["fold"] if "fold" in names else []), *columns, *extra_cols]
        )
    )
    X, t = st.embeddings(info.backbone, where=where, columns=cols, dtype="float32")
    fold = t.get("fold")
    if fold is None:
        fold_arr = np.full(len(X), np.iinfo(np.int32).min, dtype=np.int64)
    else:
        fold_arr = np.array(
            [np.iinfo(np.int32).min if v is None else int(v) for v in fold], dtype=np.int64
        )
    data = FoldData(X, t["id"], t["label"], fold_arr, t, info, str(st.path), st.version)
    data.extra["obs_column"] = _find_column(names, OBS_COLUMNS)
    data.extra["poison_column"] = _find_column(names, POISON_COLUMNS)
    return data


def check_finite(X: np.ndarray, ids: np.ndarray, column: str) -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise HeadsError(
            f"{int(bad.sum())} row(s) of {column} hold NaN or Inf embeddings (first id {ids[bad][0]}); "
            "re-ingest those images or leave them out with --where"
        )


def _aux_matrix(
    table: dict[str, np.ndarray], cols: list[str], rows: np.ndarray
) -> np.ndarray | None:
    if not cols:
        return None
    out = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
    for j, c in enumerate(cols):
        v = table[c][rows]
        for i, x in enumerate(v):
            if x is None or (isinstance(x, float) and np.isnan(x)):
                continue
            out[i, j] = (
                float(bool(x))
                if not isinstance(x, str)
                else float(x.strip().lower() in ("1", "true", "yes", "y"))
            )
    return out


def _meta_table(
    table: dict[str, np.ndarray], cols: list[str], rows: np.ndarray
) -> dict[str, np.ndarray]:
    return {c: table[c][rows] for c in cols}


# ---------------------------------------------------------------------------- training


def _head_kwargs(head: str, options: dict[str, Any]) -> dict[str, Any]:
    cls = head_class(head)
    params = set(inspect.signature(cls.__init__).parameters)
    if hasattr(cls, "get_param_names"):
        params |= set(cls._get_param_names())
    kwargs, unused = {}, []
    for k, v in options.items():
        if v is None:
            continue
        if k in params:
            kwargs[k] = v
        elif k not in ("seed", "device"):
            unused.append(k)
    if unused:
        raise HeadsError(
            f"option(s) {', '.join('--' + u.replace('_', '-') for u in unused)} do not apply to head "
            f"{head!r}; its settings are: {', '.join(sorted(params - {'self'}))}"
        )
    return kwargs


def train(
    store: Any = None,
    *,
    fold: int | str = 0,
    backbone: str | None = None,
    head: str = "mlp",
    out: str | os.PathLike | None = None,
    metadata: list[str] | tuple[str, ...] = (),
    aux_targets: list[str] | tuple[str, ...] = (),
    unknown: str | None = None,
    unknown_label: str = "unknown",
    where: str | None = None,
    progress: bool = True,
    **head_options: Any,
) -> dict[str, Any]:
    """Train ``head`` with fold ``fold`` as validation (``"all"``: every fold, then their ensemble).

    ``head_options`` are the head's settings (``hidden``, ``dropout``, ``loss``, ``class_weights``,
    ``sampler``, ``epochs``, ``lr``, ``batch_size``, ``seed``, ``device``, ``k`` ...).
    ``metadata`` columns are encoded (fitted on the training part only) and fed to the head;
    ``aux_targets`` are binary columns learned as auxiliary outputs (e.g. poisonous).
    ``unknown`` attaches an unknown-class detector calibrated on the validation fold.
    Returns ``{"runs": [...], "ensemble": path or None, "metrics": [...]}``.

    >>> heads.train("flowers", fold="all", head="mlp", out="runs/mlp", epochs=30)
    """
    if head not in list_heads():
        raise HeadsError(f"unknown head {head!r}; valid heads: {', '.join(list_heads())}")
    kwargs = _head_kwargs(head, head_options)
    if unknown is not None:
        from heads._unknown import list_detectors

        if unknown not in list_detectors():
            raise HeadsError(f"unknown detector {unknown!r}; valid: {', '.join(list_detectors())}")
    data = load_fold_data(store, backbone, [*metadata, *aux_targets], where)
    check_finite(data.X, data.ids, data.backbone.column)
    labelled = np.array([v is not None for v in data.labels])
    if not labelled.any():
        raise HeadsError(
            f"{data.store_path}: no labelled images; label them by class folders or `embedstore ingest --label-column`"
        )
    present = sorted({int(f) for f in data.fold if f >= 0})
    if not present:
        raise HeadsError(
            f"{data.store_path}: the store has no folds; run `embedstore split --store {data.store_path} --folds 5` first"
        )
    if fold == "all":
        folds = present
    else:
        try:
            k = int(fold)
        except (TypeError, ValueError):
            raise HeadsError(f"--fold must be a fold number or 'all', not {fold!r}") from None
        if k not in present:
            raise HeadsError(
                f"fold {k} does not exist; the store has folds {', '.join(map(str, present))} (or use --fold all)"
            )
        folds = [k]
    base = (
        Path(out)
        if out is not None
        else Path("runs") / f"{head}-{data.backbone.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if base.exists() and not base.is_dir():
        raise HeadsError(f"{base}: --out is a file; give a directory")
    runs, metrics = [], []
    for k in folds:
        run_dir = base / f"fold{k}" if fold == "all" else base
        res = _train_fold(data, k, head, kwargs, run_dir, list(metadata), list(aux_targets), unknown,
                          unknown_label, where, progress)  # fmt: skip
        runs.append(str(run_dir))
        metrics.append(res)
    ens = None
    if fold == "all" and len(runs) > 1:
        from heads._ensemble import ensemble

        ens = ensemble(runs, base)["path"]
    return {"runs": runs, "ensemble": ens, "metrics": metrics}


def _train_fold(data: FoldData, k: int, head: str, kwargs: dict[str, Any], run_dir: Path,
                metadata: list[str], aux_targets: list[str], unknown: str | None, unknown_label: str,
                where: str | None, progress: bool) -> dict[str, Any]:  # fmt: skip
    labels = data.labels
    labelled = np.array([v is not None for v in labels])
    is_unknown = labelled & np.array([v == unknown_label for v in labels])
    train_rows = np.flatnonzero(labelled & ~is_unknown & (data.fold != k) & (data.fold != HOLDOUT)
                                & (data.fold != np.iinfo(np.int32).min))  # fmt: skip
    val_rows = np.flatnonzero(labelled & (data.fold == k))
    y_tr = labels[train_rows].astype(str)
    classes = np.unique(y_tr)
    if len(classes) < 2:
        raise HeadsError(
            f"fold {k}: the training part has {len(classes)} class(es); a classifier needs at least 2"
        )
    y_val_all = labels[val_rows].astype(str)
    known_val = np.isin(y_val_all, classes)
    enc = None
    fields_tr = fields_val = None
    if metadata:
        from heads._encoders import MetadataEncoder

        try:
            enc = MetadataEncoder(list(metadata)).fit(_meta_table(data.table, metadata, train_rows))
        except ValueError as e:
            raise HeadsError(f"--metadata: {e}") from e
        fields_tr = enc.transform(_meta_table(data.table, metadata, train_rows))
        fields_val = enc.transform(_meta_table(data.table, metadata, val_rows))
    aux_tr = _aux_matrix(data.table, aux_targets, train_rows)
    kw = dict(kwargs)
    if "verbose" in inspect.signature(head_class(head).__init__).parameters:
        kw["verbose"] = progress
    model = create_head(head, **kw)
    t0 = time.perf_counter()
    fit_kw: dict[str, Any] = {}
    if fields_tr is not None:
        fit_kw["fields"], fit_kw["fields_val"] = fields_tr, [f[known_val] for f in fields_val]
    if aux_tr is not None:
        fit_kw["aux"] = aux_tr
    X_tr = data.X[train_rows]
    X_val = data.X[val_rows]
    if known_val.any():
        fit_kw["X_val"], fit_kw["y_val"] = X_val[known_val], y_val_all[known_val]
    try:
        model.fit(X_tr, y_tr, **fit_kw)
    except HeadsError:
        raise
    except ValueError as e:
        raise HeadsError(f"fold {k}: {e}") from e
    fit_s = time.perf_counter() - t0
    knn_by_k = None
    if hasattr(model, "predict_proba_multi_k") and known_val.any():  # every k from one search
        index = {c: i for i, c in enumerate(classes)}
        yv = np.array([index[c] for c in y_val_all[known_val]])
        multi = model.predict_proba_multi_k(X_val[known_val])
        knn_by_k = {
            str(kk): float((p.argmax(axis=1) == yv).mean()) for kk, p in sorted(multi.items())
        }
    fields_val_kw = {"fields": fields_val} if fields_val is not None else {}
    val_logits = (
        np.asarray(model.decision_function(X_val, **fields_val_kw), dtype=np.float32)
        if len(val_rows)
        else np.zeros((0, len(classes)), np.float32)
    )
    detector = None
    val_scores = None
    if unknown is not None:
        from heads._unknown import create_detector

        detector = create_detector(unknown)
        tr_logits = np.asarray(
            model.decision_function(
                X_tr, **({"fields": fields_tr} if fields_tr is not None else {})
            ),
            dtype=np.float32,
        )
        detector.fit(X_tr, y_tr, logits=tr_logits)
        if len(val_rows):
            val_scores = detector.score_samples(X_val, logits=val_logits)
            detector.calibrate(val_scores, is_known=known_val)
    counts = {c: int(n) for c, n in zip(*np.unique(y_tr, return_counts=True), strict=True)}
    poison_col = data.extra.get("poison_column")
    poisonous_of_class = None
    if poison_col:
        pv = _aux_matrix(data.table, [poison_col], train_rows)[:, 0]
        poisonous_of_class = [
            bool(np.nanmean(pv[y_tr == c]) > 0.5) if np.isfinite(pv[y_tr == c]).any() else False
            for c in classes
        ]
    run_dir.mkdir(parents=True, exist_ok=True)
    config_h, tensors = model.get_state()
    save_file({k2: v.contiguous() for k2, v in tensors.items()}, str(run_dir / "head.safetensors"))
    config: dict[str, Any] = {
        "format": RUN_FORMAT,
        "kind": "run",
        "head": head,
        "head_config": config_h,
        "classes": classes.tolist(),
        "train_counts": [counts[c] for c in classes],
        "backbone": {
            "name": data.backbone.backbone,
            "column": data.backbone.column,
            "dim": data.backbone.dim,
            "describe": data.backbone.describe,
        },  # fmt: skip
        "store": {
            "path": str(Path(data.store_path).resolve()),
            "version": data.store_version,
            "where": where,
        },
        "fold": k,
        "metadata": metadata,
        "metadata_encoder": enc.get_state() if enc is not None else None,
        "aux_targets": aux_targets,
        "unknown_label": unknown_label,
        "observation_column": data.extra.get("obs_column"),
        "poison_column": poison_col,
        "poisonous_of_class": poisonous_of_class,
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        "fit_seconds": round(fit_s, 3),
        "knn_top1_by_k": knn_by_k,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "weights_sha256": {"head.safetensors": _sha256(run_dir / "head.safetensors")},
        "detector": None,
    }
    if detector is not None:
        dconf, dtens = detector.get_state()
        save_file(
            {k2: v.contiguous() for k2, v in dtens.items()}, str(run_dir / "detector.safetensors")
        )
        config["detector"] = {"name": unknown, "config": dconf}
        config["weights_sha256"]["detector.safetensors"] = _sha256(run_dir / "detector.safetensors")
    history = list(getattr(model, "history_", []) or [])
    (run_dir / "history.json").write_text(json.dumps(history, indent=1, default=_json_default))
    if history:
        from heads._plots import plot_training_curves

        plot_training_curves(history, run_dir / "curves.png")
    write_val(run_dir, data, val_rows, val_logits, val_scores)
    write_config(run_dir, config)
    from heads._evaluate import evaluate

    res = evaluate(run_dir, holdout=False, plots=False)
    out = {
        "run": str(run_dir),
        "fold": k,
        "fit_seconds": round(fit_s, 3),
        "epochs": len(history),
        **res,
    }
    if knn_by_k is not None:
        out["knn_top1_by_k"] = knn_by_k
    return out


def write_val(
    run_dir: Path, data: FoldData, rows: np.ndarray, logits: np.ndarray, scores: np.ndarray | None
) -> None:
    cols: dict[str, Any] = {
        "id": pa.array(data.ids[rows].tolist(), pa.string()),
        "label": pa.array([None if v is None else str(v) for v in data.labels[rows]], pa.string()),
        "logits": pa.FixedSizeListArray.from_arrays(
            pa.array(logits.reshape(-1).astype(np.float32)), logits.shape[1]
        ),
    }
    obs, poison = data.extra.get("obs_column"), data.extra.get("poison_column")
    if obs:
        cols["observation"] = pa.array(
            [None if v is None else str(v) for v in data.table[obs][rows]], pa.string()
        )
    if poison:
        pv = _aux_matrix(data.table, [poison], rows)[:, 0]
        cols["poisonous"] = pa.array(pv, mask=np.isnan(pv)).cast(pa.bool_())
    if scores is not None:
        cols["unknown_score"] = pa.array(np.asarray(scores, dtype=np.float64))
    pq.write_table(pa.table(cols), run_dir / "val.parquet")


def read_val(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "val.parquet"
    if not p.is_file():
        raise HeadsError(f"{p}: validation predictions missing; retrain the run")
    t = pq.read_table(p)
    n = t.num_rows
    lg = t.column("logits").combine_chunks()
    out: dict[str, Any] = {
        "id": np.array(t.column("id").to_pylist(), dtype=object),
        "label": np.array(t.column("label").to_pylist(), dtype=object),
        "logits": lg.values.to_numpy(zero_copy_only=False).reshape(n, lg.type.list_size)
        if n
        else np.zeros((0, lg.type.list_size), np.float32),
    }
    for c in ("observation", "poisonous", "unknown_score"):
        if c in t.column_names:
            out[c] = np.array(t.column(c).to_pylist(), dtype=object)
    return out


# ---------------------------------------------------------------------------- loading


class Run:
    """A trained head loaded from its run directory (no pickle), ready to predict."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = read_config(self.path)
        if self.config.get("kind") != "run":
            raise HeadsError(
                f"{self.path}: is an {self.config.get('kind')}, not a run; load it with heads.load"
            )
        sha = self.config.get("weights_sha256", {})
        tensors = _load_tensors(self.path, "head.safetensors", sha.get("head.safetensors"))
        cls = head_class(self.config["head"])
        try:
            self.head = cls.from_state(self.config["head_config"], tensors)
        except (KeyError, RuntimeError, ValueError) as e:
            raise HeadsError(
                f"{self.path}: weights do not fit the config ({str(e).splitlines()[0]}); retrain the run"
            ) from e
        self.encoder = None
        if self.config.get("metadata_encoder"):
            from heads._encoders import MetadataEncoder

            self.encoder = MetadataEncoder.from_state(self.config["metadata_encoder"])
        self.detector = None
        if self.config.get("detector"):
            from heads._unknown import detector_from_state

            dt = _load_tensors(self.path, "detector.safetensors", sha.get("detector.safetensors"))
            self.detector = detector_from_state(self.config["detector"]["config"], dt)

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def store_path(self) -> str:
        return self.config["store"]["path"]

    @property
    def train_counts(self) -> np.ndarray:
        return np.asarray(self.config["train_counts"], dtype=np.float64)

    @property
    def columns(self) -> list[str]:
        """Store columns this run reads besides the embedding (its metadata fields)."""
        return list(self.config.get("metadata") or [])

    def backbone_columns(self) -> dict[str, dict[str, Any]]:
        b = self.config["backbone"]
        return {b["column"]: b}

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Logits (N, C) from ``{column: (N, D)}`` embeddings and a table of metadata columns."""
        X = embeddings[self.config["backbone"]["column"]]
        kw = {}
        if self.encoder is not None:
            n = len(X)
            tab = {
                c: (
                    table[c]
                    if table is not None and c in table
                    else np.array([None] * n, dtype=object)
                )
                for c in self.columns
            }
            kw["fields"] = self.encoder.transform(tab)
        return np.asarray(self.head.decision_function(X, **kw), dtype=np.float32)

    def unknown_scores(
        self, embeddings: dict[str, np.ndarray], logits: np.ndarray
    ) -> np.ndarray | None:
        if self.detector is None:
            return None
        X = embeddings[self.config["backbone"]["column"]]
        return np.asarray(self.detector.score_samples(X, logits=logits), dtype=np.float64)

    @property
    def threshold(self) -> float | None:
        return (
            None if self.detector is None else float(getattr(self.detector, "threshold_", np.nan))
        )


def load(path: str | os.PathLike) -> Any:
    """Load a run or an ensemble directory."""
    config = read_config(path)
    if config.get("kind") == "ensemble":
        from heads._ensemble import Ensemble

        return Ensemble(path)
    return Run(path)
