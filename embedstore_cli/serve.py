"""``embedstore serve``: the HTTP service (``service``, imported only here: FastAPI is not
light)."""

from __future__ import annotations

import os
from typing import Any

import click

import embedstore
from embedstore_cli._common import (
    CliUserError,
    device_option,
    options,
    runtime_option,
    store_option,
)

# Where ``embedstore serve`` listens and what it allows.
SERVE_OPTIONS = options(
    click.option(
        "--runs", default=None, help="Folder of runs and ensembles to serve (and train into)."
    ),
    click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
    click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=8000,
        show_default=True,
        help="Port to listen on.",
    ),
    device_option,
    click.option(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="Environment variable holding the API key every /v1 route then requires "
        "(required to bind an address other than loopback).",
    ),
    click.option(
        "--max-upload-mb",
        type=click.FloatRange(0, min_open=True),
        default=20.0,
        show_default=True,
        help="Largest request body accepted (413 above).",
    ),
    click.option(
        "--max-batch",
        type=click.IntRange(1),
        default=32,
        show_default=True,
        help="Most images embedded in one forward pass (dynamic batching).",
    ),
    click.option(
        "--max-wait-ms",
        type=click.FloatRange(0),
        default=5.0,
        show_default=True,
        help="Longest a request waits for others to share its forward pass.",
    ),
    click.option(
        "--forwards",
        type=click.IntRange(1),
        default=2,
        show_default=True,
        help="Backbone forward passes in flight at once, each on cores/N ONNX Runtime threads "
        "(2 on 2 busy cores: 1.5-2x the uploads a second of 1, at the same latency alone).",
    ),
    click.option(
        "--max-jobs",
        type=click.IntRange(1),
        default=8,
        show_default=True,
        help="Training/ingest jobs that may wait in the queue (429 above).",
    ),
    click.option(
        "--allow-root",
        default=None,
        help="Server-side folder under which POST /v1/ingest may read.",
    ),
    runtime_option,
    click.option(
        "--allowed-host",
        "allowed_hosts",
        multiple=True,
        metavar="NAME",
        help="A Host name the service answers to besides the loopback names (repeatable; "
        "a loopback bind answers 127.0.0.1, localhost and [::1] only).",
    ),
    click.option(
        "--cors-origin",
        "cors_origins",
        multiple=True,
        metavar="ORIGIN",
        help="A web origin (https://example.org) whose pages may write to the service "
        "(repeatable); pages of other origins cannot.",
    ),
)


@click.command("serve")
@store_option
@SERVE_OPTIONS
def serve_cmd(host: str, port: int, api_key_env: str | None, store: str | None, **kw: Any) -> None:
    """Serve lookups, predictions, training jobs and a species-lookup page over HTTP.

    Keeps the store's embeddings, the backbones and the runs resident; OpenAPI docs at /docs.

    \b
    Example:
      embedstore serve --store flowers --runs runs --port 8000
      curl -F images=@photo.jpg -F run=mlp localhost:8000/v1/predict
    """
    import embedstore_service as service

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise CliUserError(f"--api-key-env {api_key_env}: ${api_key_env} is empty or unset")
    hosts = kw.pop("allowed_hosts")
    if hosts:
        loopback = service.LOOPBACK_HOSTS if service.is_loopback(host) else ()
        kw["allowed_hosts"] = (*loopback, *hosts)
    kw["cors_origins"] = tuple(kw["cors_origins"])
    settings = service.Settings(store=store or embedstore.default_store_path(), api_key=key, **kw)
    service.serve(settings, host=host, port=port)
