"""Multi-view embeddings: ``ingest --views`` stores augmented views beside the main embedding;
heads train on them as augmentation and predict with test-time augmentation (TTA)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lance
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

import embedstore
import heads
from cli import embedstore_cli
from heads._registry import create_head
from heads.runs._rundir import read_val
from heads.training._folds import _stack_views

VIEWS6 = ["flip", "crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"]


@pytest.fixture(scope="module")
def photos(flowers, tmp_path_factory) -> Path:
    """18 real flower photos: 3 classes x 6, as class folders."""
    root = tmp_path_factory.mktemp("photos") / "imgs"
    for c in ("bluebell", "daisy", "sunflower"):
        (root / c).mkdir(parents=True)
        for f in sorted((flowers / "train" / c).glob("*.jpg"))[:6]:
            shutil.copy(f, root / c / f.name)
    return root


def _ingest(root, store, backbone, **kw):
    return embedstore.ingest(
        root, store, backbones=[str(backbone)], workers=kw.pop("workers", 1), progress=False, **kw
    )


def _column(store: Path, column: str) -> dict[str, np.ndarray]:
    t = lance.dataset(str(store / "images.lance")).to_table(columns=["id", column])
    return {
        i: np.asarray(v, np.float32)
        for i, v in zip(t.column("id").to_pylist(), t.column(column).to_pylist(), strict=True)
    }


def test_views_are_stored_described_and_the_flip_view_is_the_flipped_file(
    tmp_path, photos, tiny_dino
):
    store = tmp_path / "s"
    s = _ingest(photos, store, tiny_dino, views="flip,crops5")  # forked decode worker makes them
    assert s.new_images == 18 and s.embedded == {"tiny-dino": 18}
    assert s.views == {"tiny-dino": dict.fromkeys(VIEWS6, 18)}
    ds = lance.dataset(str(store / "images.lance"))
    main = json.loads(ds.schema.field("emb_tiny_dino").metadata[b"embedstore"])
    assert main["views"] == VIEWS6  # which views, in which order
    for v in VIEWS6:
        f = ds.schema.field(f"emb_tiny_dino__{v}")
        assert f.type == ds.schema.field("emb_tiny_dino").type
        desc = json.loads(f.metadata[b"embedstore"])
        assert desc["view"] == v and desc["view_of"] == "emb_tiny_dino"
        assert ds.count_rows(filter=f"emb_tiny_dino__{v} IS NOT NULL") == 18
    st = embedstore.connect(store)
    assert list(st.embeddings_info()) == ["tiny-dino"]  # views are not backbones
    info = st.info().backbones[0]
    assert [(v["name"], v["embedded"]) for v in info["views"]] == [(v, 18) for v in VIEWS6]
    # the crops differ from the main view and from one another
    main_e, crops = (
        _column(store, "emb_tiny_dino"),
        [_column(store, f"emb_tiny_dino__{v}") for v in VIEWS6[1:]],
    )
    some = next(iter(main_e))
    assert len({main_e[some].tobytes(), *(c[some].tobytes() for c in crops)}) == 6

    # the flip view of an image equals the main embedding of the mirrored file (lossless PNG)
    src = sorted((photos / "daisy").glob("*.jpg"))[0]
    flipped = tmp_path / "flipped" / "daisy"
    flipped.mkdir(parents=True)
    ImageOps.mirror(Image.open(src).convert("RGB")).save(flipped / "f.png")
    _ingest(flipped.parent, tmp_path / "s2", tiny_dino)
    (want,) = _column(tmp_path / "s2", "emb_tiny_dino").values()
    got = _column(store, "emb_tiny_dino__flip")[embedstore.ingestion.hash_bytes(src.read_bytes())]
    np.testing.assert_array_equal(got, want)

    out = CliRunner().invoke(embedstore_cli, ["info", "--store", str(store)])
    assert out.exit_code == 0 and "views    flip (18 embedded), crop_tl (18 embedded)" in out.output


def test_adding_views_embeds_only_views_and_new_images_get_them(tmp_path, photos, tiny_dino):
    imgs = tmp_path / "imgs"
    shutil.copytree(photos / "daisy", imgs / "daisy")
    shutil.copytree(photos / "sunflower", imgs / "sunflower")
    store = tmp_path / "s"
    assert _ingest(imgs, store, tiny_dino).embedded == {"tiny-dino": 12}
    before = _column(store, "emb_tiny_dino")

    out = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(imgs),
            "--store",
            str(store),
            "--backbone",
            str(tiny_dino),
            "--views",
            "flip",
            "--workers",
            "1",
            "--json",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)
    assert s["embedded"] == {"tiny-dino": 0} and s["views"] == {"tiny-dino": {"flip": 12}}
    # every file is counted (all 12 were stored; they got their views)
    assert (s["files_found"], s["new_images"], s["already_stored"]) == (12, 0, 12)
    assert s["duplicates"] == 0 and s["skipped"] == 0
    after = _column(store, "emb_tiny_dino")
    assert all(np.array_equal(before[i], after[i]) for i in before)  # main not rewritten

    out = CliRunner().invoke(  # only the 5 new views; the summary names them with counts
        embedstore_cli,
        ["ingest", str(imgs), "--store", str(store), "--backbone", str(tiny_dino)]
        + ["--views", "flip,crops5", "--workers", "0", "--quiet"],
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith(
        "12 files: 0 new, 12 already stored, 0 duplicate names, 0 skipped; embedded "
        "tiny-dino: 0 images + 60 views (flip: 0, crop_tl: 12, crop_tr: 12, crop_bl: 12, "
        "crop_br: 12, crop_c: 12) in "
    ), out.output
    s = _ingest(imgs, store, tiny_dino, views=["flip", "crops5"])  # nothing left to embed
    assert s.embedded == {"tiny-dino": 0} and s.already_stored == 12
    assert set(s.views["tiny-dino"].values()) == {0}

    version = embedstore.connect(store).version
    s = _ingest(imgs, store, tiny_dino, views="flip,crops5")  # re-running: a no-op
    assert s.embedded == {"tiny-dino": 0} and set(s.views["tiny-dino"].values()) == {0}
    assert embedstore.connect(store).version == version

    shutil.copytree(photos / "bluebell", imgs / "bluebell")  # later images, no --views given
    s = _ingest(imgs, store, tiny_dino)
    assert s.new_images == 6 and s.views == {"tiny-dino": dict.fromkeys(VIEWS6, 6)}
    ds = lance.dataset(str(store / "images.lance"))
    assert all(ds.count_rows(filter=f"emb_tiny_dino__{v} IS NOT NULL") == 18 for v in VIEWS6)

    with pytest.raises(embedstore.IngestError, match="--views: unknown view 'rotate'; valid: "):
        _ingest(imgs, store, tiny_dino, views="flip,rotate")


@pytest.fixture(scope="module")
def views_store(photos, tiny_dino, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("stores") / "views"
    _ingest(photos, store, tiny_dino, views="flip,crops5")
    embedstore.split(store, folds=2, seed=0)
    return store


def test_tta_logits_are_the_mean_of_the_views_logits(views_store, tmp_path):
    heads.train(
        views_store,
        fold=0,
        head="linear",
        out=tmp_path / "run",
        epochs=5,
        device="cpu",
        progress=False,
    )
    run = heads.load(tmp_path / "run", device="cpu")
    assert run.config["views"] == {"train": VIEWS6, "tta": VIEWS6}
    cols = list(run.backbone_columns())
    assert cols == ["emb_tiny_dino", *(f"emb_tiny_dino__{v}" for v in VIEWS6)]
    st = embedstore.connect(views_store)
    embs, t = st.embedding_rows({c: 32 for c in cols}, ["id"])
    per_view = [run.head.logits(embs[c]) for c in cols]
    np.testing.assert_allclose(run.logits(embs), np.mean(per_view, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(per_view[0], per_view[1])  # the views do change the logits
    # the validation logits written at training time are the loaded run's TTA logits
    val = read_val(tmp_path / "run")
    pos = {i: k for k, i in enumerate(t["id"])}
    rows = [pos[i] for i in val["id"]]
    np.testing.assert_allclose(val["logits"], run.logits(embs)[rows], rtol=1e-4, atol=1e-5)

    heads.train(
        views_store,
        fold=0,
        head="linear",
        out=tmp_path / "plain",
        epochs=5,
        device="cpu",
        progress=False,
        views=False,
        tta=False,
    )
    plain = heads.load(tmp_path / "plain", device="cpu")
    assert plain.config["views"] == {"train": [], "tta": []}
    assert list(plain.backbone_columns()) == ["emb_tiny_dino"]

    # stored ids predict with TTA from the store and from resident rows (as the service keeps)
    ids = list(t["id"][:3])
    res = embedstore.Resident(
        st, [c for i in st.embeddings_info().values() for c in (i.column, *i.view_columns.values())]
    )
    a = heads.predict(run, ids=ids, device="cpu")
    b = heads.predict(run, ids=ids, device="cpu", resident=res)
    want = np.exp(run.logits(embs)[[pos[i] for i in ids]])
    want /= want.sum(axis=1, keepdims=True)
    for k, (pa_, pb) in enumerate(zip(a, b, strict=True)):
        assert pa_.error is None and pb.top_k == pa_.top_k
        assert pa_.top_k[0]["probability"] == pytest.approx(want[k].max(), rel=1e-5)


def test_a_run_trained_with_views_predicts_new_files_with_tta(views_store, photos, tmp_path):
    heads.train(
        views_store,
        fold=0,
        head="linear",
        out=tmp_path / "run",
        epochs=5,
        device="cpu",
        progress=False,
    )
    # new files (bytes the store has not seen): a re-encoded and a mirrored photo
    new = tmp_path / "new" / "daisy"
    new.mkdir(parents=True)
    src = sorted((photos / "daisy").glob("*.jpg"))
    Image.open(src[0]).convert("RGB").save(new / "a.png")
    ImageOps.mirror(Image.open(src[1]).convert("RGB")).save(new / "b.png")
    files = sorted(str(p) for p in new.iterdir())
    run = heads.load(tmp_path / "run", device="cpu")  # reloaded: predicts as it was trained
    on_the_fly = heads.predict(run, files, top_k=3, device="cpu", runtime="torch")
    assert all(p.error is None for p in on_the_fly)
    # the same files ingested: their stored views give the same answer by id
    copy = tmp_path / "copy"
    shutil.copytree(views_store, copy)
    _ingest(new.parent, copy, run.config["backbone"]["describe"]["source"])
    batch = embedstore.embed_inputs(
        embedstore.connect(copy),
        embedstore.read_inputs(files),
        {c: {**b["describe"], "dim": b["dim"]} for c, b in run.backbone_columns().items()},
    )
    assert batch.in_store.all()
    stored = heads.predict_embeddings(run, batch, top_k=3)
    for a, b in zip(on_the_fly, stored, strict=True):
        assert [t["label"] for t in a.top_k] == [t["label"] for t in b.top_k]
        np.testing.assert_allclose(
            [t["probability"] for t in a.top_k], [t["probability"] for t in b.top_k], rtol=1e-5
        )
    # and they are TTA answers: the main embedding alone gives other probabilities
    main_only = run.head.logits(batch.embeddings["emb_tiny_dino"])
    assert not np.allclose(main_only, run.logits(batch.embeddings))


@pytest.mark.parametrize("head", ["mlp", "knn"])
def test_training_learns_from_the_views(head):
    """Main embeddings of the training images are pure noise, their views carry the class:
    only a head that trains on the views classifies held-out images."""
    rng = np.random.default_rng(0)
    C, n, V, D = 4, 60, 3, 16
    centers = rng.normal(0, 4, (C, D))
    y = np.repeat(np.arange(C), n)
    X = rng.normal(0, 4, (C * n, D)).astype(np.float32)  # (N, D) noise
    views = (centers[y][:, None, :] + rng.normal(0, 1, (C * n, V, D))).astype(np.float32)
    Xt = (centers[y] + rng.normal(0, 1, (C * n, D))).astype(np.float32)
    kw = {"epochs": 40, "device": "cpu"} if head == "mlp" else {"k": 5}
    with_views = create_head(head, **kw)
    if head == "mlp":
        with_views.fit(X, y, X_views=views)
    else:  # heads without X_views train on every view as one more row (heads.train stacks them)
        Xs, ys, _ = _stack_views(X, views, y, {})
        with_views.fit(Xs, ys)
    without = create_head(head, **kw).fit(X, y)
    assert (with_views.predict(Xt) == y).mean() > 0.9
    assert (without.predict(Xt) == y).mean() < 0.5


def test_heads_train_says_which_views_it_used(views_store, tmp_path):
    """The command says that views and TTA were used (only config.json recorded it), and the
    result's JSON names them."""
    from click.testing import CliRunner

    from cli import heads_cli

    args = ["train", "--store", str(views_store), "--fold", "0", "--head", "linear"]
    args += ["--epochs", "2", "--device", "cpu", "--quiet", "--out"]
    out = CliRunner().invoke(heads_cli, [*args, str(tmp_path / "a")]).output
    assert "views: flip, crop_tl, crop_tr, crop_bl, crop_br, crop_c (training: yes, TTA: yes" in out
    off = CliRunner().invoke(heads_cli, [*args, str(tmp_path / "b"), "--no-tta", "--json"])
    assert json.loads(off.output)["views"] == {
        "train": ["flip", "crop_tl", "crop_tr", "crop_bl", "crop_br", "crop_c"],
        "tta": [],
    }
