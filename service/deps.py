"""What routes share, as FastAPI dependencies: the resident :class:`State` and the upload cap.

``create_app`` keeps one ``State`` on ``app.state.service``; a route asks for it with a
``StateDep`` parameter (``def runs(state: StateDep)``) instead of closing over it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service._state import State


def get_state(request: Request) -> State:
    return request.app.state.service


def upload_cap(request: Request) -> int:
    """The largest request body or uploaded file accepted, in bytes (``--max-upload-mb``)."""
    return int(request.app.state.service.settings.max_upload_mb * 1024 * 1024)


StateDep = Annotated[State, Depends(get_state)]
CapDep = Annotated[int, Depends(upload_cap)]
