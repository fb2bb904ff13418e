"""The HTTP service on real photos (flowers12) and a real Lance store, in-process (TestClient)
and as a real server process (kill -9 durability); the page in a real headless browser."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import embedstore_service as service
import numpy as np
import pytest
import torch
from embedstore_service._batcher import BatchedBackbone
from fastapi.testclient import TestClient
from PIL import Image

import embedstore
import heads
from embedstore.errors import Conflict
from tests.conftest import make_synthetic_store, write_class_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(flowers_store, tmp_path_factory):
    """A copy of the flowers12 store split on its train/test folders, with a centroid run."""
    d = tmp_path_factory.mktemp("service")
    store = d / "store"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=3, use_split_column=True, seed=0)
    heads.train(
        store, fold=0, head="centroid", unknown="msp", out=d / "runs" / "centroid", progress=False
    )
    return store, d / "runs"


@pytest.fixture(scope="module")
def client(served):
    store, runs = served
    app = service.create_app(service.Settings(store=str(store), runs=str(runs), max_jobs=2))
    with TestClient(app) as c:
        for _ in range(600):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        yield c


def _photo(flowers: Path, species: str, i: int = 0) -> Path:
    return sorted((flowers / "test" / species).glob("*.jpg"))[i]


def _reencoded(path: Path, quality: int = 70) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ---------------------------------------------------------------------- reading routes


def test_health_ready_store_backbones_and_runs(client, served):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["images"] == 959 and ready["runs"] == ["centroid"]
    info = client.get("/v1/store").json()
    assert info["images"] == 959 and info["classes"]["count"] == 12
    bb = client.get("/v1/backbones").json()
    assert bb["store"][0]["name"] == "efficientnet-lite0" and bb["store"][0]["loaded"]
    runs = client.get("/v1/runs").json()
    assert runs[0]["name"] == "centroid" and len(runs[0]["classes"]) == 12
    one = client.get("/v1/runs/centroid").json()
    assert one["head"] == "centroid" and one["unknown_detector"] and one["metrics"] is None
    assert (
        client.get("/docs").status_code == 200 and "/v1/predict" in client.get("/openapi.json").text
    )


def test_predict_uploads_and_stored_ids(client, flowers):
    files = [
        ("images", (f"{s}.jpg", _reencoded(_photo(flowers, s)), "image/jpeg"))
        for s in ("sunflower", "daisy", "iris")
    ]
    r = client.post("/v1/predict", files=files, data={"run": "centroid", "top_k": "3"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [o["label"] for o in out] == ["sunflower", "daisy", "iris"]
    assert all(len(o["top_k"]) == 3 and o["unknown"] in (True, False) for o in out)
    stored = embedstore.ingestion.hash_bytes(_photo(flowers, "pansy").read_bytes())
    r = client.post("/v1/predict", json={"run": "centroid", "ids": [stored], "top_k": 2})
    assert r.status_code == 200 and r.json()[0]["label"] == "pansy" and r.json()[0]["id"] == stored
    # the same as the library (what `heads predict --json` prints)
    lib = heads.predict(client.app.state.service.runs_dir / "centroid", ids=[stored], top_k=2)
    assert r.json() == [p.to_dict() for p in lib]


def test_predict_with_a_species_list_a_place_prior_and_sets(client, flowers):
    kept = ["daisy", "iris", "pansy"]
    files = [("images", ("s.jpg", _reencoded(_photo(flowers, "sunflower")), "image/jpeg"))]
    data = {"run": "centroid", "species_list": ",".join(kept), "coverage": "0.9"}
    r = client.post("/v1/predict", files=files, data=data)  # multipart: labels comma-separated
    assert r.status_code == 200, r.text
    out = r.json()[0]
    assert out["label"] in kept and {t["label"] for t in out["top_k"]} <= set(kept)
    assert out["unconstrained"]["label"] == "sunflower" and out["unusual_here"] is True
    assert set(out["set"]) <= set(kept) and out["label"] in out["set"]
    stored = embedstore.ingestion.hash_bytes(_photo(flowers, "pansy").read_bytes())
    body = {"run": "centroid", "ids": [stored], "species_list": {"pansy": 1, "iris": 0.5}}
    body |= {"prior_by": "split", "place": "test", "coverage": 0.8, "set_score": "aps"}
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    lib = heads.predict(
        client.app.state.service.runs_dir / "centroid",
        ids=[stored],
        **{k: v for k, v in body.items() if k not in ("run", "ids")},
    )
    assert r.json() == [p.to_dict() for p in lib] and r.json()[0]["label"] == "pansy"
    for bad, says in (
        ({"prior_by": "nothing"}, "has no column 'nothing'"),
        ({"calibrate_on": "fold >= 1"}, "trained the run"),
        ({"set_score": "aps"}, "give --coverage too"),
        ({"species_list": ["no-such-flower"]}, "no listed species"),
    ):
        body = {"run": "centroid", "ids": [stored], "coverage": 0.9, **bad}
        if "set_score" in bad:
            body.pop("coverage")
        r = client.post("/v1/predict", json=body)
        assert r.status_code == 422 and says in r.text, (bad, r.text)


def test_lookup_upload_gives_neighbours_with_thumbnails(client, flowers):
    photo = _photo(flowers, "buttercup", 1)
    r = client.post(
        "/v1/lookup", files=[("images", ("q.jpg", photo.read_bytes()))], data={"k": "5"}
    )
    assert r.status_code == 200, r.text
    q = r.json()[0]
    first = q["neighbors"][0]
    assert q["in_store"] and first["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert first["label"] == "buttercup" and q["vote"]["label"] == "buttercup"
    thumb = client.get(first["thumbnail"], params={"size": 96})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 96
    r = client.post("/v1/lookup", json={"ids": [first["id"]], "k": 3, "where": "label = 'daisy'"})
    assert r.status_code == 200 and {n["label"] for n in r.json()[0]["neighbors"]} == {"daisy"}


# ---------------------------------------------------------------------- bad input


def test_bad_input_gets_json_errors_never_a_traceback(client, flowers, served):
    photo = _photo(flowers, "daisy").read_bytes()
    known = embedstore.connect(served[0]).read(columns=["id"])["id"][0].as_py()
    cases = [
        (client.post("/v1/predict", json={"run": "nope", "ids": ["0" * 64]}), 404, "no run 'nope'"),
        (
            client.post("/v1/predict", json={"run": "centroid", "ids": ["0" * 64], "top_k": 0}),
            422,
            "option 'top_k'",
        ),
        (
            client.post("/v1/predict", json={"run": "centroid", "ids": ["0" * 64], "bogus": 1}),
            422,
            "option 'bogus'",
        ),
        (client.post("/v1/predict", json={"run": "centroid"}), 422, "give images"),
        (
            client.post(
                "/v1/predict",
                files=[("images", ("x.jpg", b"not an image"))],
                data={"run": "centroid"},
            ),
            422,
            "x.jpg: cannot use as a query image: not an image",
        ),
        (
            client.post(
                "/v1/predict",
                files=[("images", ("t.jpg", photo[: len(photo) // 3]))],
                data={"run": "centroid"},
            ),
            422,
            "truncated",
        ),
        (client.post("/v1/lookup", files=[("images", ("x.jpg", b"GIF89a"))]), 422, "not an image"),
        (
            client.post("/v1/lookup", json={"ids": [known], "where": "label = 'a'; DROP TABLE x"}),
            422,
            "';' is not allowed",
        ),
        (
            client.post("/v1/lookup", json={"ids": [known], "backbone": "dinov2-giant"}),
            404,
            "no embeddings for backbone",
        ),
        (client.post("/v1/lookup", json={"ids": ["f" * 64]}), 404, "no stored image has id"),
        (client.post("/v1/lookup", json={"ids": ["/etc/passwd"]}), 422, "option 'ids.0'"),
        (client.post("/v1/lookup", json={"ids": [known] * 1001}), 422, "option 'ids'"),
        (
            client.post("/v1/lookup", files=[("images", ("x.jpg", photo))] * 101),
            422,
            "at most 100",
        ),
        (
            client.post(
                "/v1/predict",
                content=b"[" * 1500 + b"]" * 1500,
                headers={"content-type": "application/json"},
            ),
            422,
            "nested too deeply",
        ),
        (client.get("/v1/images/" + "0" * 64 + "/thumbnail"), 404, "no stored image"),
        (client.get("/v1/images/" + "0" * 64 + "/thumbnail", params={"size": 5000}), 422, "'size'"),
        (client.get("/v1/images/..%2F..%2Fetc%2Fpasswd/thumbnail"), 404, None),
        (client.get("/v1/jobs/nope"), 404, "no job"),
        (client.post("/v1/train", json={"name": "../evil"}), 422, "name"),
        (client.post("/v1/train", json={"name": "x", "head": "resnet"}), 422, "option 'head'"),
        (client.post("/v1/train", json={"name": "centroid"}), 409, "exists"),
        (
            client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"}),
            422,
            "cannot read",
        ),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (r.status_code, r.text)
        body = r.json()
        if status == 200:  # a per-image error inside a good request
            assert text in body[0]["error"], body
            continue
        assert set(body) == {"error", "detail"}, body
        assert "Traceback" not in r.text
        if text:
            assert text in str(body["detail"]), body


def test_a_user_error_gets_its_status_and_a_bug_a_one_line_500(tmp_path, caplog):
    """Only a UserError is the caller's fault (its own 4xx); anything else is a bug: 500, one
    line for the caller, the traceback in the server log."""
    make_synthetic_store(tmp_path / "s", n_classes=2, per_class=3)
    app = service.create_app(service.Settings(store=str(tmp_path / "s")), load=False)

    def bug() -> None:
        raise ValueError("an index out of step\nwith a second line")

    def taken() -> None:
        raise Conflict("run 'x' exists")

    def locked() -> None:
        raise embedstore.store.StoreLockedError("the store is locked by another writer")

    for path, fn in (("/v1/bug", bug), ("/v1/taken", taken), ("/v1/locked", locked)):
        app.add_api_route(path, fn)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/bug")
        assert r.status_code == 500
        assert r.json() == {"error": "internal error", "detail": "ValueError: an index out of step"}
        assert "Traceback" in caplog.text and "second line" in caplog.text
        r = c.get("/v1/taken")
        assert r.status_code == 409 and r.json() == {
            "error": "conflict",
            "detail": "run 'x' exists",
        }
        r = c.get("/v1/locked")
        assert r.status_code == 409 and "locked" in r.json()["detail"]
        r = c.post("/v1/ingest", json={"folder": str(tmp_path)})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = c.post("/v1/train", json={"name": "x", "head": "centroid"})
        assert r.status_code == 422 and "without --runs" in r.json()["detail"]


def test_upload_cap_and_api_key(served, flowers):
    store, runs = served
    app = service.create_app(
        service.Settings(store=str(store), runs=str(runs), api_key="s3cret", max_upload_mb=0.05),
        load=False,
    )
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200  # not behind the key
        r = c.get("/v1/runs")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert c.get("/v1/runs", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/runs", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        big = _photo(flowers, "daisy").read_bytes() * 8  # > 50 KB
        r = c.post(
            "/v1/predict",
            files=[("images", ("b.jpg", big))],
            data={"run": "centroid"},
            headers={"X-API-Key": "s3cret"},
        )
        assert r.status_code == 413 and r.json()["error"] == "upload too large"
    with pytest.raises(ValueError, match="needs an API key"):
        service.serve(service.Settings(store=str(store)), host="0.0.0.0", port=1)


# ---------------------------------------------------------------------- writes and jobs


def test_add_images_then_searchable_at_once_and_exactly_once(client, flowers):
    st = client.app.state.service.store
    n0 = st.count()
    new = _reencoded(_photo(flowers, "tigerlily", 2), quality=55)  # new bytes, same flower
    r = client.post(
        "/v1/images",
        files=[("images", ("n.jpg", new))],
        data={"label": "tigerlily", "site": "garden"},
    )
    assert r.status_code == 201, r.text
    (new_id,) = r.json()["ids"]
    assert new_id == embedstore.ingestion.hash_bytes(new) and r.json()["new_images"] == 1
    look = client.post("/v1/lookup", json={"ids": [new_id], "k": 2}).json()[0]
    assert look["neighbors"][0]["id"] == new_id and look["neighbors"][0]["label"] == "tigerlily"
    assert look["neighbors"][0]["site"] == "garden"
    again = client.post(
        "/v1/images", files=[("images", ("n2.jpg", new))], data={"label": "tigerlily"}
    )
    assert again.status_code == 201 and again.json()["new_images"] == 0
    assert st.count() == n0 + 1
    bad = client.post("/v1/images", files=[("images", ("x.jpg", b"nope"))])
    assert bad.status_code == 422 and st.count() == n0 + 1
    forbidden = client.post("/v1/ingest", json={"folder": str(flowers)})
    assert forbidden.status_code == 403


def test_train_on_request_poll_cancel_and_serve_at_once(client, flowers):
    r = client.post(
        "/v1/train",
        json={"name": "mlp", "head": "mlp", "fold": "all", "epochs": 5, "device": "cpu"},
    )
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
    job = r.json()["id"]
    queued = client.post("/v1/train", json={"name": "later", "head": "centroid"}).json()
    cancelled = client.delete(f"/v1/jobs/{queued['id']}").json()
    assert cancelled["status"] == "cancelled"
    for _ in range(600):
        status = client.get(f"/v1/jobs/{job}").json()
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert status["status"] == "done", status
    assert status["progress"]["folds_done"] == status["progress"]["folds"] == 3
    assert "top1" in status["result"]["metrics"][0]
    names = [x["name"] for x in client.get("/v1/runs").json()]
    assert "mlp" in names and "later" not in names
    photo = _photo(flowers, "sunflower", 3)
    out = client.post(
        "/v1/predict", files=[("images", ("s.jpg", _reencoded(photo)))], data={"run": "mlp"}
    )
    assert out.status_code == 200 and out.json()[0]["label"] == "sunflower"


def test_train_an_lda_head_on_request(client, flowers):
    """The LDA head from the service: its name from the registry, its setting from
    heads.settings; a setting of the trained heads is refused before any job runs."""
    bad = client.post("/v1/train", json={"name": "lda-x", "head": "lda", "epochs": 5})
    assert bad.status_code == 422 and "do not apply to head 'lda'" in bad.json()["detail"]
    bad = client.post("/v1/train", json={"name": "lda-x", "head": "lda", "centring": "median"})
    assert bad.status_code == 422 and "centring" in bad.text
    r = client.post("/v1/train", json={"name": "lda", "head": "lda", "centring": "mean"})
    assert r.status_code == 202, r.text
    for _ in range(600):
        status = client.get(f"/v1/jobs/{r.json()['id']}").json()
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert status["status"] == "done", status
    assert status["result"]["metrics"][0]["top1"] > 0.9
    (run,) = [x for x in client.get("/v1/runs").json() if x["name"] == "lda"]
    assert run["head"] == "lda"
    photo = _photo(flowers, "daisy", 2)
    out = client.post(
        "/v1/predict", files=[("images", ("d.jpg", _reencoded(photo)))], data={"run": "lda"}
    )
    assert out.status_code == 200 and out.json()[0]["label"] == "daisy"


def test_dynamic_batching_shares_forward_passes(tiny_dino):
    bb = embedstore.create_backbone(str(tiny_dino))
    batched = BatchedBackbone(bb, max_batch=64, max_wait_ms=200)
    x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    want = bb.embed(x)
    out: dict[int, torch.Tensor] = {}
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, batched.embed(x[i : i + 1])))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = torch.cat([out[i] for i in range(8)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert batched.images == 8 and batched.batches < 8  # several requests, fewer forward passes


# ---------------------------------------------------------------------- a real server, killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(store: Path, runs: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli import embedstore_cli; embedstore_cli()",
            "serve",
            "--store",
            str(store),
            "--runs",
            str(runs),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            raise RuntimeError("the server exited at start-up")
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("the server did not become ready")


@pytest.mark.slow
def test_kill_9_while_adding_and_training_loses_nothing_acknowledged(tmp_path, tiny_dino):
    import httpx

    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=6, size=40)
    store, runs = tmp_path / "store", tmp_path / "runs"
    embedstore.ingest(imgs, store, backbones=[str(tiny_dino)], workers=0, progress=False)
    embedstore.split(store, folds=2, seed=0)
    port = _free_port()
    server = _start(store, runs, port)
    url = f"http://127.0.0.1:{port}"
    acknowledged: list[str] = []
    rng = np.random.default_rng(0)
    try:
        # a training job that will be killed half-way, and uploads acknowledged one by one
        # (10,000 epochs of batches of one, no early stopping: minutes of work on any machine)
        job = httpx.post(
            f"{url}/v1/train",
            json={
                "name": "half",
                "head": "mlp",
                "fold": "all",
                "epochs": 10_000,
                "batch_size": 1,
                "patience": 0,
                "device": "cpu",
            },
        ).json()
        deadline = time.time() + 4.0
        k = 0
        while time.time() < deadline:
            a = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "PNG")
            r = httpx.post(
                f"{url}/v1/images",
                files=[("images", (f"u{k}.png", buf.getvalue()))],
                data={"label": "class_0"},
                timeout=30,
            )
            assert r.status_code == 201, r.text
            acknowledged += r.json()["ids"]
            k += 1

        # one more upload in flight when the server dies (its answer never comes)
        def in_flight() -> None:
            try:
                httpx.post(
                    f"{url}/v1/images", files=[("images", ("z.png", buf.getvalue()))], timeout=30
                )
            except httpx.HTTPError:
                pass

        threading.Thread(target=in_flight, daemon=True).start()
        status = httpx.get(f"{url}/v1/jobs/{job['id']}").json()["status"]
        time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert acknowledged
    assert status in ("queued", "running"), status  # the training job was cut off, not finished
    server = _start(store, runs, port)
    try:
        listed = [r["name"] for r in httpx.get(f"{url}/v1/runs").json()]
        assert "half" not in listed  # a half-trained run is never listed
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    ids = embedstore.connect(store).read(["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids))  # exactly once
    assert set(acknowledged) <= set(ids)  # nothing acknowledged is lost
    assert not [p for p in runs.glob("*") if not p.name.startswith(".")]


# ---------------------------------------------------------------------- the page, in a browser


def _chrome():
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium / chromedriver here (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
    ):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_species_lookup_page_in_a_real_browser(served, flowers, tmp_path):
    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chrome()
    store, runs = served
    port = _free_port()
    app = service.create_app(service.Settings(store=str(store), runs=str(runs)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#run option"))
        photo = _photo(flowers, "sunflower", 5)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(EC.element_to_be_clickable((By.ID, "go"))).click()
        wait.until(lambda b: b.find_element(By.ID, "verdict").text.strip())
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#neighbors .card")) >= 5)
        verdict = browser.find_element(By.ID, "verdict").text
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#labels .label")]
        assert labels[0] == "sunflower" and "sunflower" in verdict, (verdict, labels)
        cards = browser.find_elements(By.CSS_SELECTOR, "#neighbors .card")
        assert "sunflower" in cards[0].text and "similarity" in cards[0].text
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        out = os.environ.get("EMBEDSTORE_SCREENSHOTS")
        if out:
            shutil.copy(shot, Path(out) / "service-page.png")
    finally:
        browser.quit()
        server.should_exit = True
        t.join(timeout=10)


def test_service_json_is_what_the_cli_prints(served, flowers):
    from click.testing import CliRunner

    from cli import heads_cli

    store, runs = served
    photo = _photo(flowers, "iris", 2)
    r = CliRunner().invoke(heads_cli, ["predict", str(runs / "centroid"), str(photo), "--json"])
    assert r.exit_code == 0, r.output
    cli_out = json.loads(r.output)
    app = service.create_app(service.Settings(store=str(store), runs=str(runs)), load=False)
    with TestClient(app) as c:
        http = c.post(
            "/v1/predict",
            files=[("images", ("p.jpg", photo.read_bytes()))],
            data={"run": "centroid"},
        ).json()
    assert http[0]["label"] == cli_out[0]["label"] and http[0]["top_k"] == cli_out[0]["top_k"]
    assert set(http[0]) == set(cli_out[0])
