"""``x @ W`` for a constant ``W`` and a few rows of ``x``: what a compiled head computes most.

numpy's BLAS (OpenBLAS) packs ``W`` into its blocked layout on every call, so a product of a
few rows by a 1280 x 5120 matrix costs 2-3x one row's; ONNX Runtime packs a constant ``W`` once,
when the session is made (1 row: 0.9 ms; 8 rows: 1.9 ms against numpy's 2.6; 32 rows: 3.4
against 5.9; one thread each, on a busy 2-core CPU). Its session runs on one thread of its own,
whatever numpy's BLAS is set to: concurrent requests, not a pool per product, use the cores.
Where ONNX Runtime cannot be loaded the product is numpy's.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class MatMul:
    """``MatMul(W)(x)`` is ``x @ W`` float32, ``x`` ``(R, K)``, ``W`` ``(K, N)`` constant."""

    def __init__(self, W: np.ndarray) -> None:
        self.shape = W.shape
        self._session = _session(np.ascontiguousarray(W, np.float32)) if W.size else None
        # numpy's copy only where there is no session (ONNX Runtime keeps its own, packed)
        self._W = None if self._session is not None else np.ascontiguousarray(W, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if self._session is None:
            return x @ self._W
        return self._session.run(None, {"x": x})[0]


def _session(W: np.ndarray) -> Any:
    """An ONNX Runtime session computing ``x @ W`` on one thread, or None without the runtime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    k, n = W.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every supported onnxruntime reads
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
    except Exception:  # noqa: BLE001 - any runtime failure: numpy computes it
        return None
