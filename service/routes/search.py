"""Stored images found by words (the column's text tower), or by words and an image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

import embedstore
from embedstore.errors import BadInput

from ..deps import CapDep, StateDep
from ..errors import documented
from ..schemas import SearchBody, read_body, request_body

router = APIRouter()


@router.post(
    "/v1/search",
    responses=documented(404, 413),
    openapi_extra=request_body(SearchBody, images_or_ids=False, max_images=1),
)
async def search(request: Request, state: StateDep, cap: CapDep) -> list[dict[str, Any]]:
    """Stored images that best match ``text``, through the text tower of the image column
    (``backbone``; CLIP, SigLIP ...): what ``embedstore search --json`` gives, each neighbour
    with a ``thumbnail`` URL. With one image (multipart ``images``) or one stored id (``ids``),
    the text and the image are blended, ``weight`` being the text's share. A column without a
    text tower is a 422 naming the backbones that have one."""
    body, files, names = await read_body(request, SearchBody, cap)
    if len(files) + len(body.ids) > 1:
        raise BadInput(
            "give at most one image to blend with the text: one upload ('images') or one "
            "stored id ('ids')"
        )
    state.check_ids(body.ids)
    info = state.embedding_info(body.backbone)
    tower = state.text_tower(info)  # no text tower: the one-line 422, before any work
    image = files[0] if files else (body.ids[0] if body.ids else None)
    res = await run_in_threadpool(
        embedstore.search_text,
        state.store,
        body.text,
        image=image,
        weight=body.weight,
        k=body.k,
        backbone=info.backbone,
        where=body.where,
        device=state.device,
        resident=state.resident(),
        tower=tower,
        backbones=state.lazy_backbones([info.column]),
    )
    out = [q.to_dict() for q in res.results]
    for d in out:
        if files:  # an upload by its file name, not "upload 0"
            d["image"] = names[0]
        for nb in d["neighbors"]:
            nb["thumbnail"] = f"/v1/images/{nb['id']}/thumbnail"
    return out
