"""The verified export cache of ONNX backbones: ``export_onnx(precision="fp32"|"int8")``
exports (and for int8 quantises) a backbone once per key, probes it against torch, and publishes
it atomically; ``check_export`` finds damage. ONNX Runtime sessions are made here too."""

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

from embedstore.backbones._backbones import Backbone, BackboneError, _sha256_file
from embedstore.backbones._onnx_graphs import fused_graph, has_fused_graph

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


def onnx_cache_dir() -> Path:
    """Where exports are kept: ``$EMBEDSTORE_CACHE/onnx``, else ``~/.cache/embedstore/onnx``
    (``$XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("EMBEDSTORE_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "embedstore")
    return Path(root).expanduser() / "onnx"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackboneError(_INSTALL_HINT) from e
    return onnxruntime


def make_session(path: Path, threads: int, memory_arena: bool = True) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, one op at a time, every graph
    optimisation (fusions, blocked NCHWc layouts); ``memory_arena`` as :func:`with_runtime`."""
    ort = import_onnxruntime()
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
        "transformers": dist_version("transformers"),
        "onnxscript": dist_version("onnxscript"),
    }
    if precision == "int8":
        key.update(quantization=INT8_RECIPE, onnxruntime=dist_version("onnxruntime"))
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
    got = make_session(path, 1).run(None, {"images": x})[0]  # (3, dim)
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


def dist_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = [
    "MIN_COSINE",
    "check_export",
    "embedding_agreement",
    "export_key",
    "export_onnx",
    "onnx_cache_dir",
    "probe_images",
]
