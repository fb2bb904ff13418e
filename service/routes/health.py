"""Liveness, readiness, and what the service holds: the store and its backbones."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import embedstore

from ..deps import StateDep, key_ok
from ..errors import documented, error_response

router = APIRouter()


@router.get("/health", responses=documented())
def health() -> dict[str, str]:
    """Alive."""
    return {"status": "ok"}


@router.get("/ready", responses=documented(503))
def ready(state: StateDep, request: Request) -> JSONResponse:
    """Ready once the store's embeddings, the backbones and the runs are loaded. What is
    loaded (runs, images, store version) only with the API key, where the server has one."""
    if not state.ready:
        return error_response(503, "loading", "the store and models are being loaded")
    key = state.settings.api_key
    if key is not None and not key_ok(request, key):
        return JSONResponse({"ready": True})
    r = state.resident()
    return JSONResponse(
        {"ready": True, "store_version": r.version, "images": len(r.ids), "runs": state.run_names()}
    )


@router.get("/v1/store", responses=documented())
def store_info(state: StateDep) -> dict[str, Any]:
    """What ``embedstore info --json`` says."""
    return state.store.info().to_dict()


@router.get("/v1/backbones", responses=documented())
def backbones(state: StateDep) -> dict[str, Any]:
    """The store's embedding columns (whether their model is loaded, with which runtime, and
    the forward passes and images it has run since start: uploads share forward passes;
    ``text_tower``: the kind of their text tower, for ``/v1/search``, or None with
    ``no_text_tower`` saying why, in one line) and the registry."""
    cols = [
        {
            "name": i.backbone,
            "column": i.column,
            "dim": i.dim,
            "dtype": i.dtype,
            "source": i.describe.get("source"),
            "loaded": i.column in state.backbones,
            "runtime": state.backbone_runtime(i.column),
            **state.backbone_counts(i.column),
            **_text_tower(i),
        }
        for i in state.store.embeddings_info().values()
    ]
    return {"store": cols, "registered": embedstore.list_backbones()}


def _text_tower(info: Any) -> dict[str, str | None]:
    """``text_tower`` (its kind) and ``no_text_tower`` (the one-line reason when there is none),
    from the column's description: a tower is not loaded until a search uses it."""
    try:
        tower = embedstore.backbones.text_tower(info)
    except embedstore.BackboneError as e:
        return {"text_tower": None, "no_text_tower": str(e)}
    return {"text_tower": tower.kind, "no_text_tower": None}
