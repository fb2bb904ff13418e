"""service: ``embedstore serve``, the HTTP front-end beside the CLI.

It keeps the store's embeddings, the backbones and the runs resident, answers lookups and
predictions in milliseconds, batches concurrent uploads into one forward pass, trains heads on
request as background jobs, and serves a species-lookup page at ``/``. Routes are thin skins
over the public ``embedstore`` and ``heads`` API.

>>> from embedstore_service import Settings, create_app
>>> app = create_app(Settings(store="flowers", runs="runs"))   # FastAPI app (TestClient, uvicorn)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os

from embedstore.errors import BadInput

from ._app import create_app
from ._state import Settings
from .security import LOOPBACK_HOSTS

__all__ = ["LOOPBACK_HOSTS", "Settings", "create_app", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Run the service with uvicorn until stopped. Binding an address other than loopback
    requires an API key (``settings.api_key``)."""
    import uvicorn

    if not is_loopback(host) and not settings.api_key:
        raise BadInput(
            f"--host {host}: binding beyond this machine needs an API key; "
            "give --api-key-env VAR with the key in $VAR"
        )
    if is_loopback(host) and settings.allowed_hosts is None:
        # a page on another site must not reach this service through a name that resolves
        # to 127.0.0.1 (DNS rebinding): answer loopback names only
        settings = dataclasses.replace(settings, allowed_hosts=LOOPBACK_HOSTS)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
