"""What the service keeps resident: the store's embeddings (reloaded when the store's version
changes), the backbones that embed uploads (loaded once, behind dynamic batching), the text
towers of image-text columns (built on the first text search, kept), and the runs
under ``--runs`` (reloaded when their config checksum changes). Runs are read through
``heads`` (``list_runs``, ``run_checksum``, ``read_eval``, ``replace_run``), never file by file;
the device is resolved once, here, and handed to everything below."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import embedstore
import heads
import heads.runs
import heads.settings
import heads.text
import heads.training
from embedstore.errors import BadInput, Conflict, NotFound, UserError
from embedstore.types import Runtime

from ._batcher import BatchedBackbone, BatchedPredictor
from ._jobs import Job, JobQueue
from .errors import Forbidden

# a run's name: one safe token (fullmatch: no trailing newline, no path)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# How often a request looks whether another process wrote the store or replaced a run (reading
# the store's version costs ~0.4 ms, a run's checksum a file read): a write by another process
# is seen within this, the service's own writes (uploads, ingest and train jobs) at once.
RECHECK_S = 0.25


@dataclass
class Settings:
    store: str
    runs: str | None = None
    device: str = "auto"
    api_key: str | None = None
    max_upload_mb: float = 20.0
    max_batch: int = 32
    max_wait_ms: float = 5.0
    # backbone forward passes in flight at once, each on cores / forwards runtime threads (two
    # single-threaded forwards beat one two-threaded on 2 busy cores: benchmarks/RESULTS.md)
    forwards: int = 2
    max_jobs: int = 8
    allow_root: str | None = None
    # what runs the backbones: auto (ONNX Runtime on CPU where faster), torch, onnx,
    # onnx-int8; auto embeds for a column onnx-int8 wrote with onnx-int8
    runtime: Runtime = "auto"
    # Host headers answered (DNS rebinding); None: any (``serve`` sets the loopback names
    # when it binds a loopback address)
    allowed_hosts: tuple[str, ...] | None = None
    # other web origins whose pages may write (POST ...) to the service (CORS)
    cors_origins: tuple[str, ...] = ()


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
        self._resident_checked = 0.0  # time.monotonic() of the last look at the store's version
        self._raw: dict[str, embedstore.Backbone] = {}
        self.backbones: dict[str, BatchedBackbone] = {}  # column -> batched backbone
        # column -> (the column's description it was built from, its text tower)
        self._towers: dict[str, tuple[dict[str, Any], embedstore.backbones.TextTower]] = {}
        # name -> (config checksum, Predictor behind a BatchedPredictor, when last checked)
        self._runs: dict[str, tuple[str | None, Any, float]] = {}
        self.ready = False
        self.load_errors: list[str] = []
        self._collect_leftovers()

    def _collect_leftovers(self) -> None:
        """Folders a killed service left: partial runs of its training jobs (their process is
        gone) and uploads it never committed."""
        try:
            embedstore.ingestion.collect_orphan_uploads(self.store)
        except embedstore.store.StoreLockedError:
            pass  # another process writes the store now: its uploads may be in flight
        if self.runs_dir is not None:
            heads.runs.collect_partial_runs(self.runs_dir)

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load everything once (at start-up): store embeddings, backbones, runs. A backbone that
        cannot be rebuilt here (no network, say) is skipped: stored ids still work."""
        self.resident()
        for info in self.store.embeddings_info().values():
            try:
                self.backbone(info.column)
            except UserError as e:
                self.load_errors.append(str(e))
        for name in self.run_names():
            try:
                self.run(name)
            except UserError as e:
                self.load_errors.append(str(e))
        self.ready = True

    def resident(self) -> embedstore.Resident:
        """The store's embeddings and metadata in memory, at the store's current version (looked
        at every ``RECHECK_S`` at most, and at once after the service's own writes)."""
        with self._lock:
            now = time.monotonic()
            if self._resident is not None and now - self._resident_checked < RECHECK_S:
                return self._resident
            self._resident_checked = now
            if self._resident is None or self._resident.stale:
                infos = self.store.embeddings_info().values()
                meta = sorted({c for _, m, _ in self._runs.values() for c in m.columns})
                # with the views' columns: runs that predict with TTA read them for stored ids
                cols = [c for i in infos for c in (i.column, *i.view_columns.values())]
                self._resident = embedstore.Resident(self.store, cols, meta, device=self.device)
            return self._resident

    def wrote(self) -> None:
        """The service wrote the store: the next request looks at its version."""
        with self._lock:
            self._resident_checked = -RECHECK_S

    def check_ids(self, ids: list[str]) -> None:
        """NotFound naming the ids no stored image has (ids are ids, never server paths)."""
        row = self.resident().row
        unknown = [i for i in ids if i.lower() not in row]
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise NotFound(f"no stored image has id {', '.join(unknown[:3])}{more}")

    def backbone_runtime(self, column: str) -> str | None:
        """What runs ``column``'s loaded backbone (``torch``, ``onnx``, ``onnx-int8``), or None
        while it is not loaded."""
        bb = self._raw.get(column)
        return None if bb is None else bb.runtime

    def backbone_counts(self, column: str) -> dict[str, int]:
        """``forward_passes`` and ``images_embedded`` by ``column``'s backbone since start."""
        bb = self.backbones.get(column)
        return {
            "forward_passes": 0 if bb is None else bb.batches,
            "images_embedded": 0 if bb is None else bb.images,
        }

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
                        # --forwards N: N forwards in flight share the cores (None: all of
                        # them for the one)
                        threads=None if self.settings.forwards == 1 else self._forward_threads(),
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
                    bb, self.settings.max_batch, self.settings.max_wait_ms, self.settings.forwards
                )
            return self.backbones[column]

    def _forward_threads(self) -> int:
        """ONNX Runtime threads of each of ``--forwards`` forward passes: the cores shared."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (cores or os.cpu_count() or 1) // self.settings.forwards)

    def lazy_backbones(self, columns: list[str]) -> _LazyBackbones:
        """``{column: backbone}`` for ``columns``, each built only when an upload needs it."""
        return _LazyBackbones(self, columns)

    def text_tower(self, info: embedstore.store.EmbeddingInfo) -> embedstore.backbones.TextTower:
        """The text tower of the image column ``info``, built on first use (its weights load on
        the first search) and kept; rebuilt if the column was embedded again by another model.
        A column without one raises ``BackboneError`` (422) naming the backbones that have one."""
        with self._lock:
            have = self._towers.get(info.column)
            if have is None or have[0] != info.describe:
                tower = embedstore.backbones.text_tower(info, device=self.device)
                have = self._towers[info.column] = (dict(info.describe), tower)
            return have[1]

    def embedding_info(self, backbone: str | None) -> embedstore.store.EmbeddingInfo:
        """The embedding column of ``backbone`` (None: the only one); an unknown one is 404."""
        try:
            return self.store.resolve_backbone(backbone)
        except embedstore.StoreError as e:
            if backbone is None:
                raise
            raise NotFound(str(e)) from e

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
        return [] if d is None else heads.runs.list_runs(d)

    def run(self, name: str) -> Any:
        """The loaded run or ensemble ``name``, compiled for small batches and behind a
        :class:`BatchedPredictor` (reloaded when its config changed; looked at every
        ``RECHECK_S`` at most, and at once after the service's own training)."""
        now = time.monotonic()
        with self._lock:
            have = self._runs.get(name)
            if have is not None and now - have[2] < RECHECK_S:
                return have[1]
        d = self.runs_dir
        if d is None or not RUN_NAME.fullmatch(name) or name not in self.run_names():
            raise NotFound(f"no run {name!r}; runs: {', '.join(self.run_names()) or 'none'}")
        path = d / name
        checksum = heads.runs.run_checksum(path)
        with self._lock:
            have = self._runs.get(name)
            if have is not None and have[0] == checksum:
                self._runs[name] = (checksum, have[1], now)
                return have[1]
        loaded = heads.load(path, device=self.device)
        model = BatchedPredictor(heads.runs.compile_predictor(loaded))
        with self._lock:
            self._runs[name] = (checksum, model, now)
            if self._resident is not None and set(model.columns) - set(self._resident.meta_columns):
                self._resident = None  # reload with this run's metadata columns
        return model

    def run_summary(self, name: str) -> dict[str, Any]:
        model = self.run(name)
        d = self.runs_dir
        if d is None:  # not reached: run() answers NotFound without --runs
            raise NotFound(f"no run {name!r}; runs: none")
        metrics = heads.runs.read_eval(d / name)
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

    # ------------------------------------------------------------------ writes and jobs

    def add_images(
        self, files: list[bytes], label: str | None, fields: dict[str, str], names: list[str]
    ) -> embedstore.ingestion.AddedImages:
        """Add uploaded images (one label and the same metadata for all), committed at once."""
        with self.write_lock:
            try:
                return embedstore.add_images(
                    self.store,
                    files,
                    labels=[label] * len(files),
                    metadata=[dict(fields) for _ in files],
                    backbone_objects=self.raw_backbones() or None,
                    names=names,
                )
            finally:
                self.wrote()

    def job(self, job_id: str) -> Job:
        j = self.jobs.get(job_id)
        if j is None:
            raise NotFound(f"no job {job_id!r}")
        return j

    def train_job(self, name: str, options: dict[str, Any], overwrite: bool = False) -> Job:
        d = self.runs_dir
        if d is None:
            raise BadInput("the service was started without --runs; no place to write runs")
        if not RUN_NAME.fullmatch(name):
            raise BadInput(f"name {name!r}: use letters, digits, '.', '_' and '-' (not first)")
        if (d / name).exists() and not overwrite:
            raise Conflict(f"run {name!r} exists; give overwrite=true to replace it")
        self._check_train(options)
        if any(
            j.kind == "train" and j.params.get("name") == name and j.status in ("queued", "running")
            for j in self.jobs.list()
        ):
            raise Conflict(
                f"run {name!r} is being trained by another job; wait for it or cancel it"
            )

        def work(job: Job) -> dict[str, Any]:
            d.mkdir(parents=True, exist_ok=True)
            # heads.train fills a hidden folder and swaps it in whole when complete: the run
            # being replaced stays servable until then, and a kill leaves no half run
            res = heads.train(
                self.store.path,
                out=d / name,
                overwrite=True,
                progress=False,
                on_fold=lambda done, total: job.checkpoint(folds_done=done, folds=total),
                **{"device": self.device, **options},  # resolved once, at start-up
            )
            with self._lock:
                self._runs.pop(name, None)
            out = res.to_dict()
            return {"run": name, **{k: out[k] for k in ("runs", "ensemble", "metrics")}}

        return self.jobs.submit("train", {"name": name, **options}, work)

    def _check_train(self, options: dict[str, Any]) -> None:
        """What can be checked before a job is queued: that every setting applies to the head
        (the head is built, not trained), the fold (none needed by a zero-shot head), the
        columns, the device."""
        settings = {k: v for k, v in options.items() if k in heads.settings.BY_NAME}
        if "loss_kwargs" in options:
            settings["loss_kwargs"] = options["loss_kwargs"]
        head = heads.training.build_head(options.get("head", "mlp"), settings, progress=False)
        folds = (self.store.meta.table_metadata().get("folds") or {}).get("folds")
        fold = options.get("fold", 0)
        zero_shot = head.__head_tags__().text_prior  # trains from class names, folds or not
        if not folds and not zero_shot:
            raise BadInput("the store has no folds; run `embedstore split` on it first")
        if folds and fold != "all" and not 0 <= int(fold) < int(folds):
            raise BadInput(
                f"option 'fold': {fold} does not exist; the store has folds 0-{folds - 1}"
            )
        schema = self.store.schema()
        columns = set(schema.names) if schema is not None else set()
        for key in ("metadata", "aux_targets", "name_columns", "coarse_column"):
            given = options.get(key) or []
            missing = [
                c for c in ([given] if isinstance(given, str) else given) if c not in columns
            ]
            if missing:
                raise BadInput(f"option '{key}': the store has no column {', '.join(missing)}")
        if "device" in options:
            embedstore.resolve_device(options["device"])  # BadInput for a device not here
        if options.get("pseudo_label") and fold != "all":
            raise BadInput("option 'pseudo_label' needs fold 'all'")
        if options.get("templates") is not None:
            heads.text.check_templates(options["templates"])  # BadInput naming the template

    def ingest_job(self, folder: str) -> Job:
        root = self.settings.allow_root
        if root is None:
            raise Forbidden("server-side folders can be ingested only under --allow-root")
        path = Path(folder).resolve()
        if not path.is_relative_to(Path(root).resolve()):
            raise Forbidden(f"{folder}: outside the allowed root {root}")
        if not path.is_dir():
            raise NotFound(f"{folder}: no such folder under the allowed root")
        _refuse_links_out(path, Path(root).resolve())

        def work(job: Job) -> dict[str, Any]:
            with self.write_lock:
                job.checkpoint(stage="ingest")
                _refuse_links_out(path, Path(root).resolve())  # again: links made meanwhile
                try:
                    s = embedstore.ingest(
                        path,
                        self.store,
                        backbone_objects=self.raw_backbones() or None,
                        progress=False,
                        workers=0,
                    )
                finally:
                    self.wrote()
            return s.to_dict()

        return self.jobs.submit("ingest", {"folder": str(path)}, work)


def _refuse_links_out(folder: Path, root: Path) -> None:
    """Forbidden if a file or folder under ``folder`` is a link leading out of ``root``."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                rel = p.relative_to(folder)
                raise Forbidden(
                    f"{rel}: a link out of the allowed root; ingest reads files under it only"
                )
