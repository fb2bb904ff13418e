"""Looking at the data through its embeddings: near-duplicates and leakage, label errors,
outliers, the 2-D map and the HTML report (issue 11), on real photos and small synthetic stores."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

import embedstore
import heads
from cli import embedstore_cli, heads_cli
from embedstore.explore._duplicates import _sheet_rows, leaks_of_pair, star_groups
from embedstore.explore._map import _GREY, _NONE_GREY, _palette
from heads.evaluation._issues import _suspects
from heads.evaluation._report import _CSS, _Thumbs, fold_leak_warning
from heads.evaluation._report import _duplicates as _report_duplicates
from tests.conftest import make_synthetic_store

pytestmark = pytest.mark.usefixtures("one_thread")
PLANTED = ("jpeg", "resize", "crop", "flip")


# ---------------------------------------------------------------------- fast: arrays and rules


def _brute_pairs(X: np.ndarray, threshold: float, Q: np.ndarray | None = None) -> set:
    """Every pair at or above ``threshold`` from the full similarity matrix (the reference)."""
    V = X / np.linalg.norm(X, axis=1, keepdims=True)
    if Q is None:
        S = V @ V.T
        i, j = np.nonzero(np.triu(S >= threshold, 1))
        return set(zip(i.tolist(), j.tolist(), strict=True))
    W = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    i, j = np.nonzero(W @ V.T >= threshold)
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_duplicate_pairs_match_the_all_pairs_reference(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 32)).astype(np.float32)
    src = rng.choice(400, 40, replace=False)
    copies = X[src] + rng.normal(0, 0.15, (40, 32)).astype(np.float32)  # cosine ~0.99
    X = np.concatenate([X, copies, copies[:5] * 2.0])  # a copy of a copy, scaled: same direction
    got = embedstore.explore.near_duplicate_pairs(X, threshold=0.9, k=10)
    want = _brute_pairs(X, 0.9)
    assert len(want) >= 45
    assert set(zip(got.first.tolist(), got.second.tolist(), strict=True)) == want
    assert (got.first < got.second).all() and (np.diff(got.similarity) <= 0).all()
    assert got.saturated == 0
    # across two sets: queries against the stored rows
    cross = embedstore.explore.near_duplicate_pairs(X[:400], queries=X[400:], threshold=0.9, k=5)
    assert set(zip(cross.first.tolist(), cross.second.tolist(), strict=True)) == _brute_pairs(
        X[:400], 0.9, Q=X[400:]
    )


def test_too_small_k_is_reported_not_hidden():
    X = np.ones((12, 4), np.float32) + np.random.default_rng(0).normal(0, 1e-3, (12, 4))
    got = embedstore.explore.near_duplicate_pairs(X, threshold=0.9, k=3)
    assert got.saturated == 12 and len(got.first) < 66  # 12 identical rows: 66 pairs, 3 each seen


def test_star_groups_never_chain_look_alikes():
    # 0~1 (0.99), 1~2 (0.95), 2~3 (0.92): connected components would give one chain of 4
    first, second = np.array([0, 1, 2]), np.array([1, 2, 3])
    groups = star_groups(first, second, np.array([0.99, 0.95, 0.92]))
    pairs = {(0, 1), (1, 2), (2, 3)}
    for g in groups:
        assert all((min(g[0], m), max(g[0], m)) in pairs for m in g[1:] if m != g[0]) or len(g) == 1
    assert sorted(m for g in groups for m in g) == [0, 1, 2, 3]


def test_what_a_pair_leaks():
    a = {"split": "train", "fold": 0, "label": "daisy"}
    assert leaks_of_pair(a, {"split": "test", "fold": -1, "label": "daisy"}) == ["split", "holdout"]
    assert leaks_of_pair(a, {"split": "train", "fold": 1, "label": "iris"}) == ["fold", "label"]
    assert leaks_of_pair(a, {"split": "train", "fold": -2, "label": "daisy"}) == []
    assert leaks_of_pair({"fold": -2}, {"fold": -1}) == ["holdout"]  # -2 trains in every fold
    assert leaks_of_pair({"label": None}, {"label": "x"}) == []


# ---------------------------------------------------------------------- fast: synthetic stores


def _dup_store(path: Path, n_classes: int = 4, per_class: int = 20, unknown: bool = False):
    """A synthetic store whose last 6 rows are near-copies of rows 0..5 (split test vs train)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (n_classes, 16)) * 2
    y = np.repeat(np.arange(n_classes), per_class)
    X = (centers[y] + rng.normal(0, 1, (len(y), 16))).astype(np.float32)
    X = np.concatenate([X, X[:6] + rng.normal(0, 0.02, (6, 16)).astype(np.float32)])
    labels = [f"species_{c}" for c in y] + [f"species_{y[i]}" for i in range(6)]
    labels[-1] = "species_3"  # a copy with another label: a likely label error
    if unknown:
        labels = [("unknown" if lbl == "species_3" else lbl) for lbl in labels]
    split = ["train"] * len(y) + ["test"] * 6
    st = make_synthetic_store(path, X=X, labels=labels, extra={"split": split})
    return st


def test_duplicate_sheet_shows_linking_pairs_above_threshold_and_counts_hidden_tiles(tmp_path):
    # a chain at 0, 20, 40 degrees (0-20 and 20-40 pair at cos 0.94; 0-40 is only 0.77) and a
    # star of 10 (nine copies at cos 0.93 to the first, 0.86 to each other): 8 tiles are drawn,
    # and the heading says how many are not
    ang = np.deg2rad([0.0, 20.0, 40.0])
    X = np.zeros((13, 16), np.float32)
    X[:3, 0], X[:3, 1] = np.cos(ang), np.sin(ang)
    X[3:, 5] = 1.0
    X[4:, 6:15] = 0.4 * np.eye(9)
    st = make_synthetic_store(
        tmp_path / "s", X=X, labels=["a"] * 3 + ["tigerlily-with-a-long-name"] * 10
    )
    res = embedstore.find_duplicates(st, threshold=0.9, out=tmp_path / "d")
    assert sorted(g.size for g in res.groups) == [3, 10]
    chain = next(g for g in res.groups if g.size == 3)
    assert min(chain.similarity_to_first) < 0.9  # the third joined through the second
    sheet = _sheet_rows(res.groups, [{"id": i} for i in _hex_ids(13)], csv_name="duplicates.csv")
    for head, tiles in sheet:
        sims = [float(t.caption[2].split()[2]) for t in tiles[1:]]
        assert min(sims) >= 0.9, (head, [t.caption for t in tiles])
        assert tiles[0].caption[2] == "#1 first"
        if "10 images" in head:
            assert len(tiles) == 8 and "8 shown, +2 more (all in duplicates.csv)" in head
        else:
            assert "more" not in head and tiles[2].caption[2].endswith("to #2")
    # the report's captions say the same, wrap instead of being cut, and count hidden tiles
    page = _report_duplicates(res, _Thumbs(st), 5)
    assert "tigerlily-with-a-long-name<br>-<br>#2 sim 0.928 to #1" in page
    assert "+4 more" in page and "#3 sim 0.940 to #2" in page
    figcaption = next(r for r in _CSS.split("\n") if r.startswith("figcaption"))
    assert "nowrap" not in figcaption and "ellipsis" not in figcaption


def test_map_palette_gives_twelve_classes_twelve_distinct_hues():
    def lab(colors):  # sRGB hex -> CIELAB (D65)
        rgb = np.array([[int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)] for c in colors])
        rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
        m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
        xyz = rgb @ m.T / np.array([0.95047, 1.0, 1.08883])
        f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
        return np.stack(
            [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1
        )

    for n in (12, 18):
        colors = _palette(n)
        assert len(set(colors)) == n
        # hue and chroma count, lightness a quarter: a light tint of a colour used already (tab20's
        # light blue beside its blue, 21.8 apart) reads as the same colour among small dots
        L = lab([*colors, _GREY, _NONE_GREY]) * np.array([0.25, 1.0, 1.0])
        d = np.linalg.norm(L[:, None] - L[None], axis=2)[:n]
        d[np.arange(n), np.arange(n)] = np.inf
        assert d.min() > (24 if n == 12 else 21), colors


def _hex_ids(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(n)]


def test_duplicates_on_a_store_find_copies_and_their_leaks(tmp_path):
    st = _dup_store(tmp_path / "s")
    embedstore.split(st, folds=3, use_split_column=True, seed=0)
    res = embedstore.find_duplicates(st, threshold=0.95, out=tmp_path / "d")
    assert isinstance(res, embedstore.DuplicatesResult) and res.images == 86
    found = {frozenset((p.id_a, p.id_b)) for p in res.pairs}
    ids = [f"{i:064x}" for i in range(86)]
    assert {frozenset((ids[i], ids[80 + i])) for i in range(6)} <= found
    assert res.leakage["split"] == res.leakage["holdout"] == 6 and res.leakage["label"] == 1
    assert res.holdout_images == 6 and len(res.leaking_pairs) == 6
    rows = (tmp_path / "d" / "duplicates.csv").read_text().splitlines()
    assert len(rows) == res.pairs_found + 1 and rows[0].startswith("group,similarity,id_a")
    assert Image.open(res.png).size[0] > 300  # the contact sheet ("no image" tiles here)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert "pairs" not in d and d["leakage"]["label"] == 1 and d["groups"][0]["leaks"]
    # the saved index (embedstore index) gives the same pairs
    embedstore.build_index(st, kind="exact")
    saved = embedstore.find_duplicates(st, threshold=0.95, plots=False, out=tmp_path / "d2")
    assert saved.index == "saved exact"
    assert {frozenset((p.id_a, p.id_b)) for p in saved.pairs} == found


def test_map_writes_columns_and_a_png_and_names_bad_columns(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    res = embedstore.map_store(st, color="label", out=tmp_path / "map.png")
    assert res.method == "pca" and res.images == 60  # tiny store: PCA
    t = st.read(["label", "map_x", "map_y"])
    assert t.column("map_x").null_count == 0 and t.column("map_y").null_count == 0
    assert {d["value"] for d in res.legend} == {"species_0", "species_1", "species_2"}
    assert Image.open(tmp_path / "map.png").size[0] > 500
    assert st.meta.table_metadata()["map"]["method"] == "pca"
    with pytest.raises(
        embedstore.StoreError, match="no column 'habitat' to colour by; columns: id"
    ):
        embedstore.map_store(st, color="habitat")


def test_a_suspect_the_model_agrees_with_says_why_it_is_listed():
    probs = np.array([[0.33, 0.30, 0.37], [0.1, 0.8, 0.1]])
    near = {"neighbors": lambda i: []}
    meta = [{"path": "a.jpg"}, {"path": "b.jpg"}]
    agree, differ = _suspects(
        np.array([0, 1]),
        np.array(["a", "b"]),
        meta,
        ["bluebell", "daisy", "tulip"],
        np.array([2, 0]),
        probs.argmax(axis=1),
        np.array([0.37, 0.1]),
        probs,
        np.array([False, True]),
        near,
    )
    assert agree.agrees and (agree.runner_up, agree.runner_up_probability) == ("bluebell", 0.33)
    assert agree.reason == (
        "the model agrees but is unsure: p 0.37 for tulip, bluebell next at 0.33 "
        "(low self-confidence, near the decision boundary)"
    )
    assert not differ.agrees and differ.reason == (
        "the model prefers daisy (p 0.80) to the given bluebell (p 0.10)"
    )


def test_report_says_the_folds_leak_when_out_of_fold_beats_held_out_by_far(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (6, 16)) * 4.0
    y = np.repeat(np.arange(6), 40)
    y_test = np.repeat(np.arange(6), 5)
    X = centers[np.concatenate([y, y_test])] + rng.normal(0, 1, (270, 16))
    # the held-out rows lie where the folds put another class: out-of-fold ~1, held-out ~0
    labels = [f"species_{c}" for c in y] + [f"species_{(c + 1) % 6}" for c in y_test]
    split = ["train"] * 240 + ["test"] * 30
    st = make_synthetic_store(
        tmp_path / "s", X=X.astype(np.float32), labels=labels, extra={"split": split}
    )
    embedstore.split(st, folds=3, use_split_column=True, seed=0)
    heads.train(st, fold="all", head="centroid", out=tmp_path / "r", progress=False)
    res = heads.report(tmp_path / "r", out=tmp_path / "r.html")
    (w,) = res.warnings
    assert "the folds leak" in w and "embedstore split --group-by <column>" in w, w
    assert "embedstore duplicates" in w
    page = (tmp_path / "r.html").read_text()
    assert '<p class="leak">out-of-fold top-1 ' in page and "the folds leak" in page
    r = CliRunner().invoke(heads_cli, ["report", str(tmp_path / "r"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "  warning: out-of-fold top-1 " in r.output, r.output
    # a small gap says nothing
    assert fold_leak_warning({"top1": 0.95}, {"top1": 0.9}) is None
    assert fold_leak_warning({"top1": 0.95}, None) is None


def test_cli_duplicates_map_issues_report_print_their_results(tmp_path):
    st = _dup_store(tmp_path / "s", unknown=True)
    embedstore.split(st, folds=3, use_split_column=True, seed=0)
    r = CliRunner().invoke(
        heads_cli,
        [
            "train",
            "--store",
            str(st.path),
            "--fold",
            "all",
            "--head",
            "centroid",
            "--unknown",
            "knn",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "warning: 6 of the 6 held-out images have a near-duplicate" in r.output
    runner = CliRunner()
    s = str(st.path)
    r = runner.invoke(embedstore_cli, ["duplicates", "--store", s, "--threshold", "0.95", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["holdout_images"] == 6
    r = runner.invoke(embedstore_cli, ["duplicates", "--store", s, "--threshold", "0.95"])
    assert "leaking pairs: split 6, holdout 6, label 1" in r.output, r.output
    r = runner.invoke(
        embedstore_cli,
        ["map", "--store", s, "--color", "split", "--json", "--out", str(tmp_path / "m.png")],
    )
    assert r.exit_code == 0 and json.loads(r.output)["columns"] == ["map_x", "map_y"], r.output
    r = runner.invoke(heads_cli, ["issues", str(tmp_path / "r"), "--top", "3", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert len(d["label_issues"]) == 3 and {"given", "suggested", "label_quality"} <= set(
        d["label_issues"][0]
    )
    # every row listed says why it is suspect; where the model keeps the given label, it says so
    r = runner.invoke(heads_cli, ["issues", str(tmp_path / "r"), "--top", "100"])
    listed = r.output.split("most suspect")[1].split("outliers (")[0].splitlines()
    rows = [x for x in listed if x.startswith("  #")]
    assert r.exit_code == 0 and rows, r.output
    for x in rows:
        given = x.split("given ")[1].split(",")[0]
        assert ("model agrees but is unsure" in x and "near the decision boundary" in x) or (
            "model says " in x and f"model says {given} " not in x
        ), x
    r = runner.invoke(heads_cli, ["report", str(tmp_path / "r"), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0 and "wrote" in r.output, r.output
    page = (tmp_path / "r.html").read_text()
    assert "AUROC" in page and "data:image/png;base64," in page  # the detector's ROC, inline
    r = runner.invoke(heads_cli, ["issues", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "not a run or ensemble directory" in r.output


# ---------------------------------------------------------------------- real photos


def _plant(src: Path, dst: Path, files: list[Path]) -> list[tuple[Path, Path]]:
    """Near-copies of ``files`` under ``dst/test/<species>/``: a JPEG at quality 30, a 75%
    resize, a 10% crop (5% off each side), a mirror image, in turn."""
    out = []
    for i, f in enumerate(files):
        im, kind = Image.open(f).convert("RGB"), PLANTED[i % 4]
        w, h = im.size
        if kind == "resize":
            im = im.resize((round(w * 0.75), round(h * 0.75)))
        elif kind == "crop":
            im = im.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        elif kind == "flip":
            im = ImageOps.mirror(im)
        d = dst / "test" / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"planted_{i}_{kind}.jpg", quality=30 if kind == "jpeg" else 90)
        out.append((f, d / f"planted_{i}_{kind}.jpg"))
    return out


@pytest.fixture(scope="module")
def quality_store(flowers, flowers_store, tmp_path_factory):
    """flowers12 with 40 planted near-copies of train photos in test/, and 5% of the train
    labels flipped at random; split 5 folds over train/ with test/ held out."""
    base = tmp_path_factory.mktemp("quality")
    path = base / "store"
    shutil.copytree(flowers_store, path)
    train = sorted((flowers / "train").glob("*/*.jpg"))
    picked = random.Random(0).sample(train, 40)
    planted = _plant(flowers, base / "planted", picked)
    embedstore.ingest(base / "planted", path, batch_size=32, workers=0, progress=False)
    st = embedstore.connect(path)
    t = st.read(["id", "path", "root", "label", "split"]).to_pylist()
    by_file = {str(Path(r["root"]) / r["path"]): r["id"] for r in t}
    pairs = {frozenset((by_file[str(a)], by_file[str(b)])) for a, b in planted}
    copies = {by_file[str(b)] for _, b in planted}
    assert len(pairs) == 40
    rng = np.random.default_rng(0)
    originals = {by_file[str(a)] for a, _ in planted}
    candidates = [r for r in t if r["split"] == "train" and r["id"] not in originals]
    n_flip = round(0.05 * sum(r["split"] == "train" for r in t))
    flip = [candidates[i] for i in rng.choice(len(candidates), n_flip, replace=False)]
    classes = sorted({r["label"] for r in t})
    new = [str(rng.choice([c for c in classes if c != r["label"]])) for r in flip]
    st.update_columns([r["id"] for r in flip], {"label": pa.array(new, pa.string())})
    embedstore.split(st, folds=5, use_split_column=True, seed=0)
    res = heads.train(
        st,
        fold="all",
        head="linear",
        epochs=10,
        batch_size=128,
        unknown="energy",
        out=base / "runs" / "linear",
        progress=False,
        device="cpu",
    )
    return SimpleNamespace(
        path=path,
        planted=pairs,
        copies=copies,
        flipped={r["id"] for r in flip},
        train=res,
        run=Path(res.ensemble),
        base=base,
    )


def test_duplicates_find_planted_copies_across_train_and_test(quality_store, tmp_path):
    q = quality_store
    res = embedstore.find_duplicates(q.path, out=tmp_path)  # default threshold 0.90
    found = {frozenset((p.id_a, p.id_b)) for p in res.pairs}
    recall = len(q.planted & found) / len(q.planted)
    involving = [f for f in found if f & q.copies]  # pairs with a planted copy in them
    precision_planted = len(q.planted & found) / len(involving)
    precision_all = len(q.planted & found) / len(found)
    print(
        f"\nduplicates: planted recall {recall:.3f}, precision among pairs with a planted copy "
        f"{precision_planted:.3f}, planted share of all {len(found)} pairs {precision_all:.3f}"
    )
    assert recall >= 0.9
    assert precision_planted >= 0.75  # the rest pair a copy with a look-alike of its original
    leaking = {frozenset((p.id_a, p.id_b)) for p in res.leaking_pairs if "split" in p.leaks}
    assert len(q.planted & found) == len(q.planted & leaking)  # every one is a train/test leak
    assert res.holdout_images >= 36 and Path(res.png).is_file() and Path(res.csv).is_file()


def test_train_warns_of_leakage_between_folds_and_held_out_part(quality_store):
    (w,) = quality_store.train.warnings
    assert "of the 280 held-out images have a near-duplicate" in w and "embedstore duplicates" in w


def test_issues_rank_flipped_labels_first(quality_store, tmp_path):
    q = quality_store
    n = len(q.flipped)
    res = heads.find_issues(q.run, top=2 * n, out=tmp_path)
    recall = len({s.id for s in res.label_issues} & q.flipped) / n
    print(
        f"\nissues: {n} flipped labels, {recall:.3f} of them in the top {2 * n}; cleanlab flags "
        f"{res.flagged}; {res.seconds_by_step}"
    )
    assert n == 36 and recall >= 0.8
    top = res.label_issues[0]
    assert top.given != top.suggested and len(top.neighbors) == 5
    assert (
        len(res.outliers) == 2 * n
        and res.outliers[0].knn_similarity <= res.outliers[-1].knn_similarity
    )
    assert len((tmp_path / "issues.csv").read_text().splitlines()) == res.images + 1 == 720
    assert Image.open(res.png).size[1] > 1000 and Path(res.outliers_png).is_file()


@pytest.mark.slow
def test_map_shows_classes_as_clusters(quality_store, tmp_path):
    from sklearn.metrics import silhouette_score

    res = embedstore.map_store(quality_store.path, color="label", out=tmp_path / "map.png")
    assert res.method == "umap" and res.images == 999
    t = embedstore.connect(quality_store.path).read(["label", "map_x", "map_y"])
    Y = np.stack([t.column("map_x").to_numpy(), t.column("map_y").to_numpy()], axis=1)
    sil = silhouette_score(Y, t.column("label").to_pylist())
    print(f"\nmap: silhouette by label on the 2-D coordinates {sil:.3f}")
    assert sil > 0.3
    assert len(res.legend) == 12 and Image.open(tmp_path / "map.png").size[0] > 900


def test_report_is_one_self_contained_page(quality_store, tmp_path):
    res = heads.report(quality_store.run, out=tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert res.sections == [
        "scores",
        "per-class",
        "confusion",
        "pairs",
        "unknown",
        "label-errors",
        "duplicates",
    ]
    assert res.images_inlined > 50 and page.count("data:image/jpeg;base64,") >= res.images_inlined
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    for text in (
        "validation (out-of-fold)",
        "held-out part",
        "taken for",
        "model says",
        "Leaking pairs",
        "leak: split",
    ):
        assert text in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless chromium here to take a screenshot of the report")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            (tmp_path / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    im = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert im.shape == (2400, 1280) and im.std() > 20  # rendered: text, tables and photos
