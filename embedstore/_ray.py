"""Ray, the scale-out engine (``engine="ray"``): imported lazily, joined or started once.

Ray is an optional extra (``pip install 'embedstore[ray]'``: ``ray[data]`` and ``lance-ray``);
without it, asking for ``engine="ray"`` raises :class:`EngineError` with that install hint.
:func:`connect_ray` joins the cluster this process already uses (``ray.init`` called before, as
the tests do once per session), or the one at ``address`` (``"auto"``: the cluster started with
``ray start`` on this machine; ``"HOST:PORT"``: a remote head), or starts a local one.
:func:`actor_layout` turns ``--actors``, ``--gpus-per-actor`` and ``--cpus-per-actor`` into an
actor pool for that cluster.

>>> cluster = connect_ray()                         # a local cluster on this machine's cores
>>> actor_layout(cluster, actors=None, gpus_per_actor=None, cpus_per_actor=1.0)
ActorLayout(actors=1, gpus=0.0, cpus=1.0, device='cpu')
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from embedstore.errors import BadInput

RAY_INSTALL_HINT = (
    "engine 'ray' needs the ray extra: pip install 'embedstore[ray]' (ray[data] and lance-ray)"
)


class EngineError(BadInput):
    """The engine cannot run: not installed, no cluster, or a layout it cannot place."""


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data`` loaded, or EngineError with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra
    except ImportError as e:
        raise EngineError(f"{RAY_INSTALL_HINT} ({e})") from None
    return ray


@dataclass(frozen=True)
class RayCluster:
    """The cluster this process is connected to: its address and total CPUs and GPUs."""

    address: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ActorLayout:
    """How many embedding (or prediction) actors, what each one reserves, and its device."""

    actors: int
    gpus: float
    cpus: float
    device: str  # "cuda" when each actor holds a GPU, else "cpu"


def connect_ray(address: str | None = None, *, quiet: bool = False) -> RayCluster:
    """Join (or start) the Ray cluster; Ray Data's own progress bars are turned off (the caller
    shows one). ``address``: None (the cluster already joined, else a new local one),
    ``"auto"`` or ``"HOST:PORT"``."""
    ray = import_ray()
    if not ray.is_initialized():
        if address not in (None, "auto"):
            _check_reachable(address)
        kw: dict[str, Any] = {"include_dashboard": False}
        if quiet:
            kw.update(logging_level=logging.WARNING, log_to_driver=False)
        try:
            ray.init(address=address, **kw) if address else ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"at {address!r}" if address else "on this machine"
            raise EngineError(
                f"cannot join a Ray cluster {where}: {str(e).splitlines()[0] if str(e) else e}; "
                "start one with `ray start --head` or give --ray-address HOST:PORT"
            ) from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    res = ray.cluster_resources()
    gcs = ray.get_runtime_context().gcs_address
    return RayCluster(str(gcs), float(res.get("CPU", 0)), float(res.get("GPU", 0)))


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds where nothing listens at ``HOST:PORT`` (Ray itself retries for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--ray-address {address!r}: give 'auto' or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise EngineError(
            f"cannot join a Ray cluster at {address!r}: nothing answers there ({e}); start one "
            "with `ray start --head` or give the head's address"
        ) from None


def actor_layout(
    cluster: RayCluster,
    *,
    actors: int | None,
    gpus_per_actor: float | None,
    cpus_per_actor: float,
    device: str = "auto",
) -> ActorLayout:
    """The actor pool for ``cluster``: one actor per GPU share when it has GPUs
    (``gpus_per_actor`` default 1 there, 0 elsewhere), else half the CPUs (the other half
    decodes). ``device`` ``auto`` is CUDA for actors holding a GPU, the CPU otherwise."""
    if cpus_per_actor <= 0:
        raise EngineError(f"--cpus-per-actor must be positive, not {cpus_per_actor}")
    if actors is not None and actors < 1:
        raise EngineError(f"--actors must be at least 1, not {actors}")
    gpus = float(gpus_per_actor) if gpus_per_actor is not None else (1.0 if cluster.gpus else 0.0)
    if gpus < 0:
        raise EngineError(f"--gpus-per-actor must be 0 or more, not {gpus_per_actor}")
    if gpus > 0 and cluster.gpus < gpus:
        raise EngineError(
            f"--gpus-per-actor {gpus:g}: the Ray cluster at {cluster.address} has "
            f"{cluster.gpus:g} GPUs; use --gpus-per-actor 0 to embed on CPUs"
        )
    if cpus_per_actor > cluster.cpus:
        raise EngineError(
            f"--cpus-per-actor {cpus_per_actor:g}: the Ray cluster has {cluster.cpus:g} CPUs"
        )
    if actors is None:
        if gpus > 0:
            actors = max(1, int(cluster.gpus // gpus))
        else:
            actors = max(1, int(cluster.cpus // (2 * cpus_per_actor)))
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    elif device.startswith("cuda") and gpus == 0:
        raise EngineError(
            f"--device {device}: the actors hold no GPU; give --gpus-per-actor 1 (or more)"
        )
    return ActorLayout(int(actors), gpus, float(cpus_per_actor), device)


__all__ = [
    "RAY_INSTALL_HINT",
    "ActorLayout",
    "EngineError",
    "RayCluster",
    "actor_layout",
    "connect_ray",
    "import_ray",
]
