"""ONNX Runtime for backbones: export once, check against torch, cache, run on the CPU.

On a CPU, ONNX Runtime runs a convolutional backbone several times faster than torch eager
(convolutions fused with their batch norms and activations, its own blocked kernels:
efficientnet-lite0 5-6x on 2 cores; ``benchmarks/RESULTS.md``, "ONNX Runtime"); for the
Hugging Face transformers (DINOv2) float32 is GEMM-bound and measured at torch's pace (0.98x
with the fused export of embedstore.backbones._onnx_graphs), so ``auto`` keeps torch for them
(``Backbone.prefers_onnx_on_cpu``).

``onnx-int8`` (opt-in, never chosen by ``auto``) quantises a transformer's projections and
attention to int8 (ONNX Runtime's dynamic quantisation: weights per output channel, activations
per batch): dinov2-small ran 1.6x torch in the whole ingest and 2x in the forward pass on 2
AVX-512 VNNI cores. Its embeddings are *not*
torch's within float32 tolerance: an int8 export is kept only when its probe embeddings reach
cosine >= :data:`MIN_COSINE_INT8` against torch, and the column records ``onnx-int8``.
A backbone is exported once with ``torch.onnx.export`` (the normalisation included, so the graph
takes the ``uint8`` batches the decode workers make) into a cache folder keyed by everything
that changes its output: the weights' SHA-256, pooling, input size, mean/std, and the exporter's
opset and library versions. Before it is kept, each export is checked against torch on a probe
batch (cosine >= 0.9999); its files' SHA-256 are written to a manifest that is checked each time
it is loaded, so an export that is stale, edited or cut short is rebuilt, never trusted.

:func:`with_runtime` is the one place a runtime setting becomes a backbone that runs with it;
ingest, lookup and predict (through :func:`embedstore.embed_inputs`) all go through it.

>>> bb = with_runtime(create_backbone("efficientnet-lite0"), "auto", "cpu")
>>> bb.runtime, bb.describe()["runtime"]
('onnx', 'onnx')
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore.backbones._backbones import Backbone, BackboneError
from embedstore.backbones._onnx_export import (
    ONNX_RUNTIMES,
    dist_version,
    export_onnx,
    import_onnxruntime,
    make_session,
)
from embedstore.types import RUNTIMES, Runtime, check_choice

# --------------------------------------------------------------------------- choosing


def cpu_threads() -> int:
    """CPU cores this process may use (its affinity mask), ONNX Runtime's intra-op threads."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_runtime(
    runtime: Runtime = "auto",
    device: str | torch.device = "auto",
    backbone: Backbone | None = None,
) -> str:
    """``"torch"``, ``"onnx"`` or ``"onnx-int8"`` for a runtime setting on a device (and a
    backbone).

    ``auto`` is ONNX Runtime on the CPU when it is installed and the backbone runs faster there
    (``backbone.prefers_onnx_on_cpu``: efficientnet-lite0 yes; the Hugging Face transformers no,
    float32 ONNX Runtime measured 0.9-1.1x torch for DINOv2-small), torch anywhere else (CUDA keeps
    its bf16 autocast path, MPS its own kernels). ``onnx`` runs on the CPU only, and so does
    ``onnx-int8``, for backbones with matrix multiplies to quantise (``backbone.quantizable``).

    >>> resolve_runtime("auto", "cpu", create_backbone("efficientnet-lite0"))
    'onnx'
    """
    check_choice(runtime, RUNTIMES, "runtime")
    dev = resolve_device(device)
    if runtime == "torch":
        return "torch"
    if runtime == "auto" and backbone is not None and not backbone.prefers_onnx_on_cpu:
        return "torch"
    if dev.type != "cpu":
        if runtime == "auto":
            return "torch"
        raise BackboneError(
            f"runtime '{runtime}' runs on the CPU, not {dev}; use --runtime torch (or auto) on "
            f"{dev.type}, or --device cpu"
        )
    if runtime == "onnx-int8" and backbone is not None and not backbone.quantizable:
        raise BackboneError(
            f"runtime 'onnx-int8' quantises a transformer's matrix multiplies and "
            f"{backbone.name} has none to speak of (a convolutional net); use --runtime onnx, "
            "already its fastest"
        )
    try:
        import_onnxruntime()
    except BackboneError:
        if runtime == "auto":
            return "torch"
        raise
    return "onnx-int8" if runtime == "onnx-int8" else "onnx"


def runtime_for_column(
    runtime: Runtime, describe: dict[str, Any], device: str | torch.device = "auto"
) -> Runtime:
    """The runtime that embeds new images for a stored column: ``runtime``, except that under
    ``auto`` on the CPU a column ``onnx-int8`` wrote is embedded with ``onnx-int8`` again, so
    queries match the stored vectors' precision (lookup, predict and the service use this)."""
    if runtime == "auto" and describe.get("runtime") == "onnx-int8":
        if resolve_device(device).type == "cpu":
            return "onnx-int8"
    return runtime


def with_runtime(
    backbone: Backbone,
    runtime: Runtime = "auto",
    device: str | torch.device = "auto",
    *,
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    memory_arena: bool = True,
) -> Backbone:
    """``backbone`` ready to embed on ``device`` with ``runtime`` (see :func:`resolve_runtime`:
    ``auto`` is ONNX Runtime on the CPU for backbones that run faster there).

    For ONNX Runtime the backbone is exported (or its cached export loaded and verified) and an
    :class:`OnnxBackbone` returned: same name, preprocessing and description, ``runtime`` =
    ``"onnx"`` (or ``"onnx-int8"``, its int8 export). With ``auto``, a backbone that cannot be
    exported, or whose export disagrees with torch, warns and runs with torch; with ``onnx`` it
    raises :class:`BackboneError`.
    ``threads``: ONNX Runtime's intra-op threads (default: every core, :func:`cpu_threads`).
    ``memory_arena=False``: ONNX Runtime frees each run's buffers instead of keeping the
    largest in its arena; for batches of varying size (the service's dynamic batching) that
    keeps the resident memory ~240 MiB lower at about the same speed (benchmarks/RESULTS.md).
    """
    dev = resolve_device(device)
    chosen = resolve_runtime(runtime, dev, backbone)
    if backbone.runtime == chosen:
        return backbone.to(dev)
    if backbone.runtime != "torch":
        raise BackboneError(
            f"backbone {backbone.name!r} was built for {backbone.runtime}; build it again "
            f"(create_backbone) to run it with {chosen}"
        )
    precision = "int8" if chosen == "onnx-int8" else "fp32"
    try:
        path = export_onnx(backbone, cache_dir, precision=precision)
        return OnnxBackbone(
            backbone, path, threads=threads, runtime=chosen, memory_arena=memory_arena
        )
    except BackboneError as e:
        if runtime != "auto":
            raise
        warnings.warn(f"{e}; running {backbone.name} with torch", RuntimeWarning, stacklevel=2)
        return backbone.to(dev)


# --------------------------------------------------------------------------- running


class OnnxBackbone(Backbone):
    """A backbone run by ONNX Runtime on the CPU from its verified export.

    ``embed(uint8 (B, 3, H, W)) -> float32 (B, dim)`` as every backbone; the graph normalises
    and pools itself. It keeps the torch backbone's description (so stored columns rebuild and
    compare as before) and adds ``runtime`` (``"onnx"``, or ``"onnx-int8"`` for an int8
    export) and the onnxruntime version.
    """

    runtime = "onnx"
    prefers_onnx_on_cpu = True

    def __init__(
        self,
        base: Backbone,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        runtime: str = "onnx",
        memory_arena: bool = True,
    ) -> None:
        super().__init__()
        if runtime not in ONNX_RUNTIMES:
            raise BackboneError(f"runtime {runtime!r} is not one ONNX Runtime runs")
        self.runtime = runtime
        self.quantizable = base.quantizable
        self.name, self.dim, self.preprocess = base.name, base.dim, base.preprocess
        self.source, self.weights_sha256 = base.source, base.weights_sha256
        self.pooling = getattr(base, "pooling", "avg")
        self.path = Path(path)
        self.threads = threads or cpu_threads()
        self._describe = base.describe()
        try:
            self.session = make_session(self.path, self.threads, memory_arena)
        except BackboneError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            raise BackboneError(f"ONNX Runtime cannot load {self.path}: {e}") from e
        self._input = self.session.get_inputs()[0].name

    def to(self, device: str | torch.device, autocast: bool = True) -> Backbone:
        if torch.device(device).type != "cpu":
            raise BackboneError(
                f"{self.name} runs with ONNX Runtime on the CPU; rebuild it for {device} with "
                "runtime 'torch'"
            )
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images (B, 3, H, W) -> embeddings float32 (B, dim), on the CPU."""
        x = np.ascontiguousarray(images.cpu().numpy(), dtype=np.uint8)  # no copy when it can
        out = self.session.run(None, {self._input: x})[0]  # (B, dim) float32
        return torch.from_numpy(out)

    def describe(self) -> dict[str, Any]:
        versions = {
            **self._describe.get("versions", {}),
            "onnxruntime": dist_version("onnxruntime"),
        }
        return {**self._describe, "runtime": self.runtime, "versions": versions}


__all__ = [
    "OnnxBackbone",
    "cpu_threads",
    "resolve_runtime",
    "runtime_for_column",
    "with_runtime",
]
