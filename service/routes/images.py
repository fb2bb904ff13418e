"""Stored images: thumbnails, adding uploads, and ingesting a server-side folder."""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

import embedstore
from embedstore.errors import BadInput, NotFound

from ..deps import CapDep, StateDep
from ..errors import documented
from ..schemas import IngestBody, form_limits, read_files, upload_body, upload_names

router = APIRouter()


@router.get(
    "/v1/images/{image_id}/thumbnail",
    responses={**documented(404), 200: {"content": {"image/jpeg": {}}}},
    response_class=Response,
)
def thumbnail(
    image_id: str, state: StateDep, size: Annotated[int, Query(ge=16, le=1024)] = 160
) -> Response:
    """A JPEG of a stored image, found by its id only."""
    path = state.store.image_file(image_id)
    if path is None:
        raise NotFound(f"no stored image has id {image_id!r}")
    (q,) = embedstore.read_inputs([str(path)])
    try:
        if q.error:
            raise embedstore.ingestion.ImageError(q.error)
        im = embedstore.ingestion.decode_image(q.data)
    except embedstore.ingestion.ImageError as e:
        raise NotFound(f"the stored image {image_id} cannot be read now: {e}") from e
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return Response(buf.getvalue(), media_type="image/jpeg")


@router.post(
    "/v1/images",
    status_code=201,
    responses=documented(409, 413),
    openapi_extra=upload_body(),
)
async def add_images(request: Request, state: StateDep, cap: CapDep) -> JSONResponse:
    """Add uploaded images (multipart ``images``; optional ``label`` and other fields as
    metadata for all of them) with the same content-hash identity as ingest. Answers once
    they are committed: searchable at once."""
    form = await request.form(**form_limits(cap))
    files = await read_files(form, cap)
    if not files:
        raise BadInput("give images (multipart 'images')")
    fields = {
        k: v for k, v in form.multi_items() if not isinstance(v, UploadFile) and k != "images"
    }
    label = fields.pop("label", None)
    names = upload_names(form)
    res = await run_in_threadpool(state.add_images, files, label, fields, names)
    return JSONResponse(res.to_dict(), status_code=201)


@router.post("/v1/ingest", status_code=202, responses=documented(404, 409, 429))
def ingest(body: IngestBody, state: StateDep) -> dict[str, Any]:
    """Ingest a server-side folder as a job (only under ``--allow-root``)."""
    return state.ingest_job(body.folder).to_dict()
