"""Local priors at prediction time (heads.prediction._priors): species lists in their file forms,
a prior by a metadata column against a hand computation, and on real photos (flowers12) a list
that removes half the classes and a region prior, through the library and the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

import embedstore
import heads
from cli import heads_cli
from heads.prediction import PlacePrior, read_species_list

CLASSES = ["amanita", "boletus", "cantharellus", "russula"]


def test_species_list_files_lists_and_mappings(tmp_path):
    (tmp_path / "a.txt").write_text("boletus\nrussula\n\nmorchella\n")  # morchella: not known
    (tmp_path / "b.csv").write_text("label,weight\nboletus,2\namanita,0.5\n")
    (tmp_path / "c.json").write_text(json.dumps(["cantharellus"]))
    (tmp_path / "d.json").write_text(json.dumps({"russula": 3}))
    got = {n: read_species_list(tmp_path / n, CLASSES).tolist() for n in os.listdir(tmp_path)}
    assert got == {
        "a.txt": [0, 1, 0, 1],
        "b.csv": [0.5, 2, 0, 0],
        "c.json": [0, 0, 1, 0],
        "d.json": [0, 0, 0, 3],
    }
    assert read_species_list(["amanita"], CLASSES).tolist() == [1, 0, 0, 0]
    with pytest.raises(heads.HeadsError, match="no listed species is a class of the run"):
        read_species_list(["morchella"], CLASSES)
    with pytest.raises(heads.HeadsError, match="must be a number >= 0"):
        read_species_list({"amanita": -1}, CLASSES)
    with pytest.raises(heads.HeadsError, match="species list not found"):
        read_species_list(tmp_path / "nothing.txt", CLASSES)


def test_place_prior_weights_against_a_hand_computation():
    labels = ["amanita"] * 6 + ["boletus"] * 2 + ["russula"] * 2 + ["amanita"] * 2
    values = ["DK"] * 10 + ["SE"] * 2
    pp = PlacePrior.fit("country", labels, values, CLASSES, smoothing=2.0)
    w = pp.weights(["DK", "SE", None, "FR"])
    p = np.array([8, 2, 0, 2]) / 12  # overall shares (cantharellus never seen: no weight)
    dk = (np.array([6, 2, 0, 2]) + 2 * p) / (10 + 2)
    se = (np.array([2, 0, 0, 0]) + 2 * p) / (2 + 2)
    np.testing.assert_allclose(w[0, [0, 1, 3]], (dk / np.where(p > 0, p, 1))[[0, 1, 3]])
    np.testing.assert_allclose(w[1, [0, 1, 3]], (se / np.where(p > 0, p, 1))[[0, 1, 3]])
    assert w[0, 2] == 1.0 and (w[2] == 1).all() and (w[3] == 1).all()  # no value, unseen value


# ---------------------------------------------------------------------- real photos

NORTH = ["bluebell", "buttercup", "colts-foot", "daisy", "dandelion", "fritillary"]


@pytest.fixture(scope="module")
def region_run(flowers_store, tmp_path_factory):
    """flowers12 split on train/test, a ``region`` column (north: the first six species,
    south: the others; test photos too), and a centroid fold ensemble."""
    d = tmp_path_factory.mktemp("priors")
    store = d / "store"
    shutil.copytree(flowers_store, store)
    st = embedstore.connect(store)
    t = st.read(["id", "label"]).to_pylist()
    region = ["north" if r["label"] in NORTH else "south" for r in t]
    st.update_columns([r["id"] for r in t], {"region": pa.array(region, pa.string())})
    embedstore.split(store, folds=5, use_split_column=True, seed=0)
    heads.train(store, fold="all", head="centroid", out=d / "centroid", progress=False)
    return store, d / "centroid"


def _held_out(store):
    return embedstore.connect(store).read(["id", "label"], part="holdout").to_pylist()


def test_a_species_list_of_half_the_classes_never_answers_a_removed_one(region_run):
    store, run = region_run
    t = _held_out(store)
    free = heads.predict(run, ids=[r["id"] for r in t], top_k=3)
    kept = NORTH
    res = heads.predict(run, ids=[r["id"] for r in t], top_k=3, species_list=kept)
    assert all(p.label in kept for p in res)
    assert all(x["label"] in kept for p in res for x in p.top_k)
    # the unconstrained top-1 beside: the image alone's answer, as without the list
    assert [p.unconstrained["label"] for p in res] == [f.label for f in free]
    truth = np.array([r["label"] for r in t])
    on = np.isin(truth, kept)
    acc_free = np.mean([f.label == y for f, y in zip(free, truth, strict=True)])
    acc_kept = np.mean([p.label == y for p, y, o in zip(res, truth, on, strict=True) if o])
    assert acc_kept >= np.mean([f.label == y for f, y, o in zip(free, truth, on, strict=True) if o])
    assert acc_free > 0.7
    # a photo of a removed species that the image alone names: unusual here
    removed_named = [
        p for p, y, o in zip(res, truth, on, strict=True) if not o and p.unconstrained["label"] == y
    ]
    assert removed_named and all(p.unusual_here for p in removed_named)
    assert not any(
        p.unusual_here
        for p, o in zip(res, on, strict=True)
        if o and p.unconstrained["label"] in kept
    )


def test_a_prior_by_region_learned_from_the_training_rows(region_run, flowers, tmp_path):
    store, run = region_run
    t = _held_out(store)
    ids = [r["id"] for r in t]
    truth = np.array([r["label"] for r in t])
    free = heads.predict(run, ids=ids)
    local = heads.predict(run, ids=ids, prior_by="region")  # each stored photo's own region
    acc = [np.mean([p.label == y for p, y in zip(x, truth, strict=True)]) for x in (free, local)]
    print(f"flowers12 centroid top-1 on test: {acc[0]:.3f} alone, {acc[1]:.3f} with the region")
    assert acc[1] >= acc[0]

    def wrong_region(preds):
        return np.mean(
            [(p.label in NORTH) != (y in NORTH) for p, y in zip(preds, truth, strict=True)]
        )

    # the answer leaves its region only where the image is very sure
    assert wrong_region(local) < wrong_region(free) and wrong_region(local) < 0.01
    # one place for every image (a new photo has none stored): a south photo placed north
    photo = sorted((flowers / "test" / "sunflower").glob("*.jpg"))[0]
    south = heads.predict(run, [str(photo)], prior_by="region", place="south")[0]
    north = heads.predict(run, [str(photo)], prior_by="region", place="north")[0]
    assert south.label == "sunflower" and south.unusual_here is False
    assert north.unconstrained["label"] == "sunflower" and north.unusual_here is True
    assert heads.predict(run, [str(photo)], prior_by="region")[0].unusual_here is False  # stored
    new = tmp_path / "new.jpg"  # the same photo re-encoded: not stored, so no region of its own
    Image.open(photo).convert("RGB").save(new, "JPEG", quality=70)
    unplaced = heads.predict(run, [str(new)], prior_by="region")[0]
    assert unplaced.unusual_here is None and unplaced.label == "sunflower"
    with pytest.raises(heads.HeadsError, match="has no column 'country'"):
        heads.predict(run, [str(photo)], prior_by="country")
    with pytest.raises(heads.HeadsError, match="--place needs --prior-by"):
        heads.predict(run, [str(photo)], place="south")


def test_predict_cli_with_a_species_list_and_a_place(region_run, flowers, tmp_path):
    _, run = region_run
    (tmp_path / "north.txt").write_text("\n".join(NORTH))
    photo = sorted((flowers / "test" / "sunflower").glob("*.jpg"))[0]
    args = ["predict", str(run), str(photo), "--species-list", str(tmp_path / "north.txt")]
    r = CliRunner().invoke(heads_cli, [*args, "--json", "--coverage", "0.9"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)[0]
    assert out["label"] in NORTH and out["unconstrained"]["label"] == "sunflower"
    assert out["unusual_here"] is True and set(out["set"]) <= set(NORTH)
    csv_path = tmp_path / "p.csv"
    r = CliRunner().invoke(
        heads_cli, [*args, "--prior-by", "region", "--place", "north", "--csv", str(csv_path)]
    )
    assert r.exit_code == 0 and "the image alone: sunflower" in r.output, r.output
    assert "(unusual here)" in r.output
    row = next(csv.DictReader(csv_path.open()))
    assert row["unconstrained"] == "sunflower" and row["unusual_here"] == "true"
    assert row["label"] in NORTH and "set" not in row
    r = CliRunner().invoke(
        heads_cli,
        [
            "predict",
            str(run),
            "--store",
            "x",
            "--out",
            "y.lance",
            "--species-list",
            str(tmp_path / "north.txt"),
        ],
    )
    assert r.exit_code == 2 and "--species-list: not with --out" in r.output
