"""Exceptions to HTTP answers, in one place: every error is JSON ``{"error", "detail"}``.

Only a :class:`~embedstore.errors.UserError` is the caller's fault; it carries its own status:

=====================================  ======  ==================
exception                              status  ``error``
=====================================  ======  ==================
``BadInput`` (StoreError, HeadsError,  422     bad input
ImageError, IngestError ...)
:class:`InvalidRequest`                422     invalid request
request body fails its schema          422     invalid request
``NotFound`` (run, id, job, backbone)  404     not found
``Conflict`` (a run name taken)        409     conflict
:class:`Forbidden`                     403     forbidden
:class:`TooLarge`                      413     upload too large
:class:`QueueFull`                     429     job queue full
no or a wrong API key (middleware)     401     unauthorized
an unknown route / method (Starlette)  404/405 its reason
anything else: a bug                   500     internal error
=====================================  ======  ==================

A 500 answers one line (the exception's type and first line) and logs the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedstore.errors import BadInput, UserError

log = logging.getLogger("embedstore.service")


class InvalidRequest(BadInput):
    """A request the service cannot read or whose options are out of range."""

    error = "invalid request"


class Forbidden(UserError):
    """Asking for something this service was not allowed to do (a folder outside --allow-root)."""

    http_status = 403
    error = "forbidden"


class TooLarge(UserError):
    """An upload over ``--max-upload-mb``."""

    http_status = 413
    error = "upload too large"


class QueueFull(UserError):
    """No room for another job; try again later."""

    http_status = 429
    error = "job queue full"


def error_response(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (what a user sees of a bug)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def describe(errors: list[dict[str, Any]]) -> str:
    """pydantic's validation errors as ``option 'x': message; ...``."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"option '{loc}': {e.get('msg')}")
    return "; ".join(parts)


async def _user_error(_r: Request, e: UserError) -> JSONResponse:
    return error_response(e.http_status, e.error, str(e))


async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid request", describe(e.errors()))


async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
    return error_response(e.status_code, str(e.detail).lower(), None)


async def _internal(r: Request, e: Exception) -> JSONResponse:
    log.error("%s %s failed", r.method, r.url.path, exc_info=e)
    return error_response(500, "internal error", one_line(e))


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to its JSON answer (the table above)."""
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)
