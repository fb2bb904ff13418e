"""embedstore.search._lookup: nearest stored images for files and row ids, saved indexes, bad
input."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import embedstore
from embedstore.ingestion import hash_bytes
from embedstore.search._indexes import build_index, index_paths
from embedstore.search._lookup import lookup, vote
from tests.conftest import write_class_images


def _ingest(root, store, backbone):
    return embedstore.ingest(root, store, backbones=[str(backbone)], workers=0, progress=False)


def _store_with_metadata(root: Path, backbone: Path) -> Path:
    """3 classes x 4 images with a metadata CSV, plus one unlabelled image: 13 rows."""
    imgs = root / "imgs"
    write_class_images(imgs, n_classes=3, per_class=4)
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(imgs / "loose.png")
    lines = ["image,observed_on,habitat,count"]
    for c in range(3):
        for i in range(4):
            lines.append(f"class_{c}/img_{i}.jpg,2024-05-0{i + 1},hab{c},{c * 10 + i}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")
    store = root / "store"
    s = embedstore.ingest(
        imgs,
        store,
        backbones=[str(backbone)],
        metadata=root / "meta.csv",
        workers=0,
        progress=False,
    )
    assert s["new_images"] == 13, s
    return store


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_dino) -> Path:
    """A read-only store shared by the tests below (tests that write make their own)."""
    return _store_with_metadata(tmp_path_factory.mktemp("lookup"), tiny_dino)


def _id_of(path: Path) -> str:
    return hash_bytes(path.read_bytes())


# ---------------------------------------------------------------------- lookups


def test_exact_duplicate_outside_the_store_comes_first_with_similarity_one(small, tmp_path):
    original = small.parent / "imgs" / "class_1" / "img_2.jpg"
    copy = tmp_path / "elsewhere" / "renamed.jpg"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    res = lookup(small, [str(copy)], k=5)
    assert res["used_index"] is False and res["index_kind"] == "exact" and not res["index_stale"]
    (r,) = res["results"]
    assert r["query"] == str(copy) and r["in_store"] and r["query_id"] == _id_of(original)
    first = r["neighbors"][0]
    assert first["id"] == _id_of(original)
    assert first["path"] == str(original)  # root joined with the stored relative path
    assert first["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert r["vote"]["label"] == "class_1" and r["vote"]["score"] > 0.5
    sims = [nb["similarity"] for nb in r["neighbors"]]
    assert sims == sorted(sims, reverse=True) and len(sims) == 5
    json.dumps(res.to_dict(), allow_nan=False)  # the whole result is JSON-able


def test_row_id_query_and_new_files_are_embedded_with_the_stored_backbone(small, tmp_path):
    stored = small.parent / "imgs" / "class_2" / "img_0.jpg"
    write_class_images(tmp_path / "new", n_classes=3, per_class=1, seed=5)  # unseen photos
    new = [tmp_path / "new" / f"class_{c}" / "img_0.jpg" for c in range(3)]
    res = lookup(small, [_id_of(stored).upper(), *map(str, new)], k=4)
    by_id, *by_file = res["results"]
    assert by_id["in_store"] and by_id["neighbors"][0]["id"] == _id_of(stored)
    assert by_id["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    for c, r in enumerate(by_file):
        assert not r["in_store"]
        assert r["vote"]["label"] == f"class_{c}"  # colour and stripes survive a random tiny ViT
        assert r["neighbors"][0]["similarity"] < 0.99999  # not a stored image


def test_metadata_columns_are_returned_as_json_values(small):
    q = small.parent / "imgs" / "class_0" / "img_3.jpg"
    res = lookup(small, [str(q)], k=2)
    first = res["results"][0]["neighbors"][0]
    assert first["habitat"] == "hab0" and first["count"] == 3
    assert first["observed_on"].startswith("2024-05-04")  # an ISO string, not a datetime
    assert "split" in first and "added_at" not in first and "paths" not in first
    assert not any(key.startswith("emb_") for key in first)
    only = lookup(small, [str(q)], k=2, columns=["habitat"])["results"][0]["neighbors"][0]
    assert set(only) == {"id", "path", "label", "similarity", "habitat"}


def test_where_restricts_the_neighbours(small):
    q = small.parent / "imgs" / "class_0" / "img_0.jpg"
    res = lookup(small, [str(q)], k=4, where="label = 'class_2'")
    labels = [nb["label"] for nb in res["results"][0]["neighbors"]]
    assert labels == ["class_2"] * 4 and res["results"][0]["vote"]["label"] == "class_2"
    res = lookup(small, [str(q)], k=3, where="count >= 11")  # a metadata column
    assert all(nb["count"] >= 11 for nb in res["results"][0]["neighbors"])


def test_unlabelled_neighbours_do_not_vote(small):
    loose = small.parent / "imgs" / "loose.png"
    r = lookup(small, [str(loose)], k=1)["results"][0]
    assert r["neighbors"][0]["label"] is None
    assert r["vote"] == {"label": None, "score": None, "votes": []}
    r = lookup(small, [str(loose)], k=13)["results"][0]
    assert r["vote"]["label"] is not None
    assert math.fsum(v["score"] for v in r["vote"]["votes"]) == pytest.approx(1.0)


def test_vote_matches_a_hand_computation():
    T = 0.1
    out = vote(["a", "b", None, "a"], [0.9, 0.8, 0.95, 0.5], T)
    wa, wb = math.exp(0.9 / T) + math.exp(0.5 / T), math.exp(0.8 / T)
    assert out["label"] == "a" and out["score"] == pytest.approx(wa / (wa + wb))
    assert [v["label"] for v in out["votes"]] == ["a", "b"]
    assert vote(["x"] * 3, [-1.0, -1.0, -1.0], 0.001)["score"] == pytest.approx(1.0)  # no underflow


# ---------------------------------------------------------------------- saved indexes


@pytest.mark.parametrize("kind", ["auto", "hnsw", "ivf"])
def test_built_index_is_used_until_the_store_changes(tmp_path, tiny_dino, kind):
    store = _store_with_metadata(tmp_path, tiny_dino)
    q = [str(tmp_path / "imgs" / "class_1" / "img_1.jpg")]
    exact = lookup(store, q, k=5)
    summary = build_index(store, kind=kind, nlist=2 if kind == "ivf" else None)
    want_kind = "exact" if kind == "auto" else kind  # auto: exact below 200,000 vectors
    assert summary["built"] and summary["kind"] == want_kind and summary["ntotal"] == 13
    faiss_path, ids_path = index_paths(
        embedstore.connect(store), embedstore.connect(store).resolve_backbone(None)
    )
    side = json.loads(Path(str(faiss_path) + ".json").read_text())
    assert side["store"]["version"] == embedstore.connect(store).version and ids_path.exists()
    assert build_index(store, kind=kind, nlist=2 if kind == "ivf" else None)["built"] is False

    res = lookup(store, q, k=5)
    assert res["used_index"] is True and res["index_kind"] == want_kind and not res["index_stale"]
    got = [nb["id"] for nb in res["results"][0]["neighbors"]]
    assert got == [nb["id"] for nb in exact["results"][0]["neighbors"]]
    assert res["results"][0]["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert lookup(store, q, k=4, where="label = 'class_1'")["used_index"] is False

    write_class_images(tmp_path / "more", n_classes=1, per_class=2, seed=3)
    _ingest(tmp_path / "more", store, tiny_dino)  # a new store version
    res = lookup(store, q, k=5)
    assert res["used_index"] is False and res["index_stale"] is True
    assert "stale" in res["warnings"][0]
    rebuilt = build_index(store, kind=kind, nlist=2 if kind == "ivf" else None)
    assert rebuilt["built"] and rebuilt["ntotal"] == 15
    res = lookup(store, q, k=5)
    assert res["used_index"] is True and not res["index_stale"]


def test_rebuilt_backbone_reproduces_the_stored_embedding_with_its_pooling(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=2, per_class=2)
    s = embedstore.ingest(
        tmp_path / "imgs",
        tmp_path / "store",
        backbones=[str(tiny_dino)],
        pooling="mean",
        workers=0,
        progress=False,
    )
    assert s["embedded"] == {"tiny-dino-mean": 4}
    png = tmp_path / "same-pixels.png"  # new bytes, the stored image's pixels
    Image.open(tmp_path / "imgs" / "class_1" / "img_0.jpg").save(png)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same weights: no warning
        res = lookup(tmp_path / "store", [str(png)], k=1, backbone="tiny-dino-mean")
    (r,) = res["results"]
    assert not r["in_store"] and res["backbone"] == "tiny-dino-mean" and res["warnings"] == []
    assert r["neighbors"][0]["path"] == str(tmp_path / "imgs" / "class_1" / "img_0.jpg")
    assert r["neighbors"][0]["similarity"] > 0.999  # float16 storage is the only difference


def test_query_embedding_warns_when_the_model_weights_changed(tmp_path, tiny_dino):
    from transformers import Dinov2Model

    model = tmp_path / "tiny-dino"
    shutil.copytree(tiny_dino, model)
    write_class_images(tmp_path / "imgs", n_classes=3, per_class=2)
    _ingest(tmp_path / "imgs", tmp_path / "store", model)
    torch.manual_seed(1)  # same folder, other weights
    Dinov2Model(Dinov2Model.from_pretrained(model).config).save_pretrained(model)
    write_class_images(tmp_path / "q", n_classes=1, per_class=1, seed=4)
    with pytest.warns(UserWarning, match="differ from those the store was embedded with"):
        res = lookup(tmp_path / "store", [str(tmp_path / "q" / "class_0" / "img_0.jpg")], k=2)
    assert "differ" in res["warnings"][0]


# ---------------------------------------------------------------------- bad input


def test_bad_input_fails_with_a_clear_message_and_changes_nothing(small, tmp_path):
    q = str(small.parent / "imgs" / "class_0" / "img_0.jpg")
    st = embedstore.connect(small)
    version = st.version
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = [
        (dict(queries=[q], k=0), "k must be at least 1, not 0"),
        (dict(queries=[q], k=50), "k=50 but the store has 13 images with tiny-dino embeddings"),
        (
            dict(queries=[q], k=5, where="label = 'class_1'"),
            "k=5 but the store has 4 images with tiny-dino embeddings matching --where",
        ),
        (
            dict(queries=[str(tmp_path / "nope.jpg")]),
            f"{tmp_path / 'nope.jpg'}: query file not found "
            "(give an image file or a 64-hex stored row id)",
        ),
        (
            dict(queries=[str(bad)]),
            f"{bad}: cannot use as a query image: not an image "
            "(content is not a recognised image format)",
        ),
        (dict(queries=[str(empty)]), f"{empty}: cannot use as a query image: empty file (0 bytes)"),
        (dict(queries=["0" * 64]), f"{'0' * 64}: no stored image has this id (and no such file)"),
        (
            dict(queries=[q], backbone="dinov2-small"),
            f"{small}: no embeddings for backbone 'dinov2-small'; the store has: tiny-dino",
        ),
        (dict(queries=[q], where="nonsense =="), "invalid --where expression 'nonsense ==': "),
        (
            dict(queries=[q], where="no_such_column = 1"),
            "invalid --where expression 'no_such_column = 1': ",
        ),
        (dict(queries=[q], columns=["nope"]), f"{small}: no column(s) nope; columns: "),
        (
            dict(queries=[q], columns=["emb_tiny_dino"]),
            "column(s) emb_tiny_dino hold embeddings; give metadata columns",
        ),
        (dict(queries=[q], index="annoy"), "unknown index 'annoy'; valid: auto, exact, ivf, hnsw"),
        (dict(queries=[]), "no queries given: name image files or stored row ids"),
    ]
    for kw, message in cases:
        with pytest.raises(embedstore.StoreError) as e:
            lookup(small, **kw)
        assert str(e.value).startswith(message), (kw, str(e.value))
    assert "No field named no_such_column" in _message(
        lookup, small, [q], where="no_such_column = 1"
    )
    assert embedstore.connect(small).version == version
    assert not (small / "indexes").exists()


def _message(fn, *args, **kw) -> str:
    with pytest.raises(embedstore.StoreError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_empty_or_missing_store(tmp_path, small):
    q = str(small.parent / "imgs" / "class_0" / "img_0.jpg")
    embedstore.connect(tmp_path / "empty")  # creates the folder, no images
    msg = _message(lookup, tmp_path / "empty", [q])
    assert (
        msg == f"{tmp_path / 'empty'}: the store is empty; "
        f"run `embedstore ingest IMAGES_DIR --store {tmp_path / 'empty'}`"
    )
    assert "no store here" in _message(lookup, tmp_path / "missing", [q])
    assert not (tmp_path / "missing").exists()
    assert "the store is empty" in _message(build_index, tmp_path / "empty")
    assert "nlist=99 must be between 1 and the 13 vectors" in _message(
        build_index, small, kind="ivf", nlist=99
    )
    assert "nlist only applies to kind 'ivf'" in _message(build_index, small, kind="hnsw", nlist=4)
    assert not (small / "indexes").exists()


# ---------------------------------------------------------------------- real photos


def test_flowers12_lookup_votes_the_true_species(flowers_store, flowers, tmp_path):
    """Test photos looked up among the training photos (stored vectors and fresh embeddings)."""
    picked = sorted((flowers / "test").glob("*/*.jpg"))  # 240: 20 per species
    res = lookup(flowers_store, [str(p) for p in picked], k=10, where="split = 'train'")
    assert all(r["in_store"] for r in res["results"])
    assert all(nb["split"] == "train" for r in res["results"] for nb in r["neighbors"])
    hits = [
        r["vote"]["label"] == p.parent.name for p, r in zip(picked, res["results"], strict=True)
    ]
    acc_stored = float(np.mean(hits))

    # Re-encoded as PNG: new bytes, same pixels: embedded afresh with the stored backbone.
    fresh = []
    for p in picked[::10]:  # 2 per species
        out = tmp_path / p.parent.name / (p.stem + ".png")
        out.parent.mkdir(exist_ok=True)
        Image.open(p).save(out)
        fresh.append(out)
    res = lookup(flowers_store, [str(p) for p in fresh], k=10, where="split = 'train'")
    assert not any(r["in_store"] for r in res["results"])
    hits = [r["vote"]["label"] == p.parent.name for p, r in zip(fresh, res["results"], strict=True)]
    acc_fresh = float(np.mean(hits))
    same = lookup(flowers_store, [str(fresh[0])], k=1)["results"][0]["neighbors"][0]
    assert same["path"].endswith(f"{fresh[0].parent.name}/{fresh[0].stem}.jpg")
    assert same["similarity"] > 0.995  # the rebuilt backbone reproduces the stored embedding
    print(
        f"\nflowers12 lookup vote accuracy: stored vectors {acc_stored:.3f} ({len(picked)} "
        f"photos), fresh embeddings {acc_fresh:.3f} ({len(fresh)} photos)"
    )
    assert acc_stored >= 0.85 and acc_fresh >= 0.8
