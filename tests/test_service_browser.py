"""The service's pages in a real headless browser, against hostile data and hostile sites.

Labels are planted the ways a user or an attacker can: ingest folder names, a metadata file and
``POST /v1/images``. Each payload would set ``window.__pwned`` (and the page title) if it ran.
The page, the docs page and the run report are opened and used; nothing may run and every label
must show literally. A page on another origin tries to write to the service; nothing is added.
"""

from __future__ import annotations

import csv
import http.server
import io
import os
import shutil
import threading
import time
from pathlib import Path

import embedstore_service as service
import httpx
import pytest
from PIL import Image

import embedstore
import heads
from tests.conftest import write_class_images
from tests.test_service import _chrome, _free_port

PAYLOADS = [
    '<img src=x onerror="window.__pwned=1;document.title=1">',
    "<script>window.__pwned=2</script>",
    '"><svg onload="window.__pwned=3">',
    "javascript:window.__pwned=4",
]
UPLOADED = '<img src=y onerror="window.__pwned=5">'
# what each label is in the store ("/" cannot be in a folder name)
LABELS = {*(p.replace("/", "_") for p in PAYLOADS[:3]), PAYLOADS[3], UPLOADED}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_dino):
    """A store whose labels are the payloads (folders, metadata, an upload) and a centroid run
    on them, served by a real uvicorn server on 127.0.0.1."""
    import uvicorn

    d = tmp_path_factory.mktemp("hostile")
    imgs, more = d / "imgs", d / "more"
    write_class_images(imgs, n_classes=3, per_class=6, size=40)
    for i, payload in enumerate(PAYLOADS[:3]):  # labels from folder names
        (imgs / f"class_{i}").rename(imgs / payload.replace("/", "_"))
    write_class_images(more, n_classes=4, per_class=6, size=40, seed=1)
    meta = d / "meta.csv"  # and one label from a metadata file
    with meta.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "species"])
        for p in sorted((more / "class_3").glob("*.jpg")):
            w.writerow([str(p.relative_to(more)), PAYLOADS[3]])
    store, runs = d / "store", d / "runs"
    bb = [str(tiny_dino)]
    embedstore.ingest(imgs, store, backbones=bb, workers=0, progress=False)
    embedstore.ingest(
        more / "class_3",
        store,
        backbones=bb,
        metadata=meta,
        label_column="species",
        workers=0,
        progress=False,
    )
    embedstore.split(store, folds=2, seed=0)
    heads.train(store, fold=0, head="centroid", out=runs / "centroid", progress=False)
    port = _free_port()
    app = service.create_app(
        service.Settings(store=str(store), runs=str(runs), allowed_hosts=service.LOOPBACK_HOSTS)
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    photo = sorted((imgs / PAYLOADS[0].replace("/", "_")).glob("*.jpg"))[0]
    buf = io.BytesIO()  # a label planted through the API, on a copy of the photo
    Image.open(photo).save(buf, "JPEG", quality=90)
    r = httpx.post(
        f"{base}/v1/images",
        files={"images": (UPLOADED + ".jpg", buf.getvalue(), "image/jpeg")},
        data={"label": UPLOADED},
    )
    assert r.status_code == 201, r.text
    yield {"base": base, "store": store, "runs": runs, "photo": photo}
    server.should_exit = True
    t.join(timeout=10)


def _labels_shown(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".label")]


@pytest.mark.slow
def test_hostile_labels_show_as_text_and_never_run(hostile, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chrome()
    try:
        browser.get(hostile["base"] + "/")
        title = browser.title
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#run option"))
        browser.find_element(By.ID, "file").send_keys(str(hostile["photo"]))
        wait.until(EC.element_to_be_clickable((By.ID, "go"))).click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#neighbors .card")) >= 5)
        time.sleep(0.5)  # an onerror handler would have fired by now
        shown = _labels_shown(browser)
        assert browser.execute_script("return window.__pwned === undefined")
        assert browser.title == title == "embedstore: species lookup"
        # the payloads are on the page as the very text they are
        assert PAYLOADS[0] in shown and UPLOADED in shown, shown
        assert set(shown) <= LABELS and "<script>window.__pwned=2<_script>" in shown, shown
        assert not browser.find_elements(By.CSS_SELECTOR, "#labels img, #neighbors svg")
        shot = tmp_path / "hostile-page.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("EMBEDSTORE_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["EMBEDSTORE_SCREENSHOTS"]) / shot.name)

        browser.get(hostile["base"] + "/docs")  # the bundled API page lists the routes
        wait.until(lambda b: "/v1/predict" in b.find_element(By.ID, "routes").text)
        assert not browser.find_elements(By.CSS_SELECTOR, "script[src^='http']")
    finally:
        browser.quit()


@pytest.mark.slow
def test_the_report_of_a_hostile_run_runs_nothing(hostile, tmp_path):
    res = heads.report(hostile["runs"] / "centroid", out=tmp_path / "report.html")
    page = Path(res.path)
    html = page.read_text()
    assert "Content-Security-Policy" in html and "script-src 'none'" in html
    browser = _chrome()
    try:
        browser.get(page.as_uri())
        time.sleep(0.5)
        assert browser.execute_script("return window.__pwned === undefined")
        assert PAYLOADS[0] in browser.find_element("tag name", "body").text
    finally:
        browser.quit()


def test_every_page_and_static_file_carries_the_security_headers(hostile):
    base = hostile["base"]
    for path in ("/", "/docs"):
        r = httpx.get(base + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "http" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in r.text and " style=" not in r.text and "onclick" not in r.text
    for name in ("dom.js", "app.js", "docs.js"):  # the pages' only scripts
        js = httpx.get(f"{base}/static/{name}")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in js.text, (name, sink)
    assert httpx.get(base + "/static/../_app.py").status_code == 404
    ids = httpx.post(base + "/v1/lookup", json={"ids": [], "k": 1})
    assert ids.headers["x-content-type-options"] == "nosniff"
    one = embedstore.connect(hostile["store"]).read(columns=["id"])["id"][0].as_py()
    thumb = httpx.get(f"{base}/v1/images/{one}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg"


def test_a_foreign_host_name_is_refused_on_a_loopback_server(hostile):
    """DNS rebinding: evil.example resolving to 127.0.0.1 reaches the server with its own
    name in Host; the server answers loopback names only."""
    base = hostile["base"]
    assert httpx.get(base + "/v1/runs", headers={"Host": "evil.example"}).status_code == 400
    assert httpx.get(base + "/v1/runs", headers={"Host": "localhost"}).status_code == 200


@pytest.mark.slow
def test_a_page_on_another_origin_cannot_write_to_the_service(hostile, tmp_path):
    """A page served from another origin (another port) posts a form and a fetch to the
    service, as any site its user visits could; the service refuses both, and stores nothing."""
    base = hostile["base"]
    before = httpx.get(base + "/v1/store").json()["images"]
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "index.html").write_text(
        f"""<!doctype html><html><body>
<form id="f" method="POST" action="{base}/v1/train" enctype="text/plain" target="sink">
<input name='{{"name":"planted","head":"centroid","x":"' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
const fd = new FormData();
fd.append("images", new Blob([new Uint8Array([255, 216, 255])], {{type: "image/jpeg"}}), "a.jpg");
fd.append("label", "planted");
fetch("{base}/v1/images", {{method: "POST", body: fd, mode: "no-cors"}})
  .finally(() => {{ document.title = "sent"; document.getElementById("f").submit(); }});
</script></body></html>"""
    )
    port = _free_port()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(evil))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    browser = _chrome()
    try:
        browser.get(f"http://localhost:{port}/index.html")  # another origin than 127.0.0.1:X
        for _ in range(100):
            if browser.title == "sent":
                break
            time.sleep(0.1)
        sent = browser.title == "sent"  # the page's script ran and sent both requests
        time.sleep(1.0)  # the form post lands in the iframe
    finally:
        browser.quit()
        httpd.shutdown()
    assert sent
    assert httpx.get(base + "/v1/store").json()["images"] == before
    assert "planted" not in [r["name"] for r in httpx.get(base + "/v1/runs").json()]
    assert not [j for j in httpx.get(base + "/v1/jobs").json() if "planted" in str(j)]
