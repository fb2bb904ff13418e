"""The service's routes, one ``APIRouter`` per concern; ``create_app`` includes ``ROUTERS``."""

from __future__ import annotations

from . import health, images, page, predict, runs, search

ROUTERS = [
    health.router,
    predict.router,
    search.router,
    images.router,
    runs.router,
    page.router,
]

__all__ = ["ROUTERS"]
