"""What routes share, as FastAPI dependencies: the resident :class:`State` and the upload cap.

``create_app`` keeps one ``State`` on ``app.state.service``; a route asks for it with a
``StateDep`` parameter (``def runs(state: StateDep)``) instead of closing over it.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from ._state import State


def get_state(request: Request) -> State:
    return request.app.state.service


def upload_cap(request: Request) -> int:
    """The largest request body or uploaded file accepted, in bytes (``--max-upload-mb``)."""
    return int(request.app.state.service.settings.max_upload_mb * 1024 * 1024)


def key_ok(request: Request, key: str) -> bool:
    """Whether ``request`` carries ``key`` (``X-API-Key``, or ``Authorization: Bearer``)."""
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:]
    return secrets.compare_digest(given.encode(), key.encode())


StateDep = Annotated[State, Depends(get_state)]
CapDep = Annotated[int, Depends(upload_cap)]
