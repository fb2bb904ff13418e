"""The Ray engine: ingest and batch prediction on one local cluster (``ray.init(num_cpus=2)``
once per test session) give what the local engine gives; a killed Ray ingest resumes with every
image exactly once; without the extra, ``--engine ray`` says how to install it.

Skips (except the install-hint test) where ray or lance-ray is not installed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import embedstore_cli, heads_cli
from embedstore.ingestion import IngestOptions
from embedstore.ingestion._ray_ingest import ingest_ray
from tests.conftest import write_class_images

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("daisy", "iris", "sunflower")


@pytest.fixture(scope="session")
def ray_cluster(onnx_cache) -> str:
    """One local cluster for the session; the ONNX cache (set before it starts) is inherited by
    its workers. Yields the address other drivers join it at."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("lance_ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(flowers, tmp_path_factory) -> Path:
    """21 real photos (train/ and test/ of 3 classes), one photo under two names, a file that
    is no image, an unsupported gif, and a metadata CSV."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    for part, n in (("train", 5), ("test", 2)):
        for c in CLASSES:
            (root / part / c).mkdir(parents=True)
            for f in sorted((flowers / part / c).glob("*.jpg"))[:n]:
                shutil.copy(f, root / part / c / f.name)
    first = sorted((root / "train" / "iris").glob("*.jpg"))[0]
    shutil.copy(first, root / "train" / "daisy" / "copy_of_iris.jpg")
    (root / "train" / "daisy" / "notes.jpg").write_bytes(b"not an image at all")
    (root / "train" / "iris" / "anim.gif").write_bytes(b"GIF89a")
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    lines = ["path,site,count"] + [
        f"{r},{['wood', 'meadow'][k % 2]},{k}" for k, r in enumerate(rels)
    ]
    (root.parent / "meta.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def two_stores(photos, ray_cluster, tmp_path_factory):
    """The photos ingested locally and on the Ray cluster, with metadata."""
    base = tmp_path_factory.mktemp("ray-stores")
    kw = {
        "metadata": photos.parent / "meta.csv",
        "batch_size": 8,
        "commit_every": 8,
        "progress": False,
    }
    local = embedstore.ingest(photos, base / "local", workers=0, **kw)
    ray = embedstore.ingest(photos, base / "ray", engine="ray", actors=1, **kw)
    return base / "local", local, base / "ray", ray


def _table(store: Path, name: str = "images") -> pa.Table:
    return lance.dataset(str(store / f"{name}.lance")).to_table().sort_by("id")


@pytest.mark.slow
def test_ray_ingest_writes_what_the_local_ingest_writes(two_stores):
    local_path, local, ray_path, ray = two_stores
    assert ray.engine == "ray" and local.engine == "local"
    for key in (
        "files_found",
        "new_images",
        "duplicates",
        "embedded",
        "skipped",
        "skipped_by_reason",
        "images_in_store",
        "runtimes",
        "ok",
    ):
        assert ray[key] == local[key], key
    assert ray.new_images == 21 and ray.duplicates == 1 and ray.skipped == 2
    a, b = _table(local_path), _table(ray_path)
    # same columns, types, and field metadata (provenance) in the same order
    assert a.schema.remove_metadata().equals(b.schema.remove_metadata(), check_metadata=True)
    meta_a, meta_b = a.schema.metadata, b.schema.metadata
    assert meta_a[b"embedstore.format"] == meta_b[b"embedstore.format"]
    for c in a.column_names:
        if c == "added_at":
            continue
        if c.startswith("emb_"):
            assert b.schema.field(c).type.value_type == pa.float16()
            x = np.asarray(a.column(c).to_pylist(), np.float32)
            y = np.asarray(b.column(c).to_pylist(), np.float32)
            np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-3)  # float16 rounding
        else:
            assert b.column(c).to_pylist() == a.column(c).to_pylist(), c
    assert set(b.column("site").to_pylist()) == {"wood", "meadow"}  # metadata joined
    assert set(b.column("split").to_pylist()) == {"train", "test"}
    cols = ["root", "rel", "size", "id"]
    assert _table(ray_path, "files").select(cols).equals(_table(local_path, "files").select(cols))
    skipped = [
        embedstore.connect(p).records.skipped().sort_by("rel").select(["rel", "reason"])
        for p in (local_path, ray_path)
    ]
    assert skipped[0].equals(skipped[1]) and skipped[1].num_rows == 2


@pytest.mark.slow
def test_ray_ingest_makes_views_as_the_local_ingest_does(photos, ray_cluster, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(photos / "train" / "iris", imgs / "iris")
    shutil.copytree(photos / "train" / "sunflower", imgs / "sunflower")
    kw = {"batch_size": 4, "commit_every": 4, "progress": False}
    ray_kw = {"engine": "ray", "actors": 1, **kw}
    store, fresh, local = tmp_path / "ray", tmp_path / "ray-fresh", tmp_path / "local"
    s = embedstore.ingest(imgs, store, **ray_kw)  # main embeddings only
    assert s.embedded == {"efficientnet-lite0": 10} and s.views == {}
    s = embedstore.ingest(imgs, store, views=["flip"], **ray_kw)  # stored images: only the view
    assert s.embedded == {"efficientnet-lite0": 0}
    assert s.views == {"efficientnet-lite0": {"flip": 10}}
    shutil.copytree(photos / "test" / "daisy", imgs / "daisy")  # later images, no views asked:
    s = embedstore.ingest(imgs, store, **ray_kw)  # they get the store's views too
    assert s.new_images == 2 and s.views == {"efficientnet-lite0": {"flip": 2}}
    s = embedstore.ingest(imgs, fresh, views="flip", **ray_kw)  # a new store, with views
    assert s.new_images == 12 and s.views == {"efficientnet-lite0": {"flip": 12}}
    embedstore.ingest(imgs, local, workers=0, views="flip", **kw)
    want = _table(local)
    for path in (store, fresh):
        got = _table(path)
        assert got.column("id").to_pylist() == want.column("id").to_pylist()
        for c in ("emb_efficientnet_lite0", "emb_efficientnet_lite0__flip"):
            x = np.asarray(want.column(c).to_pylist(), np.float32)
            y = np.asarray(got.column(c).to_pylist(), np.float32)  # (12, 1280); no nulls
            np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-3)  # float16 rounding
        assert embedstore.connect(path).embeddings_info()["efficientnet-lite0"].views == ["flip"]


@pytest.mark.slow
def test_after_a_crash_ray_counts_re_checked_files_as_stored_not_duplicates(
    photos, ray_cluster, tmp_path
):
    imgs = tmp_path / "imgs"
    shutil.copytree(photos / "train" / "iris", imgs / "iris")
    kw = {"engine": "ray", "actors": 1, "batch_size": 4, "commit_every": 4, "progress": False}
    store = tmp_path / "s"
    embedstore.ingest(imgs, store, **kw)
    # a kill between the images commit and the file records commit leaves the images stored
    # and the files unrecorded: the next run hashes them again, as the local engine would
    shutil.rmtree(store / "files.lance")
    s = embedstore.ingest(imgs, store, **kw)
    assert s.new_images == 0 and s.duplicates == 0 and s.already_stored == 5
    shutil.copy(sorted((imgs / "iris").glob("*.jpg"))[0], imgs / "iris" / "copy.jpg")
    assert embedstore.ingest(imgs, store, **kw).duplicates == 1  # a real duplicate name


@pytest.mark.slow
def test_ray_ingest_runs_a_transformer_with_onnx_int8_as_the_local_ingest(
    photos, ray_cluster, tmp_path, tiny_dino
):
    imgs = tmp_path / "imgs"
    shutil.copytree(photos / "train" / "iris", imgs / "iris")
    kw = {"backbones": [str(tiny_dino)], "runtime": "onnx-int8", "batch_size": 4, "progress": False}
    s = embedstore.ingest(imgs, tmp_path / "ray", engine="ray", actors=1, commit_every=4, **kw)
    assert s.runtimes == {"tiny-dino": "onnx-int8"} and s.new_images == 5
    embedstore.ingest(imgs, tmp_path / "local", workers=0, **kw)
    a, b = _table(tmp_path / "local"), _table(tmp_path / "ray")
    x = np.asarray(a.column("emb_tiny_dino").to_pylist(), np.float32)
    y = np.asarray(b.column("emb_tiny_dino").to_pylist(), np.float32)
    np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-3)  # the same int8 export, float16
    describe = embedstore.connect(tmp_path / "ray").embeddings_info()["tiny-dino"].describe
    assert describe["runtime"] == "onnx-int8"


@pytest.mark.slow
def test_a_killed_ray_ingest_resumes_with_every_image_exactly_once(tmp_path, ray_cluster):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=4, per_class=20, size=64)  # 80 images
    (imgs / "class_0" / "dup.jpg").write_bytes((imgs / "class_1" / "img_3.jpg").read_bytes())
    store = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "ingest",
        str(imgs),
        "--store",
        str(store),
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster,
        "--actors",
        "1",
        "--batch-size",
        "4",
        "--commit-every",
        "4",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    images = store / "images.lance"
    deadline, killed = time.time() + 120, False
    while time.time() < deadline and proc.poll() is None:
        if (images / "_versions").is_dir() and lance.dataset(str(images)).count_rows() >= 8:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed, "ingest finished before it could be killed; make the test slower"
    partial = lance.dataset(str(images)).count_rows()
    assert 0 < partial < 80
    # resume, hashing in Ray tasks this time (what a large folder does)
    opts = IngestOptions(batch_size=8, commit_every=16, progress=False, hash_tasks_over=0)
    s = ingest_ray(imgs, store, opts)
    assert s.ok and s.images_in_store == 80 and s.new_images + partial == 80
    t = _table(store)
    assert t.num_rows == 80 and len(set(t.column("id").to_pylist())) == 80
    assert t.column("emb_efficientnet_lite0").null_count == 0
    assert lance.dataset(str(store / "files.lance")).count_rows() == 81
    paths = [p for ps in t.column("paths").to_pylist() for p in ps]
    assert sorted(paths) == sorted(p.relative_to(imgs).as_posix() for p in imgs.rglob("*.jpg"))


@pytest.fixture(scope="module")
def run(two_stores, tmp_path_factory) -> Path:
    _, _, store, _ = two_stores
    embedstore.split(store, folds=2, seed=0, use_split_column=True)
    out = tmp_path_factory.mktemp("ray-runs") / "mlp"
    heads.train(
        store,
        fold=0,
        head="mlp",
        metadata=["site"],
        unknown="msp",
        out=out,
        epochs=5,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    return out


def _by_id(path: Path) -> dict:
    t = embedstore.store.read_table(path)
    assert t.schema.names == heads.prediction.PREDICTION_SCHEMA.names
    return {r["id"]: r for r in t.to_pylist()}


@pytest.mark.slow
def test_ray_batch_prediction_of_a_store_equals_local_prediction(run, two_stores, tmp_path):
    _, _, store, _ = two_stores
    got = heads.predict_batch(run, tmp_path / "ray.lance", engine="ray", actors=1, top_k=3)
    assert got.engine == "ray" and got.source == "store" and got.images == 21 and not got.errors
    ray = _by_id(tmp_path / "ray.lance")
    ids = embedstore.connect(store).read(["id"]).column("id").to_pylist()
    local = {p.id: p for p in heads.predict(run, ids=ids, top_k=3)}
    assert set(ray) == set(local)
    for i, p in local.items():
        r = ray[i]
        assert (r["label"], r["unknown"]) == (p.label, p.unknown)
        assert [t["label"] for t in r["top_k"]] == [t["label"] for t in p.top_k]
        np.testing.assert_allclose(
            [t["probability"] for t in r["top_k"]],
            [t["probability"] for t in p.top_k],
            rtol=1e-5,
            atol=1e-6,
        )
        assert r["probability"] == r["top_k"][0]["probability"]
    assert got.unknown == sum(bool(p.unknown) for p in local.values())


@pytest.mark.slow
def test_ray_batch_prediction_of_a_folder_from_the_command_line(run, photos, tmp_path):
    out = tmp_path / "files.lance"
    args = [
        "predict",
        str(run),
        "--images",
        str(photos / "test"),
        "--engine",
        "ray",
        "--actors",
        "1",
        "--out",
        str(out),
        "--top-k",
        "2",
        "--json",
    ]
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code == 0, r.output
    ray = {row["path"]: row for row in embedstore.store.read_table(out).to_pylist()}
    local = heads.predict(run, images_dir=photos / "test", top_k=2)
    assert len(ray) == len(local) == 6
    for p in local:
        assert ray[p.path]["label"] == p.label and ray[p.path]["id"] == p.id
        np.testing.assert_allclose(ray[p.path]["probability"], p.top_k[0]["probability"], rtol=1e-5)
    r = CliRunner().invoke(heads_cli, args)  # the table exists: refused, not overwritten
    assert r.exit_code != 0 and "already exists" in r.output


def test_without_the_extra_engine_ray_says_how_to_install_it(tmp_path, monkeypatch):
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=2)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` fails
    monkeypatch.setitem(sys.modules, "lance_ray", None)
    args = ["ingest", str(tmp_path / "imgs"), "--store", str(tmp_path / "s"), "--engine", "ray"]
    r = CliRunner().invoke(embedstore_cli, args)
    assert r.exit_code == 2 and "pip install 'embedstore[ray]'" in r.output, r.output
    with pytest.raises(embedstore.ingestion.EngineError, match=r"pip install 'embedstore\[ray\]'"):
        embedstore.ingestion.connect_ray()
    r = CliRunner().invoke(heads_cli, ["predict", str(tmp_path), "--engine", "ray"])
    assert r.exit_code == 2 and "give --out PATH" in r.output
