"""Ingest into a real Lance store: incremental, duplicates, kill -9 and resume, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

import embedstore
from cli import embedstore_cli
from tests.conftest import write_class_images

REPO = Path(__file__).resolve().parents[1]


def _ingest(root, store, backbone, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return embedstore.ingest(root, store, backbones=[str(backbone)], **kw)


def _rows(store: Path) -> pa.Table:
    return lance.dataset(str(store / "images.lance")).to_table()


def test_ingest_then_again_adds_nothing_and_new_images_are_incremental(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=3, per_class=4)
    store = tmp_path / "store"
    s1 = _ingest(imgs, store, tiny_dino)
    assert s1["new_images"] == 12 and s1["ok"] and s1["skipped"] == 0
    v1 = embedstore.connect(store).version
    s2 = _ingest(imgs, store, tiny_dino)
    assert s2["new_images"] == 0 and s2["already_stored"] == 12
    assert s2["embedded"] == {"tiny-dino": 0}
    assert embedstore.connect(store).version == v1  # nothing written at all
    write_class_images(imgs / "more", n_classes=1, per_class=3, seed=9)
    s3 = _ingest(imgs, store, tiny_dino)
    assert s3["new_images"] == 3 and s3["embedded"] == {"tiny-dino": 3}
    t = _rows(store)
    assert t.num_rows == 15 and len(set(t.column("id").to_pylist())) == 15
    assert set(t.column("label").to_pylist()) == {"class_0", "class_1", "class_2"}


def test_schema_is_open_and_self_describing(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=2, per_class=2)
    _ingest(tmp_path / "imgs", tmp_path / "s", tiny_dino)
    ds = lance.dataset(str(tmp_path / "s" / "images.lance"))
    f = ds.schema.field("emb_tiny_dino")
    assert f.type == pa.list_(pa.float16(), 32)
    desc = json.loads(f.metadata[b"embedstore"])
    assert desc["backbone"] == "tiny-dino" and desc["dim"] == 32 and desc["dtype"] == "float16"
    assert desc["input_size_px"] == 32 and desc["mean"] == [0.485, 0.456, 0.406]
    assert len(desc["weights_sha256"]) == 64 and desc["source"] == str(tiny_dino)
    assert "torch" in desc["versions"] and desc["pooling"] == "cls"
    for col in ("id", "path", "paths", "label", "width", "height"):
        assert col in ds.schema.names


def test_float32_on_request_and_reader_filters(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=3, per_class=3)
    _ingest(tmp_path / "imgs", tmp_path / "s", tiny_dino, dtype="float32")
    st = embedstore.connect(tmp_path / "s")
    X, cols = st.embeddings("tiny-dino", where="label = 'class_1'", columns=["id", "label", "path"])
    assert X.shape == (3, 32) and X.dtype == np.float32
    assert set(cols["label"]) == {"class_1"}
    T, _ = st.embeddings(as_torch=True)
    import torch

    assert isinstance(T, torch.Tensor) and T.shape == (9, 32)
    assert st.embeddings_info()["tiny-dino"].dtype == "float32"


def test_duplicate_bytes_under_two_names_are_one_image(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    (p,) = write_class_images(imgs, n_classes=1, per_class=1)
    (imgs / "class_0" / "copy.jpg").write_bytes(p.read_bytes())
    s = _ingest(imgs, tmp_path / "s", tiny_dino)
    assert s["new_images"] == 1 and s["duplicates"] == 1
    again = _ingest(imgs, tmp_path / "s", tiny_dino)  # a re-run counts the duplicate name again
    assert (again["already_stored"], again["duplicates"], again["files_found"]) == (1, 1, 2)
    t = _rows(tmp_path / "s")
    assert t.num_rows == 1
    assert sorted(t.column("paths")[0].as_py()) == ["class_0/copy.jpg", "class_0/img_0.jpg"]
    # a third name in a later run is recorded too, still one image
    (imgs / "class_0" / "third.jpg").write_bytes(p.read_bytes())
    s = _ingest(imgs, tmp_path / "s", tiny_dino)
    t = _rows(tmp_path / "s")
    assert t.num_rows == 1 and len(t.column("paths")[0].as_py()) == 3 and s["new_images"] == 0
    assert (s["already_stored"], s["duplicates"], s["files_found"]) == (1, 2, 3)


def test_two_backbones_and_adding_one_later_embeds_only_that(tmp_path, tiny_dino, tiny_clip):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=3)
    store = tmp_path / "s"
    _ingest(imgs, store, tiny_dino)
    before = _rows(store).sort_by("id").column("emb_tiny_dino")
    s = embedstore.ingest(
        imgs, store, backbones=[str(tiny_dino), str(tiny_clip)], workers=0, progress=False
    )
    assert s["new_images"] == 0 and s["embedded"] == {"tiny-dino": 0, "tiny-clip": 6}
    t = _rows(store).sort_by("id")
    assert t.column("emb_tiny_dino") == before  # untouched
    assert (
        t.column("emb_tiny_clip").null_count == 0
        and t.schema.field("emb_tiny_clip").type.list_size == 24
    )
    info = embedstore.connect(store).info()
    assert {b["name"]: b["dim"] for b in info["backbones"]} == {"tiny-dino": 32, "tiny-clip": 24}
    # both at once for new images
    write_class_images(imgs / "new", n_classes=1, per_class=2, seed=5)
    s = embedstore.ingest(
        imgs, store, backbones=[str(tiny_dino), str(tiny_clip)], workers=0, progress=False
    )
    assert s["embedded"] == {"tiny-dino": 2, "tiny-clip": 2}
    assert _rows(store).column("emb_tiny_clip").null_count == 0


def test_pooling_variants(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=2)
    s = embedstore.ingest(
        tmp_path / "imgs",
        tmp_path / "s",
        backbones=[str(tiny_dino)],
        pooling="cls+mean",
        workers=0,
        progress=False,
    )
    assert s["embedded"] == {"tiny-dino-cls-mean": 2}
    info = embedstore.connect(tmp_path / "s").resolve_backbone("tiny-dino-cls-mean")
    assert info.dim == 64 and info.describe["pooling"] == "cls+mean"


@pytest.mark.slow
def test_default_backbone_is_deterministic(tmp_path):
    write_class_images(tmp_path / "a", n_classes=1, per_class=2)
    write_class_images(tmp_path / "b", n_classes=1, per_class=2)
    embedstore.ingest(tmp_path / "a", tmp_path / "s1", workers=0, progress=False)
    embedstore.ingest(tmp_path / "b", tmp_path / "s2", workers=1, progress=False, batch_size=1)
    X1, c1 = embedstore.connect(tmp_path / "s1").embeddings(columns=["id"])
    X2, c2 = embedstore.connect(tmp_path / "s2").embeddings(columns=["id"])
    assert X1.shape == (2, 1280)
    o1, o2 = np.argsort(c1["id"]), np.argsort(c2["id"])
    np.testing.assert_array_equal(c1["id"][o1], c2["id"][o2])
    np.testing.assert_allclose(X1[o1], X2[o2], atol=2e-3)  # fp16 storage, batch size 2 vs 1
    assert np.abs(X1).sum() > 0


def test_flowers12_one_nearest_neighbour_is_far_above_chance(flowers_store):
    st = embedstore.connect(flowers_store)
    X, c = st.embeddings(columns=["label", "split"])
    assert X.shape == (959, 1280)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    tr, te = c["split"] == "train", c["split"] == "test"
    nn = (Xn[te] @ Xn[tr].T).argmax(1)
    acc = float((c["label"][tr][nn] == c["label"][te]).mean())
    print(f"flowers12 1-NN accuracy with efficientnet-lite0: {acc:.3f}")
    assert acc > 0.85  # chance is 1/12; measured 0.96


# ---------------------------------------------------------------------- bad input


def _png_bomb(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _bad_folder(root: Path) -> dict[str, str]:
    """Every kind of bad and awkward file; returns {rel: expected reason prefix} of those to
    skip."""
    d = root / "cls"
    d.mkdir(parents=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    rgb.save(d / "good.jpg")
    (d / "empty.jpg").write_bytes(b"")
    full = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "text.jpg").write_text("this is not an image\n")
    Image.new("RGB", (8, 8)).save(d / "anim.gif")
    (d / "bomb.png").write_bytes(_png_bomb(40000, 40000))
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    rgb.convert("L").save(d / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    pal = rgb.convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16)).save(
        d / "deep16.png"
    )
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(
        d / "noise.WEBP"
    )
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
        d / "b.BMP"
    )
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
        d / "t.TIFF"
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40 wide x 20 high, shown 20 x 40
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(
        d / "rotated.jpg", exif=exif
    )
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
        d / "ünïcødé 花.jpg"
    )
    raw_name = os.path.join(os.fsencode(d), b"latin1-\xe9t\xe9.jpg")
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
        raw_name, "JPEG"
    )
    os.symlink(d / "does-not-exist.jpg", d / "dangling.jpg")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return {
        "cls/empty.jpg": "empty file",
        "cls/truncated.jpg": "truncated",
        "cls/text.jpg": "not an image",
        "cls/anim.gif": "unsupported format",
        "cls/bomb.png": "image too large",
        "cls/dangling.jpg": "unreadable",
    }


def test_every_bad_input_is_skipped_with_its_reason_and_good_ones_ingested(tmp_path, tiny_dino):
    expected = _bad_folder(tmp_path / "imgs")
    s = _ingest(tmp_path / "imgs", tmp_path / "s", tiny_dino)
    assert s["ok"]
    assert (
        s["new_images"] == 12
    )  # good, cmyk, gray, rgba, palette, 16-bit, webp, bmp, tiff, rotated, 2 names
    st = embedstore.connect(tmp_path / "s")
    sk = st.records.skipped().to_pylist()
    got = {r["rel"]: r["reason"] for r in sk}
    assert set(got) == set(expected)
    for rel, prefix in expected.items():
        assert got[rel].startswith(prefix), (rel, got[rel])
    # visible in info and in a CSV the user can open
    info = st.info()
    assert info["skipped"]["count"] == 6
    csv = (tmp_path / "s" / "skipped.csv").read_text()
    assert "cls/truncated.jpg" in csv and "truncated" in csv
    t = _rows(tmp_path / "s")
    by_path = {
        p: (w, h)
        for p, w, h in zip(
            t.column("path").to_pylist(),
            t.column("width").to_pylist(),
            t.column("height").to_pylist(),
            strict=True,
        )
    }
    assert by_path["cls/rotated.jpg"] == (20, 40)  # EXIF orientation applied
    assert "cls/ünïcødé 花.jpg" in by_path
    assert any(p.startswith("cls/latin1-") for p in by_path)
    X, _ = st.embeddings()
    assert np.isfinite(X).all()


def test_decoded_modes_become_sane_rgb():
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    for mode in ("CMYK", "L", "RGBA", "P", "I;16", "LA", "1"):
        buf = io.BytesIO()
        conv = (
            im.convert(mode)
            if mode != "I;16"
            else Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        )
        conv.save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
        out = embedstore.ingestion.decode_image(buf.getvalue())
        assert out.mode == "RGB" and out.size == (12, 10), mode
    deep = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    deep.save(buf, "PNG")
    out = np.asarray(embedstore.ingestion.decode_image(buf.getvalue()))[..., 0]
    np.testing.assert_allclose(out, rgb[..., 0], atol=1)  # 16-bit rescaled, not clipped to white
    trans = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    buf = io.BytesIO()
    trans.save(buf, "PNG")
    assert (
        np.asarray(embedstore.ingestion.decode_image(buf.getvalue())).min() == 255
    )  # alpha on white


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_skipped(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=2)
    p = tmp_path / "imgs" / "class_0" / "img_0.jpg"
    p.chmod(0)
    s = _ingest(tmp_path / "imgs", tmp_path / "s", tiny_dino)
    assert s["new_images"] == 1 and s["skipped_by_reason"] == {"unreadable": 1}


def test_nothing_ingestible_exits_nonzero_and_good_folder_exits_zero(tmp_path, tiny_dino):
    bad = tmp_path / "bad" / "c"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(tmp_path / "bad"),
            "--store",
            str(tmp_path / "s"),
            "--backbone",
            str(tiny_dino),
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert r.exit_code == 1, r.output
    assert "no image could be ingested" in r.output and "empty file" in r.output
    write_class_images(tmp_path / "good", n_classes=1, per_class=1)
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(tmp_path / "good"),
            "--store",
            str(tmp_path / "s2"),
            "--backbone",
            str(tiny_dino),
            "--workers",
            "0",
            "--quiet",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["new_images"] == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["ingest", "{tmp}/nope"], "images folder not found"),
        (["ingest", "{tmp}/imgs", "--store", "{tmp}/afile"], "store path is a file"),
        (["ingest", "{tmp}/imgs", "--backbone", "resnet-9000"], "valid names: efficientnet-lite0"),
        (["ingest", "{tmp}/imgs", "--backbone", "{tmp}/notamodel"], "not a model folder"),
        (["ingest", "{tmp}/imgs", "--label-column", "species"], "--label-column needs --metadata"),
        (["ingest", "{tmp}/imgs", "--metadata", "{tmp}/missing.csv"], "metadata file not found"),
        (["ingest", "{tmp}/empty"], "no image files found"),
        (["info", "--store", "{tmp}/nostore"], "no store here"),
    ],
)
def test_command_errors_are_one_clear_line(tmp_path, args, message):
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=1)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "empty").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--store" not in args and args[0] == "ingest":
        args += ["--store", str(tmp_path / "s")]
    r = CliRunner().invoke(embedstore_cli, args)
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output


# ---------------------------------------------------------------------- metadata


def test_metadata_join_keeps_typed_columns_and_reports_problems(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=3)
    csv = tmp_path / "meta.csv"
    csv.write_text(
        "filename,eventDate,latitude,longitude,substrate,poisonous,observation_id,count\n"
        "img_0.jpg,2021-05-03,55.6,12.5,wood,true,10,3\n"
        "class_0/img_1.jpg,2021-13-45,500,12.5,,false,10,4\n"  # bad date, bad latitude, empty cell
        "class_0/img_2.jpg,2020-12-31,-33.9,151.2,soil,yes,11,\n"
        "class_1/img_0.jpg,2019-01-01,10,20,leaf,no,12,1\n"
        "class_1/img_0.jpg,2019-01-02,10,20,leaf,no,12,1\n"  # duplicate key
        "class_1/img_1.jpg,2019-01-02\n"  # malformed: too few fields
        "ghost.jpg,2019-01-01,1,1,wood,no,99,1\n"  # matches no image
    )
    s = _ingest(imgs, tmp_path / "s", tiny_dino, metadata=csv)
    w = " | ".join(s["warnings"])
    for needle in (
        "malformed",
        "unparseable date",
        "outside +-90",
        "duplicate key",
        "match no image",
        "have no metadata row",
    ):
        assert needle in w, (needle, w)
    t = _rows(tmp_path / "s")
    sch = t.schema
    assert pa.types.is_timestamp(sch.field("eventDate").type)
    assert pa.types.is_floating(sch.field("latitude").type)
    assert pa.types.is_boolean(sch.field("poisonous").type)
    assert pa.types.is_integer(sch.field("observation_id").type)
    rows = {r["path"]: r for r in t.to_pylist()}
    # relative paths are matched; a bare name 'img_0.jpg' is ambiguous, the relative-path mode wins
    assert (
        rows["class_0/img_1.jpg"]["eventDate"] is None
        and rows["class_0/img_1.jpg"]["latitude"] is None
    )
    assert rows["class_0/img_1.jpg"]["substrate"] is None
    assert (
        rows["class_0/img_2.jpg"]["poisonous"] is True
        and rows["class_0/img_2.jpg"]["count"] is None
    )
    assert rows["class_1/img_0.jpg"]["eventDate"].day == 1  # first duplicate kept
    assert rows["class_1/img_2.jpg"]["substrate"] is None  # no metadata row
    assert rows["class_0/img_2.jpg"]["label"] == "class_0"


def test_label_column_and_parquet_and_id_join(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=2)
    import pyarrow.parquet as pq

    stems = ["img_0", "img_1"]
    pq.write_table(
        pa.table(
            {
                "image_id": [
                    "class_0/img_0.jpg",
                    "class_0/img_1.jpg",
                    "class_1/img_0.jpg",
                    "class_1/img_1.jpg",
                ],
                "species": ["a", "b", "a", None],
                "elevation_m": [1.5, 2.5, None, 4.0],
            }
        ),
        tmp_path / "m.parquet",
    )
    s = _ingest(
        imgs, tmp_path / "s", tiny_dino, metadata=tmp_path / "m.parquet", label_column="species"
    )
    assert s["new_images"] == 4 and stems
    info = embedstore.connect(tmp_path / "s").info()
    assert info["labelled"] == 3 and info["unlabelled"] == 1 and info["classes"]["count"] == 2
    t = _rows(tmp_path / "s")
    assert "elevation_m" in t.column_names and "species" not in t.column_names


def test_metadata_added_later_updates_stored_rows(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=1, per_class=2)
    _ingest(imgs, tmp_path / "s", tiny_dino)
    (tmp_path / "m.csv").write_text(
        "path,habitat\nclass_0/img_0.jpg,forest\nclass_0/img_1.jpg,meadow\n"
    )
    s = _ingest(imgs, tmp_path / "s", tiny_dino, metadata=tmp_path / "m.csv")
    assert s["new_images"] == 0
    t = _rows(tmp_path / "s")
    assert sorted(t.column("habitat").to_pylist()) == ["forest", "meadow"]


# ---------------------------------------------------------------------- crash and resume


@pytest.mark.slow
def test_kill_9_during_ingest_then_resume_has_every_image_exactly_once(tmp_path):
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
        "--batch-size",
        "4",
        "--commit-every",
        "4",
        "--workers",
        "0",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    killed = False
    files = store / "files.lance"
    while time.time() < deadline and proc.poll() is None:
        if (
            (files / "_versions").is_dir()
            and any((files / "_versions").iterdir())
            and lance.dataset(str(files)).count_rows() >= 8
        ):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed, "ingest finished before it could be killed; make the test slower"
    partial = lance.dataset(str(store / "images.lance")).count_rows()
    assert 0 < partial < 80
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    t = _rows(store)
    ids = t.column("id").to_pylist()
    assert len(ids) == 80 and len(set(ids)) == 80
    assert t.column("emb_efficientnet_lite0").null_count == 0
    assert lance.dataset(str(store / "files.lance")).count_rows() == 81
    paths = [p for ps in t.column("paths").to_pylist() for p in ps]
    assert sorted(paths) == sorted(p.relative_to(imgs).as_posix() for p in imgs.rglob("*.jpg"))


def test_a_first_write_killed_before_its_commit_is_resumed(tmp_path, tiny_dino):
    """kill -9 during a table's very first write leaves a folder with data but no version."""
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=3)
    store = tmp_path / "s"
    for table in ("images", "files"):
        (store / f"{table}.lance" / "data").mkdir(parents=True)
        (store / f"{table}.lance" / "data" / "half-written.lance").write_bytes(b"\x00" * 64)
    assert not embedstore.connect(store).exists
    s = _ingest(tmp_path / "imgs", store, tiny_dino)
    assert s["new_images"] == 3 and _rows(store).num_rows == 3
    assert embedstore.connect(store).info()["images"] == 3
