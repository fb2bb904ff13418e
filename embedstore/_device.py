"""Resolving ``device="auto"`` once, at the edge (see STYLE.md: device is an argument)."""

from __future__ import annotations

import torch

from embedstore.errors import BadInput
from embedstore.types import DEVICE_CHOICES, check_device


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) into a
    ``torch.device``.

    ``"auto"`` (or ``None``) gives ``cuda`` when a GPU is visible, else Apple ``mps``, else
    ``cpu``. Asking for a device this machine lacks fails here, with a clear message, rather than
    deep inside a kernel.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        check_device(device)
    except ValueError:
        raise BadInput(
            f"invalid device {device!r}; use one of {', '.join(DEVICE_CHOICES)}"
        ) from None
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(
                f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(
                f"device {device!r} requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    if dev.type == "mps" and not _mps_available():
        raise BadInput(f"device {device!r} requested but MPS is not available; use 'auto' or 'cpu'")
    return dev


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()
