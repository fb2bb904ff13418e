"""Several backbones in one head: ``heads train --backbone a --backbone b`` concatenates the
stored columns (each L2-normalised) or, for the transformer, makes one token per backbone; a
new image file is embedded with each backbone to predict it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import heads_cli
from embedstore.search import l2_normalize
from tests.conftest import write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {
    "epochs": 15,
    "hidden": 32,
    "batch_size": 16,
    "lr": 3e-3,
    "progress": False,
    "device": "cpu",
}
OPTIONS = {
    "mlp": FAST,
    "linear": {**FAST, "lr": 1e-2},
    "transformer": {
        **FAST,
        "epochs": 40,
        "patience": 0,
        "transformer_dim": 16,
        "transformer_heads": 2,
        "transformer_layers": 1,
    },
    "knn": {"k": 3, "progress": False, "device": "cpu"},
}


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory, tiny_dino, tiny_clip):
    """3 classes x 10 real JPEG files embedded with two tiny backbones (DINOv2 and CLIP)."""
    root = tmp_path_factory.mktemp("two")
    write_class_images(root / "imgs", n_classes=3, per_class=10, size=40)
    embedstore.ingest(
        root / "imgs",
        root / "s",
        backbones=[str(tiny_dino), str(tiny_clip)],
        workers=0,
        progress=False,
    )
    embedstore.split(root / "s", folds=2, seed=0)
    infos = embedstore.connect(root / "s").embeddings_info()
    assert len(infos) == 2
    return root / "s", list(infos.values())


@pytest.mark.parametrize("head", ["mlp", "linear", "knn", "transformer"])
def test_head_on_two_backbones_predicts_new_files(two_backbones, tmp_path, head):
    store, infos = two_backbones
    names = [i.backbone for i in infos]
    out = tmp_path / head
    heads.train(store, fold=0, head=head, backbone=names, out=out, **OPTIONS[head])
    cfg = json.loads((out / "config.json").read_text())
    assert [b["name"] for b in cfg["backbones"]] == names  # recorded in order
    run = heads.load(out, "cpu")
    assert list(run.backbone_columns()) == [i.column for i in infos]
    # the head's input: each backbone's embedding L2-normalised, side by side
    embs, _ = embedstore.connect(store).embedding_rows({i.column: i.dim for i in infos})
    X = run.head_input(embs)
    assert X.shape[1] == sum(i.dim for i in infos)
    np.testing.assert_allclose(X[:, : infos[0].dim], l2_normalize(embs[infos[0].column]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), np.sqrt(2), atol=1e-4)
    if head == "transformer":  # token fusion: one token per backbone
        assert cfg["head_config"]["token_dims"] == [i.dim for i in infos]
        assert len(run.head.model_.embeds) == 2
    # new files (not in the store) are embedded with both backbones and predicted
    new = tmp_path / "new"
    write_class_images(new, n_classes=3, per_class=2, size=40, seed=11)
    preds = heads.predict(out, images_dir=new, device="cpu")
    assert len(preds) == 6 and all(p.error is None for p in preds)
    right = sum(p.label == p.path.split("/")[-2] for p in preds)
    assert right >= 5, [(p.path, p.label) for p in preds]


def test_two_backbones_from_the_cli_and_clear_errors(two_backbones, tmp_path):
    store, infos = two_backbones
    a, b = (i.backbone for i in infos)
    out = tmp_path / "r"
    args = ["train", "--store", str(store), "--head", "centroid", "--fold", "all"]
    r = CliRunner().invoke(
        heads_cli, [*args, "--backbone", b, "--backbone", a, "--out", str(out), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "fold0" / "config.json").read_text())
    assert [x["name"] for x in cfg["backbones"]] == [b, a]  # the order given
    r = CliRunner().invoke(heads_cli, [*args, "--backbone", a, "--backbone", a])
    assert r.exit_code == 2 and "a backbone is named twice" in r.output, r.output
    r = CliRunner().invoke(heads_cli, [*args, "--backbone", a, "--backbone", "nope"])
    assert r.exit_code == 2 and "no embeddings for backbone 'nope'" in r.output, r.output


def test_views_of_two_backbones_train_and_predict_with_tta(
    two_backbones, tmp_path, tiny_dino, tiny_clip
):
    """With views stored for both backbones, a head on both trains on each view made as its
    main input is (both backbones' view, each L2-normalised, side by side) and averages the
    views' logits at prediction, for stored rows and new files alike."""
    src, infos = two_backbones
    store = tmp_path / "s"
    shutil.copytree(src, store)
    st = embedstore.connect(store)
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=3, per_class=10, size=40)  # the stored images' files
    s = embedstore.ingest(
        imgs,
        store,
        backbones=[str(tiny_dino), str(tiny_clip)],
        views="flip",
        workers=0,
        progress=False,
    )
    assert s.views == {i.backbone: {"flip": 30} for i in infos}  # only the views were made
    names = [i.backbone for i in infos]
    out = tmp_path / "r"
    heads.train(store, fold=0, head="mlp", backbone=names, out=out, **FAST)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["views"] == {"train": ["flip"], "tta": ["flip"]}
    run = heads.load(out, "cpu")
    flips = [f"{i.column}__flip" for i in infos]
    assert list(run.backbone_columns()) == [i.column for i in infos] + flips
    # TTA: the mean of the logits of the main input and of the flipped one, each concatenated
    embs, _ = st.embedding_rows(
        {
            c: i.dim
            for c, i in zip([*(i.column for i in infos), *flips], [*infos, *infos], strict=True)
        }
    )
    flipped = {i.column: embs[f] for i, f in zip(infos, flips, strict=True)}
    want = (run.head.logits(run.head_input(embs)) + run.head.logits(run.head_input(flipped))) / 2
    np.testing.assert_allclose(run.logits(embs), want, rtol=1e-4, atol=1e-5)
    # a new file is embedded with both backbones and both views, and predicted
    new = tmp_path / "new"
    write_class_images(new, n_classes=3, per_class=2, size=40, seed=11)
    preds = heads.predict(out, images_dir=new, device="cpu")
    assert len(preds) == 6 and all(p.error is None for p in preds)
    assert sum(p.label == p.path.split("/")[-2] for p in preds) >= 5
    # views of only one of the backbones: none are common, and asking for them says so
    with pytest.raises(heads.HeadsError, match="no views of every one of"):
        heads.train(src, fold=0, head="mlp", backbone=names, out=tmp_path / "x", views=True, **FAST)
