"""Dynamic batching: concurrent requests that carry images share one forward pass.

A :class:`BatchedBackbone` looks like the backbone it wraps to ``embedstore.embed_inputs``
(``preprocess``, ``embed``): each ``embed`` call queues its images and waits; one worker thread
takes what is queued, waits up to ``max_wait_ms`` for more (up to ``max_batch`` images), runs the
real backbone once and hands each caller its rows.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import torch

from embedstore import Backbone


class BatchedBackbone:
    """``backbone`` behind a queue; thread-safe ``embed``."""

    def __init__(self, backbone: Backbone, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        self.backbone = backbone
        self.preprocess = backbone.preprocess
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: queue.Queue[tuple[torch.Tensor, Future]] = queue.Queue()
        self.batches = 0  # forward passes run
        self.images = 0  # images embedded
        self._thread = threading.Thread(
            target=self._loop, name=f"batcher-{backbone.name}", daemon=True
        )
        self._thread.start()

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
                self.batches += 1
                self.images += n
                start = 0
                for x, fut in items:
                    fut.set_result(out[start : start + len(x)])
                    start += len(x)
            except Exception as e:  # noqa: BLE001 - every waiting caller gets the error
                for _, fut in items:
                    fut.set_exception(e)
