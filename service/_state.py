"""What the service keeps resident: the store's embeddings (reloaded when the store's version
changes), the backbones that embed uploads (loaded once, behind dynamic batching), and the runs
under ``--runs`` (reloaded when their config checksum changes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import embedstore
import heads
from service._batcher import BatchedBackbone
from service._jobs import Job, JobQueue

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
PARTIAL = ".partial-"  # a run being trained; never listed, renamed when complete


class NotFound(Exception):
    """An unknown run, job, image id or backbone (HTTP 404)."""


@dataclass
class Settings:
    store: str
    runs: str | None = None
    device: str = "auto"
    api_key: str | None = None
    max_upload_mb: float = 20.0
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_jobs: int = 8
    allow_root: str | None = None
    runtime: str = "auto"  # what runs the backbones: auto (ONNX Runtime on CPU where faster), torch, onnx,  # onnx-int8; auto embeds for a column onnx-int8 wrote with onnx-int8


class _LazyBackbones(dict):
    """A backbone cache for ``embed_inputs`` that builds (once, in the state) on first ``get``."""

    def __init__(self, state: State, columns: list[str]) -> None:
        super().__init__()
        self._state, self._columns = state, set(columns)

    def get(self, column: str, default: Any = None) -> Any:
        if column not in self._columns:
            return default
        return self._state.backbone(column)


class State:
    """Resident store, backbones and runs, shared by every request (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = embedstore.connect(settings.store, create=False)
        self.device = str(embedstore.resolve_device(settings.device))
        self.jobs = JobQueue(settings.max_jobs)
        self.write_lock = threading.Lock()  # one writer to the store at a time
        self._lock = threading.Lock()
        self._resident: embedstore.Resident | None = None
        self._raw: dict[str, embedstore.Backbone] = {}
        self.backbones: dict[str, BatchedBackbone] = {}  # column -> batched backbone
        self._runs: dict[str, tuple[str, Any]] = {}  # name -> (config checksum, Predictor)
        self.ready = False
        self.load_errors: list[str] = []

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load everything once (at start-up): store embeddings, backbones, runs. A backbone that
        cannot be rebuilt here (no network, say) is skipped: stored ids still work."""
        self.resident()
        for info in self.store.embeddings_info().values():
            try:
                self.backbone(info.column)
            except embedstore.StoreError as e:
                self.load_errors.append(str(e))
        for name in self.run_names():
            try:
                self.run(name)
            except heads.HeadsError as e:
                self.load_errors.append(str(e))
        self.ready = True

    def resident(self) -> embedstore.Resident:
        """The store's embeddings and metadata in memory, at the store's current version."""
        with self._lock:
            if self._resident is None or self._resident.stale:
                infos = self.store.embeddings_info().values()
                meta = sorted({c for _, m in self._runs.values() for c in m.columns})
                # with the views' columns: runs that predict with TTA read them for stored ids
                cols = [c for i in infos for c in (i.column, *i.view_columns.values())]
                self._resident = embedstore.Resident(self.store, cols, meta, device=self.device)
            return self._resident

    def backbone_runtime(self, column: str) -> str | None:
        """What runs ``column``'s loaded backbone (``torch``, ``onnx``, ``onnx-int8``), or None
        while it is not loaded."""
        bb = self._raw.get(column)
        return None if bb is None else bb.runtime

    def backbone(self, column: str) -> BatchedBackbone:
        """The backbone that embeds uploads for ``column``, built once from its description."""
        with self._lock:
            if column not in self.backbones:
                info = next(
                    (i for i in self.store.embeddings_info().values() if i.column == column), None
                )
                if info is None:
                    raise NotFound(f"the store has no embedding column {column!r}")
                try:
                    bb = embedstore.backbones.with_runtime(
                        embedstore.backbones.backbone_from_description(info.describe),
                        embedstore.backbones.runtime_for_column(
                            self.settings.runtime, info.describe, self.device
                        ),
                        self.device,
                        # batches of every size from 1 to --max-batch: an arena would keep
                        # each size's peak (~240 MiB more resident, no faster)
                        memory_arena=False,
                    )
                except embedstore.BackboneError as e:
                    raise embedstore.StoreError(
                        f"backbone {info.backbone!r} (source {info.describe.get('source')}) cannot "
                        f"be rebuilt to embed new images: {e}. Use stored images (by id) instead"
                    ) from e
                self._raw[column] = bb
                self.backbones[column] = BatchedBackbone(
                    bb, self.settings.max_batch, self.settings.max_wait_ms
                )
            return self.backbones[column]

    def lazy_backbones(self, columns: list[str]) -> _LazyBackbones:
        """``{column: backbone}`` for ``columns``, each built only when an upload needs it."""
        return _LazyBackbones(self, columns)

    def raw_backbones(self) -> list[embedstore.Backbone]:
        for info in self.store.embeddings_info().values():
            self.backbone(info.column)
        return list(self._raw.values())

    # ------------------------------------------------------------------ runs

    @property
    def runs_dir(self) -> Path | None:
        return Path(self.settings.runs) if self.settings.runs else None

    def run_names(self) -> list[str]:
        d = self.runs_dir
        if d is None or not d.is_dir():
            return []
        return sorted(
            p.name
            for p in d.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()
        )

    def run(self, name: str) -> Any:
        """The loaded run or ensemble ``name`` (reloaded when its config changed)."""
        d = self.runs_dir
        if d is None or not RUN_NAME.match(name) or name not in self.run_names():
            raise NotFound(f"no run {name!r}; runs: {', '.join(self.run_names()) or 'none'}")
        path = d / name
        checksum = json.loads((path / "config.json").read_text()).get("config_sha256")
        with self._lock:
            have = self._runs.get(name)
            if have is not None and have[0] == checksum:
                return have[1]
        model = heads.load(path, device=self.device)
        with self._lock:
            self._runs[name] = (checksum, model)
            if self._resident is not None and set(model.columns) - set(self._resident.meta_columns):
                self._resident = None  # reload with this run's metadata columns
        return model

    def run_summary(self, name: str) -> dict[str, Any]:
        model = self.run(name)
        path = self.runs_dir / name
        ev = path / "eval.json"
        metrics = json.loads(ev.read_text()) if ev.is_file() else None
        return {
            "name": name,
            "kind": model.config.get("kind"),
            "head": model.config.get("head"),
            "classes": model.classes,
            "backbones": sorted(model.backbone_columns()),
            "metadata": model.columns,
            "unknown_detector": model.threshold is not None,
            "unknown_label": model.unknown_label,
            "metrics": metrics,
        }

    # ------------------------------------------------------------------ jobs

    def train_job(self, name: str, options: dict[str, Any], overwrite: bool = False) -> Job:
        d = self.runs_dir
        if d is None:
            raise ValueError("the service was started without --runs; no place to write runs")
        if not RUN_NAME.match(name):
            raise ValueError(f"name {name!r}: use letters, digits, '.', '_' and '-' (not first)")
        if (d / name).exists() and not overwrite:
            raise FileExistsError(f"run {name!r} exists; give overwrite=true to replace it")

        def work(job: Job) -> dict[str, Any]:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f"{PARTIAL}{name}-{job.id}"
            try:
                res = heads.train(
                    self.store.path,
                    out=tmp,
                    progress=False,
                    on_fold=lambda done, total: job.checkpoint(folds_done=done, folds=total),
                    **options,
                )
                with self._lock:
                    old = d / f".old-{name}-{job.id}"
                    if (d / name).exists():
                        os.replace(d / name, old)
                    os.replace(tmp, d / name)
                    shutil.rmtree(old, ignore_errors=True)
                    self._runs.pop(name, None)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            out = res.to_dict()
            out["runs"] = [str(Path(r)).replace(str(tmp), str(d / name)) for r in out["runs"]]
            if out.get("ensemble"):
                out["ensemble"] = str(d / name)
            return {"run": name, **{k: out[k] for k in ("runs", "ensemble", "metrics")}}

        return self.jobs.submit("train", {"name": name, **options}, work)

    def ingest_job(self, folder: str) -> Job:
        root = self.settings.allow_root
        if root is None:
            raise PermissionError("server-side folders can be ingested only under --allow-root")
        path = Path(folder).resolve()
        if not path.is_relative_to(Path(root).resolve()):
            raise PermissionError(f"{folder}: outside the allowed root {root}")
        if not path.is_dir():
            raise NotFound(f"{folder}: no such folder under the allowed root")

        def work(job: Job) -> dict[str, Any]:
            with self.write_lock:
                job.checkpoint(stage="ingest")
                s = embedstore.ingest(
                    path,
                    self.store,
                    backbone_objects=self.raw_backbones() or None,
                    progress=False,
                    workers=0,
                )
            return s.to_dict()

        return self.jobs.submit("ingest", {"folder": str(path)}, work)
