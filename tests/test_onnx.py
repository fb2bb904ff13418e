"""embedstore.backbones._onnx: ONNX Runtime gives torch's embeddings; exports are cached, verified
and rebuilt when stale or corrupt; the runtime is chosen per call and recorded in the store."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import embedstore
import heads
from cli import embedstore_cli
from embedstore.backbones import BackboneError, OnnxBackbone, resolve_runtime, with_runtime
from embedstore.backbones._onnx_export import (
    MANIFEST_FILE,
    MIN_COSINE,
    MIN_COSINE_INT8,
    MODEL_FILE,
    check_export,
    embedding_agreement,
    export_key,
)
from tests.conftest import write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"max_abs_diff": 1e-4}  # float32 forward passes, same weights, different kernels


def _photos(flowers: Path, n: int = 12) -> list[Path]:
    """One test photo per species (12)."""
    return [sorted(d.glob("*.jpg"))[0] for d in sorted((flowers / "test").iterdir())][:n]


def _embed(bb, files) -> np.ndarray:
    return embedstore.search.embed_images(
        bb, [embedstore.ingestion.decode_image(Path(f).read_bytes()) for f in files]
    )


def _assert_same(a: np.ndarray, b: np.ndarray, max_abs: float) -> None:
    stats = embedding_agreement(a, b)
    assert stats["min_cosine"] >= MIN_COSINE, stats
    assert stats["max_abs_diff"] <= max_abs, stats


# ---------------------------------------------------------------------- same embeddings


@pytest.mark.parametrize(
    "model, pooling",
    [("tiny_dino", "cls"), ("tiny_dino", "cls+mean"), ("tiny_clip", "cls")],
)
def test_onnx_gives_torch_embeddings_for_hf_backbones_on_real_photos(
    flowers, request, model, pooling
):
    folder = request.getfixturevalue(model)
    files = _photos(flowers)
    want = _embed(embedstore.create_backbone(str(folder), pooling).to("cpu"), files)
    bb = with_runtime(embedstore.create_backbone(str(folder), pooling), "onnx", "cpu")
    assert isinstance(bb, OnnxBackbone) and bb.runtime == "onnx"
    got = _embed(bb, files)  # (12, dim)
    assert got.shape == want.shape == (12, bb.dim)
    _assert_same(got, want, TOL["max_abs_diff"])


def test_efficientnet_ingest_runs_onnx_by_default_with_torch_embeddings(flowers, tmp_path):
    files = _photos(flowers)
    imgs = tmp_path / "imgs"
    for f in files:
        (imgs / f.parent.name).mkdir(parents=True)
        shutil.copy(f, imgs / f.parent.name / f.name)
    s = embedstore.ingest(imgs, tmp_path / "s", workers=1, progress=False)  # every default
    assert s.runtimes == {"efficientnet-lite0": "onnx"} and s.new_images == 12
    st = embedstore.connect(tmp_path / "s")
    info = st.embeddings_info()["efficientnet-lite0"]
    assert info.describe["runtime"] == "onnx" and info.describe["versions"]["onnxruntime"]
    X, cols = st.embeddings("efficientnet-lite0", columns=["path"])  # float16, as stored
    stored = dict(zip(cols["path"], X, strict=True))
    torch_bb = embedstore.create_backbone("efficientnet-lite0").to("cpu")
    want = _embed(torch_bb, files)  # float32, torch eager
    got = np.stack([stored[f"{f.parent.name}/{f.name}"] for f in files])
    _assert_same(got, want, 5e-3)  # float16 storage rounds about 1e-3 at these magnitudes
    # and the float32 forward passes themselves agree to float32 precision
    onnx_bb = with_runtime(torch_bb, "onnx", "cpu")
    _assert_same(_embed(onnx_bb, files), want, TOL["max_abs_diff"])


# ---------------------------------------------------------------------- the export cache


@pytest.fixture(scope="module")
def dino_export(tiny_dino, onnx_cache) -> Path:
    """The tiny DINOv2's verified export, in the session's cache (tests damage copies of it)."""
    bb = with_runtime(embedstore.create_backbone(str(tiny_dino)), "onnx", "cpu")
    assert bb.path.parent.parent == onnx_cache
    return bb.path.parent


def test_an_export_is_reused_and_keyed_by_weights_pooling_and_size(tiny_dino, dino_export):
    manifest = json.loads((dino_export / MANIFEST_FILE).read_text())
    assert manifest["check"]["min_cosine"] >= MIN_COSINE
    bb = embedstore.create_backbone(str(tiny_dino))
    key = export_key(bb)
    assert manifest["key"] == key and key["weights_sha256"] == bb.weights_sha256
    assert (key["pooling"], key["input_size_px"]) == ("cls", 32)
    stamp = (dino_export / MODEL_FILE).stat().st_mtime_ns
    again = with_runtime(bb, "onnx", "cpu", cache_dir=dino_export.parent)
    assert again.path == dino_export / MODEL_FILE
    assert (dino_export / MODEL_FILE).stat().st_mtime_ns == stamp  # not exported again
    other = export_key(embedstore.create_backbone(str(tiny_dino), "mean"))
    assert other != key  # another pooling is another export


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("flip a byte of the weights", "model.onnx.data does not match the SHA-256"),
        ("truncate the graph", "model.onnx does not match the SHA-256"),
        ("delete the weights", "model.onnx.data is missing"),
        ("no manifest", "no manifest (an interrupted export)"),
        ("manifest of other versions", "describes another model or library versions (stale)"),
    ],
)
def test_a_stale_or_corrupt_export_is_named(dino_export, tiny_dino, tmp_path, damage, problem):
    folder = tmp_path / dino_export.name
    shutil.copytree(dino_export, folder)
    key = export_key(embedstore.create_backbone(str(tiny_dino)))
    assert check_export(folder, key) is None
    data, graph, manifest = folder / "model.onnx.data", folder / MODEL_FILE, folder / MANIFEST_FILE
    if damage == "flip a byte of the weights":
        b = bytearray(data.read_bytes())
        b[len(b) // 2] ^= 0xFF
        data.write_bytes(bytes(b))
    elif damage == "truncate the graph":
        graph.write_bytes(graph.read_bytes()[:-100])
    elif damage == "delete the weights":
        data.unlink()
    elif damage == "no manifest":
        manifest.unlink()
    else:
        m = json.loads(manifest.read_text())
        m["key"]["torch"] = "1.0.0"
        manifest.write_text(json.dumps(m))
    assert problem in check_export(folder, key)


def test_a_corrupt_export_is_rebuilt_never_trusted(dino_export, tiny_dino, flowers, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(dino_export, cache / dino_export.name)
    data = cache / dino_export.name / "model.onnx.data"
    b = bytearray(data.read_bytes())
    b[len(b) // 2 : len(b) // 2 + 64] = bytes(64)  # zeroed weights: loads fine, embeds wrong
    data.write_bytes(bytes(b))
    with pytest.warns(RuntimeWarning, match="corrupt or edited.*exporting it again"):
        bb = with_runtime(
            embedstore.create_backbone(str(tiny_dino)), "onnx", "cpu", cache_dir=cache
        )
    key = export_key(embedstore.create_backbone(str(tiny_dino)))
    assert check_export(cache / dino_export.name, key) is None  # sound again
    files = _photos(flowers, 4)
    want = _embed(embedstore.create_backbone(str(tiny_dino)).to("cpu"), files)
    _assert_same(_embed(bb, files), want, TOL["max_abs_diff"])


class _Plugin(embedstore.Backbone):
    """A small plug-in backbone (conv + mean) whose forward can be made unexportable or random."""

    prefers_onnx_on_cpu = True  # so that "auto" tries ONNX Runtime for it

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Conv2d(3, 8, 4, stride=4).eval().requires_grad_(False)
        self.kind, self.name, self.dim = kind, f"plugin-{kind}", 8
        self.source, self.weights_sha256 = "test", "unknown"  # fingerprinted from its tensors
        self.preprocess = embedstore.backbones.Preprocess(32, 32)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x).mean(dim=(2, 3))  # (B, 8)
        if self.kind == "random":
            return y + torch.randn_like(y)  # no export can reproduce torch's draws
        if self.kind == "data-dependent" and float(y.sum()) > 0:  # python branch on a value
            return -y
        return y


@pytest.mark.parametrize(
    "kind, message",
    [("random", "differs from torch"), ("data-dependent", "cannot export plugin-data-dependent")],
)
def test_a_backbone_onnx_cannot_reproduce_falls_back_to_torch_under_auto(tmp_path, kind, message):
    with pytest.warns(RuntimeWarning, match=f"{message}.*running plugin-{kind} with torch"):
        bb = with_runtime(_Plugin(kind), "auto", "cpu", cache_dir=tmp_path)
    assert bb.runtime == "torch" and bb.describe()["runtime"] == "torch"
    with pytest.raises(embedstore.BackboneError, match=message):
        with_runtime(_Plugin(kind), "onnx", "cpu", cache_dir=tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written is kept


def test_an_unwritable_cache_runs_torch_under_auto_and_says_so_under_onnx(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    cache = tmp_path / "a-file" / "cache"
    with pytest.warns(RuntimeWarning, match="cannot write the ONNX export.*EMBEDSTORE_CACHE"):
        assert with_runtime(_Plugin("plain"), "auto", "cpu", cache_dir=cache).runtime == "torch"
    with pytest.raises(embedstore.BackboneError, match="set EMBEDSTORE_CACHE to a writable"):
        with_runtime(_Plugin("plain"), "onnx", "cpu", cache_dir=cache)


def test_a_plugin_that_exports_cleanly_runs_onnx(tmp_path):
    bb = with_runtime(_Plugin("plain"), "auto", "cpu", cache_dir=tmp_path)
    assert bb.runtime == "onnx"
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    _assert_same(bb.embed(x).numpy(), _Plugin("plain").embed(x).numpy(), 1e-5)


# ---------------------------------------------------------------------- choosing the runtime


def test_runtime_choice_is_resolved_once_with_a_clear_message(tiny_dino):
    assert resolve_runtime("auto", "cpu") == "onnx"  # onnxruntime is a dependency
    # auto: ONNX Runtime for the backbones it runs faster (the conv net), torch for transformers
    effnet, dino = (
        embedstore.create_backbone("efficientnet-lite0"),
        embedstore.create_backbone(str(tiny_dino)),
    )
    assert resolve_runtime("auto", "cpu", effnet) == "onnx"
    assert (
        resolve_runtime("auto", "cpu", dino) == "torch" == with_runtime(dino, "auto", "cpu").runtime
    )
    assert resolve_runtime("onnx", "cpu", dino) == "onnx"
    assert resolve_runtime("torch", "cpu") == "torch"
    assert resolve_runtime("onnx", "cpu") == "onnx"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; valid: auto, torch, onnx"):
        resolve_runtime("tensorrt", "cpu")
    bb = with_runtime(embedstore.create_backbone("efficientnet-lite0"), "torch", "cpu")
    assert type(bb) is not OnnxBackbone and bb.describe()["runtime"] == "torch"


def test_ingest_records_the_runtime_and_a_column_extended_by_another_lists_both(
    tmp_path, tiny_dino
):
    imgs, more = tmp_path / "imgs", tmp_path / "more"
    write_class_images(imgs, n_classes=2, per_class=3, size=40)
    write_class_images(more, n_classes=2, per_class=2, size=40, seed=5)
    kw = dict(backbones=[str(tiny_dino)], workers=0, progress=False)
    s = embedstore.ingest(imgs, tmp_path / "s", runtime="onnx", **kw)
    assert s.runtimes == {"tiny-dino": "onnx"}
    st = embedstore.connect(tmp_path / "s")
    describe = st.embeddings_info()["tiny-dino"].describe
    assert describe["runtime"] == "onnx" and "runtimes" not in describe
    s = embedstore.ingest(more, tmp_path / "s", runtime="torch", **kw)
    assert s.runtimes == {"tiny-dino": "torch"} and s.new_images == 4
    describe = st.embeddings_info()["tiny-dino"].describe
    assert describe["runtime"] == "onnx" and describe["runtimes"] == ["onnx", "torch"]
    # the description still rebuilds the backbone, with no weights warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = embedstore.backbones.backbone_from_description(describe)
    assert rebuilt.weights_sha256 == describe["weights_sha256"]
    # the same images embedded by each runtime agree (as stored, float16)
    embedstore.ingest(imgs, tmp_path / "t", runtime="torch", **kw)
    X1, c1 = st.embeddings("tiny-dino", columns=["id"])
    X2, c2 = embedstore.connect(tmp_path / "t").embeddings("tiny-dino", columns=["id"])
    by_id = dict(zip(c1["id"], X1, strict=True))
    _assert_same(np.stack([by_id[i] for i in c2["id"]]), X2, 5e-3)


def test_cli_runtime_option_on_ingest_and_its_message(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=2, size=40)
    args = [
        "ingest",
        str(imgs),
        "--store",
        str(tmp_path / "s"),
        "--backbone",
        str(tiny_dino),
        "--workers",
        "0",
        "--quiet",
    ]
    r = CliRunner().invoke(embedstore_cli, [*args, "--runtime", "tensorrt"])
    assert r.exit_code == 2 and "'tensorrt' is not one of 'auto', 'torch', 'onnx'" in r.output
    r = CliRunner().invoke(embedstore_cli, [*args, "--runtime", "torch", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["runtimes"] == {"tiny-dino": "torch"}
    r = CliRunner().invoke(embedstore_cli, [*args, "--runtime", "onnx"])
    assert r.exit_code == 0 and "on cpu, onnx" in r.output  # nothing new, still says what ran
    r = CliRunner().invoke(embedstore_cli, [*args])
    assert r.exit_code == 0 and "on cpu, torch" in r.output  # auto: torch for a transformer


def test_lookup_and_predict_embed_new_images_alike_with_either_runtime(tmp_path, tiny_dino):
    imgs, new = tmp_path / "imgs", tmp_path / "new"
    write_class_images(imgs, n_classes=2, per_class=6, size=40)
    write_class_images(new, n_classes=2, per_class=2, size=40, seed=42)  # not in the store
    queries = sorted(str(p) for p in new.rglob("*.jpg"))
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    res = {
        rt: embedstore.lookup(tmp_path / "s", queries, k=3, runtime=rt) for rt in ("torch", "onnx")
    }
    for a, b in zip(res["torch"].results, res["onnx"].results, strict=True):
        assert not a.in_store and [n["id"] for n in a.neighbors] == [n["id"] for n in b.neighbors]
        sims = [n["similarity"] for n in a.neighbors], [n["similarity"] for n in b.neighbors]
        np.testing.assert_allclose(*sims, atol=1e-4)
    embedstore.split(tmp_path / "s", folds=2, seed=0)
    heads.train(tmp_path / "s", fold=0, head="centroid", out=tmp_path / "r", progress=False)
    cache: dict = {}
    pred = {
        rt: heads.predict(tmp_path / "r", queries, runtime=rt, backbones=cache)
        for rt in ("onnx", "torch")
    }
    assert next(iter(cache.values())).runtime == "torch"  # the cached onnx one was rebuilt
    for a, b in zip(pred["onnx"], pred["torch"], strict=True):
        assert a.label == b.label
        pa, pb = [t["probability"] for t in a.top_k], [t["probability"] for t in b.top_k]
        np.testing.assert_allclose(pa, pb, atol=1e-3)


# ---------------------------------------------------------------------- fused DINOv2, int8


def _layerscaled_dino(folder: Path, swiglu: bool) -> Path:
    """A tiny DINOv2 whose LayerScale is not 1 (as in real checkpoints) and whose position
    embedding is interpolated (trained at 48 px, run at 32): what the fused export folds."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=8,
        image_size=48,
        use_swiglu_ffn=swiglu,
    )
    torch.manual_seed(1)
    model = Dinov2Model(cfg)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.05, 0.5)
            layer.layer_scale2.lambda1.uniform_(0.05, 0.5)
    model.save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scaled_dino(tmp_path_factory) -> Path:
    return _layerscaled_dino(tmp_path_factory.mktemp("models") / "scaled-dino", swiglu=False)


@pytest.mark.parametrize("swiglu, pooling", [(False, "cls"), (False, "cls+mean"), (True, "mean")])
def test_dinov2_exports_its_fused_graph_with_torch_embeddings(
    flowers, tmp_path, scaled_dino, swiglu, pooling
):
    folder = _layerscaled_dino(tmp_path / "m", swiglu) if swiglu else scaled_dino
    files = _photos(flowers)
    want = _embed(embedstore.create_backbone(str(folder), pooling).to("cpu"), files)
    bb = with_runtime(
        embedstore.create_backbone(str(folder), pooling),
        "onnx",
        "cpu",
        cache_dir=tmp_path / "cache",
    )
    manifest = json.loads((bb.path.parent / MANIFEST_FILE).read_text())
    assert manifest["key"]["graph"] == "fused" and "optimize_model" in manifest["exporter"]
    assert manifest["fusions"].get("Attention", 0) >= 1, manifest["fusions"]  # what makes it fast
    got = _embed(bb, files)
    assert got.shape == want.shape == (12, bb.dim)
    _assert_same(got, want, TOL["max_abs_diff"])


def test_onnx_int8_is_opt_in_quantised_and_close_to_torch_on_real_photos(
    flowers, tmp_path, scaled_dino
):
    files = _photos(flowers)
    want = _embed(embedstore.create_backbone(str(scaled_dino)).to("cpu"), files)
    assert resolve_runtime("auto", "cpu", embedstore.create_backbone(str(scaled_dino))) == "torch"
    bb = with_runtime(
        embedstore.create_backbone(str(scaled_dino)), "onnx-int8", "cpu", cache_dir=tmp_path
    )
    assert isinstance(bb, OnnxBackbone) and bb.runtime == bb.describe()["runtime"] == "onnx-int8"
    manifest = json.loads((bb.path.parent / MANIFEST_FILE).read_text())
    assert manifest["key"]["precision"] == "int8" and manifest["quantized"]["MatMulInteger"] > 0
    assert manifest["check"]["min_cosine_required"] == MIN_COSINE_INT8
    stats = embedding_agreement(_embed(bb, files), want)
    # close to torch, but not torch's float32 vectors: that is why it is opt-in and recorded
    assert stats["min_cosine"] >= MIN_COSINE_INT8 and stats["max_abs_diff"] > 1e-4, stats
    fp32 = with_runtime(
        embedstore.create_backbone(str(scaled_dino)), "onnx", "cpu", cache_dir=tmp_path
    )
    assert fp32.path.parent != bb.path.parent  # its own cache folder, built from the fp32 one
    assert check_export(bb.path.parent, manifest["key"]) is None
    # a convolutional net has nothing to quantise: refused with what to use instead
    effnet = embedstore.create_backbone("efficientnet-lite0")
    with pytest.raises(BackboneError, match="onnx-int8.*use --runtime onnx"):
        with_runtime(effnet, "onnx-int8", "cpu")
    # an ONNX backbone is not re-exported under another precision
    with pytest.raises(BackboneError, match="built for onnx; build it again"):
        with_runtime(fp32, "onnx-int8", "cpu")


def test_an_int8_column_is_recorded_queried_alike_and_mixing_is_warned(tmp_path, scaled_dino):
    imgs, more, new = tmp_path / "imgs", tmp_path / "more", tmp_path / "new"
    write_class_images(imgs, n_classes=2, per_class=5, size=48)
    write_class_images(more, n_classes=2, per_class=2, size=48, seed=5)
    write_class_images(new, n_classes=2, per_class=1, size=48, seed=9)  # not in the store
    kw = dict(backbones=[str(scaled_dino)], workers=0, progress=False)
    s = embedstore.ingest(imgs, tmp_path / "s", runtime="onnx-int8", **kw)
    assert s.runtimes == {"scaled-dino": "onnx-int8"} and not s.warnings
    st = embedstore.connect(tmp_path / "s")
    assert st.embeddings_info()["scaled-dino"].describe["runtime"] == "onnx-int8"
    # a new photo looked up with runtime auto is embedded as the column was: by onnx-int8
    queries = sorted(str(p) for p in new.rglob("*.jpg"))
    cache: dict = {}
    res = embedstore.lookup(tmp_path / "s", queries, k=3, backbones=cache)
    assert not res.results[0].in_store
    assert [b.runtime for b in cache.values()] == ["onnx-int8"]
    # extending the int8 column with float32 embeddings works, says so and is recorded
    s = embedstore.ingest(more, tmp_path / "s", runtime="torch", **kw)
    assert s.new_images == 4
    assert any("mixes both" in w and "onnx-int8" in w for w in s.warnings), s.warnings
    assert st.embeddings_info()["scaled-dino"].describe["runtimes"] == ["onnx-int8", "torch"]
    assert st.info().backbones[0]["runtimes"] == ["onnx-int8", "torch"]
    r = CliRunner().invoke(embedstore_cli, ["info", "--store", str(tmp_path / "s")])
    assert r.exit_code == 0 and "14 embedded by onnx-int8 + torch" in r.output, r.output


def test_cli_runtime_onnx_int8_on_a_conv_net_is_a_user_error(tmp_path):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=1, size=40)
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(imgs),
            "--store",
            str(tmp_path / "s"),
            "--runtime",
            "onnx-int8",
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert r.exit_code == 2, r.output
    assert "onnx-int8" in r.output and "use --runtime onnx" in r.output
    assert not (tmp_path / "s" / "images.lance").exists()  # refused before anything was written


def test_the_service_embeds_uploads_for_an_int8_column_with_int8(tmp_path, scaled_dino):
    import embedstore_service as service
    from fastapi.testclient import TestClient

    imgs, new = tmp_path / "imgs", tmp_path / "new"
    write_class_images(imgs, n_classes=2, per_class=4, size=48)
    write_class_images(new, n_classes=1, per_class=1, size=48, seed=9)
    embedstore.ingest(
        imgs,
        tmp_path / "s",
        backbones=[str(scaled_dino)],
        runtime="onnx-int8",
        workers=0,
        progress=False,
    )
    photo = next(new.rglob("*.jpg"))
    want = embedstore.lookup(tmp_path / "s", [str(photo)], k=3, runtime="onnx-int8").results[0]
    torch_sims = [
        n["similarity"]
        for n in embedstore.lookup(tmp_path / "s", [str(photo)], k=3, runtime="torch")
        .results[0]
        .neighbors
    ]
    app = service.create_app(service.Settings(store=str(tmp_path / "s"), runs=str(tmp_path / "r")))
    with TestClient(app) as c:
        assert c.get("/v1/backbones").json()["store"][0]["runtime"] is None  # not loaded yet
        r = c.post("/v1/lookup", files=[("images", ("q.jpg", photo.read_bytes()))], data={"k": "3"})
        assert r.status_code == 200, r.text
        assert c.get("/v1/backbones").json()["store"][0]["runtime"] == "onnx-int8"
        # batches of every size: the service's sessions keep no arena (RESULTS, "Service")
        (bb,) = app.state.service.raw_backbones()
        assert bb.session.get_session_options().enable_cpu_mem_arena is False
    got = r.json()[0]["neighbors"]
    assert [n["id"] for n in got] == [n["id"] for n in want.neighbors]
    sims = [n["similarity"] for n in got]
    np.testing.assert_allclose(sims, [n["similarity"] for n in want.neighbors], atol=1e-6)
    assert np.abs(np.subtract(sims, torch_sims)).max() > 1e-6  # and not as torch would embed it


def test_onnx_int8_quantises_a_transformer_without_a_fused_form(flowers, tmp_path, tiny_clip):
    """CLIP has no fused export: its generic export's matrix multiplies are quantised."""
    files = _photos(flowers)
    want = _embed(embedstore.create_backbone(str(tiny_clip)).to("cpu"), files)
    bb = with_runtime(
        embedstore.create_backbone(str(tiny_clip)), "onnx-int8", "cpu", cache_dir=tmp_path
    )
    manifest = json.loads((bb.path.parent / MANIFEST_FILE).read_text())
    assert manifest["key"]["graph"] == "generic" and manifest["quantized"]["MatMulInteger"] > 0
    assert embedding_agreement(_embed(bb, files), want)["min_cosine"] >= MIN_COSINE_INT8
