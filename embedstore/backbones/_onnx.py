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

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedstore._device import resolve_device
from embedstore.backbones._backbones import Backbone, BackboneError, _sha256_file
from embedstore.backbones._onnx_graphs import fused_graph, has_fused_graph
from embedstore.types import RUNTIMES, Runtime, check_choice

EXPORT_FORMAT = 2  # bump when the exported graph changes (inputs, outputs, what is inside)
OPSET = 18
MIN_COSINE = 0.9999  # an export whose probe embeddings differ more from torch's is refused
MIN_COSINE_INT8 = 0.99  # the same for an int8 export (measured 0.999+ on dinov2-small)
ONNX_RUNTIMES = ("onnx", "onnx-int8")  # the runtimes ONNX Runtime runs; the rest is torch
# How onnx-int8 quantises (part of its cache key): onnxruntime.quantization.quantize_dynamic
INT8_RECIPE = "dynamic; weights s8 per output channel; activations u8 per tensor; MatMul+Attention"
MODEL_FILE, MANIFEST_FILE = "model.onnx", "manifest.json"
_TRACE_BATCH, _PROBE_BATCH = 2, 3  # probing at another batch size checks the dynamic batch axis
_INSTALL_HINT = (
    "runtime 'onnx' needs onnxruntime (a dependency of embedstore: `pip install onnxruntime`, "
    "and onnx onnxscript to export a backbone), or use --runtime torch"
)


# --------------------------------------------------------------------------- choosing


def onnx_cache_dir() -> Path:
    """Where exports are kept: ``$EMBEDSTORE_CACHE/onnx``, else ``~/.cache/embedstore/onnx``
    (``$XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("EMBEDSTORE_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "embedstore")
    return Path(root).expanduser() / "onnx"


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
    (``backbone.prefers_onnx_on_cpu``: efficientnet-lite0 yes; the Hugging Face transformers
    no, float32 ONNX Runtime measured 0.9-1.1x torch for DINOv2-small), torch anywhere else
    (CUDA keeps its bf16 autocast path, MPS its own kernels). ``onnx`` runs on the CPU only, and so does
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
        _import_onnxruntime()
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
    ``"onnx"`` (or ``"onnx-int8"``, its int8 export). With ``auto``, a backbone that cannot be exported, or whose export disagrees
    with torch, warns and runs with torch; with ``onnx`` it raises :class:`BackboneError`.
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
            self.session = _session(self.path, self.threads, memory_arena)
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
        versions = {**self._describe.get("versions", {}), "onnxruntime": _version("onnxruntime")}
        return {**self._describe, "runtime": self.runtime, "versions": versions}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackboneError(_INSTALL_HINT) from e
    return onnxruntime


def _session(path: Path, threads: int, memory_arena: bool = True) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one op at a time, every graph
    optimisation (fusions, blocked NCHWc layouts); ``memory_arena`` as :func:`with_runtime`."""
    ort = _import_onnxruntime()
    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = memory_arena
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    # Idle intra-op threads sleep instead of spinning: between ops and batches the cores go to
    # the decode workers (ingest) or other work, not to busy-waiting.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- exporting


def export_key(backbone: Backbone, precision: str = "fp32") -> dict[str, Any]:
    """Everything an export depends on; its SHA-256 names the cache folder."""
    d = backbone.describe()
    key = {
        "format": EXPORT_FORMAT,
        "precision": precision,
        "graph": "fused" if has_fused_graph(backbone) else "generic",
        "class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
        "source": d.get("source"),
        "weights_sha256": _weights_fingerprint(backbone),
        "pooling": d.get("pooling"),
        "input_size_px": d.get("input_size_px"),
        "mean": d.get("mean"),
        "std": d.get("std"),
        "dim": d.get("dim"),
        "opset": OPSET,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "onnxscript": _version("onnxscript"),
    }
    if precision == "int8":
        key.update(quantization=INT8_RECIPE, onnxruntime=_version("onnxruntime"))
    return json.loads(json.dumps(key))  # as a manifest reads back (lists, not tuples)


def export_onnx(
    backbone: Backbone, cache_dir: str | os.PathLike | None = None, *, precision: str = "fp32"
) -> Path:
    """The verified ONNX export of a torch ``backbone``: from the cache when it is sound, else
    exported, checked against torch and written there. Returns the ``model.onnx`` path.

    ``precision="int8"``: the float32 export (cached too), quantised (:data:`INT8_RECIPE`).
    Raises :class:`BackboneError` when the model cannot be exported or its export disagrees
    with torch (min cosine below :data:`MIN_COSINE`, :data:`MIN_COSINE_INT8` for int8, on the
    probe batch).
    """
    if precision not in ("fp32", "int8"):
        raise BackboneError(f"unknown precision {precision!r}; valid: fp32, int8")
    key = export_key(backbone, precision)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    root = Path(cache_dir).expanduser() if cache_dir is not None else onnx_cache_dir()
    slug = re.sub(r"[^0-9A-Za-z]+", "-", backbone.name).strip("-").lower() or "backbone"
    slug += "-int8" if precision == "int8" else ""
    folder = root / f"{slug}-{digest[:16]}"
    problem = check_export(folder, key)
    if problem is None:
        return folder / MODEL_FILE
    if folder.exists():
        warnings.warn(f"{folder}: {problem}; exporting it again", RuntimeWarning, stacklevel=2)
    source = export_onnx(backbone, root, precision="fp32") if precision == "int8" else None
    tmp = root / f".{folder.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        if source is not None:
            _quantize(backbone, source, tmp, key)
        else:
            _export(backbone, tmp, key)
        _publish(tmp, folder, key)
    except OSError as e:
        raise BackboneError(
            f"cannot write the ONNX export of {backbone.name} under {root} ({e}); set "
            "EMBEDSTORE_CACHE to a writable folder"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / MODEL_FILE


def check_export(folder: Path, key: dict[str, Any]) -> str | None:
    """None when ``folder`` holds a complete export for ``key`` whose files match the SHA-256
    its manifest recorded; else what is wrong with it."""
    if not (folder / MANIFEST_FILE).is_file():
        return "no export yet" if not folder.exists() else "no manifest (an interrupted export)"
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if manifest.get("key") != key:
        return "its manifest describes another model or library versions (stale)"
    if MODEL_FILE not in files:
        return "its manifest lists no model file"
    for name, sha in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if _sha256_file(p) != sha:
            return f"{name} does not match the SHA-256 its manifest recorded (corrupt or edited)"
    return None


class _Exportable(torch.nn.Module):
    """``uint8`` images (B, 3, H, W) -> embeddings (B, dim): the backbone's normalise + forward."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model  # registered, so its weights become the graph's initialisers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone._forward(self.backbone.preprocess.normalize(images))  # (B, dim)


def _export(backbone: Backbone, folder: Path, key: dict[str, Any]) -> None:
    """Export into ``folder``, check it against torch, then write the manifest (last).

    A backbone with a fused form (embedstore.backbones._onnx_graphs: DINOv2) exports that, then ONNX
    Runtime's transformer optimizer fuses its attention, GELUs and LayerNorms."""
    folder.mkdir(parents=True)
    backbone.to("cpu", autocast=False)
    px = backbone.preprocess.crop_px
    example = torch.from_numpy(probe_images(_TRACE_BATCH, px))  # (2, 3, px, px) uint8
    fused = fused_graph(backbone)
    module = fused[0] if fused is not None else _Exportable(backbone).eval()
    raw = folder / "raw" if fused is not None else folder  # the optimizer reads it from here
    raw.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    fusions: dict[str, int] = {}
    try:
        with _quiet():
            torch.onnx.export(
                module,
                (example,),
                str(raw / MODEL_FILE),
                input_names=["images"],
                output_names=["embeddings"],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                external_data=True,
                optimize=True,
                verbose=False,
            )
            if fused is not None:
                fusions = _optimize(raw / MODEL_FILE, folder / MODEL_FILE, **fused[1])
                shutil.rmtree(raw)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean "cannot"
        raise BackboneError(f"cannot export {backbone.name} to ONNX ({_first_line(e)})") from e
    check = _compare(backbone, folder / MODEL_FILE, px, MIN_COSINE)
    exporter = "torch.onnx.export(dynamo=True)"
    if fused is not None:
        exporter += (
            " of embedstore.backbones._onnx_graphs, onnxruntime.transformers optimize_model(vit)"
        )
    _write_manifest(folder, key, check, time.perf_counter() - t0, exporter, fusions=fusions)


def _first_line(e: Exception) -> str:
    """``Type: first line of the message`` of an exporter's or quantiser's exception."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _optimize(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (``model_type="vit"``) from ``src`` into ``dst``;
    returns the fused operators it made (e.g. ``{"Attention": 11, ...}``)."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(
        str(src), model_type="vit", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )
    model.save_model_to_file(str(dst), use_external_data_format=True)
    return {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}


def _quantize(backbone: Backbone, source: Path, folder: Path, key: dict[str, Any]) -> None:
    """The float32 export at ``source`` quantised to int8 (:data:`INT8_RECIPE`) into
    ``folder``, checked against torch (:data:`MIN_COSINE_INT8`), manifest last."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True)
    backbone.to("cpu", autocast=False)
    t0 = time.perf_counter()
    try:
        with _quiet():
            quantize_dynamic(
                source,
                folder / MODEL_FILE,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                use_external_data_format=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as e:  # noqa: BLE001 - the quantiser raises many types; all mean "cannot"
        raise BackboneError(
            f"cannot quantise the ONNX export of {backbone.name} to int8 ({_first_line(e)}); use "
            "--runtime onnx"
        ) from e
    graph = onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    quantized = {op: ops.count(op) for op in ("MatMulInteger", "QAttention") if op in ops}
    if not quantized:
        raise BackboneError(
            f"{backbone.name}: its ONNX export has no matrix multiply to quantise to int8; use "
            "--runtime onnx"
        )
    check = _compare(backbone, folder / MODEL_FILE, backbone.preprocess.crop_px, MIN_COSINE_INT8)
    _write_manifest(
        folder,
        key,
        check,
        time.perf_counter() - t0,
        "onnxruntime.quantization.quantize_dynamic",
        quantized=quantized,
    )


def _write_manifest(
    folder: Path,
    key: dict[str, Any],
    check: dict[str, Any],
    seconds: float,
    exporter: str,
    **extra: Any,
) -> None:
    """The manifest, written last: the key, every file's SHA-256 and the check against torch."""
    files = {p.name: _sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {
        "key": key,
        "files": files,
        "check": check,
        "export_seconds": round(seconds, 2),
        "exporter": exporter,
        "created_at": _now(),
        **extra,
    }
    with open(folder / MANIFEST_FILE, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _compare(backbone: Backbone, path: Path, px: int, min_cosine: float) -> dict[str, Any]:
    """Probe embeddings from the export against torch's; BackboneError below ``min_cosine``."""
    x = probe_images(_PROBE_BATCH, px)
    want = backbone.embed(torch.from_numpy(x)).cpu().numpy()  # (3, dim) torch eager, float32
    got = _session(path, 1).run(None, {"images": x})[0]  # (3, dim)
    stats = embedding_agreement(got, want)
    if not stats["min_cosine"] >= min_cosine:  # NaN fails too
        raise BackboneError(
            f"the ONNX export of {backbone.name} differs from torch (min cosine "
            f"{stats['min_cosine']:.6f} < {min_cosine}, max abs diff {stats['max_abs_diff']:.2e})"
        )
    return {"probe_images": _PROBE_BATCH, "min_cosine_required": min_cosine, **stats}


def embedding_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``max_abs_diff`` and per-row ``min_cosine`` of two ``(n, d)`` embedding arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)  # (n,)
    return {"max_abs_diff": float(np.abs(a - b).max()), "min_cosine": float(cos.min())}


def probe_images(n: int, px: int, seed: int = 0) -> np.ndarray:
    """``n`` deterministic ``uint8`` images (n, 3, px, px): smooth colour ramps with noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, px)
    yy, xx = np.meshgrid(ramp, ramp, indexing="ij")  # (px, px)
    base = np.stack([xx, yy, 1.0 - xx * yy])  # (3, px, px)
    out = [
        255 * base * rng.uniform(0.3, 1.0, (3, 1, 1)) + rng.normal(0, 24, (3, px, px))
        for _ in range(n)
    ]
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def _publish(tmp: Path, folder: Path, key: dict[str, Any]) -> None:
    """Move a finished export into place; a sound one another process published first wins."""
    try:
        os.rename(tmp, folder)
        return
    except OSError:
        if check_export(folder, key) is None:
            return
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)


def _weights_fingerprint(backbone: Backbone) -> str:
    """The recorded weights SHA-256, or (when unknown) one of the model's tensors."""
    sha = getattr(backbone, "weights_sha256", None)
    if sha and sha != "unknown":
        return sha
    h = hashlib.sha256()
    for name, t in sorted(backbone.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "tensors:" + h.hexdigest()


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and warnings off; errors still raise."""
    names = ("torch.onnx", "torch.export", "onnxscript", "onnxruntime", "")  # "": the root,
    loggers = [logging.getLogger(n) for n in names]  # where onnxruntime's quantiser warns
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = [
    "MIN_COSINE",
    "OnnxBackbone",
    "check_export",
    "cpu_threads",
    "embedding_agreement",
    "export_key",
    "export_onnx",
    "onnx_cache_dir",
    "probe_images",
    "resolve_runtime",
    "with_runtime",
]
