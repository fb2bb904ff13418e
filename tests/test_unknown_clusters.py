"""Photos a run's unknown detector rejects, grouped into candidate new classes: on real flowers12
photos with two classes held out from training, the rejected photos cluster by their true
class; the CSVs a labelling call would take and the contact sheets are written."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import embedstore
import heads
from cli import heads_cli
from tests.conftest import make_synthetic_store

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = ("tigerlily", "bluebell")  # held out of training: the new classes to find


@pytest.fixture(scope="module")
def open_run(flowers_store, tmp_path_factory):
    """flowers12 split on its train/test folders, a linear head with the default detector
    trained on 10 of the 12 classes (fold 0)."""
    d = tmp_path_factory.mktemp("unknowns")
    store = d / "store"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=3, use_split_column=True, seed=0)
    where = f"label NOT IN ('{NEW[0]}', '{NEW[1]}')"
    heads.train(
        store, fold=0, head="linear", unknown="default", where=where, out=d / "run",
        epochs=20, progress=False, device="cpu",
    )  # fmt: skip
    return store, d / "run"


@pytest.mark.slow
def test_rejected_photos_of_held_out_classes_cluster_by_their_true_class(open_run, tmp_path):
    store, run = open_run
    where = f"label IN ('{NEW[0]}', '{NEW[1]}') OR fold = -1"
    res = heads.evaluation.cluster_unknowns(run, where=where, out=tmp_path / "u")
    new_rows = embedstore.connect(store).count(f"label IN ('{NEW[0]}', '{NEW[1]}')")
    assert res.rows == embedstore.connect(store).count(where) > new_rows
    assert res.rejected >= 0.6 * new_rows  # the detector rejects most photos of new classes
    # every cluster is one class, and the two new classes are the two largest clusters
    assert res.purity is not None and res.purity >= 0.95, [c.stored_labels for c in res.clusters]
    majority = [max(c.stored_labels, key=c.stored_labels.get) for c in res.clusters]
    assert set(majority[:2]) == set(NEW), majority
    assert res.clustered >= 0.6 * res.rejected
    # what a reviewer and a label call get: every rejected photo in clusters.csv (nearest the
    # centre first within a cluster), one row per cluster to name, one sheet per cluster
    with open(res.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == res.rejected and list(rows[0]) == [
        "cluster", "id", "path", "label", "unknown_score",
    ]  # fmt: skip
    ids0 = [r["id"] for r in rows if r["cluster"] == "0"]
    assert ids0 == res.clusters[0].ids and len(ids0) == res.clusters[0].size
    with open(res.names_csv, newline="") as f:
        names = list(csv.DictReader(f))
    assert [int(n["cluster"]) for n in names] == [c.cluster for c in res.clusters]
    assert all(n["new_label"] == "" for n in names)
    sheet = Image.open(res.clusters[0].sheet)
    assert sheet.width >= 8 * 128 and sheet.height > 128  # a row of 8 thumbnails at least
    # the command line, default selection: the held-out part (no photo is unlabelled)
    out = CliRunner().invoke(heads_cli, ["unknowns", str(run), "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    assert "photos rejected by the unknown detector" in out.output
    assert "a label call that reads these does not exist yet" in out.output
    assert (tmp_path / "cli" / "clusters.csv").is_file()


def test_unknowns_need_a_detector_and_photos_to_look_at(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(st, folds=2, seed=0)
    heads.train(st, fold=0, head="centroid", out=tmp_path / "plain", progress=False)
    with pytest.raises(heads.HeadsError, match="no unknown detector; train one with"):
        heads.evaluation.cluster_unknowns(tmp_path / "plain")
    heads.train(st, fold=0, head="centroid", unknown="msp", out=tmp_path / "r", progress=False)
    with pytest.raises(heads.HeadsError, match="no unlabelled or held-out photos"):
        heads.evaluation.cluster_unknowns(tmp_path / "r")
    res = heads.evaluation.cluster_unknowns(tmp_path / "r", where="label = 'species_0'")
    assert res.rows == 20 and np.isfinite(res.rejected)
    out = CliRunner().invoke(
        heads_cli, ["unknowns", str(tmp_path / "r"), "--min-cluster-size", "1"]
    )
    assert out.exit_code == 2 and "--min-cluster-size" in out.output
