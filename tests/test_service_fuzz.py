"""The HTTP API under a real OpenAPI fuzzer (Schemathesis, every check) against a live server.

The budget and seed are in ``tests/schemathesis.toml``; the run must end with 0 failures: no
5xx, every answer as the schema declares (status codes, bodies, headers such as ``Allow``),
every schema-valid request accepted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import embedstore
import heads
from tests.conftest import write_class_images
from tests.test_service import _free_port, _start

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_schemathesis_finds_no_failure(tmp_path, tiny_dino):
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    write_class_images(tmp_path / "imgs", n_classes=3, per_class=6, size=40)
    store, runs = tmp_path / "store", tmp_path / "runs"
    embedstore.ingest(
        tmp_path / "imgs", store, backbones=[str(tiny_dino)], workers=0, progress=False
    )
    embedstore.split(store, folds=2, seed=0)
    heads.train(store, fold=0, head="centroid", out=runs / "centroid", progress=False)
    port = _free_port()
    server = _start(store, runs, port)
    try:
        out = subprocess.run(
            [
                st,
                "--config-file",
                str(ROOT / "tests" / "schemathesis.toml"),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    finally:
        server.kill()
        server.wait()
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
