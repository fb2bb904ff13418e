"""Folds, heads train / eval / ensemble / predict on real Lance stores."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
import heads.runs._rundir
from cli import embedstore_cli, heads_cli
from tests.conftest import make_synthetic_store, write_class_images

FAST = {"epochs": 15, "batch_size": 64, "progress": False, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _fold_table(st):
    t = st.read(columns=["id", "label", "fold"]).to_pylist()
    return {r["id"]: r for r in t}


# ---------------------------------------------------------------------- folds


def test_folds_are_stratified_deterministic_and_holdout_is_apart(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=4, per_class=30)
    s1 = embedstore.split(st, folds=3, holdout=0.2, seed=7)
    a = _fold_table(st)
    embedstore.split(st, folds=3, holdout=0.2, seed=7)
    assert _fold_table(st) == a  # deterministic for a seed
    embedstore.split(st, folds=3, holdout=0.2, seed=8)
    assert _fold_table(st) != a
    embedstore.split(st, folds=3, holdout=0.2, seed=7)
    per = Counter((r["label"], r["fold"]) for r in a.values())
    for c in range(4):  # 30 per class: 6 held out, 8 per fold
        assert per[(f"species_{c}", -1)] == 6
        assert [per[(f"species_{c}", k)] for k in range(3)] == [8, 8, 8]
    assert s1["holdout_images"] == 24 and s1["images_per_fold"] == {"0": 32, "1": 32, "2": 32}
    # the held-out part is never trained on, in any fold
    res = heads.train(st, fold="all", head="centroid", out=tmp_path / "r", progress=False)
    held = {i for i, r in a.items() if r["fold"] == -1}
    for run in res["runs"]:
        cfg = json.loads((tmp_path / "r" / run.split("/")[-1] / "config.json").read_text())
        assert cfg["n_train"] == 64 and cfg["n_val"] == 32
        val_ids = set(heads.runs._rundir.read_val(tmp_path / "r" / run.split("/")[-1])["id"])
        assert not (val_ids & held)
    assert heads.evaluate(res["ensemble"], plots=False)["holdout"]["n"] == 24


def test_grouped_folds_keep_groups_together_and_small_classes_always_train(tmp_path):
    labels = ["a"] * 40 + ["b"] * 40 + ["rare"] * 2
    obs = [f"o{i // 4}" for i in range(80)] + ["r1", "r2"]
    X = np.random.default_rng(0).normal(size=(82, 8)).astype(np.float32)
    st = make_synthetic_store(tmp_path / "s", X=X, labels=labels, extra={"observation_id": obs})
    s = embedstore.split(st, folds=5, group_by="observation_id", seed=0)
    t = st.read(columns=["observation_id", "label", "fold"]).to_pylist()
    by_group = {}
    for r in t:
        by_group.setdefault(r["observation_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in by_group.values())
    assert {r["fold"] for r in t if r["label"] == "rare"} == {embedstore.store.ALWAYS_TRAIN}
    assert s["small_classes"] == 1 and s["always_train_images"] == 2
    r = CliRunner().invoke(
        embedstore_cli,
        ["split", "--store", str(tmp_path / "s"), "--folds", "5", "--group-by", "observation_id"],
    )
    assert r.exit_code == 0 and "1 class(es) too small to split" in r.output


def test_use_split_column_honours_train_and_test_folders(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs / "train", n_classes=2, per_class=6)
    write_class_images(imgs / "test", n_classes=2, per_class=2, seed=3)
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    s = embedstore.split(tmp_path / "s", folds=3, use_split_column=True)
    t = embedstore.connect(tmp_path / "s").read(columns=["split", "fold"]).to_pylist()
    assert all(r["fold"] == -1 for r in t if r["split"] == "test")
    assert all(r["fold"] >= 0 for r in t if r["split"] == "train")
    assert s["holdout_images"] == 4


# ---------------------------------------------------------------------- train / eval / ensemble


@pytest.mark.parametrize("head", ["linear", "mlp", "transformer", "knn", "centroid"])
def test_every_head_learns_separable_store_embeddings(tmp_path, head):
    st = make_synthetic_store(tmp_path / "s")
    embedstore.split(st, folds=2, holdout=0.2, seed=0)
    res = heads.train(
        st,
        fold=0,
        head=head,
        out=tmp_path / "run",
        **({"progress": False} if head in ("knn", "centroid") else FAST),
    )
    m = res["metrics"][0]
    assert m["top1"] >= 0.95 and m["macro_f1"] >= 0.95, m
    if head == "knn":  # every default k scored from one search (clamped to the 96 training rows)
        assert (
            set(m["knn_top1_by_k"]) == {"10", "20", "96"}
            and min(m["knn_top1_by_k"].values()) >= 0.9
        )
    # save, load and predict give identical logits
    run = heads.load(tmp_path / "run")
    val = heads.runs._rundir.read_val(tmp_path / "run")
    X, c = st.embeddings(where="fold = 0", columns=["id"])
    order = {i: k for k, i in enumerate(c["id"])}
    X = X[[order[i] for i in val["id"]]]
    np.testing.assert_allclose(
        run.logits({"emb_synthetic": X}), val["logits"], rtol=1e-5, atol=1e-5
    )
    for name in ("config.json", "head.safetensors", "history.json", "val.parquet"):
        assert (tmp_path / "run" / name).is_file()


def test_losses_samplers_metadata_and_aux_targets_train_through_the_store(tmp_path):
    rng = np.random.default_rng(0)
    n_cls, per = 5, 40
    y = np.repeat(np.arange(n_cls), per)
    X = rng.normal(size=(len(y), 8)).astype(np.float32)  # pure noise: only metadata tells the class
    habitat = [f"h{c}" for c in y]
    poisonous = [bool(c % 2) for c in y]
    st = make_synthetic_store(
        tmp_path / "s",
        X=X,
        labels=[f"s{c}" for c in y],
        extra={"habitat": habitat, "poisonous": poisonous},
    )
    embedstore.split(st, folds=2, seed=0)
    for head, loss in (("mlp", "seesaw"), ("transformer", "focal"), ("mlp", "subcenter-arcface")):
        res = heads.train(
            st,
            fold=0,
            head=head,
            loss=loss,
            metadata=["habitat"],
            aux_targets=["poisonous"],
            sampler="prior",
            class_weights="sqrt-inverse",
            out=tmp_path / f"{head}-{loss}",
            **{**FAST, "epochs": 30},
        )
        assert res["metrics"][0]["top1"] >= 0.9, (head, loss, res["metrics"][0])
    cfg = json.loads((tmp_path / "mlp-seesaw" / "config.json").read_text())
    assert cfg["metadata_encoder"]["fields"][0]["columns"] == ["habitat"]
    assert cfg["aux_targets"] == ["poisonous"] and cfg["head_config"]["loss"] == "seesaw"


def test_fungiclef_tracks_and_unknown_detection_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 1, (5, 16)) * 5
    y = np.repeat(np.arange(5), 40)
    X = centers[y] + rng.normal(0, 1, (200, 16))
    X_unk = rng.normal(0, 1, (30, 16)) * 5 + 20  # far from every known class
    Xa = np.vstack([X, X_unk]).astype(np.float32)
    labels = [f"s{c}" for c in y] + ["unknown"] * 30
    poison = [c in (1, 3) for c in y] + [False] * 30
    obs = [f"o{i // 2}" for i in range(230)]
    st = make_synthetic_store(
        tmp_path / "s", X=Xa, labels=labels, extra={"poisonous": poison, "observation_id": obs}
    )
    embedstore.split(st, folds=2, seed=0, group_by="observation_id")
    res = heads.train(st, fold=0, head="mlp", unknown="knn", out=tmp_path / "r", **FAST)
    m = res["metrics"][0]
    assert m["auroc"] > 0.9 and m["n_unknown"] > 0
    for t in ("track1", "track2", "track3", "track4"):
        assert t in m
    assert m["track3"] == pytest.approx(m["track1"] + m["track2"])
    assert m["track1"] < 0.2
    r = CliRunner().invoke(heads_cli, ["eval", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    (obj,) = json.loads(r.output)
    for key in (
        "top1",
        "top3",
        "macro_f1",
        "mean_class_acc",
        "track1",
        "track2",
        "track3",
        "track4",
        "auroc",
        "fpr95",
    ):
        assert isinstance(obj[key], float), key
    assert (tmp_path / "r" / "per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ensemble_of_folds_and_heads(tmp_path):
    st = make_synthetic_store(tmp_path / "s", sep=1.2, per_class=50)
    embedstore.split(st, folds=3, holdout=0.2, seed=0)
    r1 = heads.train(st, fold="all", head="mlp", out=tmp_path / "mlp", **FAST)
    r2 = heads.train(st, fold="all", head="knn", out=tmp_path / "knn", progress=False)
    assert (tmp_path / "mlp" / "config.json").is_file() and len(r1["runs"]) == 3
    e = heads.ensemble(
        [r1["ensemble"], r2["ensemble"]], tmp_path / "ens", weights=[1.0, 0.5], average="probs"
    )
    assert e["n"] == 240 and "holdout" in e  # out-of-fold over every non-held-out image
    singles = [heads.evaluate(r, plots=False)["top1"] for r in r1["runs"]]
    assert e["top1"] >= min(singles) - 0.05
    ens = heads.load(tmp_path / "ens")
    assert isinstance(ens, heads.Ensemble) and len(ens.members) == 2
    with pytest.raises(heads.HeadsError, match="no images given"):
        heads.predict(tmp_path / "ens", images=[])


def test_mlp_on_real_flowers12_embeddings_beats_chance_widely(flowers_store, tmp_path):
    embedstore.split(flowers_store, folds=3, use_split_column=True, seed=0)
    res = heads.train(
        flowers_store,
        fold="all",
        head="mlp",
        out=tmp_path / "mlp",
        hidden=512,
        **{**FAST, "epochs": 30, "batch_size": 128},
    )
    e = heads.evaluate(res["ensemble"], plots=False)
    print(
        f"flowers12 MLP fold ensemble: out-of-fold top1 {e['top1']:.3f}, "
        f"test top1 {e['holdout']['top1']:.3f}"
    )
    assert e["holdout"]["top1"] > 0.8  # chance is 1/12
    # predict test photos by path (their stored embeddings are reused): the JSON contract
    import glob

    from tests.conftest import FLOWERS

    files = sorted(glob.glob(str(FLOWERS / "test" / "sunflower" / "*.jpg")))[:3]
    r = CliRunner().invoke(
        heads_cli, ["predict", res["ensemble"], *files, "--json", "--top-k", "3"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [o["path"] for o in out] == files
    assert sum(o["label"] == "sunflower" for o in out) >= 2
    assert all(len(o["top_k"]) == 3 and "unknown" in o for o in out)
    assert abs(sum(t["probability"] for t in out[0]["top_k"])) <= 1.0 + 1e-6


# ---------------------------------------------------------------------- predict


def test_predict_new_images_prior_and_cost_matrix(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=10, size=40)
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    embedstore.split(tmp_path / "s", folds=2, seed=0)
    # uncentred prototypes: on two classes, centring makes them opposite and the logit gaps
    # wider than the prior below moves (the prior's arithmetic is what this checks)
    heads.train(
        tmp_path / "s", fold=0, head="centroid", centring="none", out=tmp_path / "r", progress=False
    )
    new = tmp_path / "new"
    write_class_images(new, n_classes=2, per_class=2, size=40, seed=42)  # not in the store
    (new / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = heads.predict(tmp_path / "r", images_dir=new, top_k=2)
    ok = [r for r in res if "error" not in r]
    assert len(ok) == 4 and [r for r in res if "error" in r][0]["path"].endswith("broken.jpg")
    assert sum(r["label"] == r["path"].split("/")[-2] for r in ok) >= 3
    # a prior that puts all mass on class_1 moves every prediction there
    (tmp_path / "prior.csv").write_text("label,probability\nclass_0,0.0000001\nclass_1,0.9999999\n")
    pri = heads.predict(tmp_path / "r", [r["path"] for r in ok], prior=str(tmp_path / "prior.csv"))
    assert {r["label"] for r in pri} == {"class_1"}
    # a cost matrix where predicting class_1 is free picks class_1 everywhere too
    (tmp_path / "cost.csv").write_text("true,class_0,class_1\nclass_0,0,0\nclass_1,100,0\n")
    cm = heads.predict(
        tmp_path / "r", [r["path"] for r in ok], cost_matrix=str(tmp_path / "cost.csv")
    )
    assert {r["label"] for r in cm} == {"class_1"} and all("expected_cost" in r for r in cm)
    r = CliRunner().invoke(heads_cli, ["predict", str(tmp_path / "r"), str(new / "broken.jpg")])
    assert r.exit_code == 1 and "no image could be predicted" in r.output


# ---------------------------------------------------------------------- bad input


def _store_version(path):
    return embedstore.connect(path).version


@pytest.mark.parametrize(
    "case,message",
    [
        ("no_labels", "no labelled images"),
        ("no_folds", "run `embedstore split"),
        ("bad_fold", "fold 7 does not exist"),
        ("bad_backbone", "no embeddings for backbone 'dinov2-giant'"),
        ("single_class", "at least 2"),
        ("all_missing_metadata", "no usable value"),
        ("nan", "NaN or Inf embeddings"),
        (
            "bad_head",
            "'resnet' is not one of 'centroid', 'knn', 'lda', 'linear', 'mlp', 'transformer', "
            "'zeroshot'",
        ),
        ("bad_option", "do not apply to head 'knn'"),
    ],
)
def test_training_bad_input_gives_clear_message_and_changes_nothing(tmp_path, case, message):
    labels = None
    X = None
    extra = {"habitat": [None] * 60}
    if case == "no_labels":
        labels = [None] * 60
    if case == "single_class":
        labels = ["only"] * 60
    if case == "nan":
        X = np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32)
        X[3, 2] = np.nan
        labels = ["a", "b"] * 30
    st = make_synthetic_store(
        tmp_path / "s", n_classes=3, per_class=20, X=X, labels=labels, extra=extra
    )
    if case not in ("no_folds", "no_labels"):
        embedstore.split(st, folds=2, seed=0)
    v = _store_version(tmp_path / "s")
    args = [
        "train",
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "2",
        "--quiet",
    ]
    args += {
        "bad_fold": ["--fold", "7"],
        "bad_backbone": ["--backbone", "dinov2-giant"],
        "all_missing_metadata": ["--metadata", "habitat"],
        "bad_head": ["--head", "resnet"],
        "bad_option": ["--head", "knn", "--hidden", "64"],
    }.get(case, [])
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert _store_version(tmp_path / "s") == v


def test_edited_old_or_corrupt_runs_are_refused(tmp_path):
    st = make_synthetic_store(tmp_path / "s")
    embedstore.split(st, folds=2, seed=0)
    heads.train(st, fold=0, head="mlp", out=tmp_path / "r", **FAST)
    good = tmp_path / "r"

    def broken(name, mutate):
        d = tmp_path / name
        shutil.copytree(good, d)
        mutate(d)
        return d

    def edit(d):
        c = json.loads((d / "config.json").read_text())
        c["head_config"]["hidden"] = 7
        (d / "config.json").write_text(json.dumps(c))

    def old(d):
        c = json.loads((d / "config.json").read_text())
        c["format"] = 0
        (d / "config.json").write_text(json.dumps(c))

    def corrupt(d):
        b = bytearray((d / "head.safetensors").read_bytes())
        b[-10:] = b"\x00" * 10
        (d / "head.safetensors").write_bytes(bytes(b))

    for name, fn, msg in (
        ("edited", edit, "was edited after training"),
        ("old", old, "run format 0"),
        ("corrupt", corrupt, "corrupt or was replaced"),
    ):
        d = broken(name, fn)
        with pytest.raises(heads.HeadsError, match=msg):
            heads.load(d)
        r = CliRunner().invoke(heads_cli, ["eval", str(d)])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output
    with pytest.raises(heads.HeadsError, match="not a run or ensemble directory"):
        heads.load(tmp_path / "s")
