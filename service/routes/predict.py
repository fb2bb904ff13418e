"""Predictions and lookups for uploaded images and stored ids."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

import embedstore
import heads
from embedstore.errors import BadInput

from ..deps import CapDep, StateDep
from ..errors import documented
from ..schemas import LookupBody, PredictBody, read_body, request_body

router = APIRouter()
_NOTHING = "give images (multipart 'images') or stored 'ids'"


@router.post("/v1/predict", responses=documented(404, 413), openapi_extra=request_body(PredictBody))
async def predict(request: Request, state: StateDep, cap: CapDep) -> list[dict[str, Any]]:
    """Labels for uploaded images (multipart ``images``) and/or stored ``ids``: what
    ``heads predict --json`` gives. Multipart fields or a JSON body: ``run``, ``ids``,
    ``top_k``, ``prior`` (``uniform``); local priors ``species_list``, ``prior_by`` and
    ``place`` (the answer keeps the unconstrained top-1 and flags ``unusual_here``);
    ``coverage``, ``set_score`` and ``calibrate_on`` for each image's prediction ``set``;
    ``fallback`` (answers at the finest confident rank of the store's taxonomy)."""
    body, files, names = await read_body(request, PredictBody, cap)
    model = state.run(body.run)
    if not files and not body.ids:
        raise BadInput(_NOTHING)
    state.check_ids(body.ids)
    images: list[str | os.PathLike[Any] | bytes] = list(files)  # heads.predict takes a list
    res = await run_in_threadpool(
        heads.predict,
        model,
        images,
        ids=body.ids,
        top_k=body.top_k,
        prior=body.prior,
        fallback=body.fallback,
        species_list=body.species_list,
        prior_by=body.prior_by,
        place=body.place,
        coverage=body.coverage,
        set_score=body.set_score,
        calibrate_on=body.calibrate_on,
        backbones=state.lazy_backbones(list(model.backbone_columns())),
        resident=state.resident(),
    )
    # one rule on every route: an upload that is not a usable image fails the request (422)
    bad = [f"{names[i]}: {r.error}" for i, r in enumerate(res[: len(files)]) if r.error]
    if bad:
        raise BadInput("; ".join(bad))
    out = [r.to_dict() for r in res]
    for d, name in zip(out, names, strict=False):  # uploads by their file name, not "upload 0"
        d["path"] = name
    return out


@router.post("/v1/lookup", responses=documented(404, 413), openapi_extra=request_body(LookupBody))
async def lookup(request: Request, state: StateDep, cap: CapDep) -> list[dict[str, Any]]:
    """Nearest stored images to uploaded images and/or stored ``ids``: what
    ``embedstore lookup --json`` gives, each neighbour with a ``thumbnail`` URL."""
    body, files, names = await read_body(request, LookupBody, cap)
    if not files and not body.ids:
        raise BadInput(_NOTHING)
    state.check_ids(body.ids)
    info = state.embedding_info(body.backbone)
    res = await run_in_threadpool(
        embedstore.lookup,
        state.store,
        [*files, *body.ids],
        k=body.k,
        backbone=info.backbone,
        where=body.where,
        device=state.device,
        resident=state.resident(),
        backbones=state.lazy_backbones([info.column]),
    )
    out = [_with_thumbnails(q.to_dict()) for q in res.results]
    for d, name in zip(out, names, strict=False):  # uploads by their file name
        d["query"] = name
    return out


def _with_thumbnails(d: dict[str, Any]) -> dict[str, Any]:
    """An upload is named by its id (not its bytes); each neighbour gets its thumbnail URL."""
    if isinstance(d["query"], bytes) or d["query"].startswith("upload "):
        d["query"] = d["query_id"]
    for nb in d["neighbors"]:
        nb["thumbnail"] = f"/v1/images/{nb['id']}/thumbnail"
    return d
