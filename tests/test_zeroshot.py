"""The zero-shot head (``heads train --head zeroshot``) on real image files embedded by tiny
CLIP and SigLIP models the tests build: its logits are the model's own (checked against the text
tower computed independently), labelled images move its text weights by a blend chosen
out-of-fold, a run made with no labelled image round-trips through eval, predict and the
service, and the prompts, names and files are read as documented."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import embedstore_service as service
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from scipy.special import softmax

import embedstore
import heads
from cli import heads_cli
from embedstore.backbones import text_tower
from embedstore.errors import UserError
from heads.estimators import BLEND_GRID, ZeroShotHead
from heads.runs import read_run_config
from heads.text import (
    DEFAULT_TEMPLATES,
    ClassTexts,
    class_prompts,
    class_texts,
    coarse_from_column,
    names_from_columns,
    read_lines,
    read_names,
    read_templates,
)
from tests.conftest import write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["class_0", "class_1", "class_2"]
TEMPLATES = ["a photo of a {}.", "a close-up photo of {}."]
NAMES = {"class_0": ["red stripes", "Rubra lineata"], "class_2": ["blue rose"]}


@pytest.fixture(scope="module")
def zs_store(tmp_path_factory, tiny_clip_text, tiny_siglip_text) -> Path:
    """3 classes x 12 JPEG files embedded by a tiny CLIP and a tiny SigLIP, with a common
    name and a group per image (metadata), 3 folds and a held-out quarter (read only)."""
    root = tmp_path_factory.mktemp("zeroshot")
    paths = write_class_images(root / "imgs", n_classes=3, per_class=12, size=40)
    rows = ["path,common_name,group"]
    for p in paths:
        c = p.parent.name
        rows.append(
            f"{c}/{p.name},{c.replace('class', 'kind')},{'warm' if c != 'class_2' else 'cold'}"
        )
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    embedstore.ingest(
        root / "imgs",
        root / "s",
        backbones=[str(tiny_clip_text), str(tiny_siglip_text)],
        metadata=root / "meta.csv",
        workers=0,
        progress=False,
    )
    embedstore.split(root / "s", folds=3, holdout=0.25, seed=0)
    return root / "s"


def _copy(store: Path, tmp_path: Path, name: str = "s") -> Path:
    shutil.copytree(store, tmp_path / name)
    return tmp_path / name


def _unlabel_training_part(store: Path) -> int:
    """Labels kept on the held-out part only (what a zero-shot user has); how many are left."""
    st = embedstore.connect(store)
    t = st.read(["id", "fold"]).to_pydict()
    ids = [i for i, f in zip(t["id"], t["fold"], strict=True) if f != -1]
    st.update_columns(ids, {"label": [None] * len(ids)})
    return len(t["id"]) - len(ids)


def _backbone(store: Path, kind: str) -> str:
    """The store's CLIP or SigLIP column's backbone name."""
    infos = embedstore.connect(store, create=False).embeddings_info().values()
    return next(i.backbone for i in infos if kind in i.backbone)


def _reference_logits(store: Path, backbone: str, X: np.ndarray, prompts: dict) -> np.ndarray:
    """The model's own logits, computed with the text tower alone (no cache, no head): each
    class the normalised mean of its prompts' unit embeddings."""
    info = embedstore.connect(store, create=False).resolve_backbone(backbone)
    tower = text_tower(info)
    T = np.stack([tower.encode(prompts[c]).mean(axis=0) for c in CLASSES])  # (C, D)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    z = tower.logit_scale * tower.project_images(X) @ T.T  # (N, C)
    return z + (tower.logit_bias or 0.0)


# ---------------------------------------------------------------------- the model's own logits


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_logits_are_the_models_own(zs_store, tmp_path, kind):
    store = _copy(zs_store, tmp_path)
    bb = _backbone(store, kind)
    X, _ = embedstore.connect(store).embeddings(bb, dtype="float32")
    ct = class_texts(store, CLASSES, bb, templates=TEMPLATES, names=NAMES)
    assert ct.prompts["class_0"] == [
        "a photo of a red stripes.",
        "a close-up photo of red stripes.",
        "a photo of a Rubra lineata.",
        "a close-up photo of Rubra lineata.",
    ]
    assert ct.prompts["class_1"] == ["a photo of a class 1.", "a close-up photo of class 1."]
    head = ZeroShotHead(blend=None).fit(X[:0], np.array([], str), text=ct)  # no label at all
    assert (
        list(head.classes_) == CLASSES and head.blend_ == 0.0 and head.n_features_in_ == X.shape[1]
    )
    expected = _reference_logits(store, bb, X, ct.prompts)
    np.testing.assert_allclose(head.logits(X), expected, rtol=1e-5, atol=1e-5)
    if kind == "clip":  # the stored column is before CLIP's projection: 24-d in, 12-d space
        assert ct.projection.shape == (12, X.shape[1]) and head.logit_bias_ is None
    else:  # SigLIP's column is already in the space; its bias is part of its logits
        assert ct.projection is None and head.logit_bias_ is not None
    # what a run keeps: the weights, the projection and the scale, so no tower is needed
    cfg, tensors = head.get_state()
    again = ZeroShotHead.from_state(json.loads(json.dumps(cfg)), tensors)
    np.testing.assert_array_equal(again.logits(X), head.logits(X))


def test_labelled_images_move_the_text_weights_by_the_blend():
    """w_c = (1 - a) t_c + a m_c; a class without images keeps its text weight."""
    rng = np.random.default_rng(0)
    T = rng.normal(size=(3, 6)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    ct = ClassTexts(["a", "b", "c"], T, None, logit_scale=10.0)
    X = rng.normal(size=(8, 6)).astype(np.float32)
    y = np.array(["a"] * 4 + ["b"] * 4)
    head = ZeroShotHead(blend=0.5).fit(X, y, text=ct)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    m = Xn[:4].mean(0)
    m /= np.linalg.norm(m)
    np.testing.assert_allclose(head.weights_[0], 0.5 * T[0] + 0.5 * m, rtol=1e-6)
    np.testing.assert_allclose(head.weights_[2], T[2], rtol=1e-6)  # no image of class c
    np.testing.assert_allclose(head.logits(X), 10.0 * Xn @ head.weights_.T, rtol=1e-5)
    assert list(head.class_counts_) == [4, 4, 0]
    with pytest.raises(ValueError, match="labels without class text: d"):
        ZeroShotHead().fit(X, np.array(["a"] * 4 + ["d"] * 4), text=ct)
    with pytest.raises(ValueError, match="X has 5 features; the class texts compare with 6"):
        ZeroShotHead().fit(X[:, :5], y, text=ct)


# ---------------------------------------------------------------------- the blend, out-of-fold


def test_blend_is_chosen_out_of_fold_and_reaches_high_accuracy(zs_store, tmp_path):
    """The tiny CLIP's random text tower is at chance; the labelled images are separable: the
    blend chosen on each fold's training part moves off 0, recorded in the run, and the fold
    ensemble is right on the held-out part."""
    store = _copy(zs_store, tmp_path)
    bb = _backbone(store, "clip")
    res = heads.train(
        store, fold="all", backbone=bb, head="zeroshot", out=tmp_path / "r", progress=False
    )
    assert len(res.metrics) == 3
    for m in res.metrics:
        a, scores = m.chosen["blend"], m.chosen["blend_top1"]
        assert a in BLEND_GRID and a > 0 and list(scores) == [f"{g:g}" for g in BLEND_GRID]
        assert scores[f"{a:g}"] == max(scores.values()) > scores["0"]
        head_cfg = read_run_config(m.run).head_config
        assert head_cfg["blend_"] == a and head_cfg["blend_scores_"] == scores
        assert head_cfg["text_model_"].startswith("clip/")
    assert res.ensemble_metrics.metrics["top1"] >= 0.95
    assert res.ensemble_metrics.holdout["top1"] >= 0.95
    # blend 0: the labels are not used; the run is the text weights alone
    pure = heads.train(
        store, backbone=bb, head="zeroshot", blend=0.0, out=tmp_path / "p", progress=False
    )
    X, t = embedstore.connect(store).embeddings(bb, dtype="float32", columns=["id"])
    run = heads.load(tmp_path / "p", device="cpu")
    prompts = {
        c: [tmpl.format(c.replace("_", " ")) for tmpl in DEFAULT_TEMPLATES[:3]] for c in CLASSES
    }
    np.testing.assert_allclose(
        run.logits({run.backbones[0]["column"]: X}), _reference_logits(store, bb, X, prompts),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    assert pure.metrics[0].chosen == {"blend": 0.0}


def test_a_zero_shot_run_joins_ensembles_and_takes_an_unknown_detector(zs_store, tmp_path):
    """With labelled folds it is a normal run: a detector calibrated on the validation fold,
    and an ensemble member beside another head over the same folds."""
    store = _copy(zs_store, tmp_path)
    bb = _backbone(store, "clip")
    zs = heads.train(
        store, fold="all", backbone=bb, head="zeroshot", unknown="msp", out=tmp_path / "zs",
        progress=False,
    )  # fmt: skip
    run = heads.load(zs.runs[0], device="cpu")
    assert run.threshold is not None and np.isfinite(run.threshold)
    heads.train(store, fold="all", backbone=bb, head="centroid", out=tmp_path / "c", progress=False)
    ens = heads.ensemble([tmp_path / "zs", tmp_path / "c"], tmp_path / "ens")
    assert ens.metrics["top1"] >= 0.95 and ens.holdout["top1"] >= 0.95
    img = sorted((Path(zs_store).parent / "imgs").rglob("*.jpg"))[0]
    (pred,) = heads.predict(tmp_path / "ens", [img], device="cpu")
    assert pred.label == "class_0" and pred.unknown is False


def test_a_column_without_a_text_tower_is_refused_by_name(photo_store, tmp_path):
    with pytest.raises(UserError, match="has no text tower"):
        heads.train(photo_store, head="zeroshot", out=tmp_path / "r", progress=False)


# ---------------------------------------------------------------------- no labelled image


def test_zero_shot_run_round_trips_through_eval_predict_and_the_service(
    zs_store, tmp_path, tiny_clip_text
):
    store = _copy(zs_store, tmp_path)
    held = _unlabel_training_part(store)
    bb = _backbone(store, "clip")
    (tmp_path / "classes.txt").write_text("# the flora\nclass_0\nclass_1\n\nclass_2\n")
    (tmp_path / "names.csv").write_text("label,common_name\nclass_0,red stripes\n")
    runs = tmp_path / "runs"
    args = ["train", "--store", str(store), "--backbone", bb, "--head", "zeroshot"]
    args += ["--classes", str(tmp_path / "classes.txt"), "--names", str(tmp_path / "names.csv")]
    args += ["--templates", "a photo of {}.", "--out", str(runs / "zs")]
    out = CliRunner().invoke(heads_cli, [*args, "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    (m,) = res["metrics"]
    assert m["fold"] is None and m["n_train"] == 0 and m["n_holdout"] == held
    assert m["chosen"] == {"blend": 0.0} and res["ensemble"] is None
    assert m["holdout"]["n_known"] == held
    printed = CliRunner().invoke(heads_cli, [*args[:-2], "--out", str(runs / "zs2"), "--quiet"])
    assert "zero-shot run from class names (no labelled training image)" in printed.output
    assert f"held-out part: top1 {m['holdout']['top1']:.4f}" in printed.output

    cfg = read_run_config(runs / "zs")
    assert cfg.fold is None and cfg.classes == CLASSES and cfg.train_counts == [0, 0, 0]
    assert cfg.head_config["params"]["templates"] == ["a photo of {}."]
    assert cfg.head_config["params"]["names"] == {"class_0": ["red stripes"]}
    # eval: the held-out part, the same scores as at training
    ev = heads.evaluate(runs / "zs", device="cpu")
    assert ev.holdout["top1"] == m["holdout"]["top1"] and ev.metrics["n"] == 0
    # predict: a file on disk, embedded by the tiny CLIP, scored by the stored weights
    X, t = embedstore.connect(store).embeddings(bb, dtype="float32", columns=["id", "path"])
    prompts = {c: [f"a photo of {c.replace('_', ' ')}."] for c in CLASSES}
    prompts["class_0"] = ["a photo of red stripes."]
    ref = _reference_logits(store, bb, X, prompts)
    img = sorted((Path(zs_store).parent / "imgs").rglob("*.jpg"))[0]
    row = [i for i, p in enumerate(t["path"]) if str(p).endswith(f"{img.parent.name}/{img.name}")][
        0
    ]
    (pred,) = heads.predict(runs / "zs", [img], top_k=3, device="cpu")
    assert pred.label == CLASSES[int(ref[row].argmax())]
    np.testing.assert_allclose(
        [p["probability"] for p in pred.top_k], np.sort(softmax(ref[row]))[::-1], atol=2e-3
    )  # a file embedded again: float16 storage apart, the same image
    cli = CliRunner().invoke(heads_cli, ["predict", str(runs / "zs"), str(img), "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)[0]["label"] == pred.label
    # the service: predict with the run, then train one on request from JSON values
    app = service.create_app(service.Settings(store=str(store), runs=str(runs), device="cpu"))
    with TestClient(app) as c:
        _ready(c)
        r = c.post(
            "/v1/predict", files=[("images", ("x.jpg", img.read_bytes()))], data={"run": "zs"}
        )
        assert r.status_code == 200, r.text
        assert r.json()[0]["label"] == pred.label
        body = {"name": "zs-api", "head": "zeroshot", "backbone": bb, "classes": CLASSES}
        body |= {"templates": ["a photo of {}."], "names": {"class_0": ["red stripes"]}}
        job = c.post("/v1/train", json=body)
        assert job.status_code == 202, job.text
        done = _wait(c, job.json()["id"])
        assert done["status"] == "done", done
        assert done["result"]["metrics"][0]["holdout"]["top1"] == m["holdout"]["top1"]
        r = c.post("/v1/predict", json={"run": "zs-api", "ids": [t["id"][row]]})
        assert r.status_code == 200 and r.json()[0]["label"] == CLASSES[int(ref[row].argmax())]
        # a template is a value, checked at once; a file on the server is never read
        bad = c.post("/v1/train", json={**body, "name": "bad", "templates": ["no field"]})
        assert bad.status_code == 422 and "must hold {}" in bad.json()["detail"]
        path = c.post(
            "/v1/train", json={**body, "name": "p", "classes": str(tmp_path / "classes.txt")}
        )
        assert path.status_code == 422


def _ready(c: TestClient) -> None:
    for _ in range(600):
        if c.get("/ready").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("the service never got ready")


def _wait(c: TestClient, job: str) -> dict:
    for _ in range(600):
        status = c.get(f"/v1/jobs/{job}").json()
        if status["status"] not in ("queued", "running"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job} never finished")


def test_a_run_without_labelled_images_refuses_what_needs_them(zs_store, tmp_path):
    store = _copy(zs_store, tmp_path)
    _unlabel_training_part(store)
    bb = _backbone(store, "clip")
    with pytest.raises(heads.HeadsError, match="--unknown needs labelled training images"):
        heads.train(
            store, backbone=bb, head="zeroshot", unknown="msp", out=tmp_path / "u", progress=False
        )
    with pytest.raises(heads.HeadsError, match="one --backbone"):
        heads.train(
            store,
            backbone=[bb, _backbone(store, "siglip")],
            head="zeroshot",
            out=tmp_path / "b",
            progress=False,
        )
    with pytest.raises(heads.HeadsError, match="--classes: give a list of class names"):
        heads.train(
            store,
            backbone=bb,
            head="zeroshot",
            classes="classes.txt",
            out=tmp_path / "c",
            progress=False,
        )
    with pytest.raises(heads.HeadsError, match="needs at least 2 classes"):
        heads.train(
            store,
            backbone=bb,
            head="zeroshot",
            classes=["class_0"],
            where="fold != -1",
            out=tmp_path / "d",
            progress=False,
        )
    out = CliRunner().invoke(
        heads_cli,
        [
            "train",
            "--store",
            str(store),
            "--head",
            "zeroshot",
            "--classes",
            str(tmp_path / "none.txt"),
        ],
    )
    assert out.exit_code == 2 and "none.txt: no such file" in out.output


def test_names_and_coarse_groups_from_store_columns(zs_store, tmp_path):
    """--name-columns and --coarse-column read the store: a class's names are averaged, and a
    {coarse} template is used for classes with a group."""
    store = _copy(zs_store, tmp_path)
    bb = _backbone(store, "siglip")
    res = heads.train(
        store, backbone=bb, head="zeroshot", name_columns=["common_name"], coarse_column="group",
        templates=["a photo of {}.", "{}, a type of {coarse}."], blend=0.0, out=tmp_path / "r",
        progress=False,
    )  # fmt: skip
    X, _ = embedstore.connect(store).embeddings(bb, dtype="float32")
    prompts = {
        c: [f"a photo of {c.replace('class', 'kind')}.",
            f"{c.replace('class', 'kind')}, a type of {'cold' if c == 'class_2' else 'warm'}."]
        for c in CLASSES
    }  # fmt: skip
    run = heads.load(res.runs[0], device="cpu")
    np.testing.assert_allclose(
        run.logits({run.backbones[0]["column"]: X}), _reference_logits(store, bb, X, prompts),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip


# ---------------------------------------------------------------------- prompts and files


def test_prompts_templates_and_names():
    assert class_prompts("Bellis_perennis", ["a photo of {}."]) == ["a photo of Bellis perennis."]
    t = ["a photo of a {}.", "a {}, a type of {coarse}.", "{{literal}} {}"]
    assert class_prompts("x", t, names=["daisy", "daisy"]) == [
        "a photo of a daisy.",
        "{literal} daisy",
    ]
    assert (
        class_prompts("x", t, names=["daisy"], coarse="flower")[1] == "a daisy, a type of flower."
    )
    with pytest.raises(heads.HeadsError, match="every template names {coarse}"):
        class_prompts("x", ["a {}, a {coarse}."])
    for bad in (["a photo"], ["a {name}"], ["a {} {0}"], ["a {"], ["a {:>5}"]):
        with pytest.raises(heads.HeadsError, match="--templates"):
            class_prompts("x", heads.text.check_templates(bad))
    with pytest.raises(heads.HeadsError, match="not one string"):
        heads.text.check_templates("a photo of {}.")
    assert heads.text.check_templates(None) == DEFAULT_TEMPLATES


def test_reading_class_template_and_name_files(tmp_path):
    (tmp_path / "c.txt").write_text("\ufeff# comment\nBellis perennis\n\n  Rosa canina  \n")
    assert read_lines(tmp_path / "c.txt") == ["Bellis perennis", "Rosa canina"]
    (tmp_path / "t.txt").write_text("a photo of {}.\nart of {}.\n")
    assert read_templates(["itap of a {}.", str(tmp_path / "t.txt")]) == [
        "itap of a {}.", "a photo of {}.", "art of {}.",
    ]  # fmt: skip
    (tmp_path / "n.csv").write_text(
        "label,scientific_name,common_name\nbellis,Bellis perennis,daisy\n"
        "bellis,,lawn daisy\nrosa,Rosa canina,dog rose\n,ignored,row\n"
    )
    assert read_names(tmp_path / "n.csv") == {
        "bellis": ["Bellis perennis", "daisy", "lawn daisy"],
        "rosa": ["Rosa canina", "dog rose"],
    }
    (tmp_path / "bad.csv").write_text("species,name\nx,y\n")
    with pytest.raises(heads.HeadsError, match="needs a 'label' column"):
        read_names(tmp_path / "bad.csv")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(heads.HeadsError, match="holds no line"):
        read_lines(tmp_path / "empty.txt")


def test_names_and_groups_from_columns():
    labels = np.array(["a", "a", "b", None, "b", "b"], dtype=object)
    table = {
        "sci": np.array(["A alba", "A alba", "B nigra", "X", None, "B nigra"], dtype=object),
        "common": np.array(["white", "snow", "", "x", "black", "black"], dtype=object),
        "genus": np.array(["Aa", "Ab", "Bb", "X", "Bc", "Bb"], dtype=object),
    }
    assert names_from_columns(labels, table, ["sci", "common"]) == {
        "a": ["A alba", "white", "snow"],
        "b": ["B nigra", "black"],
    }
    assert coarse_from_column(labels, table, "genus") == {"a": "Aa", "b": "Bb"}
