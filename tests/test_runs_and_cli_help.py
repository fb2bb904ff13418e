"""Runs you can trust and a CLI a newcomer enjoys: no silent overwrites, scripts that run, clear
scores, plots and help (one test per point of the issue)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import embedstore_cli, heads_cli
from heads.runs._rundir import read_config
from tests.conftest import make_synthetic_store, write_class_images

ROOT = Path(__file__).resolve().parents[1]
FAST = {"epochs": 6, "batch_size": 64, "progress": False, "device": "cpu"}
pytestmark = pytest.mark.usefixtures("one_thread")


# -------------------------------------------------------------- 1. no silent overwrites


def test_out_is_refused_unless_overwrite_then_replaced_whole(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(st, folds=3, seed=0)
    heads.train(st, fold="all", head="centroid", out=tmp_path / "r", progress=False)
    assert sorted(p.name for p in (tmp_path / "r").glob("fold*")) == ["fold0", "fold1", "fold2"]
    with pytest.raises(heads.HeadsError, match="a run is there already; give --overwrite"):
        heads.train(st, fold=0, head="knn", out=tmp_path / "r", progress=False)
    assert read_config(tmp_path / "r")["kind"] == "ensemble"  # untouched
    heads.train(st, fold=0, head="knn", out=tmp_path / "r", progress=False, overwrite=True)
    assert read_config(tmp_path / "r")["head"] == "knn"
    assert not list((tmp_path / "r").glob("fold*"))  # nothing of the old run is left
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_an_ensemble_refuses_a_member_that_changed(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(st, folds=2, seed=0)
    heads.train(st, fold=0, head="centroid", out=tmp_path / "a", progress=False)
    heads.train(st, fold=0, head="knn", out=tmp_path / "b", progress=False)
    heads.ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")
    heads.load(tmp_path / "ens")
    with pytest.raises(heads.HeadsError, match="there already; give --overwrite"):
        heads.ensemble([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")
    heads.train(st, fold=1, head="knn", out=tmp_path / "b", progress=False, overwrite=True)
    with pytest.raises(heads.HeadsError, match=r"member .*b changed since the ensemble was made"):
        heads.load(tmp_path / "ens")


def test_a_failed_training_leaves_no_partial_folder(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(st, folds=2, seed=0)

    def stop(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt  # as a kill between folds would

    with pytest.raises(KeyboardInterrupt):
        heads.train(
            st, fold="all", head="centroid", out=tmp_path / "r", progress=False, on_fold=stop
        )
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.partial-*"))


# -------------------------------------------------------------- 2. the README as a script


@pytest.mark.slow
def test_the_readme_python_section_runs_as_a_plain_script(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python") :]
    code = section[
        section.index("```python") + len("```python") : section.index(
            "```", section.index("```python") + 9
        )
    ]
    write_class_images(tmp_path / "photos", n_classes=3, per_class=8, size=64)
    shutil.copy(tmp_path / "photos" / "class_1" / "img_0.jpg", tmp_path / "photo.jpg")
    (tmp_path / "script.py").write_text(code)  # no `if __name__ == "__main__"` guard
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bootstrapping" not in r.stderr and "exited unexpectedly" not in r.stderr
    assert "class_1" in r.stdout.splitlines()[-2]  # the predicted label


# -------------------------------------------------------------- 3. offline backbones


def test_offline_hub_backbones_fail_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(
        embedstore.BackboneError,
        match="not in the local Hugging Face cache, and HF_HUB_OFFLINE is set",
    ):
        embedstore.create_backbone("dinov2-small")
    assert time.perf_counter() - t0 < 15
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    t0 = time.perf_counter()
    with pytest.raises(
        embedstore.BackboneError, match=r"hub \(http://127.0.0.1:9\) is unreachable"
    ):
        embedstore.create_backbone("dinov2-base")
    assert time.perf_counter() - t0 < 15


def test_backbones_says_which_are_here(tiny_dino):
    embedstore.register_backbone(
        "tiny-here",
        lambda name, pooling="cls": embedstore.create_backbone(str(tiny_dino)),
        source=str(tiny_dino),
    )
    try:
        rows = {r["name"]: r for r in embedstore.list_backbones()}
        assert rows["efficientnet-lite0"]["local"] and rows["tiny-here"]["local"]
        assert rows["dinov2-giant"]["local"] is False
        out = CliRunner().invoke(embedstore_cli, ["backbones"]).output
        assert re.search(r"efficientnet-lite0\s+here", out) and re.search(
            r"dinov2-giant\s+download", out
        )
        # a header names the columns; a licence not checked is said to be so, never "-"
        assert re.match(r"name\s+weights\s+licence\s+text\s+source", out)
        assert re.search(r"clip-vit-b-16\s+download\s+not stated", out) and " - " not in out
    finally:
        embedstore.BACKBONES._items.pop("tiny-here")


# -------------------------------------------------------------- 4. scores that mean what they say


def test_open_set_measures_are_named_and_defined(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=4, per_class=25, sep=1.5)
    embedstore.split(st, folds=2, seed=0)
    heads.train(st, fold=0, head="mlp", unknown="msp", out=tmp_path / "a", **FAST)
    heads.train(st, fold=0, head="centroid", out=tmp_path / "b", progress=False)
    m = heads.evaluate(tmp_path / "a", plots=False).metrics
    assert m["acc_without_rejection"] == pytest.approx(m["top1"])  # no unknown images here
    assert m["acceptance_rate"] + m["unknown_rate"] == pytest.approx(1.0)
    assert "closed_set_acc" not in m and 0 <= m["acc_on_accepted"] <= 1
    r = CliRunner().invoke(heads_cli, ["eval", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    header = next(line for line in r.output.splitlines() if " a " in f" {line} " and " b" in line)
    assert header.split() == ["a", "b"]  # one side-by-side table
    assert re.search(r"top1\s+\d\.\d{4}\s+\d\.\d{4}", r.output)
    assert re.search(r"acc_on_accepted\s+\d\.\d{4}\s+-", r.output)
    help_text = CliRunner().invoke(heads_cli, ["eval", "--help"]).output
    for key in ("acc_without_rejection", "acceptance_rate", "acc_on_accepted", "open_set_acc"):
        assert key in help_text


# -------------------------------------------------------------- 5. mixed ensembles


@pytest.mark.slow
def test_a_head_with_knn_is_not_below_its_best_member_on_flowers(flowers_store, tmp_path):
    store = tmp_path / "flowers"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=3, seed=0)
    mlp = heads.train(
        store,
        fold="all",
        head="mlp",
        out=tmp_path / "mlp",
        epochs=30,
        batch_size=128,
        progress=False,
        device="cpu",
    )
    knn = heads.train(store, fold="all", head="knn", out=tmp_path / "knn", progress=False)
    best = max(mlp.ensemble_metrics.metrics["top1"], knn.ensemble_metrics.metrics["top1"])
    ens = heads.ensemble([mlp.ensemble, knn.ensemble], tmp_path / "ens")  # calibrated by default
    assert ens.metrics["top1"] >= best, (ens.metrics["top1"], best)
    assert read_config(tmp_path / "ens")["calibrated"]


# -------------------------------------------------------------- 6. plots


def test_plots_name_the_run_start_at_zero_and_exist(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=4, per_class=25, sep=1.5)
    embedstore.split(st, folds=2, holdout=0.2, seed=0)
    res = heads.train(st, fold="all", head="mlp", out=tmp_path / "r", **FAST)
    e = res.ensemble_metrics
    for png in (
        e.per_class_png,
        e.holdout_per_class_png,
        e.confusion_png,
        tmp_path / "r" / "fold0" / "curves.png",
    ):
        assert png and Path(png).is_file() and Path(png).stat().st_size > 5000, png
    from heads.evaluation._evaluate import _plot_name

    assert _plot_name(tmp_path / "r", heads.load(tmp_path / "r")) == "r (ensemble of 2)"
    assert (
        _plot_name(tmp_path / "r" / "fold1", heads.load(tmp_path / "r" / "fold1"))
        == "r/fold1 (mlp, fold 1)"
    )


# -------------------------------------------------------------- 7. help and progress


def test_every_option_is_described_and_defaults_are_shown():
    for group in (embedstore_cli, heads_cli):
        for name, cmd in group.commands.items():
            for p in cmd.params:
                if getattr(p, "param_type_name", "") == "option" and p.name not in (
                    "help",
                    "version",
                ):
                    assert p.help, f"{group.name} {name} {p.opts[0]} has no help text"
    out = CliRunner().invoke(heads_cli, ["predict", "--help"]).output
    assert "[default: 5; x>=1]" in out and "[default: auto]" in out


def test_progress_names_the_fold_and_knn_reports_no_epochs(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(st, folds=2, seed=0)
    args = [
        "train",
        "--store",
        str(tmp_path / "s"),
        "--fold",
        "all",
        "--epochs",
        "60",
        "--device",
        "cpu",
        "--out",
    ]
    r = CliRunner().invoke(heads_cli, [*args, str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "mlp fold 1 (2/2)" in r.output and "stopped at epoch" in r.output
    r = CliRunner().invoke(
        heads_cli,
        [
            "train",
            "--store",
            str(tmp_path / "s"),
            "--head",
            "knn",
            "--out",
            str(tmp_path / "k"),
            "--quiet",
        ],
    )
    assert r.exit_code == 0 and "0 epochs" not in r.output and "epochs" not in r.output


# -------------------------------------------------------------- 8. predict --csv and --group-by


def test_predict_csv_and_group_by_folder(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=8, size=40)
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    embedstore.split(tmp_path / "s", folds=2, seed=0)
    heads.train(tmp_path / "s", fold=0, head="centroid", out=tmp_path / "r", progress=False)
    new = tmp_path / "specimen_7"
    new.mkdir()
    for i, src in enumerate(sorted((imgs / "class_1").glob("*.jpg"))[:3]):
        from PIL import Image

        Image.open(src).rotate(90 * (i + 1)).save(new / f"view_{i}.png")
    out_csv = tmp_path / "pred.csv"
    r = CliRunner().invoke(
        heads_cli,
        [
            "predict",
            str(tmp_path / "r"),
            "--images",
            str(new),
            "--group-by",
            "folder",
            "--csv",
            str(out_csv),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 and len({row["label"] for row in rows}) == 1  # one answer per specimen
    assert {row["group"] for row in rows} == {str(new)}
    assert set(rows[0]) >= {"path", "label", "probability", "unknown", "top_k"}
    single = heads.predict(tmp_path / "r", images_dir=new)
    grouped = heads.predict(tmp_path / "r", images_dir=new, group_by="folder")
    assert all(g.top_k == grouped[0].top_k for g in grouped)
    assert len({tuple(t["probability"] for t in p.top_k) for p in single}) > 1  # views differ alone


# -------------------------------------------------------------- 9. index freshness


def test_split_alone_keeps_the_saved_index_fresh(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.build_index(st)
    q = [f"{0:064x}"]
    assert embedstore.lookup(st, q, k=3).used_index
    embedstore.split(st, folds=2, seed=0)  # metadata only
    res = embedstore.lookup(st, q, k=3)
    assert res.used_index and not res.index_stale
    st.set_embeddings("emb_synthetic", [f"{1:064x}"], np.zeros((1, 16), np.float32))  # embeddings
    res = embedstore.lookup(st, q, k=3)
    assert not res.used_index and res.index_stale
