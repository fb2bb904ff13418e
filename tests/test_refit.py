"""Refit: ``heads train --fold all --refit`` trains one model on every fold for the folds' median
best epoch, and the ensemble predicts with the folds, the refit or both; on real image files."""

from __future__ import annotations

import json
from statistics import median

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import heads_cli
from heads.runs._rundir import read_val
from heads.training._ensemble import fit_temperature
from tests.conftest import write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {
    "epochs": 20,
    "patience": 5,
    "hidden": 32,
    "lr": 3e-3,
    "batch_size": 16,
    "progress": False,
    "device": "cpu",
}


def _config(path):
    return json.loads((path / "config.json").read_text())


def test_refit_member_trains_on_every_fold_for_the_median_best_epoch(photo_store, tmp_path):
    out = tmp_path / "mlp"
    res = heads.train(
        photo_store, fold="all", head="mlp", out=out, refit=True, unknown="energy", **FAST
    )
    folds = [_config(out / f"fold{k}") for k in range(3)]
    refit = _config(out / "refit")
    best = [c["head_config"]["best_epoch"] for c in folds]
    # trained for the folds' median best epoch, every epoch run (no validation to stop on)
    assert refit["refit"]["fold_best_epochs"] == best
    assert res.refit.epochs == refit["refit"]["epochs"] == round(median(best))
    assert len(refit["head_config"]["history"]) == round(median(best))
    assert refit["head_config"]["epochs"] == round(median(best))
    # on every fold's rows (the held-out part stays out), with no validation rows
    _, t = embedstore.connect(photo_store).embeddings(None, columns=["fold"])
    in_folds = int(sum(f is not None and f >= 0 for f in t["fold"]))
    assert refit["n_train"] == in_folds == res.refit.metrics["n_train"] and refit["n_val"] == 0
    assert refit["fold"] is None and res.refit.run == str(out / "refit")
    # temperature and unknown threshold: the folds' mean
    temps = [fit_temperature(read_val(out / f"fold{k}"), folds[k]["classes"]) for k in range(3)]
    assert refit["temperature"] == pytest.approx(np.mean(temps))
    thresholds = [c["detector"]["config"]["threshold"] for c in folds]
    assert refit["detector"]["config"]["threshold"] == pytest.approx(np.mean(thresholds))
    # the default ensemble holds both, the refit weighing as much as the folds together
    ens = _config(out)
    assert ens["members"] == ["fold0", "fold1", "fold2", "refit"]
    assert ens["weights"] == [1.0, 1.0, 1.0, 3.0]
    assert ens["temperatures"][-1] == pytest.approx(np.mean(temps))
    assert res.ensemble_metrics.metrics["n"] == in_folds  # validation: the folds' out-of-fold rows
    assert res.ensemble_metrics.holdout["top1"] >= 0.75  # 4 classes: chance 0.25
    # reloaded, the ensemble (refit included) predicts new image files
    model = heads.load(out, "cpu")
    assert isinstance(model.members[-1], heads.Run) and model.members[-1].path.name == "refit"
    new = tmp_path / "new"
    write_class_images(new, n_classes=4, per_class=3, size=40, seed=7)
    preds = heads.predict(model, images_dir=new)
    right = [p.top_k[0]["label"] == p.path.split("/")[-2] for p in preds]  # closed-set answer
    assert len(preds) == 12 and sum(right) >= 9, [(p.path, p.top_k[0]) for p in preds]
    assert all(p.unknown is not None for p in preds)  # the members' detectors answer too
    # the refit alone predicts the same files too, after reload
    alone = heads.predict(out / "refit", images_dir=new)
    assert sum(p.top_k[0]["label"] == p.path.split("/")[-2] for p in alone) >= 9


def test_ensemble_refit_only_scores_on_the_folds_and_the_cli(photo_store, tmp_path):
    out = tmp_path / "r"
    r = CliRunner().invoke(
        heads_cli,
        [
            "train",
            "--store",
            str(photo_store),
            "--fold",
            "all",
            "--head",
            "linear",
            "--refit",
            "--ensemble",
            "refit",
            "--epochs",
            "15",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "refit on all folds:" in r.output and "-> " + str(out / "refit") in r.output
    ens = _config(out)
    assert ens["members"] == ["refit"] and ens["validation"] == ["fold0", "fold1", "fold2"]
    model = heads.load(out, "cpu")
    assert len(model.members) == 1
    e = heads.evaluate(out, plots=False)
    assert e.metrics["n"] == sum(len(read_val(out / f"fold{k}")["id"]) for k in range(3))
    assert e.holdout["top1"] >= 0.75


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fold", "0", "--refit"], "--refit needs --fold all"),
        (["--fold", "all", "--ensemble", "both"], "--ensemble both needs --refit"),
        (
            ["--fold", "0", "--head", "centroid", "--reference", "train+val"],
            "--reference train+val needs --fold all",
        ),
    ],
)
def test_refit_options_refused_with_one_clear_line(photo_store, tmp_path, args, message):
    r = CliRunner().invoke(
        heads_cli, ["train", "--store", str(photo_store), "--out", str(tmp_path / "x"), *args]
    )
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "x").exists()
