"""Resolving ``device="auto"`` once, at the edge (see STYLE.md: device is an argument)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device setting into a ``torch.device``.

    ``"auto"`` (or ``None``) gives ``cuda`` when a GPU is visible, else Apple ``mps``, else ``cpu``; anything else is
    parsed by ``torch.device``. Asking for CUDA on a machine without it fails here, with a clear
    message, rather than deep inside a kernel.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(dev)!r} requested but CUDA is not available; use 'auto' or 'cpu'"
        )
    return dev
