"""Background jobs (training, folder ingest): a bounded queue and one worker thread.

A job is queued, running, done, failed or cancelled. Cancelling a queued job drops it; a running
job stops at its next checkpoint (between folds for training) and leaves nothing listed.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedstore.errors import UserError

from .errors import QueueFull, log


class Cancelled(Exception):
    """Raised at a checkpoint of a job whose cancellation was asked for."""


@dataclass
class Job:
    kind: str
    params: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    status: str = "queued"
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def checkpoint(self, **progress: Any) -> None:
        """Record progress; raise :class:`Cancelled` if the job was cancelled."""
        self.progress.update(progress)
        if self.cancel_event.is_set():
            raise Cancelled()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class JobQueue:
    """At most ``max_queued`` jobs waiting; one runs at a time."""

    def __init__(self, max_queued: int = 8) -> None:
        self.max_queued = max_queued
        self._queue: queue.Queue[tuple[Job, Callable[[Job], dict[str, Any]]]] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def submit(self, kind: str, params: dict[str, Any], fn: Callable[[Job], dict[str, Any]]) -> Job:
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
            if waiting >= self.max_queued:
                raise QueueFull(f"{waiting} jobs are waiting already; try again later")
            job = Job(kind, params)
            self._jobs[job.id] = job
        self._queue.put((job, fn))
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def cancel(self, job: Job) -> Job:
        job.cancel_event.set()
        with self._lock:
            if job.status == "queued":
                job.status, job.finished_at = "cancelled", time.time()
        return job

    def _loop(self) -> None:
        while True:
            job, fn = self._queue.get()
            with self._lock:
                if job.status != "queued":
                    continue  # cancelled while waiting
                job.status, job.started_at = "running", time.time()
            try:
                job.result = fn(job)
                job.status = "done"
            except Cancelled:
                job.status = "cancelled"
            except Exception as e:  # noqa: BLE001 - a failed job reports why, the service lives on
                job.status = "failed"
                job.error = str(e) or type(e).__name__
                job.progress["traceback_tail"] = traceback.format_exc().splitlines()[-1]
                if not isinstance(e, UserError):  # a bug: its traceback in the server log
                    log.error("job %s (%s) failed", job.id, job.kind, exc_info=e)
            job.finished_at = time.time()
