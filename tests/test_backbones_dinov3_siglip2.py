"""DINOv3 and SigLIP 2 in the backbone registry: short names, licence and gating recorded in the
column metadata, tiny models built from their configs embedding real photos, ONNX Runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import embedstore
from cli import embedstore_cli
from embedstore.backbones import OnnxBackbone, with_runtime
from embedstore.backbones._backbones import FAMILY_LICENSES
from embedstore.backbones._onnx_export import MIN_COSINE, embedding_agreement
from tests.conftest import TINY_TEXT, TINY_VISION

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory) -> Path:
    """A tiny random DINOv3 ViT (4 register tokens, RoPE) saved with save_pretrained."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    d = tmp_path_factory.mktemp("models") / "tiny-dinov3"
    cfg = DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        patch_size=8,
        image_size=32,
        num_register_tokens=4,
    )
    torch.manual_seed(0)
    DINOv3ViTModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_siglip2(tmp_path_factory) -> Path:
    """A tiny random fixed-resolution SigLIP 2 (a SiglipModel, as google/siglip2-*-patch16-224)."""
    from transformers import SiglipConfig, SiglipModel

    d = tmp_path_factory.mktemp("models") / "tiny-siglip2"
    cfg = SiglipConfig(
        text_config=TINY_TEXT,
        vision_config={**TINY_VISION, "image_size": 32},
    )
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(d)
    return d


def _photo_dir(flowers: Path, root: Path, per_class: int = 3) -> Path:
    """A few real photos of three species, one folder per species."""
    for d in sorted((flowers / "train").iterdir())[:3]:
        (root / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:per_class]:
            shutil.copy(f, root / d.name / f.name)
    return root


def test_dinov3_and_siglip2_short_names_record_hub_id_licence_and_gating():
    rows = {r["name"]: r for r in embedstore.list_backbones("*")}
    d3 = rows["dinov3-vits16"]
    assert d3["source"] == "hf:facebook/dinov3-vits16-pretrain-lvd1689m"
    assert (d3["license"], d3["gated"]) == ("DINOv3 License", True)
    for n in ("dinov3-vitb16", "dinov3-vitl16", "dinov3-vith16plus", "dinov3-vit7b16"):
        assert rows[n]["gated"] is True and rows[n]["source"].startswith("hf:facebook/dinov3-vit")
    s2 = rows["siglip2-base"]
    assert s2["source"] == "hf:google/siglip2-base-patch16-224"
    assert (s2["license"], s2["gated"]) == ("Apache-2.0", False)
    assert rows["siglip2-so400m"]["source"] == "hf:google/siglip2-so400m-patch14-224"
    out = CliRunner().invoke(embedstore_cli, ["backbones", "dinov3*"]).output
    assert "dinov3-vits16" in out and "DINOv3 License (gated)" in out
    out = CliRunner().invoke(embedstore_cli, ["backbones", "siglip2*"]).output
    assert "siglip2-base " in out and "Apache-2.0" in out and "(gated)" not in out.split("\n")[0]


@pytest.mark.parametrize(
    "model, dim, prefix, license",
    [
        ("tiny_dinov3", 32, 5, ("DINOv3 License", True)),
        ("tiny_siglip2", 24, 0, ("Apache-2.0", False)),
    ],
)
def test_tiny_models_embed_real_photos_into_a_store_with_their_licence(
    flowers, tmp_path, request, model, dim, prefix, license
):
    folder = request.getfixturevalue(model)
    bb = embedstore.create_backbone(str(folder))
    assert bb.dim == dim and bb.n_prefix == prefix  # DINOv3: CLS + 4 registers before patches
    s = embedstore.ingest(
        _photo_dir(flowers, tmp_path / "photos"),
        tmp_path / "s",
        backbones=[str(folder)],
        runtime="torch",
        workers=0,
        progress=False,
    )
    assert s.new_images == 9
    st = embedstore.connect(tmp_path / "s", create=False)
    info = st.resolve_backbone(None)
    assert info.dim == dim
    assert (info.describe["license"], info.describe["gated"]) == license
    X, t = st.embeddings(info.backbone, columns=["label"], dtype="float32")
    assert X.shape == (9, dim) and np.isfinite(X).all() and np.linalg.norm(X, axis=1).min() > 0
    # different photos give different embeddings (the model reads the pixels)
    assert np.unique(X.round(4), axis=0).shape[0] == 9
    # the stored column rebuilds a backbone carrying the same licence
    again = embedstore.backbones.backbone_from_description(info.describe, warn=False)
    assert (again.license.name, again.license.gated) == license


def test_dinov3_mean_pooling_leaves_out_the_cls_and_register_tokens(tiny_dinov3):
    bb = embedstore.create_backbone(str(tiny_dinov3), "mean")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tokens = bb.model(pixel_values=bb.preprocess.normalize(x)).last_hidden_state  # (2, 1+4+16, 32)
    assert tokens.shape[1] == 1 + 4 + 16
    torch.testing.assert_close(bb.embed(x), tokens[:, 5:].mean(1))


def test_a_registered_entry_licence_wins_over_the_family_one(tiny_dinov3):
    from embedstore.backbones._backbones import HFBackbone

    src = str(tiny_dinov3)
    assert embedstore.create_backbone(src).license == FAMILY_LICENSES["dinov3_vit"]
    embedstore.register_backbone(
        "tiny-dinov3-custom",
        lambda name, pooling="cls": HFBackbone(name, src, pooling),
        source=src,
        license=embedstore.backbones.License("custom terms", False),
    )
    bb = embedstore.create_backbone("tiny-dinov3-custom")
    assert (bb.describe()["license"], bb.describe()["gated"]) == ("custom terms", False)


def test_naflex_siglip2_and_gated_weights_offline_fail_with_what_to_do(tmp_path, monkeypatch):
    from transformers import Siglip2Config, Siglip2Model

    cfg = Siglip2Config(
        text_config=TINY_TEXT,
        vision_config={**TINY_VISION, "num_patches": 16},
    )
    Siglip2Model(cfg).save_pretrained(tmp_path / "naflex")
    with pytest.raises(
        embedstore.BackboneError,
        match="NaFlex SigLIP 2 .* use a fixed-resolution one, e.g. `siglip2-base`",
    ):
        embedstore.create_backbone(str(tmp_path / "naflex"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(
        embedstore.BackboneError,
        match=r"HF_HUB_OFFLINE is set.*gated, DINOv3 License: accept the licence",
    ):
        embedstore.create_backbone("dinov3-vits16")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_dinov3", "tiny_siglip2"])
def test_onnx_runtime_gives_torch_embeddings_and_auto_keeps_torch(
    flowers, request, tmp_path, model
):
    folder = request.getfixturevalue(model)
    files = [sorted(d.glob("*.jpg"))[0] for d in sorted((flowers / "test").iterdir())][:6]
    images = [embedstore.ingestion.decode_image(Path(f).read_bytes()) for f in files]
    want = embedstore.search.embed_images(embedstore.create_backbone(str(folder)).to("cpu"), images)
    auto = with_runtime(embedstore.create_backbone(str(folder)), "auto", "cpu")
    assert auto.runtime == "torch"  # transformers measured no faster under ONNX Runtime
    bb = with_runtime(embedstore.create_backbone(str(folder)), "onnx", "cpu", cache_dir=tmp_path)
    assert isinstance(bb, OnnxBackbone) and bb.describe()["license"] == auto.describe()["license"]
    got = embedstore.search.embed_images(bb, images)
    assert got.shape == want.shape == (6, bb.dim)
    assert embedding_agreement(got, want)["min_cosine"] >= MIN_COSINE
