"""Text towers of image-text backbones (tiny CLIP and SigLIP built from their configs, with real
tokenizers): the same numbers as transformers' own ``get_text_features`` / ``get_image_features``,
the tower recorded in the column at ingest (and derived for older columns), the store's text
cache (a prompt is never embedded twice per model), and the one-line error for image-only
columns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import lance
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import embedstore
from cli import embedstore_cli
from embedstore.backbones import HFTextTower, create_backbone, text_tower, text_tower_ref
from embedstore.search import text_embeddings
from tests.conftest import write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a photo of the daisy", "a photo of a rose", "tulip", "a photo of the daisy"]
ROOT = Path(__file__).resolve().parents[1]


class CountingTower(HFTextTower):
    """A real text tower that counts its loads and the texts it runs through the model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads = self.texts = 0

    def _load(self) -> None:
        self.loads += 1
        super()._load()

    def _encode_batch(self, texts):
        self.texts += len(texts)
        return super()._encode_batch(texts)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text-imgs")
    write_class_images(root, n_classes=3, per_class=3, size=40)
    return root


@pytest.fixture(scope="module")
def two_tower_store(tmp_path_factory, images, tiny_clip_text, tiny_siglip_text) -> Path:
    """Real image files embedded by a tiny CLIP and a tiny SigLIP (read only: tests that write
    its text cache copy it first)."""
    path = tmp_path_factory.mktemp("text-store") / "s"
    backbones = [str(tiny_clip_text), str(tiny_siglip_text)]
    embedstore.ingest(images, path, backbones=backbones, workers=0, progress=False)
    return path


def _copy(store: Path, tmp_path: Path) -> Path:
    shutil.copytree(store, tmp_path / "s")
    return tmp_path / "s"


def _pixels(bb, folder: Path) -> torch.Tensor:
    """The images of ``folder`` as the backbone's uint8 batch (B, 3, H, W)."""
    files = sorted(folder.rglob("*.jpg"))
    return torch.from_numpy(np.stack([bb.preprocess(Image.open(f).convert("RGB")) for f in files]))


# ---------------------------------------------------------------------- agreement


def test_clip_tower_gives_transformers_own_text_and_image_features(tiny_clip_text, images):
    from transformers import AutoTokenizer, CLIPModel

    tower = text_tower(str(tiny_clip_text))
    T = tower.encode(PROMPTS)
    assert T.shape == (4, 12) and T.dtype == np.float32 and tower.dim == 12
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1, atol=1e-6)
    model = CLIPModel.from_pretrained(tiny_clip_text).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_text)
    bb = create_backbone(str(tiny_clip_text))
    u8 = _pixels(bb, images)
    with torch.inference_mode():
        text = model.get_text_features(**tok(PROMPTS, padding=True, return_tensors="pt"))
        image = model.get_image_features(pixel_values=bb.preprocess.normalize(u8))
    np.testing.assert_allclose(T, F.normalize(text.pooler_output, dim=-1).numpy(), atol=1e-5)
    # padding to a batch's longest text changes nothing: each text alone gives the same row
    alone = np.concatenate([tower.encode([p]) for p in PROMPTS])
    np.testing.assert_allclose(alone, T, atol=1e-5)
    # the column holds the pooled output before CLIP's visual projection (24-d): the tower maps
    # it into the shared 12-d space, as get_image_features does
    X = bb.embed(u8).numpy()
    assert X.shape == (9, 24)
    P = tower.project_images(X)
    np.testing.assert_allclose(P, F.normalize(image.pooler_output, dim=-1).numpy(), atol=1e-5)
    assert tower.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    assert tower.logit_bias is None
    with pytest.raises(embedstore.BackboneError, match=r"must be \(N, 24\), not \(9, 12\)"):
        tower.project_images(P)


def test_siglip_tower_gives_transformers_own_text_features_in_the_image_space(
    tiny_siglip_text, images
):
    from transformers import AutoTokenizer, SiglipModel

    tower = text_tower(str(tiny_siglip_text))
    T = tower.encode(PROMPTS)
    assert T.shape == (4, 24) and T.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1, atol=1e-6)
    model = SiglipModel.from_pretrained(tiny_siglip_text).eval()
    tok = AutoTokenizer.from_pretrained(tiny_siglip_text)
    # SigLIP was trained on texts padded to full length, read at the last position, no mask
    ids = tok(PROMPTS, padding="max_length", max_length=16, return_tensors="pt").input_ids
    bb = create_backbone(str(tiny_siglip_text))
    u8 = _pixels(bb, images)
    with torch.inference_mode():
        text = model.get_text_features(input_ids=ids).pooler_output
        image = model.get_image_features(pixel_values=bb.preprocess.normalize(u8)).pooler_output
        masked = model.get_text_features(**tok(PROMPTS, padding=True, return_tensors="pt"))
    np.testing.assert_allclose(T, F.normalize(text, dim=-1).numpy(), atol=1e-5)
    assert not np.allclose(T, F.normalize(masked.pooler_output, dim=-1).numpy(), atol=1e-3)
    # SigLIP's image column is already in the shared space: the projection is the identity
    X = bb.embed(u8).numpy()
    np.testing.assert_allclose(tower.project_images(X), F.normalize(image, dim=-1), atol=1e-5)
    assert tower.logit_bias == pytest.approx(float(model.logit_bias.detach()))


# ---------------------------------------------------------------------- record and cache


def test_ingest_records_the_tower_and_each_prompt_is_embedded_once(
    tmp_path, two_tower_store, tiny_clip_text, tiny_siglip_text
):
    st = embedstore.connect(_copy(two_tower_store, tmp_path), create=False)
    info = st.resolve_backbone("tiny-clip-text")
    assert info.describe["text_tower"] == {"kind": "clip", "source": str(tiny_clip_text), "dim": 12}
    ref = text_tower_ref(info.describe)
    assert ref.recorded and ref.identity == f"clip/v1:{info.describe['weights_sha256']}"

    tower = CountingTower(ref, info.backbone)
    first = text_embeddings(st, PROMPTS, "tiny-clip-text", tower=tower, device="cpu")
    assert (first.cached, first.computed, first.stored) == (0, 3, True)
    assert (tower.loads, tower.texts) == (1, 3) and st.text_cache.count() == 3
    assert first.embeddings.shape == (4, 12) and first.model == ref.identity
    np.testing.assert_array_equal(first.embeddings[0], first.embeddings[3])

    # the same prompts again, in another order: all from the cache, no model loaded
    fresh = CountingTower(ref, info.backbone)
    again = text_embeddings(st, PROMPTS[::-1], "tiny-clip-text", tower=fresh, device="cpu")
    assert (again.cached, again.computed, fresh.loads, fresh.texts) == (3, 0, 0, 0)
    np.testing.assert_array_equal(again.embeddings, first.embeddings[::-1])

    # one new prompt among them: only it runs; the cached rows are the tower's own vectors
    third = text_embeddings(st, ["an iris", *PROMPTS], "tiny-clip-text", tower=tower)
    assert (third.cached, third.computed, tower.texts) == (3, 1, 4)
    assert st.text_cache.count(ref.identity) == 4
    np.testing.assert_allclose(third.embeddings[1:], tower.encode(PROMPTS), atol=1e-6)

    # another model's tower never fills this column's cache
    for other in (text_tower("clip-vit-b-32"), text_tower(str(tiny_siglip_text))):
        with pytest.raises(embedstore.errors.BadInput, match="is not the one of column"):
            text_embeddings(st, ["an iris"], "tiny-clip-text", tower=other)
    assert st.text_cache.count() == 4

    # the public call builds the column's tower itself and returns the array
    T = embedstore.embed_texts(st.path, PROMPTS, "emb_tiny_clip_text", device="cpu")
    np.testing.assert_array_equal(T, first.embeddings)
    row = next(b for b in st.info().backbones if b["name"] == "tiny-clip-text")
    assert row["text_tower"]["kind"] == "clip" and row["text_tower"]["cached_texts"] == 4


def test_the_cache_is_per_model_and_keyed_by_the_exact_text(tmp_path, two_tower_store):
    st = embedstore.connect(_copy(two_tower_store, tmp_path), create=False)
    clip = text_embeddings(st, PROMPTS, "tiny-clip-text", device="cpu")
    siglip = text_embeddings(st, PROMPTS, "tiny-siglip-text", device="cpu")
    assert siglip.computed == 3 and siglip.embeddings.shape == (4, 24)
    assert siglip.model.startswith("siglip/v1:") and siglip.model != clip.model
    assert st.text_cache.models() == {clip.model: 3, siglip.model: 3}
    # no trimming or lowercasing: another spelling is another text
    res = text_embeddings(st, ["Tulip", "tulip "], "tiny-clip-text", device="cpu")
    assert res.computed == 2 and st.text_cache.count(clip.model) == 5
    assert embedstore.store.text_sha256("tulip") != embedstore.store.text_sha256("tulip ")
    empty = text_embeddings(st, [], "tiny-siglip-text")
    assert empty.embeddings.shape == (0, 24) and empty.computed == 0
    with pytest.raises(embedstore.BackboneError, match="a list of strings, not one string"):
        text_embeddings(st, "tulip", "tiny-clip-text")
    assert embedstore.check(st.path).ok
    assert "text_embeddings" in [t["table"] for t in embedstore.check(st.path).tables]


def test_a_column_from_before_towers_were_recorded_derives_its_tower(tmp_path, two_tower_store):
    st = embedstore.connect(_copy(two_tower_store, tmp_path), create=False)
    before = text_embeddings(st, PROMPTS, "tiny-clip-text", device="cpu")
    # rewrite the column's description as an older embedstore wrote it: no text_tower
    ds = lance.dataset(str(st.path / "images.lance"))
    md = {k.decode(): v.decode() for k, v in ds.schema.field("emb_tiny_clip_text").metadata.items()}
    desc = json.loads(md["embedstore"])
    desc.pop("text_tower")
    md["embedstore"] = json.dumps(desc)
    ds.update_field_metadata({"emb_tiny_clip_text": md}, replace=True)
    info = st.resolve_backbone("tiny-clip-text")
    assert "text_tower" not in info.describe
    ref = text_tower_ref(info.describe)
    assert (ref.kind, ref.recorded, ref.dim) == ("clip", False, None)
    # derived from the same recorded weights: the same cache entries serve it
    after = text_embeddings(st, PROMPTS, "tiny-clip-text", device="cpu")
    assert (after.model, after.cached, after.computed) == (before.model, 3, 0)
    row = next(b for b in st.info().backbones if b["name"] == "tiny-clip-text")
    assert row["text_tower"]["recorded"] is False and row["text_tower"]["cached_texts"] == 3


def test_concurrent_writers_leave_one_row_per_prompt(tmp_path, two_tower_store):
    path = _copy(two_tower_store, tmp_path)
    results, errors = [], []

    def embed():
        try:
            results.append(embedstore.embed_texts(path, PROMPTS, "tiny-clip-text", device="cpu"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=embed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)
    assert embedstore.connect(path).text_cache.count() == 3


def test_another_process_writing_the_store_only_skips_caching(tmp_path, two_tower_store):
    path = _copy(two_tower_store, tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, embedstore\n"
            f"with embedstore.connect({str(path)!r}).writing('a long ingest'):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.warns(UserWarning, match="not cached.*being written by PID"):
            res = text_embeddings(path, PROMPTS, "tiny-clip-text", device="cpu")
        assert (res.computed, res.stored) == (3, False) and res.embeddings.shape == (4, 12)
        assert embedstore.connect(path).text_cache.count() == 0
    finally:
        holder.communicate("", timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = text_embeddings(path, PROMPTS, "tiny-clip-text", device="cpu")
    assert (res.computed, res.stored) == (3, True)
    assert embedstore.connect(path).text_cache.count() == 3


# ---------------------------------------------------------------------- no text tower


def test_an_image_only_column_says_in_one_line_which_backbones_have_a_tower(photo_store):
    with pytest.raises(embedstore.BackboneError) as e:
        embedstore.embed_texts(photo_store, ["a daisy"])
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, embedstore.errors.BadInput)
    assert msg.startswith("column emb_tiny_dino (tiny-dino) has no text tower: tiny-dino is an "
                          "image-only model (model type dinov2). Backbones with one: ")  # fmt: skip
    assert "clip-vit-b-16" in msg and "siglip2-so400m" in msg and "dinov2-small" not in msg
    assert not (photo_store / "text_embeddings.lance").exists()
    with pytest.raises(embedstore.BackboneError, match="^efficientnet-lite0 has no text tower"):
        text_tower("efficientnet-lite0")
    with pytest.raises(embedstore.BackboneError, match="^dinov2-small has no text tower"):
        text_tower("dinov2-small")
    out = CliRunner().invoke(embedstore_cli, ["embed-texts", "a daisy", "--store", photo_store])
    assert out.exit_code == 2 and "has no text tower" in out.output
    info = CliRunner().invoke(embedstore_cli, ["info", "--store", photo_store]).output
    assert "text     none (an image-only model: no text tower)" in info


def test_a_column_pooled_with_mean_is_not_in_the_text_space(tiny_clip_text):
    describe = create_backbone(str(tiny_clip_text), pooling="mean").describe()
    assert "text_tower" not in describe
    with pytest.raises(embedstore.BackboneError, match="pooled with 'mean'.*pooling 'cls'"):
        text_tower(describe)
    assert create_backbone(str(tiny_clip_text)).describe()["text_tower"]["kind"] == "clip"


def test_the_registry_declares_which_backbones_have_a_text_tower():
    rows = {r["name"]: r for r in embedstore.list_backbones("*")}
    assert rows["clip-vit-b-16"]["text_tower"] == "clip"
    assert rows["siglip-base"]["text_tower"] == rows["siglip2-so400m"]["text_tower"] == "siglip"
    assert rows["efficientnet-lite0"]["text_tower"] is None
    assert rows["dinov3-vits16"]["text_tower"] is None
    assert sorted(embedstore.backbones.TEXT_TOWERS.list()) == ["clip", "siglip"]
    ref = text_tower("siglip2-base").ref  # nothing downloaded until it is used
    assert (ref.kind, ref.source) == ("siglip", "google/siglip2-base-patch16-224")
    out = CliRunner().invoke(embedstore_cli, ["backbones", "clip-vit-b-16"]).output
    assert " clip " in out.splitlines()[1]


# ---------------------------------------------------------------------- command line and photos


def test_embed_texts_command_and_info(tmp_path, two_tower_store):
    path = _copy(two_tower_store, tmp_path)
    args = ["embed-texts", *PROMPTS, "--store", str(path), "--backbone", "tiny-clip-text"]
    out = CliRunner().invoke(embedstore_cli, [*args, "--out", str(tmp_path / "t.npy")])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("4 text(s) -> 4 x 12 float32 (0 from the cache, 3 embedded)")
    T = np.load(tmp_path / "t.npy")
    column = embedstore.connect(path).resolve_backbone("tiny-clip-text")
    np.testing.assert_allclose(T, text_tower(column).encode(PROMPTS), atol=1e-6)
    res = json.loads(CliRunner().invoke(embedstore_cli, [*args, "--json"]).output)
    assert (res["cached"], res["computed"], res["dim"]) == (3, 0, 12)
    np.testing.assert_allclose(np.array(res["embeddings"], dtype=np.float32), T, atol=1e-6)
    info = CliRunner().invoke(embedstore_cli, ["info", "--store", str(path)]).output
    assert "text     clip text tower" in info and "3 text(s) cached" in info
    assert "text     siglip text tower" in info and "0 text(s) cached" in info


def test_real_photos_ingested_with_a_tiny_clip_record_its_text_tower(
    tmp_path, flowers, tiny_clip_text
):
    for d in sorted((flowers / "train").iterdir())[:3]:
        (tmp_path / "photos" / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:3]:
            shutil.copy(f, tmp_path / "photos" / d.name / f.name)
    s = embedstore.ingest(
        tmp_path / "photos", tmp_path / "s", backbones=[str(tiny_clip_text)], workers=0,
        progress=False,
    )  # fmt: skip
    assert s["new_images"] == 9
    st = embedstore.connect(tmp_path / "s", create=False)
    info = st.resolve_backbone(None)
    assert text_tower_ref(info.describe).recorded
    labels = sorted({p.parent.name for p in (tmp_path / "photos").rglob("*.jpg")})
    prompts = [f"a photo of a {n}" for n in labels]
    T = embedstore.embed_texts(st, prompts, device="cpu")  # (3, 12)
    X, cols = st.embeddings(None, labelled=True)  # (9, 24) float32 from float16
    S = text_tower(info).project_images(X) @ T.T  # (9, 3) cosines
    assert S.shape == (9, 3) and np.all(np.abs(S) <= 1 + 1e-5)
