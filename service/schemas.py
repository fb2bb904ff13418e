"""Request bodies (pydantic), and how a JSON or multipart request becomes one.

Predict, lookup and search take either a JSON body or multipart form fields with ``images``
files; both are validated by the same model, so an unknown or out-of-range option is refused
alike.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
)
from starlette.datastructures import UploadFile

import heads
from embedstore.errors import UserError
from embedstore.types import DEVICE_PATTERN, TEXT_WEIGHT
from heads.settings import PSEUDO_SETTINGS, SETTINGS, Setting, head_options
from heads.types import SET_SCORES

from .errors import InvalidRequest, TooLarge, describe


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# A run's name: one safe token (the service's run folders)
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Most stored ids and uploaded files one request may name (413 above): a request's work stays
# bounded (20,000 ids took 11 s, 1,000 files 37 s before).
MAX_IDS = 1000
MAX_FILES = 100
# A stored image's id: the SHA-256 of its bytes. Ids are ids: never paths on the server.
ID_PATTERN = "^[0-9a-fA-F]{64}$"
Ids = Annotated[
    list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]], Field(max_length=MAX_IDS)
]


# A species list: labels (or label -> weight), at most this many; in a multipart form, labels
# separated by commas or new lines (the field may repeat).
MAX_SPECIES = 100_000
Label = Annotated[str, StringConstraints(min_length=1, max_length=500)]
SpeciesList = (
    Annotated[list[Label], Field(max_length=MAX_SPECIES)]
    | Annotated[dict[Label, Annotated[float, Field(ge=0)]], Field(max_length=MAX_SPECIES)]
)


class PredictBody(_Body):
    run: str
    ids: Ids = Field(default_factory=list)
    top_k: int = Field(5, ge=1, le=1000)
    prior: str | None = Field(None, pattern="^uniform$")
    species_list: SpeciesList | None = Field(
        None,
        description="Only these labels may be the answer: a list of labels, or an object of "
        "label -> weight (labels the run does not know are skipped).",
    )
    prior_by: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None,
        description="A metadata column (e.g. country): weigh labels by how common each was at "
        "the image's value in the training rows (a stored image's own, or 'place').",
    )
    place: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="With prior_by: the value for every image (e.g. DK)."
    )
    coverage: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Add each image's prediction set, holding the true label this share of the "
        "time (e.g. 0.9; split conformal).",
    )
    set_score: Literal[SET_SCORES] = Field(  # type: ignore[valid-type]
        "lac", description="With coverage: lac (smallest sets) or aps (adaptive)."
    )
    calibrate_on: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = Field(
        None,
        description="With coverage: calibrate the sets on the store rows matching this "
        "predicate (rows the run never trained on) instead of its out-of-fold predictions.",
    )
    fallback: bool = Field(
        False,
        description="Also answer at the finest rank of the store's taxonomy whose confidence "
        "clears its threshold: rank, answer and each rank's top-1 (a run with a hierarchy).",
    )


class LookupBody(_Body):
    ids: Ids = Field(default_factory=list)
    k: int = Field(10, ge=1, le=1000)
    backbone: str | None = None
    where: str | None = None


# A text search's words: not blank, and bounded (text towers read at most 64-77 tokens)
MAX_TEXT_CHARS = 1000


class SearchBody(_Body):
    text: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")
    ] = Field(description="The words to search for, e.g. 'a photo of a daisy'.")
    ids: Annotated[
        list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]], Field(max_length=1)
    ] = Field(
        default_factory=list,
        description="A stored image to blend with the text (or upload one as 'images').",
    )
    weight: float = Field(
        TEXT_WEIGHT,
        ge=0,
        le=1,
        description="The text's share of the query with an image: 0 the image alone, 1 the "
        "text alone.",
    )
    k: int = Field(10, ge=1, le=1000)
    backbone: str | None = None
    where: str | None = None


class _TrainRun(_Body):
    """What a training job is, beside the head's settings (those come from heads.settings)."""

    name: Annotated[str, StringConstraints(pattern=RUN_NAME_PATTERN)] = Field(
        description="The run's folder under --runs: one token of letters, digits, '.', '_', '-'."
    )
    overwrite: bool = False
    fold: Annotated[int, Field(ge=0, le=1_000)] | Literal["all"] = 0
    backbone: str | None = None
    head: str = "mlp"
    metadata: list[str] = Field(default_factory=list, max_length=100)
    aux_targets: list[str] = Field(default_factory=list, max_length=100)
    unknown: str | None = None
    unknown_label: str = "unknown"
    where: str | None = None
    class_thresholds: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="With unknown: an unknown threshold per predicted class, fitted out-of-fold, "
        "for classes predicted at least this many times there (others: the global one).",
    )
    rank: str | None = Field(
        None,
        max_length=200,
        description="Train on the labels' names at this rank of the store's taxonomy.",
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    device: Annotated[str, StringConstraints(pattern=DEVICE_PATTERN.pattern)] | None = None

    def train_options(self) -> dict[str, Any]:
        """The ``heads.train`` keyword arguments this body asks for (choices checked)."""
        opts = self.model_dump(exclude_none=True, exclude={"name", "overwrite"})
        _check_train_options(opts)
        return head_options(opts)


# One value of a list or dict setting (a template, a class name, a column): a line of text.
Text = Annotated[str, StringConstraints(min_length=1, max_length=1_000)]


def _setting_field(s: Setting) -> tuple[Any, Any]:
    """A head setting as a pydantic field: its type (choices as an enum), its bounds, its help.
    A ``list`` or ``dict`` setting takes the values themselves (never a file on the server):
    ``templates``, ``classes`` as JSON arrays, ``names`` as ``{label: [name, ...]}``."""
    kind: Any = s.type
    if s.choices is not None:
        kind = Literal[s.choices]  # type: ignore[valid-type]
    elif s.type is list:
        kind = list[Text]
    elif s.type is dict:
        kind = dict[Text, Annotated[list[Text], Field(max_length=100)]]
    bounds: dict[str, Any] = s.bounds()  # ge or gt, le: keywords of Field
    return (kind | None, Field(None, description=s.help, **bounds))


# The body of POST /v1/train: the run's fields, and every head setting and pseudo-labelling
# option derived from the one declaration in heads.settings (as `heads train`'s options).
TrainBody = create_model(  # type: ignore[call-overload]
    "TrainBody",
    __base__=_TrainRun,
    **{s.name: _setting_field(s) for s in (*SETTINGS, *PSEUDO_SETTINGS)},
)


class IngestBody(_Body):
    folder: str


def _check_train_options(opts: dict[str, Any]) -> None:
    """Names the registries know (the fixed choices, bounds and the device's spelling are the
    body's own schema, from heads.settings)."""
    checks = {
        "head": heads.list_heads(),
        "loss": heads.list_losses(),
        "unknown": heads.list_detectors(),
    }
    for k, valid in checks.items():
        if k in opts and opts[k] not in valid:
            raise InvalidRequest(f"option '{k}': {opts[k]!r} is not one of {', '.join(valid)}")


# ---------------------------------------------------------------------- reading a request


async def read_body(
    request: Request, model: type[BaseModel], cap: int
) -> tuple[Any, list[bytes], list[str]]:
    """A JSON body, or multipart form fields and ``images`` files, as ``model``, the files and
    their names."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("application/json"):
            return model.model_validate(await request.json()), [], []
        form = await request.form(**form_limits(cap))
        files = await read_files(form, cap)
        return model.model_validate(form_fields(form)), files, upload_names(form)
    except ValidationError as e:
        raise InvalidRequest(describe(e.errors())) from None
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
    except UserError:  # a file over the cap: its own answer
        raise
    except ValueError as e:  # not JSON, or a broken multipart body
        raise InvalidRequest(f"cannot read the request body: {e}") from None


def upload_names(form: Any) -> list[str]:
    """The uploaded files' names, in the order :func:`read_files` reads them (for messages)."""
    return [
        v.filename or f"upload {i}"
        for i, v in enumerate(v for _, v in form.multi_items() if isinstance(v, UploadFile))
    ]


def form_limits(cap: int) -> dict[str, int]:
    """What a multipart body may hold: files of at most ``cap`` bytes, and room for one file and
    a few fields past the limits, so that our own checks answer with a clear 422."""
    return {"max_part_size": cap, "max_files": MAX_FILES + 1, "max_fields": MAX_IDS + 64}


def form_fields(form: Any) -> dict[str, Any]:
    """The form's fields other than files; ``ids`` may repeat or be comma/space separated."""
    data: dict[str, Any] = {}
    for k, v in form.multi_items():
        if isinstance(v, UploadFile) or k == "images":
            continue
        if k == "ids":
            data.setdefault("ids", []).extend(x for x in v.replace(",", " ").split() if x)
        elif k == "species_list":
            labels = (x.strip() for x in v.replace("\n", ",").split(","))
            data.setdefault("species_list", []).extend(x for x in labels if x)
        else:
            data[k] = v
    return data


async def read_files(form: Any, cap: int) -> list[bytes]:
    """The bytes of every uploaded file, each at most ``cap`` bytes, at most ``MAX_FILES``."""
    out = []
    uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if len(uploads) > MAX_FILES:
        raise InvalidRequest(f"{len(uploads)} files: at most {MAX_FILES} a request")
    for v in uploads:
        data = await v.read()
        if len(data) > cap:
            raise TooLarge(f"{v.filename}: over {cap // 2**20} MB")
        out.append(data)
    return out


# ---------------------------------------------------------------------- what OpenAPI says


def _images_field(min_items: int = 0, max_items: int = MAX_FILES) -> dict[str, Any]:
    field: dict[str, Any] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "maxItems": max_items,
        "description": "Image files (JPEG, PNG, WebP ...); a file that is not an image is "
        "refused with 422 naming it.",
    }
    if min_items:
        field["minItems"] = min_items
    return field


def request_body(
    model: type[BaseModel], *, images_or_ids: bool = True, max_images: int = MAX_FILES
) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` from a JSON body or from multipart
    form fields with ``images`` files (what :func:`read_body` accepts): with ``images_or_ids``,
    images or ids (or both) are required; otherwise they are optional (search: the text is)."""
    schema = model.model_json_schema()
    props = dict(schema["properties"])
    required = list(schema.get("required", []))
    json_schema = dict(schema)
    form: dict[str, Any] = {
        "type": "object",
        "properties": {**props, "images": _images_field(max_items=max_images)},
        "required": required,
        "additionalProperties": False,
    }
    if images_or_ids:
        json_schema["anyOf"] = [{"required": ["ids"], "properties": {"ids": {"minItems": 1}}}]
        form["anyOf"] = [
            {"required": ["images"], "properties": {"images": {"minItems": 1}}},
            {"required": ["ids"], "properties": {"ids": {"minItems": 1}}},
        ]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form},
            },
        }
    }


def upload_body() -> dict[str, Any]:
    """``openapi_extra`` of ``POST /v1/images``: files, an optional label, other fields kept as
    metadata of every file."""
    form = {
        "type": "object",
        "properties": {"images": _images_field(1), "label": {"type": "string"}},
        "required": ["images"],
        "additionalProperties": {"type": "string"},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    }
