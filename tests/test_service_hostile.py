"""The service against a hostile client: names, duplicate jobs, leftovers of a killed server,
huge and strange images, non-finite settings (the numbered points of the hostile-input issue)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time

import embedstore_service as service
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import embedstore
import heads


@pytest.fixture(scope="module")
def served(photo_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-service")
    store = d / "store"
    shutil.copytree(photo_store, store)
    heads.train(store, fold=0, head="centroid", out=d / "runs" / "centroid", progress=False)
    return store, d / "runs"


def _client(store, runs, **kw) -> TestClient:
    app = service.create_app(service.Settings(store=str(store), runs=str(runs), **kw), load=False)
    return TestClient(app)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return buf.getvalue()


def test_a_run_name_is_one_safe_token(served):
    with _client(*served) as c:
        for name in ("abc\n", "../x", "a/b", ".hidden", "x" * 101, ""):
            r = c.post("/v1/train", json={"name": name, "head": "centroid"})
            assert r.status_code == 422, (name, r.text)
        assert not [p for p in served[1].iterdir() if "\n" in p.name]


def test_a_second_job_for_the_same_run_name_is_a_conflict(served):
    with _client(*served) as c:
        slow = {"name": "busy", "head": "mlp", "epochs": 400, "patience": 0}
        first = c.post("/v1/train", json=slow)
        assert first.status_code == 202, first.text
        second = c.post("/v1/train", json={"name": "busy", "head": "centroid"})
        assert second.status_code == 409 and "being trained" in second.json()["detail"]
        c.delete(f"/v1/jobs/{first.json()['id']}")
        for _ in range(600):
            if c.get(f"/v1/jobs/{first.json()['id']}").json()["status"] != "running":
                break
            time.sleep(0.1)


def test_partial_runs_of_a_killed_server_are_collected_at_start(served, tmp_path):
    store, _ = served
    runs = tmp_path / "runs"
    dead, live = 2**22 + 12345, os.getpid()  # no such process / this one
    left = [runs / f".mlp.partial-p{dead}-0123abcd"]
    kept = [runs / f".mlp.partial-p{live}-4567abcd", runs / ".mine.partial-1234abcd"]
    for p in left + kept:
        (p / "fold0").mkdir(parents=True)
    _client(store, runs)
    assert not left[0].exists()
    assert all(p.exists() for p in kept)


def test_a_run_trained_by_the_service_records_its_own_name(served, tmp_path):
    store, runs = served
    with _client(store, runs) as c:
        r = c.post("/v1/train", json={"name": "named", "head": "centroid", "fold": "all"})
        assert r.status_code == 202, r.text
        for _ in range(600):
            job = c.get(f"/v1/jobs/{r.json()['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["status"] == "done", job
        assert ".partial" not in json.dumps(job["result"])
    assert heads.runs.read_eval(runs / "named")["run"] == str(runs / "named")
    assert not [p for p in runs.iterdir() if "partial" in p.name]


def test_pseudo_label_options_arrive_through_the_train_route(served):
    """The pseudo-labelling options are fields of the train body (from heads.settings)."""
    store, runs = served
    body = {"name": "pseudo", "head": "mlp", "fold": "all", "epochs": 5, "hidden": 32}
    body |= {"pseudo_label": True, "unlabelled": "fold = -1", "fraction": 0.5, "rounds": 2}
    with _client(store, runs) as c:
        r = c.post("/v1/train", json=body)
        assert r.status_code == 202, r.text
        for _ in range(1200):
            job = c.get(f"/v1/jobs/{r.json()['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["status"] == "done", job
    rows = heads.runs.read_pseudo(runs / "pseudo")
    assert set(rows["round"]) == {1, 2} and len(rows["id"]) > 0


def test_a_1x60000_png_is_answered_fast_with_memory_flat(served):
    """162 bytes that used to cost 5 GB and 100 s: scaled only where the crop needs it."""
    store, runs = served
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with _client(store, runs) as c:
        for w, h in ((1, 60000), (60000, 1)):
            r = c.post(
                "/v1/predict",
                files=[("images", ("strip.png", _png(w, h)))],
                data={"run": "centroid"},
            )
            assert r.status_code == 200, r.text
            assert r.json()[0]["label"]
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, grown_mib


def test_json_numbers_must_be_finite(served):
    with _client(*served) as c:
        for body in ('{"name": "x1", "lr": 1e309}', '{"name": "x1", "dropout": NaN}'):
            r = c.post("/v1/train", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
        assert not (served[1] / "x1").exists()


def test_the_store_is_unchanged_by_refused_uploads(served):
    store, runs = served
    uploads = store / "uploads"
    before = sorted(uploads.rglob("*")) if uploads.exists() else []
    n = embedstore.connect(store).count()
    with _client(store, runs) as c:
        good = _png(40, 40)
        for files in (
            [("images", ("a.jpg", b"not an image"))],
            [("images", ("ok.png", good)), ("images", ("a.jpg", b"GIF89a"))],
        ):
            r = c.post("/v1/images", files=files)
            assert r.status_code == 422, r.text
            assert str(store) not in r.json()["detail"]  # no server path in the answer
            assert "a.jpg" in r.json()["detail"]
    assert embedstore.connect(store).count() == n
    after = sorted(uploads.rglob("*")) if uploads.exists() else []
    assert after == before


def test_random_bytes_never_crash_the_predictor(served):
    rng = np.random.default_rng(0)
    with _client(*served) as c:
        for size in (0, 1, 17, 4096):
            r = c.post(
                "/v1/predict",
                files=[("images", ("r.bin", rng.bytes(size)))],
                data={"run": "centroid"},
            )
            assert r.status_code == 422, r.text


def test_uploads_a_killed_server_never_committed_are_collected_at_start(served, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(served[0], store)
    with _client(store, served[1]) as c:
        r = c.post("/v1/images", files=[("images", ("ok.png", _png(40, 41)))], data={"label": "a"})
        assert r.status_code == 201, r.text
    committed = sorted((store / "uploads").iterdir())
    orphan = store / "uploads" / "20261207-000000-deadbeef"
    orphan.mkdir()
    (orphan / "x.png").write_bytes(_png(40, 42))
    _client(store, served[1])
    assert not orphan.exists()
    assert sorted((store / "uploads").iterdir()) == committed


def test_allow_root_never_follows_a_link_out_of_it(served, tmp_path):
    store, runs = served
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    (allowed / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "x.png").write_bytes(_png(40, 40))
    (allowed / "sub" / "x.png").symlink_to(elsewhere / "x.png")
    with _client(store, runs, allow_root=str(allowed)) as c:
        r = c.post("/v1/ingest", json={"folder": str(allowed)})
        assert r.status_code == 403 and "sub/x.png: a link out of the allowed root" in r.text
        (allowed / "sub" / "x.png").unlink()
        (allowed / "sub" / "y.png").symlink_to(elsewhere)  # a folder link, too
        r = c.post("/v1/ingest", json={"folder": str(allowed)})
        assert r.status_code == 403, r.text


def test_train_options_are_checked_before_the_job_is_queued(served):
    with _client(*served) as c:
        cases = [
            ({"fold": 99}, "fold': 99 does not exist"),
            ({"metadata": ["no_such_column"]}, "no column no_such_column"),
            ({"device": "cuda:7"}, "cuda"),
            ({"hidden": 10**9}, "option 'hidden'"),
            ({"head": "mlp", "k": 5}, "--k do not apply to head 'mlp'"),
            ({"lr": 1000.0}, "option 'lr'"),
            ({"pseudo_label": True}, "option 'pseudo_label' needs fold 'all'"),
            ({"fold": "all", "fraction": 1.5}, "option 'fraction'"),
        ]
        for extra, text in cases:
            r = c.post("/v1/train", json={"name": "checked", **extra})
            assert r.status_code == 422 and text in r.json()["detail"], (extra, r.text)
        raw = '{"name": "checked", "lr": 1e309}'  # inf, as a hostile client writes it
        r = c.post("/v1/train", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "option 'lr'" in r.json()["detail"], r.text
        assert c.get("/v1/jobs").json() == []


def test_a_diverging_training_stops_with_a_clear_error_and_no_run(photo_store, tmp_path):
    with pytest.raises(heads.HeadsError, match="training diverged in epoch"):
        heads.train(
            photo_store, fold=0, head="mlp", lr=1e30, epochs=3, out=tmp_path / "x", progress=False
        )
    assert not (tmp_path / "x").exists()


def test_scores_with_nan_are_never_counted_right():
    from heads._metrics import classification_report, topk_accuracy

    y = np.array([0, 1, 2, 0])
    s = np.eye(3)[y].astype(float)
    s[1:] = np.nan  # three rows of nan logits: an argmax would say class 0
    assert topk_accuracy(y, s, 1) == 0.25 and topk_accuracy(y, s, 3) == 0.25
    report = classification_report(y, s)
    assert report["top1"] == 0.25 and report["mean_class_acc"] < 0.5


def test_the_command_line_refuses_non_finite_numbers(photo_store):
    from click.testing import CliRunner

    from cli import heads_cli

    for value in ("inf", "nan", "-1e999"):
        r = CliRunner().invoke(heads_cli, ["train", "--store", str(photo_store), "--lr", value])
        assert r.exit_code == 2 and "--lr" in r.output, (value, r.output)


def test_ready_tells_what_is_loaded_only_with_the_key(served):
    store, runs = served
    with _client(store, runs, api_key="s3cret") as c:
        c.app.state.service.load()
        bare = c.get("/ready")
        assert bare.status_code == 200 and bare.json() == {"ready": True}
        full = c.get("/ready", headers={"X-API-Key": "s3cret"}).json()
        assert "centroid" in full["runs"] and full["images"] > 0


def test_the_schema_says_what_each_route_takes_and_answers(served):
    with _client(*served) as c:
        spec = c.get("/openapi.json").json()
        predict = spec["paths"]["/v1/predict"]["post"]
        assert set(predict["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
        assert {"404", "413", "422"} <= set(predict["responses"])
        detail = spec["components"]["schemas"]["ErrorBody"]["properties"]["detail"]
        assert {"type": "string"} in detail["anyOf"]
        r = c.request("PUT", "/v1/jobs/0")
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}
        assert c.get("/docs").status_code == 200 and c.get("/redoc").status_code == 404


def test_uploads_come_back_by_their_file_names(served):
    with _client(*served) as c:
        files = [("images", ("my daisy.png", _png(40, 43)))]
        p = c.post("/v1/predict", files=files, data={"run": "centroid"}).json()
        assert p[0]["path"] == "my daisy.png"
        q = c.post("/v1/lookup", files=files, data={"k": "2"}).json()
        assert q[0]["query"] == "my daisy.png" and len(q[0]["query_id"]) == 64
