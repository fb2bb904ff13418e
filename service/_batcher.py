"""Dynamic batching: concurrent requests share one forward pass, of a backbone or of a head.

A :class:`BatchedBackbone` looks like the backbone it wraps to ``embedstore.embed_inputs``
(``preprocess``, ``embed``): each ``embed`` call queues its images and waits; a worker thread
(or ``workers`` of them, each with a forward pass in flight) takes what is queued, waits up to
``max_wait_ms`` for more (up to ``max_batch`` images), runs the real backbone once and hands
each caller its rows. A :class:`BatchedPredictor` shares a
run's head forward among the requests that arrive while one runs (no waiting: see its docstring).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import heads.runs
from embedstore import Backbone


class BatchedBackbone:
    """``backbone`` behind a queue; thread-safe ``embed``."""

    def __init__(
        self, backbone: Backbone, max_batch: int = 32, max_wait_ms: float = 5.0, workers: int = 1
    ) -> None:
        self.backbone = backbone
        self.preprocess = backbone.preprocess
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[tuple[torch.Tensor, Future]] = queue.Queue()
        self._count = threading.Lock()
        self.batches = 0  # forward passes run
        self.images = 0  # images embedded
        # ``workers`` forward passes in flight at once (each takes its own batch off the queue)
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{backbone.name}-{k}", daemon=True)
            for k in range(workers)
        ]
        for t in self._threads:
            t.start()

    def __getattr__(self, name: str) -> Any:  # name, dim, column, describe ... of the backbone
        return getattr(self.backbone, name)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) -> float32 (B, dim), batched with other callers' images."""
        fut: Future = Future()
        self._queue.put((images, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            items, n = [first], len(first[0])
            deadline = time.perf_counter() + self.max_wait_s
            while n < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                items.append(item)
                n += len(item[0])
            try:
                out = self.backbone.embed(torch.cat([x for x, _ in items])).cpu()  # (n, dim)
                with self._count:
                    self.batches += 1
                    self.images += n
                start = 0
                for x, fut in items:
                    fut.set_result(out[start : start + len(x)])
                    start += len(x)
            except Exception as e:  # noqa: BLE001 - every waiting caller gets the error
                for _, fut in items:
                    fut.set_exception(e)


class BatchedPredictor(heads.runs.WrappedPredictor):
    """A run or ensemble (a ``heads.Predictor``) whose ``logits_and_scores`` is shared: the rows
    of callers that arrive while a head forward runs go into the next one.

    No caller waits for company: the first runs at once, in its own thread; callers arriving
    meanwhile queue, and whichever of them gets the head next runs everything queued (up to
    ``max_rows`` rows) in one forward and hands each its rows (flat combining). So one request
    alone pays no delay, and under load the per-call costs are paid once per batch. Everything
    else (classes, columns, thresholds ...) is the model's.
    """

    def __init__(self, model: Any, max_rows: int = 256) -> None:
        super().__init__(model)
        self.max_rows = max_rows
        self._queue: list[_Rows] = []
        self._queue_lock = threading.Lock()
        self._head = threading.Lock()  # held by the caller running a forward
        self.batches = 0  # forwards run
        self.rows = 0  # rows answered

    @property
    def queued(self) -> int:
        """Callers waiting for a head forward now."""
        with self._queue_lock:
            return len(self._queue)

    def logits_and_scores(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """What the model's gives for these rows, computed with other callers' rows."""
        item = _Rows(embeddings, table or {}, Future())
        with self._queue_lock:
            self._queue.append(item)
        while not item.result.done():
            with self._head:
                if item.result.done():
                    break
                self._run(self._take())
        return item.result.result()

    def _take(self) -> list[_Rows]:
        """The queued callers whose inputs have the first's columns, up to ``max_rows`` rows."""
        with self._queue_lock:
            first = self._queue[0]
            taken: list[_Rows] = []
            rest: list[_Rows] = []
            n = 0
            for it in self._queue:
                if it.key == first.key and (not taken or n + it.n <= self.max_rows):
                    taken.append(it)
                    n += it.n
                else:
                    rest.append(it)
            self._queue = rest
        return taken

    def _run(self, items: list[_Rows]) -> None:
        emb = {c: np.concatenate([it.embeddings[c] for it in items]) for c in items[0].embeddings}
        tab = {c: np.concatenate([it.table[c] for it in items]) for c in items[0].table}
        try:
            logits, scores = self.model.logits_and_scores(emb, tab)
        except Exception as e:  # noqa: BLE001 - alone, each caller gets its own answer or error
            if len(items) == 1:
                items[0].result.set_exception(e)
            else:
                for it in items:
                    self._run([it])
            return
        self.batches += 1
        self.rows += len(logits)
        start = 0
        for it in items:
            stop = start + it.n
            it.result.set_result(
                (logits[start:stop], None if scores is None else scores[start:stop])
            )
            start = stop


@dataclass
class _Rows:
    """One caller's rows waiting for a head forward."""

    embeddings: dict[str, np.ndarray]
    table: dict[str, np.ndarray]
    result: Future

    @property
    def n(self) -> int:
        return len(next(iter(self.embeddings.values())))

    @property
    def key(self) -> tuple:
        return (tuple(self.embeddings), tuple(self.table))
