"""Text search (``embedstore.search_text``, ``embedstore search``, ``POST /v1/search`` and the
page): real image files embedded by a tiny CLIP and a tiny SigLIP (real tokenizers), one stored
image planted so that its embedding agrees with a text's, found first by that text; ``where``
filters; an image blended with the words (weight 0: the image alone, 1: the words alone)
against a slow numpy reference; the one-line error for an image-only column everywhere."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import embedstore_service as service
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import embedstore
from cli import embedstore_cli
from embedstore.backbones import text_tower
from embedstore.errors import BadInput
from embedstore.search import Resident, TextQuery, search_text
from tests.conftest import write_class_images
from tests.test_service import _chrome, _free_port

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "a photo of the daisy"
NO_TOWER = "has no text tower"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search-imgs")
    write_class_images(root, n_classes=3, per_class=4, size=40)
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory, images, tiny_clip_text, tiny_siglip_text) -> dict:
    """12 photos embedded by a tiny CLIP and a tiny SigLIP; one photo (outside the top 4 of
    TEXT for both before) gets stored embeddings whose image-text vectors equal TEXT's:
    for SigLIP the text vector itself, for CLIP a vector its visual projection maps onto it
    (the column holds the vision tower's output before that projection). Read only."""
    from transformers import CLIPModel

    path = tmp_path_factory.mktemp("search-store") / "s"
    backbones = [str(tiny_clip_text), str(tiny_siglip_text)]
    embedstore.ingest(images, path, backbones=backbones, workers=0, progress=False)
    st = embedstore.connect(path)
    clip, siglip = (st.resolve_backbone(b) for b in ("tiny-clip-text", "tiny-siglip-text"))
    before = {b.backbone: search_text(st, TEXT, backbone=b.backbone, k=12) for b in (clip, siglip)}
    top = {n["id"] for r in before.values() for n in r.results[0].neighbors[:4]}
    target = next(n for n in before[clip.backbone].results[0].neighbors[::-1] if n["id"] not in top)
    W = CLIPModel.from_pretrained(tiny_clip_text).visual_projection.weight.detach().numpy()
    T = {b.backbone: embedstore.embed_texts(st, [TEXT], b.backbone)[0] for b in (clip, siglip)}
    st.set_embeddings(clip.column, [target["id"]], (np.linalg.pinv(W) @ T[clip.backbone])[None])
    st.set_embeddings(siglip.column, [target["id"]], T[siglip.backbone][None])
    return {"path": path, "id": target["id"], "label": target["label"], "T": T}


def _projected(store, backbone: str) -> tuple[list[str], np.ndarray, list[str]]:
    """The slow reference: every stored row's vector in the image-text space, ids, labels."""
    st = embedstore.connect(store)
    info = st.resolve_backbone(backbone)
    X, cols = st.embeddings(backbone, columns=("id", "label"))
    return list(cols["id"]), text_tower(info).project_images(X), list(cols["label"])


def _ids(res) -> list[str]:
    return [n["id"] for n in res.results[0].neighbors]


# ---------------------------------------------------------------------- the library


@pytest.mark.parametrize("backbone", ["tiny-clip-text", "tiny-siglip-text"])
def test_the_planted_match_comes_first_as_the_reference_ranks_it(planted, backbone):
    res = search_text(planted["path"], TEXT, backbone=backbone, k=5)
    q = res.results[0]
    assert isinstance(q, TextQuery) and isinstance(res, embedstore.LookupResult)
    assert q.neighbors[0]["id"] == planted["id"] and q.neighbors[0]["similarity"] > 0.999
    assert q.neighbors[0]["label"] == planted["label"] and q.neighbors[0]["path"].endswith(".jpg")
    assert q.query == TEXT and q.query_id == hashlib.sha256(TEXT.encode()).hexdigest()
    assert (q.image, q.weight, q.in_store, res.k, res.index_kind) == (None, 1.0, False, 5, "exact")
    ids, P, _ = _projected(planted["path"], backbone)
    sims = P @ planted["T"][backbone]  # (N,): cosines, the reference
    order = np.argsort(-sims, kind="stable")[:5]
    assert _ids(res) == [ids[j] for j in order]
    np.testing.assert_allclose([n["similarity"] for n in q.neighbors], sims[order], atol=1e-5)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["results"][0]["neighbors"][0]["id"] == planted["id"] and "vote" in d["results"][0]


def test_where_selects_the_candidates_first(planted):
    lab, clip = planted["label"], "tiny-clip-text"
    other = search_text(planted["path"], TEXT, backbone=clip, where=f"label != '{lab}'")
    labels = [n["label"] for n in other.results[0].neighbors]
    assert planted["id"] not in _ids(other) and len(labels) == 8 and lab not in labels
    assert other.where == f"label != '{lab}'"
    assert other.warnings == [
        f"k=10 but 8 image(s) with {clip} embeddings match --where \"label != '{lab}'\": "
        "all 8 returned"
    ]
    same = search_text(planted["path"], TEXT, backbone=clip, where=f"label = '{lab}'")
    assert _ids(same)[0] == planted["id"] and len(_ids(same)) == 4
    with pytest.raises(embedstore.StoreError, match="no images with tiny-clip-text embeddings"):
        search_text(planted["path"], TEXT, backbone=clip, where="label = 'none'")
    with pytest.raises(embedstore.StoreError):
        search_text(planted["path"], TEXT, backbone=clip, where="nope = = 1")


@pytest.mark.parametrize("backbone", ["tiny-clip-text", "tiny-siglip-text"])
def test_an_image_blends_with_the_words_as_the_reference_does(planted, images, backbone):
    ids, P, _ = _projected(planted["path"], backbone)
    photo = sorted((images / "class_0").glob("*.jpg"))[2]
    j = ids.index(hashlib.sha256(photo.read_bytes()).hexdigest())
    T = planted["T"][backbone]
    for weight in (0.0, 0.3, 0.5, 0.8):
        res = search_text(planted["path"], TEXT, image=photo, weight=weight, backbone=backbone)
        q = weight * T + (1 - weight) * P[j]  # the slow reference: blend, renormalise, rank
        sims = P @ (q / np.linalg.norm(q))
        order = np.argsort(-sims, kind="stable")[:10]
        r = res.results[0]
        assert (r.image, r.weight, r.in_store) == (str(photo), weight, True)
        assert _ids(res) == [ids[k] for k in order], weight
        np.testing.assert_allclose([n["similarity"] for n in r.neighbors], sims[order], atol=1e-4)
    alone = search_text(planted["path"], TEXT, image=ids[j], weight=0.0, backbone=backbone)
    assert _ids(alone)[0] == ids[j] and alone.results[0].neighbors[0]["similarity"] > 0.9999
    words = search_text(planted["path"], TEXT, image=ids[j], weight=1.0, backbone=backbone)
    assert _ids(words) == _ids(search_text(planted["path"], TEXT, backbone=backbone))


def test_weight_0_on_siglip_is_lookup_and_a_new_file_is_embedded(planted, images, tmp_path):
    """SigLIP's column is the shared space, so the image alone ranks as lookup does; a photo
    not in the store is embedded with the column's backbone (in_store False)."""
    photo = sorted((images / "class_2").glob("*.jpg"))[1]
    b = "tiny-siglip-text"
    res = search_text(planted["path"], TEXT, image=photo, weight=0, backbone=b, k=12)
    look = embedstore.lookup(planted["path"], [str(photo)], backbone=b, k=12)
    assert _ids(res) == [n["id"] for n in look.results[0].neighbors]
    np.testing.assert_allclose(
        [n["similarity"] for n in res.results[0].neighbors],
        [n["similarity"] for n in look.results[0].neighbors],
        atol=1e-4,
    )
    flipped = tmp_path / "flipped.png"  # new bytes: not stored, embedded here
    from PIL import Image

    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    new = search_text(planted["path"], TEXT, image=flipped, weight=0.5, backbone=b)
    assert new.results[0].in_store is False and new.results[0].image == str(flipped)
    upload = search_text(planted["path"], TEXT, image=flipped.read_bytes(), backbone=b)
    assert (upload.results[0].image, upload.results[0].in_store) == ("upload 0", False)
    assert _ids(upload) == _ids(new)


def test_a_resident_store_projects_once_and_answers_alike(planted):
    st = embedstore.connect(planted["path"])
    info = st.resolve_backbone("tiny-clip-text")
    resident = Resident(st, [info.column])
    for where in (None, "label != 'class_2'"):
        fresh = search_text(st, TEXT, backbone=info.backbone, where=where)
        kept = search_text(st, TEXT, backbone=info.backbone, where=where, resident=resident)
        assert _ids(kept) == _ids(fresh)
        np.testing.assert_allclose(
            [n["similarity"] for n in kept.results[0].neighbors],
            [n["similarity"] for n in fresh.results[0].neighbors],
            atol=1e-6,
        )

    def never(X):
        raise AssertionError("projected again")

    P, rows = resident.projected(info.column, text_tower(info).identity, never)
    assert P.shape == (12, 12) and len(rows) == 12


def test_an_image_only_column_says_in_one_line_which_backbones_have_a_tower(photo_store):
    with pytest.raises(embedstore.BackboneError) as e:
        search_text(photo_store, TEXT)
    msg = str(e.value)
    assert NO_TOWER in msg and "Backbones with one: clip-vit-b-16" in msg and "\n" not in msg
    assert isinstance(e.value, BadInput)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"text": ""}, "not an empty text"),
        ({"text": "   "}, "not an empty text"),
        ({"weight": 1.5}, "weight must be from 0"),
        ({"weight": math.nan}, "weight must be from 0"),
        ({"weight": "0.5"}, "weight must be a number"),
        ({"weight": 0}, "weight 0 searches with the image alone: give an image"),
        ({"k": 0}, "k must be at least 1"),
        ({"image": "no-such.jpg"}, "no-such.jpg: query file not found"),
        ({"image": "ab" * 32}, "no stored image has this id"),
        ({"backbone": "dinov2-small"}, "no embeddings for backbone 'dinov2-small'"),
        ({"columns": ["nope"]}, "no column"),
    ],
)
def test_bad_arguments_get_clear_messages(planted, kw, match):
    args = {"text": TEXT, "backbone": "tiny-clip-text", **kw}
    with pytest.raises(BadInput, match=match):
        search_text(planted["path"], args.pop("text"), **args)


# ---------------------------------------------------------------------- the command line


def test_search_command_prints_and_gives_json(planted, images, photo_store):
    store = str(planted["path"])
    base = ["search", "--text", TEXT, "--store", store, "--backbone", "tiny-clip-text"]
    r = CliRunner().invoke(embedstore_cli, [*base, "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    lib = search_text(store, TEXT, backbone="tiny-clip-text", k=3)
    assert out == json.loads(json.dumps([q.to_dict() for q in lib.results]))
    assert out[0]["neighbors"][0]["id"] == planted["id"] and len(out[0]["neighbors"]) == 3
    r = CliRunner().invoke(embedstore_cli, [*base, "--k", "2"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].startswith(f"'{TEXT}': vote ") and planted["label"] in lines[2]
    photo = sorted((images / "class_0").glob("*.jpg"))[0]
    r = CliRunner().invoke(
        embedstore_cli, [*base, "--image", str(photo), "--weight", "0", "--k", "1"]
    )
    assert r.exit_code == 0, r.output
    assert f"+ {photo} (text weight 0)" in r.output and "1.0000  class_0" in r.output
    for bad, what in ((["--weight", "2"], "--weight"), (["--k", "0"], "--k")):
        r = CliRunner().invoke(embedstore_cli, [*base, *bad])
        assert r.exit_code == 2 and what in r.output, r.output
    r = CliRunner().invoke(embedstore_cli, [*base, "--weight", "nan", "--image", str(photo)])
    assert r.exit_code == 2 and "weight must be from 0" in r.output, r.output
    r = CliRunner().invoke(embedstore_cli, ["search", "--text", TEXT, "--store", str(photo_store)])
    assert r.exit_code == 2 and NO_TOWER in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(embedstore_cli, ["search", "--help"])
    assert r.exit_code == 0 and 'embedstore search --text "a photo of a daisy"' in r.output


# ---------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def client(planted, tmp_path_factory):
    store = tmp_path_factory.mktemp("search-service") / "s"
    shutil.copytree(planted["path"], store)
    app = service.create_app(service.Settings(store=str(store)), load=False)
    with TestClient(app) as c:
        yield c


def test_search_route_answers_as_the_cli_with_thumbnails(client, planted):
    body = {"text": TEXT, "backbone": "tiny-clip-text", "k": 3}
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    (q,) = r.json()
    nb = q["neighbors"][0]
    assert nb["id"] == planted["id"] and nb["thumbnail"] == f"/v1/images/{planted['id']}/thumbnail"
    assert client.get(nb["thumbnail"]).headers["content-type"] == "image/jpeg"
    lib = search_text(planted["path"], TEXT, backbone="tiny-clip-text", k=3).results[0].to_dict()
    assert [n["id"] for n in q["neighbors"]] == [n["id"] for n in lib["neighbors"]]
    assert {k: v for k, v in q.items() if k != "neighbors"} == {
        k: v for k, v in lib.items() if k != "neighbors"
    }
    state = client.app.state.service
    info = state.embedding_info("tiny-clip-text")
    tower = state.text_tower(info)
    r = client.post("/v1/search", json={**body, "where": "label = 'class_0'", "text": "tulip"})
    assert r.status_code == 200 and {n["label"] for n in r.json()[0]["neighbors"]} == {"class_0"}
    assert state.text_tower(info) is tower  # built once, kept
    cols = {c["name"]: c for c in client.get("/v1/backbones").json()["store"]}
    assert cols["tiny-clip-text"]["text_tower"] == "clip"
    assert cols["tiny-siglip-text"]["text_tower"] == "siglip"
    assert cols["tiny-clip-text"]["no_text_tower"] is None


def test_search_route_blends_an_upload_or_a_stored_id(client, images):
    photo = sorted((images / "class_2").glob("*.jpg"))[3]
    pid = hashlib.sha256(photo.read_bytes()).hexdigest()
    r = client.post(
        "/v1/search",
        files=[("images", ("my photo.jpg", photo.read_bytes()))],
        data={"text": TEXT, "weight": "0", "backbone": "tiny-siglip-text", "k": "2"},
    )
    assert r.status_code == 200, r.text
    (q,) = r.json()
    assert q["image"] == "my photo.jpg" and q["weight"] == 0 and q["in_store"] is True
    assert q["neighbors"][0]["id"] == pid and q["neighbors"][0]["similarity"] > 0.9999
    r = client.post(
        "/v1/search",
        json={"text": TEXT, "ids": [pid], "weight": 0.0, "backbone": "tiny-siglip-text", "k": 2},
    )
    assert r.status_code == 200 and r.json()[0]["image"] == pid
    assert r.json()[0]["neighbors"][0]["id"] == pid


def test_search_route_refuses_bad_requests_clearly(client, images):
    photo = sorted((images / "class_2").glob("*.jpg"))[0].read_bytes()
    pid = hashlib.sha256(photo).hexdigest()
    good = {"text": TEXT, "backbone": "tiny-clip-text"}
    cases = [
        ({"text": ""}, 422, "option 'text'"),
        ({"text": " \t"}, 422, "option 'text'"),
        ({"text": "x" * 1001}, 422, "option 'text'"),
        ({"weight": 2}, 422, "option 'weight'"),
        ({"weight": 0}, 422, "weight 0 searches with the image alone"),
        ({"k": 0}, 422, "option 'k'"),
        ({"ids": [pid, pid]}, 422, "option 'ids'"),
        ({"ids": ["0" * 64]}, 404, "no stored image has id"),
        ({"backbone": "nope"}, 404, "no embeddings for backbone 'nope'"),
        ({"backbone": None}, 422, "several backbones"),
        ({"where": "nope = = 1"}, 422, "where"),
        ({"image": "x"}, 422, "option 'image'"),
    ]
    for change, status, detail in cases:
        r = client.post("/v1/search", json={**good, **change})
        assert r.status_code == status and detail in r.json()["detail"], (change, r.text)
    two = [("images", ("a.jpg", photo)), ("images", ("b.jpg", photo))]
    r = client.post("/v1/search", files=two, data=good)
    assert r.status_code == 422 and "at most one image" in r.json()["detail"]
    r = client.post("/v1/search", files=two[:1], data={**good, "ids": pid})
    assert r.status_code == 422 and "at most one image" in r.json()["detail"]
    r = client.post("/v1/search", files=[("images", ("n.jpg", b"not an image"))], data=good)
    assert r.status_code == 422 and "upload 0" in r.json()["detail"]


def test_search_route_on_an_image_only_column_is_one_line(photo_store):
    app = service.create_app(service.Settings(store=str(photo_store)), load=False)
    with TestClient(app) as c:
        r = c.post("/v1/search", json={"text": TEXT})
        col = c.get("/v1/backbones").json()["store"][0]
    assert r.status_code == 422 and NO_TOWER in r.json()["detail"]
    assert col["text_tower"] is None and col["no_text_tower"] == r.json()["detail"]
    assert "\n" not in r.json()["detail"]


def test_the_schema_declares_search_with_an_optional_image(client):
    spec = client.get("/openapi.json").json()["paths"]["/v1/search"]["post"]
    form = spec["requestBody"]["content"]["multipart/form-data"]["schema"]
    body = spec["requestBody"]["content"]["application/json"]["schema"]
    assert form["properties"]["images"]["maxItems"] == 1 and "anyOf" not in form
    assert body["required"] == ["text"] and body["properties"]["text"]["maxLength"] == 1000
    assert {"404", "413", "422"} <= set(spec["responses"])


# ---------------------------------------------------------------------- the page


def _serve(store: Path):
    import httpx
    import uvicorn

    port = _free_port()
    app = service.create_app(service.Settings(store=str(store)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return server, t, f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_the_page_searches_by_words_and_says_when_it_cannot(planted, images, photo_store, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = sorted((images / "class_1").glob("*.jpg"))[2]
    browser = _chrome()
    servers = []
    try:
        server, t, base = _serve(planted["path"])
        servers.append((server, t))
        browser.get(base + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(
            lambda b: "text tower of tiny-clip-text" in b.find_element(By.ID, "text-status").text
        )
        assert not browser.find_element(By.ID, "find").is_enabled()  # no words yet
        browser.find_element(By.ID, "text").send_keys(TEXT)
        browser.find_element(By.ID, "find").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#neighbors .card")) >= 8)
        cards = browser.find_elements(By.CSS_SELECTOR, "#neighbors .card")
        first = cards[0].find_element(By.TAG_NAME, "img")
        assert planted["id"] in first.get_attribute("src") and planted["label"] in cards[0].text
        assert (
            browser.find_element(By.ID, "nearest-title").text == f"Stored photos matching “{TEXT}”"
        )
        wait.until(lambda b: b.execute_script("return document.images[1].naturalWidth > 0"))
        # with the photo: weight 0 is the photo alone, so the photo itself comes first
        browser.find_element(By.ID, "file").send_keys(str(photo))
        browser.find_element(By.ID, "blend").click()
        browser.find_element(By.ID, "weight").clear()
        browser.find_element(By.ID, "weight").send_keys("0")
        browser.find_element(By.ID, "find").click()
        wait.until(lambda b: photo.name in b.find_element(By.ID, "nearest-title").text)
        first = browser.find_element(By.CSS_SELECTOR, "#neighbors .card img")
        assert hashlib.sha256(photo.read_bytes()).hexdigest() in first.get_attribute("src")
        assert "similarity 1.000" in browser.find_element(By.CSS_SELECTOR, "#neighbors .card").text
        shot = tmp_path / "search-page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("EMBEDSTORE_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["EMBEDSTORE_SCREENSHOTS"]) / shot.name)

        server, t, base = _serve(photo_store)  # a DINOv2 store: no text tower
        servers.append((server, t))
        browser.get(base + "/")
        wait.until(lambda b: NO_TOWER in b.find_element(By.ID, "text-status").text)
        status = browser.find_element(By.ID, "text-status").text
        assert "Backbones with one: clip-vit-b-16" in status and "\n" not in status
        browser.find_element(By.ID, "text").send_keys(TEXT)
        assert not browser.find_element(By.ID, "find").is_enabled()
        shot = tmp_path / "search-page-no-tower.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("EMBEDSTORE_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["EMBEDSTORE_SCREENSHOTS"]) / shot.name)
    finally:
        browser.quit()
        for server, t in servers:
            server.should_exit = True
            t.join(timeout=10)
