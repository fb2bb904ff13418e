"""The HTTP routes: thin skins over the library (validate, call one function, map errors).

Every error is JSON ``{"error": ..., "detail": ...}``: bad input 422 (naming the option), an
unknown run / id / backbone / job 404, an upload over the cap 413, a full job queue 429, a
missing or wrong API key 401. Library errors are mapped to codes here, in one place.
"""

from __future__ import annotations

import io
import secrets
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

import embedstore
import heads
from embedstore.types import check_device
from heads.types import CLASS_WEIGHTS, SAMPLERS
from service._jobs import QueueFull
from service._state import NotFound, Settings, State

STATIC = Path(__file__).parent / "static"
_BAD_INPUT = (
    embedstore.StoreError,
    embedstore.ingestion.ImageError,
    embedstore.IngestError,
    embedstore.store.MetadataError,
    embedstore.BackboneError,
    heads.HeadsError,
    ValueError,
)


# library and service exceptions -> (HTTP status, error), in one place
_STATUS: dict[type[Exception], tuple[int, str]] = {
    NotFound: (404, "not found"),
    QueueFull: (429, "job queue full"),
    PermissionError: (403, "forbidden"),
    FileExistsError: (409, "conflict"),
    **{exc: (422, "bad input") for exc in _BAD_INPUT},
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


# ---------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictBody(_Body):
    run: str
    ids: list[str] = Field(default_factory=list)
    top_k: int = Field(5, ge=1, le=1000)
    prior: str | None = Field(None, pattern="^uniform$")


class LookupBody(_Body):
    ids: list[str] = Field(default_factory=list)
    k: int = Field(10, ge=1, le=1000)
    backbone: str | None = None
    where: str | None = None


class TrainBody(_Body):
    name: str
    overwrite: bool = False
    fold: int | str = 0
    backbone: str | None = None
    head: str = "mlp"
    metadata: list[str] = Field(default_factory=list)
    aux_targets: list[str] = Field(default_factory=list)
    unknown: str | None = None
    unknown_label: str = "unknown"
    where: str | None = None
    hidden: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0, le=1)
    loss: str | None = None
    label_smoothing: float | None = Field(None, ge=0, le=1)
    class_weights: str | None = None
    sampler: str | None = None
    aux_alpha: float | None = None
    epochs: int | None = Field(None, ge=1, le=10_000)
    patience: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    k: int | None = Field(None, ge=1)
    seed: int | None = None
    device: str | None = None


class IngestBody(_Body):
    folder: str


# ---------------------------------------------------------------------- the app


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
    )
    app.state.service = state
    cap = int(settings.max_upload_mb * 1024 * 1024)

    # ------------------------------------------------------------------ errors, in one place

    def _json(status: int, error: str, detail: Any = None) -> JSONResponse:
        return JSONResponse({"error": error, "detail": detail}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, e: ApiError) -> JSONResponse:
        return _json(e.status, e.error, e.detail)

    for exc, (status, error) in _STATUS.items():

        @app.exception_handler(exc)
        async def _mapped(_r: Request, e: Exception, status=status, error=error) -> JSONResponse:
            return _json(status, error, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        return _json(422, "invalid request", _describe(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        return _json(e.status_code, str(e.detail).lower(), None)

    @app.exception_handler(Exception)
    async def _internal(_r: Request, e: Exception) -> JSONResponse:
        return _json(500, "internal error", type(e).__name__)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if request.url.path.startswith("/v1"):
            if settings.api_key is not None:
                given = request.headers.get("x-api-key") or ""
                auth = request.headers.get("authorization") or ""
                if auth.lower().startswith("bearer "):
                    given = given or auth[7:]
                if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
                    return _json(401, "unauthorized", "give the API key in the X-API-Key header")
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > cap:
                return _json(
                    413, "upload too large", f"at most {settings.max_upload_mb:g} MB a request"
                )
        return await call_next(request)

    # ------------------------------------------------------------------ health and state

    @app.get("/health")
    def health() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """Ready once the store's embeddings, the backbones and the runs are loaded."""
        if not state.ready:
            return _json(503, "loading", "the store and models are being loaded")
        r = state.resident()
        return JSONResponse(
            {
                "ready": True,
                "store_version": r.version,
                "images": len(r.ids),
                "runs": state.run_names(),
            }
        )

    @app.get("/v1/store")
    def store_info() -> dict[str, Any]:
        """What ``embedstore info --json`` says."""
        return state.store.info().to_dict()

    @app.get("/v1/backbones")
    def backbones() -> dict[str, Any]:
        """The store's embedding columns (whether their model is loaded, and with which runtime)
        and the registry."""
        cols = [
            {
                "name": i.backbone,
                "column": i.column,
                "dim": i.dim,
                "dtype": i.dtype,
                "source": i.describe.get("source"),
                "loaded": i.column in state.backbones,
                "runtime": state.backbone_runtime(i.column),
            }
            for i in state.store.embeddings_info().values()
        ]
        return {"store": cols, "registered": embedstore.list_backbones()}

    @app.get("/v1/runs")
    def runs() -> list[dict[str, Any]]:
        """The runs and ensembles under ``--runs``."""
        return [state.run_summary(n) for n in state.run_names()]

    @app.get("/v1/runs/{name}")
    def run(name: str) -> dict[str, Any]:
        """One run: classes, head, its evaluation's metrics."""
        return state.run_summary(name)

    # ------------------------------------------------------------------ predict and lookup

    @app.post("/v1/predict")
    async def predict(request: Request) -> list[dict[str, Any]]:
        """Labels for uploaded images (multipart ``images``) and/or stored ``ids``: what
        ``heads predict --json`` gives. Multipart fields or a JSON body: ``run``, ``ids``,
        ``top_k``, ``prior`` (``uniform``)."""
        body, files = await _read(request, PredictBody, cap)
        model = state.run(body.run)
        if not files and not body.ids:
            raise ApiError(422, "bad input", "give images (multipart 'images') or stored 'ids'")
        res = await _in_thread(
            heads.predict,
            model,
            files,
            ids=body.ids,
            top_k=body.top_k,
            prior=body.prior,
            backbones=_backbones_for(model),
            resident=state.resident(),
        )
        return [r.to_dict() for r in res]

    @app.post("/v1/lookup")
    async def lookup(request: Request) -> list[dict[str, Any]]:
        """Nearest stored images to uploaded images and/or stored ``ids``: what
        ``embedstore lookup --json`` gives, each neighbour with a ``thumbnail`` URL."""
        body, files = await _read(request, LookupBody, cap)
        if not files and not body.ids:
            raise ApiError(422, "bad input", "give images (multipart 'images') or stored 'ids'")
        info = _backbone_info(body.backbone)
        res = await _in_thread(
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
        out = []
        for q in res.results:
            d = q.to_dict()
            if isinstance(d["query"], bytes) or d["query"].startswith("upload "):
                d["query"] = d["query_id"]
            for nb in d["neighbors"]:
                nb["thumbnail"] = f"/v1/images/{nb['id']}/thumbnail"
            out.append(d)
        return out

    @app.get("/v1/images/{image_id}/thumbnail")
    def thumbnail(image_id: str, size: int = 160) -> Response:
        """A JPEG of a stored image, found by its id only."""
        if not 16 <= size <= 1024:
            raise ApiError(422, "invalid request", "option 'size': between 16 and 1024")
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

    # ------------------------------------------------------------------ writes and jobs

    @app.post("/v1/images")
    async def add_images(request: Request) -> JSONResponse:
        """Add uploaded images (multipart ``images``; optional ``label`` and other fields as
        metadata for all of them) with the same content-hash identity as ingest. Answers once
        they are committed: searchable at once."""
        form = await request.form(max_part_size=cap)
        files = await _files(form, cap)
        if not files:
            raise ApiError(422, "bad input", "give images (multipart 'images')")
        fields = {
            k: v for k, v in form.multi_items() if not isinstance(v, UploadFile) and k != "images"
        }
        label = fields.pop("label", None)
        res = await _in_thread(_add, files, label, fields)
        return JSONResponse(res, status_code=201)

    def _add(files: list[bytes], label: str | None, fields: dict[str, str]) -> dict[str, Any]:
        with state.write_lock:
            res = embedstore.add_images(
                state.store,
                files,
                labels=[label] * len(files),
                metadata=[dict(fields) for _ in files],
                backbone_objects=state.raw_backbones() or None,
            )
        return res.to_dict()

    @app.post("/v1/train", status_code=202)
    def train(body: TrainBody) -> dict[str, Any]:
        """Train a head on the resident store (the ``heads train`` options, and ``name``: the run's
        folder under ``--runs``). Answers 202 with a job id at once; poll ``/v1/jobs/{id}``."""
        opts = body.model_dump(exclude_none=True, exclude={"name", "overwrite"})
        _check_train_options(opts)
        if "label_smoothing" in opts:
            opts["loss_kwargs"] = {"label_smoothing": opts.pop("label_smoothing")}
        job = state.train_job(body.name, opts, overwrite=body.overwrite)
        return job.to_dict()

    @app.post("/v1/ingest", status_code=202)
    def ingest(body: IngestBody) -> dict[str, Any]:
        """Ingest a server-side folder as a job (only under ``--allow-root``)."""
        return state.ingest_job(body.folder).to_dict()

    @app.get("/v1/jobs")
    def jobs() -> list[dict[str, Any]]:
        return [j.to_dict() for j in state.jobs.list()]

    @app.get("/v1/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        """queued / running / done / failed / cancelled, progress, and the result."""
        return _job(job_id).to_dict()

    @app.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one at its next checkpoint."""
        return state.jobs.cancel(_job(job_id)).to_dict()

    def _job(job_id: str):
        j = state.jobs.get(job_id)
        if j is None:
            raise NotFound(f"no job {job_id!r}")
        return j

    # ------------------------------------------------------------------ helpers

    def _backbone_info(name: str | None) -> embedstore.store.EmbeddingInfo:
        try:
            return state.store.resolve_backbone(name)
        except embedstore.StoreError as e:
            if name is None:
                raise
            raise NotFound(str(e)) from e

    def _backbones_for(model: Any) -> dict[str, Any]:
        return state.lazy_backbones(list(model.backbone_columns()))

    # ------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


# ---------------------------------------------------------------------- request parsing


async def _read(
    request: Request, model: type[BaseModel], cap: int
) -> tuple[BaseModel, list[bytes]]:
    """A JSON body, or multipart form fields and ``images`` files, as ``model`` and the files."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("application/json"):
            return model.model_validate(await request.json()), []
        form = await request.form(max_part_size=cap)
        files = await _files(form, cap)
        data: dict[str, Any] = {}
        for k, v in form.multi_items():
            if isinstance(v, UploadFile) or k == "images":
                continue
            if k == "ids":
                data.setdefault("ids", []).extend(x for x in v.replace(",", " ").split() if x)
            else:
                data[k] = v
        return model.model_validate(data), files
    except ValidationError as e:
        raise ApiError(422, "invalid request", _describe(e.errors())) from None
    except ValueError as e:  # not JSON, or a broken multipart body
        raise ApiError(422, "invalid request", f"cannot read the request body: {e}") from None


async def _files(form: Any, cap: int) -> list[bytes]:
    out = []
    for _, v in form.multi_items():
        if isinstance(v, UploadFile):
            data = await v.read()
            if len(data) > cap:
                raise ApiError(413, "upload too large", f"{v.filename}: over {cap // 2**20} MB")
            out.append(data)
    return out


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"option '{loc}': {e.get('msg')}")
    return "; ".join(parts)


def _check_train_options(opts: dict[str, Any]) -> None:
    checks = {
        "head": heads.list_heads(),
        "loss": heads.list_losses(),
        "unknown": heads.list_detectors(),
        "class_weights": CLASS_WEIGHTS,
        "sampler": SAMPLERS,
    }
    for k, valid in checks.items():
        if k in opts and opts[k] not in valid:
            raise ApiError(
                422,
                "invalid request",
                f"option '{k}': {opts[k]!r} is not one of {', '.join(valid)}",
            )
    if "device" in opts:
        try:
            check_device(opts["device"])
        except ValueError as e:
            raise ApiError(422, "invalid request", f"option 'device': {e}") from None


async def _in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    return await run_in_threadpool(fn, *args, **kw)
