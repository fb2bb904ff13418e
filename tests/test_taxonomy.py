"""A store's taxonomy and the answers at every rank: the tree checked where it comes from, the
fallback thresholds against a brute-force reference, runs that answer at the finest confident
rank (library, command line, service), per-rank scores and mistake severity, rank runs chosen
out-of-fold, and real grocery81 photos with their coarse classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import embedstore_cli, heads_cli
from embedstore.store import Taxonomy, TaxonomyError, read_taxonomy_file, set_taxonomy
from heads.taxonomy import Tree, answered_rank, fit_thresholds, threshold_for
from tests.conftest import make_synthetic_store, write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")
GROCERY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "grocery81"
FAST = {"epochs": 8, "batch_size": 64, "progress": False, "device": "cpu"}
GENERA = {f"species_{g}{s}": f"genus_{g}" for g in "abc" for s in "xyz"}


def _tree_store(path: Path, seed: int = 0) -> embedstore.Store:
    """3 genera of 3 species each: genera far apart, species of a genus close (they confuse
    one another, rarely another genus), a ``genus`` column, 3 folds and a held-out part."""
    rng = np.random.default_rng(seed)
    genus_c = rng.normal(0, 1, (3, 16)) * 7.0
    names = sorted(GENERA)
    centres = np.stack([genus_c["abc".index(n[-2])] + rng.normal(0, 1, 16) * 1.6 for n in names])
    y = np.repeat(np.arange(9), 40)
    X = (centres[y] + rng.normal(0, 1, (len(y), 16))).astype(np.float32)
    labels = [names[i] for i in y]
    st = make_synthetic_store(
        path, X=X, labels=labels, extra={"genus": [GENERA[n] for n in labels]}
    )
    embedstore.split(st, folds=3, holdout=0.25, seed=0)
    return st


# ---------------------------------------------------------------------- the store's taxonomy


def test_a_taxonomy_file_must_be_a_tree_and_errors_name_the_file_and_labels(tmp_path):
    good = tmp_path / "tax.csv"
    good.write_text(
        "species,genus,family\nA muscaria,Amanita,Amanitaceae\nA phalloides,Amanita,"
        "Amanitaceae\nB edulis,Boletus,Boletaceae\nA muscaria,Amanita,Amanitaceae\n"
    )
    tax = read_taxonomy_file(good)
    assert tax.ranks == ("species", "genus", "family") and tax.parent("B edulis", "family") == (
        "Boletaceae"
    )
    assert tax.names("genus") == ["Amanita", "Boletus"]
    two = tmp_path / "two.csv"
    two.write_text("species,genus\nA muscaria,Amanita\nA muscaria,Boletus\n")
    with pytest.raises(TaxonomyError) as e:
        read_taxonomy_file(two)
    assert str(two) in str(e.value) and "'A muscaria' has two parents" in str(e.value)
    assert "line 2" in str(e.value) and "line 3" in str(e.value)
    up = tmp_path / "up.csv"
    up.write_text("species,genus,family\nx,Amanita,Amanitaceae\ny,Amanita,Boletaceae\n")
    with pytest.raises(TaxonomyError, match="genus 'Amanita' is under two family names"):
        read_taxonomy_file(up)
    gap = tmp_path / "gap.csv"
    gap.write_text("species,genus\nx,\n")
    with pytest.raises(TaxonomyError, match="line 2 has 1 of the 2 names"):
        read_taxonomy_file(gap)
    one = tmp_path / "one.csv"
    one.write_text("species\nx\n")
    with pytest.raises(TaxonomyError, match="header naming the ranks"):
        read_taxonomy_file(one)


def test_taxonomy_from_metadata_columns_is_kept_in_the_store(tmp_path):
    st = _tree_store(tmp_path / "s")
    res = set_taxonomy(st, ranks=["genus"])
    assert res.names_per_rank == {"label": 9, "genus": 3} and not res.warnings
    assert embedstore.store.read_taxonomy(tmp_path / "s").parent("species_bx", "genus") == (
        "genus_b"
    )
    assert st.info().taxonomy == {"label": 9, "genus": 3}
    out = CliRunner().invoke(embedstore_cli, ["info", "--store", str(tmp_path / "s")])
    assert "taxonomy   label (9) < genus (3)" in out.output
    # a label whose images name two genera is refused, with the column, label and counts
    st.update_columns([f"{0:064x}"], {"genus": ["genus_c"]})
    out = CliRunner().invoke(
        embedstore_cli, ["taxonomy", "--store", str(tmp_path / "s"), "--rank", "genus"]
    )
    assert out.exit_code == 2
    assert "column 'genus' gives 1 label(s) two or more parents" in out.output
    assert "'species_ax': genus_a (39 images), genus_c (1 images)" in out.output
    out = CliRunner().invoke(
        embedstore_cli, ["taxonomy", "--store", str(tmp_path / "s"), "--clear"]
    )
    assert out.exit_code == 0 and st.info().taxonomy is None
    # a file that leaves labels out: set, with a warning naming them
    f = tmp_path / "t.csv"
    f.write_text("label,genus\nspecies_ax,genus_a\n")
    res = set_taxonomy(st, f)
    assert len(res.missing_labels) == 8 and "8 label(s) of the store are not in" in res.warnings[0]


def test_ingest_checks_the_taxonomy_before_embedding_and_sets_it_after(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=3, per_class=2, size=32)
    bad = tmp_path / "bad.csv"
    bad.write_text("label,kind\nclass_0,warm\nclass_0,cool\n")
    args = ["ingest", str(tmp_path / "imgs"), "--store", str(tmp_path / "s")]
    args += ["--backbone", str(tiny_dino), "--workers", "0", "--quiet"]
    out = CliRunner().invoke(embedstore_cli, [*args, "--taxonomy", str(bad)])
    assert out.exit_code == 2 and "'class_0' has two parents" in out.output
    assert not embedstore.connect(tmp_path / "s").exists  # nothing was embedded
    good = tmp_path / "good.csv"
    good.write_text("label,kind\nclass_0,warm\nclass_1,warm\nclass_2,cool\n")
    out = CliRunner().invoke(embedstore_cli, [*args, "--taxonomy", str(good)])
    assert out.exit_code == 0, out.output
    assert "taxonomy: label (3) < kind (2)" in out.output
    assert embedstore.connect(tmp_path / "s").info().taxonomy == {"label": 3, "kind": 2}


# ---------------------------------------------------------------------- trees and thresholds


def test_rollup_and_lowest_common_ancestor_against_a_loop():
    tax = Taxonomy(
        ("sp", "genus", "family"),
        {"a": ("G1", "F1"), "b": ("G1", "F1"), "c": ("G2", "F1"), "d": ("G3", "F2")},
    )
    tree = Tree.from_taxonomy(tax, ["d", "a", "c", "b"])
    P = np.random.default_rng(0).dirichlet(np.ones(4), size=7)
    genus, family = tree.rollup(P)[1:]
    for i in range(7):
        assert np.isclose(genus[i, tree.names[1].index("G1")], P[i, 1] + P[i, 3])
        assert np.isclose(family[i, tree.names[2].index("F1")], P[i, 1:].sum())
    heights = tree.lca_height(np.array([1, 1, 1, 1]), np.array([1, 3, 2, 0]))
    assert heights.tolist() == [0, 1, 2, 3]  # same, same genus, same family, nothing shared
    with pytest.raises(heads.HeadsError, match="1 class\\(es\\) of the run are not in"):
        Tree.from_taxonomy(tax, ["a", "zz"])


def _wilson_lower(k: int, n: int, z: float = 1.6449) -> float:
    p = k / n
    return (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
        1 + z * z / n
    )


def test_threshold_is_the_lowest_confidence_whose_answers_meet_the_target():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        conf = np.round(rng.random(n), 1)  # ties
        right = rng.random(n) < conf
        target = float(rng.choice([0.5, 0.8, 0.9]))
        for bound in ("none", "wilson"):
            best = None
            for t in sorted(set(conf.tolist())):  # reference: every cut, the lowest that holds
                k, m = int(right[conf >= t].sum()), int((conf >= t).sum())
                share = k / m if bound == "none" else _wilson_lower(k, m)
                if share >= target - 1e-12:
                    best = t
                    break
            assert threshold_for(conf, right, target, bound) == best, (bound, conf, right)
    # the bound asks for more: never a lower threshold than the plain share
    conf, right = rng.random(500), rng.random(500) < 0.85
    plain, wilson = threshold_for(conf, right, 0.8), threshold_for(conf, right, 0.8, "wilson")
    assert plain is not None and wilson is not None and wilson >= plain


def test_fallback_answers_meet_the_target_at_each_rank_on_the_rows_fitted():
    rng = np.random.default_rng(2)
    n, target = 3000, 0.9
    names = [[f"s{i}" for i in range(6)], ["g0", "g1"]]
    pred = np.stack([rng.integers(0, 6, n), rng.integers(0, 2, n)], axis=1)
    conf = np.stack([rng.random(n), 0.5 + rng.random(n) / 2], axis=1)
    right = rng.random((n, 2)) < conf**0.5
    pred[:, 0][: n // 2] = 0  # class s0 is predicted often: it gets its own threshold
    th = fit_thresholds(
        conf, pred, right, names, ["species", "genus"], target=target, min_count=600
    )
    assert set(th[0].classes) == {"s0"} and th[1].rows < n
    got = answered_rank(conf, pred, th, names)
    for r in (0, 1):
        assert right[got == r, r].mean() >= target
    assert (got == 0).any() and (got == 1).any()


# ---------------------------------------------------------------------- runs on a taxonomy


def test_a_run_answers_at_the_finest_confident_rank_and_scores_every_rank(tmp_path):
    st = _tree_store(tmp_path / "s")
    set_taxonomy(st, ranks=["genus"])
    res = heads.train(st, fold="all", head="linear", out=tmp_path / "r", **FAST)
    h = res.hierarchy
    assert h is not None and Path(h.file) == tmp_path / "r" / "hierarchy.json"
    assert h.ranks == ["label", "genus"] and h.sources[0]["source"] == "rollup"
    ev = heads.evaluate(tmp_path / "r", plots=False)
    for part in (ev.metrics, ev.holdout):
        ranks = part["hierarchy"]["ranks"]
        assert ranks["genus"]["top1"] >= 0.95 and ranks["genus"]["top1"] > ranks["label"]["top1"]
        meet = part["hierarchy"]["mistakes_by_meeting_rank"]
        assert meet["genus"] > meet["none"]  # mistakes stay within the genus
        assert 1.0 <= part["hierarchy"]["mistake_severity"] < 1.5
    fb = ev.holdout["hierarchy"]["fallback"]
    assert fb["answer_accuracy"] > ev.holdout["top1"]  # the fallback's answers are safer
    assert fb["answered"]["genus"] > 0
    held = st.read(["id", "label"], part="holdout").to_pydict()
    preds = heads.predict(tmp_path / "r", ids=held["id"], fallback=True)
    by_rank = {p.rank for p in preds}
    assert "genus" in by_rank and "label" in by_rank
    for p in preds:
        assert [k["rank"] for k in p.ranks] == ["label", "genus"]
        if p.rank is not None:
            k = ["label", "genus"].index(p.rank)
            assert (
                p.answer == p.ranks[k]["label"]
                and p.ranks[k]["confidence"] >= p.ranks[k]["threshold"]
            )
    right = [
        p.answer == (t if p.rank == "label" else GENERA[t])
        for p, t in zip(preds, held["label"], strict=True)
        if p.rank
    ]
    assert np.mean(right) == pytest.approx(fb["answer_accuracy"])
    d = preds[0].to_dict()
    assert {"rank", "answer", "ranks"} <= set(d)
    assert "rank" not in heads.predict(tmp_path / "r", ids=held["id"][:1])[0].to_dict()
    # the command line: eval's per-rank lines, predict --fallback, hierarchy --target
    out = CliRunner().invoke(heads_cli, ["eval", str(tmp_path / "r")])
    assert "r, held-out by rank: top-1 label" in out.output and "fallback (target 90% right)" in (
        out.output
    )
    out = CliRunner().invoke(
        heads_cli, ["hierarchy", str(tmp_path / "r"), "--target", "0.99", "--json"]
    )
    assert out.exit_code == 0 and json.loads(out.output)["target"] == 0.99
    stricter = heads.predict(tmp_path / "r", ids=held["id"], fallback=True)
    assert sum(p.rank == "label" for p in stricter) <= sum(p.rank == "label" for p in preds)


def test_a_rank_run_is_used_where_it_is_more_accurate_out_of_fold(tmp_path):
    st = _tree_store(tmp_path / "s")
    set_taxonomy(st, ranks=["genus"])
    heads.train(st, fold="all", head="centroid", out=tmp_path / "fine", progress=False)
    res = heads.train(st, fold="all", head="linear", rank="genus", out=tmp_path / "g", **FAST)
    assert res.hierarchy is None  # genus is the top rank: nothing to fall back to
    g = heads.load(tmp_path / "g")
    assert g.classes == ["genus_a", "genus_b", "genus_c"]
    ev = heads.evaluate(tmp_path / "g", plots=False)
    assert ev.holdout["n_known"] == ev.holdout["n"] and ev.holdout["top1"] > 0.95  # mapped
    h = heads.taxonomy.fit_hierarchy(tmp_path / "fine", rank_runs={"genus": tmp_path / "g"})
    oof = h.sources[0]["oof_top1"]
    assert set(oof) == {"rollup", "run"}
    assert h.sources[0]["source"] == ("run" if oof["run"] > oof["rollup"] else "rollup")
    held = st.read(["id"], part="holdout").column("id").to_pylist()
    assert all(
        p.ranks is not None for p in heads.predict(tmp_path / "fine", ids=held, fallback=True)
    )
    out = CliRunner().invoke(
        heads_cli, ["hierarchy", str(tmp_path / "fine"), "--rank-run", f"genus={tmp_path / 'fine'}"]
    )
    assert out.exit_code == 2 and "that run's classes are at rank label, not genus" in out.output
    out = CliRunner().invoke(
        heads_cli, ["hierarchy", str(tmp_path / "fine"), "--rank-run", "genus"]
    )
    assert out.exit_code == 2 and "give RANK=RUN" in out.output
    with pytest.raises(heads.HeadsError, match="--rank genus: the store .* has no taxonomy"):
        heads.train(make_synthetic_store(tmp_path / "plain"), rank="genus", head="centroid")


def test_a_hierarchy_is_refused_for_another_run_and_runs_without_one_say_how(tmp_path):
    st = _tree_store(tmp_path / "s")
    heads.train(st, fold=0, head="centroid", out=tmp_path / "plain", progress=False)
    with pytest.raises(heads.HeadsError, match="has no hierarchy .*embedstore taxonomy"):
        heads.predict(tmp_path / "plain", ids=[f"{0:064x}"], fallback=True)
    set_taxonomy(st, ranks=["genus"])
    heads.train(st, fold=0, head="centroid", out=tmp_path / "a", progress=False)
    heads.train(st, fold=1, head="centroid", out=tmp_path / "b", progress=False)
    shutil.copy(tmp_path / "a" / "hierarchy.json", tmp_path / "b" / "hierarchy.json")
    with pytest.raises(heads.HeadsError, match="fitted for another version of the run"):
        heads.predict(tmp_path / "b", ids=[f"{0:064x}"], fallback=True)
    # a run trained before the taxonomy was set: fitted afterwards from the store's
    h = heads.taxonomy.fit_hierarchy(tmp_path / "plain")
    assert h.ranks == ["label", "genus"]
    with pytest.raises(heads.HeadsError, match="choose one"):
        heads.predict(tmp_path / "plain", ids=[f"{0:064x}"], fallback=True, cost_matrix="x.csv")


def test_the_service_answers_with_the_fallback(tmp_path):
    import embedstore_service as service
    from fastapi.testclient import TestClient

    st = _tree_store(tmp_path / "s")
    set_taxonomy(st, ranks=["genus"])
    heads.train(st, fold="all", head="centroid", out=tmp_path / "runs" / "c", progress=False)
    held = st.read(["id"], part="holdout").column("id").to_pylist()[:5]
    app = service.create_app(
        service.Settings(store=str(tmp_path / "s"), runs=str(tmp_path / "runs"))
    )
    with TestClient(app) as c:
        r = c.post("/v1/predict", json={"run": "c", "ids": held, "fallback": True})
        assert r.status_code == 200, r.text
        want = [
            p.to_dict() for p in heads.predict(tmp_path / "runs" / "c", ids=held, fallback=True)
        ]
        assert [d["rank"] for d in r.json()] == [d["rank"] for d in want]
        assert [d["answer"] for d in r.json()] == [d["answer"] for d in want]
        r = c.post("/v1/predict", json={"run": "c", "ids": held})
        assert "rank" not in r.json()[0]
        r = c.post("/v1/predict", json={"run": "c", "ids": held, "fallback": "maybe"})
        assert r.status_code == 422


# ---------------------------------------------------------------------- real photos


@pytest.fixture(scope="module")
def grocery_subset(tmp_path_factory) -> Path:
    """Apples, melons, peppers and potatoes of grocery81 (16 look-alike fine classes under 4
    coarse ones), train part only, with its metadata.csv."""
    if not (GROCERY / "metadata.csv").is_file():
        pytest.skip(f"grocery81 not found at {GROCERY}")
    coarse = {"Apple", "Melon", "Pepper", "Potato"}
    root = tmp_path_factory.mktemp("grocery") / "photos"
    rows = [r.split(",") for r in (GROCERY / "metadata.csv").read_text().splitlines()[1:]]
    keep = [(p, c) for p, c in rows if c in coarse and p.startswith("train/")]
    for p, _ in keep:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(GROCERY / p, root / p)
    (root / "metadata.csv").write_text(
        "path,coarse_class\n" + "".join(f"{p},{c}\n" for p, c in keep)
    )
    return root


@pytest.mark.slow
def test_grocery81_coarse_and_fine_answers_on_real_photos(grocery_subset, tmp_path):
    store = tmp_path / "g"
    embedstore.ingest(
        grocery_subset, store, metadata=grocery_subset / "metadata.csv", workers=1, progress=False
    )
    out = CliRunner().invoke(
        embedstore_cli, ["taxonomy", "--store", str(store), "--rank", "coarse_class"]
    )
    fine_classes = {
        r.split("/")[1] for r in (grocery_subset / "metadata.csv").read_text().split()[1:]
    }
    assert out.exit_code == 0, out.output
    assert f"label ({len(fine_classes)}) < coarse_class (4)" in out.output, out.output
    embedstore.split(store, folds=3, holdout=0.3, seed=0)
    res = heads.train(
        store, fold="all", head="linear", out=tmp_path / "r", **{**FAST, "epochs": 30}
    )
    ev = heads.evaluate(tmp_path / "r", plots=False)
    h = ev.holdout["hierarchy"]
    fine, coarse = h["ranks"]["label"]["top1"], h["ranks"]["coarse_class"]["top1"]
    assert coarse > fine and coarse >= 0.9, h  # apples confuse apples, rarely a pepper
    assert h["mistakes_by_meeting_rank"]["coarse_class"] > h["mistakes_by_meeting_rank"]["none"]
    fb = h["fallback"]
    assert fb["answer_accuracy"] > fine and fb["answered"]["coarse_class"] > 0, h
    assert res.hierarchy.oof["answer_accuracy"] >= 0.9 * res.hierarchy.target


def test_predict_fallback_on_image_files_from_the_command_line(photo_store, tmp_path):
    store = tmp_path / "s"
    shutil.copytree(photo_store, store)
    f = tmp_path / "kinds.csv"
    f.write_text("label,kind\nclass_0,warm\nclass_1,warm\nclass_2,cool\nclass_3,cool\n")
    out = CliRunner().invoke(embedstore_cli, ["taxonomy", str(f), "--store", str(store)])
    assert out.exit_code == 0 and "label (4) < kind (2)" in out.output, out.output
    heads.train(store, fold="all", head="centroid", out=tmp_path / "r", progress=False)
    photo = sorted((photo_store.parent / "imgs" / "class_2").glob("*.jpg"))[0]
    args = ["predict", str(tmp_path / "r"), str(photo), "--fallback"]
    out = CliRunner().invoke(heads_cli, args)
    assert out.exit_code == 0 and "  fallback: " in out.output, out.output
    d = json.loads(CliRunner().invoke(heads_cli, [*args, "--json"]).output)[0]
    assert [k["rank"] for k in d["ranks"]] == ["label", "kind"]
    assert d["rank"] in ("label", "kind", None) and d["ranks"][1]["label"] in ("warm", "cool")
    csv_out = tmp_path / "p.csv"
    CliRunner().invoke(heads_cli, [*args, "--csv", str(csv_out)])
    assert csv_out.read_text().splitlines()[0].endswith(",error,rank,answer")
    out = CliRunner().invoke(heads_cli, [*args, "--out", str(tmp_path / "t.lance")])
    assert out.exit_code == 2 and "--fallback" in out.output
