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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ExceptionHandler

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


class ErrorBody(BaseModel):
    """Every error answer: what went wrong (``error``) and what to do about it (``detail``)."""

    error: str
    detail: str | None = None


_REASONS = {
    400: "A request the server cannot parse, or a Host name it does not answer to",
    401: "No API key, or a wrong one (servers started with --api-key-env)",
    403: "Not allowed: a cross-origin write, or a folder outside --allow-root",
    404: "No such run, stored image, job or backbone",
    409: "A conflict: the run name is taken or being trained, or the store is locked",
    413: "An upload or request over the size limits",
    422: "Bad input: an option out of range, a file that is not an image, no images or ids",
    429: "The job queue is full; try again later",
    503: "The store and models are still being loaded",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each error status it may answer, with :class:`ErrorBody`.
    Every route may answer 400, 401, 403 (the guards) and 422."""
    return {
        c: {"model": ErrorBody, "description": _REASONS[c]}
        for c in sorted({400, 401, 403, 422, *codes})
    }


def error_response(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (what a user sees of a bug)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
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


async def _http(r: Request, e: StarletteHTTPException) -> JSONResponse:
    response = error_response(e.status_code, str(e.detail).lower(), None)
    response.headers.update(e.headers or {})
    if e.status_code == 405:  # every method the path allows (its routes may be several)
        response.headers["Allow"] = ", ".join(_allowed_methods(r))
    return response


def _allowed_methods(r: Request) -> list[str]:
    """Every method some route of the app answers on this path."""
    methods: set[str] = set()
    path = r.url.path

    def walk(routes: Any) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # an included APIRouter
            if inner is not None:
                walk(inner.routes)
            elif getattr(route, "path_regex", None) is not None and route.path_regex.match(path):
                methods.update(getattr(route, "methods", None) or ())

    walk(r.app.router.routes)
    return sorted(methods)


async def _internal(r: Request, e: Exception) -> JSONResponse:
    log.error("%s %s failed", r.method, r.url.path, exc_info=e)
    return error_response(500, "internal error", one_line(e))


_E = TypeVar("_E", bound=Exception)


def _add_handler(
    app: FastAPI, exc: type[_E], handler: Callable[[Request, _E], Awaitable[JSONResponse]]
) -> None:
    """``app.add_exception_handler``, typed: Starlette calls ``handler`` only with an ``exc``,
    but its stubs want a handler of any ``Exception``."""
    app.add_exception_handler(exc, cast(ExceptionHandler, handler))


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to its JSON answer (the table above)."""
    _add_handler(app, UserError, _user_error)
    _add_handler(app, RequestValidationError, _invalid)
    _add_handler(app, StarletteHTTPException, _http)
    _add_handler(app, Exception, _internal)
