"""Self-distillation (``heads distill``): one head trained on a fold ensemble's probabilities
answers as the ensemble does on real flowers12 photos; what it trained on is recorded; the
neural heads' soft targets and sample weights behave as losses should."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import embedstore
import heads
from cli import heads_cli
from heads.losses import create_loss

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"epochs": 15, "hidden": 64, "lr": 3e-3, "batch_size": 64, "device": "cpu", "seed": 0}
TEST = "split = 'test'"


@pytest.fixture(scope="module")
def teacher(flowers_store, tmp_path_factory):
    """A 3-fold MLP ensemble on flowers12 (test photos held out)."""
    root = tmp_path_factory.mktemp("distill")
    shutil.copytree(flowers_store, root / "flowers")
    embedstore.split(root / "flowers", folds=3, seed=0, use_split_column=True)
    heads.train(root / "flowers", fold="all", out=root / "teacher", progress=False, **FAST)
    return root / "teacher"


@pytest.mark.slow
def test_distilled_head_answers_as_the_ensemble_on_most_real_photos(teacher, tmp_path):
    out = tmp_path / "student"
    student_settings = {k: v for k, v in FAST.items() if k != "epochs"}  # the teacher's
    res = heads.distill(teacher, out=out, unlabelled=TEST, progress=False, **student_settings)
    assert res.n_labelled == 719 and res.n_unlabelled == 240 and res.unlabelled == TEST
    assert res.holdout_agreement >= 0.93, res.holdout_agreement
    assert res.holdout["top1"] >= res.teacher_holdout["top1"] - 0.03
    assert res.holdout["top1"] >= 0.85
    student = heads.load(out, "cpu")
    assert isinstance(student, heads.Run)  # one model, not an ensemble
    cfg = json.loads((out / "config.json").read_text())
    d = cfg["distilled"]
    assert d["teacher"] == str(teacher.resolve()) and d["temperature"] == 2.0
    assert d["label_weight"] == 0.5 and d["n_unlabelled"] == 240
    assert cfg["n_train"] == 719 and cfg["n_val"] == 0 and cfg["fold"] is None
    # the teacher folds' median best epoch, every epoch run (nothing to stop on)
    best = [
        json.loads((teacher / f"fold{k}" / "config.json").read_text())["head_config"]["best_epoch"]
        for k in range(3)
    ]
    assert res.epochs == int(round(float(np.median(best)))) == len(cfg["head_config"]["history"])
    assert set(res.predict_seconds) == {"student", "teacher"}


@pytest.mark.slow
def test_cli_distill_and_its_errors(teacher, tmp_path):
    out = tmp_path / "s"
    args = ["distill", str(teacher), "--out", str(out), "--temperature", "3", "--epochs", "5"]
    args += ["--hidden", "32", "--device", "cpu", "--quiet", "--json"]
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["temperature"] == 3.0 and got["epochs"] == 5 and got["run"] == str(out)
    assert got["unlabelled"] == "label IS NULL" and got["n_unlabelled"] == 0
    r = CliRunner().invoke(heads_cli, ["distill", str(teacher), "--head", "knn", "--out", "x"])
    assert r.exit_code == 2 and "cannot learn soft targets" in r.output
    r = CliRunner().invoke(heads_cli, ["distill", str(teacher), "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_soft_one_hot_targets_train_as_the_labels_do():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0)
    kw = dict(epochs=5, hidden=16, batch_size=32, device="cpu", patience=0)
    hard = heads.create_head("mlp", **kw).fit(X, y)
    soft = heads.create_head("mlp", **kw).fit(X, y, soft_targets=np.eye(4)[y])
    assert np.allclose(hard.logits(X), soft.logits(X), atol=1e-4)
    ones = heads.create_head("mlp", **kw).fit(X, y, sample_weight=np.ones(len(y)))
    assert np.array_equal(hard.logits(X), ones.logits(X))
    with pytest.raises(ValueError, match="soft_targets must be"):
        heads.create_head("mlp", **kw).fit(X, y, soft_targets=np.eye(3)[y % 3])
    with pytest.raises(ValueError, match="summing to 1"):
        heads.create_head("mlp", **kw).fit(X, y, soft_targets=2 * np.eye(4)[y])


@pytest.mark.parametrize("loss", heads.list_losses())
def test_sample_weights_weigh_each_sample_like_class_weights(loss):
    torch.manual_seed(0)
    z, y = torch.rand(6, 4) * 2 - 1, torch.tensor([0, 1, 2, 3, 0, 1])  # cosines for ArcFace
    counts = torch.tensor([3.0, 2.0, 2.0, 2.0])
    fn = create_loss(loss, num_classes=4, class_counts=counts)
    per = create_loss(loss, num_classes=4, class_counts=counts, reduction="none")(z, y)
    w = torch.tensor([1.0, 0.5, 0.5, 1.0, 0.0, 2.0])
    assert torch.allclose(fn(z, y, w), (per * w).sum() / w.sum(), atol=1e-6)
    assert torch.allclose(fn(z, y, torch.ones(6)), fn(z, y), atol=1e-6)
    with pytest.raises(ValueError, match="sample_weight must be"):
        fn(z, y, torch.ones(5))
