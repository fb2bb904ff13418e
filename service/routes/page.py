"""The pages: the species lookup at ``/``, the API reference at ``/docs``, and their static
files (no build step, no third-party script: the pages' CSP allows this origin alone)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from embedstore.errors import NotFound

STATIC = Path(__file__).resolve().parents[1] / "static"
# the files served under /static/, with their exact content types
_FILES = {
    "dom.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


@router.get("/docs", include_in_schema=False)
def docs() -> FileResponse:
    """The routes, read from ``/openapi.json`` by the page's own script."""
    return FileResponse(STATIC / "docs.html", media_type="text/html; charset=utf-8")


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    if name not in _FILES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=_FILES[name])
