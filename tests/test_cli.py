"""The command line: every command documents an example; JSON outputs keep their contracts."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import embedstore
from cli import embedstore_cli, heads_cli
from embedstore.errors import Conflict, NotFound
from tests.conftest import make_synthetic_store, write_class_images

COMMANDS = [(embedstore_cli, name) for name in embedstore_cli.commands] + [
    (heads_cli, name) for name in heads_cli.commands
]


@pytest.mark.parametrize("group,name", COMMANDS, ids=[n for _, n in COMMANDS])
def test_every_command_has_help_with_an_example(group, name):
    r = CliRunner().invoke(group, [name, "--help"])
    assert r.exit_code == 0 and "Example" in r.output, r.output


def test_lookup_and_index_json_contract(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=5)
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    query = str(imgs / "class_1" / "img_2.jpg")
    run = CliRunner().invoke
    r = run(embedstore_cli, ["lookup", query, "--store", str(tmp_path / "s"), "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.output)
    assert res["query"] == query and res["vote"]["label"] == "class_1"
    first = res["neighbors"][0]
    assert first["path"].endswith("class_1/img_2.jpg") and first["similarity"] == pytest.approx(
        1.0, abs=1e-3
    )
    assert {"path", "label", "similarity"} <= set(first) and len(res["neighbors"]) == 3
    r = run(embedstore_cli, ["index", "--store", str(tmp_path / "s"), "--kind", "exact", "--json"])
    assert r.exit_code == 0, r.output
    r = run(embedstore_cli, ["lookup", query, "--store", str(tmp_path / "s"), "--k", "2"])
    assert (
        r.exit_code == 0 and "index" in r.output.splitlines()[0] and "exact search" not in r.output
    )
    r = run(embedstore_cli, ["lookup", query, "--store", str(tmp_path / "s"), "--k", "50"])
    assert r.exit_code != 0 and "k=50" in r.output and "Traceback" not in r.output
    r = run(
        embedstore_cli, ["lookup", query, "--store", str(tmp_path / "s"), "--where", "label = = 1"]
    )
    assert r.exit_code != 0 and "--where" in r.output


def test_openset_json_contract(tmp_path):
    make_synthetic_store(tmp_path / "s", n_classes=8, per_class=30)
    r = CliRunner().invoke(
        heads_cli,
        [
            "openset",
            "--store",
            str(tmp_path / "s"),
            "--draws",
            "1",
            "--device",
            "cpu",
            "--detector",
            "mahalanobis",
            "--detector",
            "energy",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert {row["detector"] for row in rows} == {"mahalanobis", "energy"}
    by = {row["detector"]: row for row in rows}
    assert by["mahalanobis"]["auroc"] > 0.95  # held-out clusters are far from every class mean
    for row in rows:  # (logit detectors extrapolate: far-off clusters can get confident logits)
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr95"] <= 1.0 and row["draws"] == 1


def test_bare_unknown_attaches_the_default_detector(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=4, per_class=20)
    embedstore.split(st, folds=2, seed=0)
    r = CliRunner().invoke(
        heads_cli,
        [
            "train",
            "--store",
            str(tmp_path / "s"),
            "--fold",
            "0",
            "--head",
            "centroid",
            "--unknown",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["detector"]["name"] == "energy-knn"
    assert config["detector"]["config"]["params"]["k"] == 1
    r = CliRunner().invoke(
        heads_cli,
        [
            "train",
            "--store",
            str(tmp_path / "s"),
            "--fold",
            "0",
            "--head",
            "centroid",
            "--unknown",
            "odin",
            "--out",
            str(tmp_path / "r2"),
        ],
    )
    assert r.exit_code != 0 and "'odin' is not one of 'default', 'energy'" in r.output, r.output


@pytest.mark.parametrize(
    "exc,code,line",
    [
        (
            KeyError("fold"),
            1,
            "Error: internal error (KeyError: 'fold'); set EMBEDSTORE_DEBUG=1 for the traceback",
        ),
        (
            ValueError("an index out of step\nwith the store"),
            1,
            "Error: internal error (ValueError: an index out of step); set EMBEDSTORE_DEBUG=1 "
            "for the traceback",
        ),
        (NotFound("no run 'x' here"), 2, "Error: no run 'x' here"),
        (
            Conflict("run 'x' exists; give --overwrite"),
            2,
            "Error: run 'x' exists; give --overwrite",
        ),
        (embedstore.StoreError("no store here"), 2, "Error: no store here"),
    ],
    ids=["bug-keyerror", "bug-bare-valueerror", "notfound", "conflict", "storeerror"],
)
def test_a_user_error_exits_2_and_a_bug_exits_1_each_in_one_line(monkeypatch, exc, code, line):
    @click.command("fail")
    def fail() -> None:
        raise exc

    monkeypatch.setitem(embedstore_cli.commands, "fail", fail)
    monkeypatch.delenv("EMBEDSTORE_DEBUG", raising=False)
    r = CliRunner().invoke(embedstore_cli, ["fail"])
    assert r.exit_code == code and r.output.strip() == line, r.output
    monkeypatch.setenv("EMBEDSTORE_DEBUG", "1")  # the exception itself, traceback and all
    r = CliRunner().invoke(embedstore_cli, ["fail"])
    assert r.exit_code == 1 and r.exception is exc


def test_a_device_this_machine_lacks_is_a_user_error(tmp_path):
    make_synthetic_store(tmp_path / "s", n_classes=2, per_class=3)
    for args in (["lookup", "0" * 64], ["serve"]):
        r = CliRunner().invoke(
            embedstore_cli, [*args, "--store", str(tmp_path / "s"), "--device", "cuda:99"]
        )
        assert r.exit_code == 2 and "device 'cuda:99' requested but" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_info_says_what_the_split_held_out(photo_store, tmp_path):
    """After a split that held out a part, `info` says how many images and why (it used to say
    `holdout 0.0` after --use-split held out 240)."""
    import shutil

    from click.testing import CliRunner

    from cli import embedstore_cli

    store = tmp_path / "s"
    shutil.copytree(photo_store, store)
    out = CliRunner().invoke(embedstore_cli, ["info", "--store", str(store)]).output
    held = embedstore.connect(store).meta.table_metadata()["folds"]["holdout_images"]
    assert held > 0 and f"folds      3 (seed 0; held out {held} images (25%); no groups)" in out


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path):
    """Ctrl-C during `heads train` (SIGINT to the real process): one line that says the old run
    is untouched and the same command starts again, exit 130; not click's bare `Aborted!`."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import make_synthetic_store

    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=30)
    embedstore.split(st, folds=3, seed=0)
    cmd = [sys.executable, "-c", "from cli import heads_cli; heads_cli()", "train"]
    cmd += ["--store", str(tmp_path / "s"), "--fold", "all", "--head", "mlp", "--epochs", "5000"]
    cmd += ["--patience", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list(tmp_path.glob(".run.partial-*/fold0")) and time.time() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    text = err.decode()
    assert "interrupted: no run was written" in text and "run the same command again" in text
    assert "Aborted!" not in text and not (tmp_path / "run").exists()


def test_predict_on_a_folder_names_the_option_that_takes_one(tmp_path):
    from click.testing import CliRunner

    from cli import heads_cli

    (tmp_path / "photos").mkdir()
    r = CliRunner().invoke(heads_cli, ["predict", str(tmp_path / "run"), str(tmp_path / "photos")])
    assert r.exit_code == 2
    assert f"--images {tmp_path / 'photos'} for every image under it" in r.output
