"""The FastAPI app: the resident state, the error table, the API-key guard and the routers.

Routes live in ``service/routes/`` (one ``APIRouter`` per concern) and reach the shared state
through ``service.deps``; every exception becomes JSON in ``service.errors``.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ._state import Settings, State
from .deps import key_ok
from .errors import error_response, install_error_handlers
from .routes import ROUTERS
from .security import BrowserGuard


def create_app(settings: Settings, *, load: bool = True) -> FastAPI:
    """The service's FastAPI app over ``settings.store`` (and ``settings.runs``).

    With ``load`` the store's embeddings, backbones and runs are loaded in the background at
    start-up (``/ready`` says when); otherwise on first use.
    """
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load:
            threading.Thread(target=state.load, name="load", daemon=True).start()
        yield

    app = FastAPI(
        title="embedstore",
        description="Lookups, predictions and head training on a resident embedding store.",
        lifespan=lifespan,
        docs_url=None,  # /docs is the bundled page (routes/page.py): no third-party script
        redoc_url=None,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(_Guard, settings=settings)
    BrowserGuard(allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins).install(
        app
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    for router in ROUTERS:
        app.include_router(router)
    return app


class _Guard:
    """``/v1``: the API key (when one is set; 401) and the body size cap (413). Plain ASGI:
    Starlette's ``BaseHTTPMiddleware`` (``app.middleware("http")``) costs ~0.3 ms of CPU a
    request, as much as the rest of a ``GET /health``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.cap = int(settings.max_upload_mb * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            refusal = self.refusal(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        s = self.settings
        if s.api_key is not None and not key_ok(request, s.api_key):
            return error_response(401, "unauthorized", "give the API key in the X-API-Key header")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.cap:
            return error_response(
                413, "upload too large", f"at most {s.max_upload_mb:g} MB a request"
            )
        return None
