"""Hostile and unlucky use (issue 14): concurrent writers, files that are not regular files,
unsafe metadata column names, ``--where`` escapes, damaged stores, killed re-trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lance
import pytest
from click.testing import CliRunner

import embedstore
from cli import embedstore_cli
from tests.conftest import write_class_images

REPO = Path(__file__).resolve().parents[1]

# A writer process: for each trial t it waits for the file go<t> (so both writers commit at the
# same instant), then writes 20 images of its own into the new store s<t>; refused because the
# other one is writing, it tries again, as a user would. Prints "ok t" or "ERR t ...".
_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import embedstore
    tag, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    emb = {"emb_x": np.random.default_rng(0).random((20, 8))}
    for t in range(n):
        while not os.path.exists(os.path.join(base, f"go{t}")):
            time.sleep(0.0005)
        rows = [{"id": f"{tag}{t:02d}{i:061d}", "path": f"{tag}/{i}.jpg", "label": tag}
                for i in range(20)]
        while True:
            try:
                embedstore.connect(os.path.join(base, f"s{t}")).add_images(
                    rows, embeddings=emb, describes={"emb_x": {"backbone": "x"}})
                print("ok", t, flush=True)
                break
            except embedstore.store.StoreLockedError:
                time.sleep(0.01)
            except Exception as e:
                print("ERR", t, type(e).__name__, str(e).splitlines()[0], flush=True)
                break
    """
)


@pytest.mark.slow
def test_two_writers_at_once_never_lose_each_others_images(tmp_path):
    """Two processes create the same new store at the same instant, 12 times: every time the
    store ends with both writers' 20 images, each once (before: "Dataset already exists",
    "Incompatible transaction" or one writer's images silently replaced)."""
    n = 12
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, tag, str(tmp_path), str(n)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in "ab"
    ]
    time.sleep(5.0)  # both import the library, then wait for go0
    for t in range(n):
        (tmp_path / f"go{t}").touch()
        time.sleep(0.3)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "ERR" not in out, out + err
        assert out.split() == [w for t in range(n) for w in ("ok", str(t))]
    for t in range(n):
        ids = lance.dataset(str(tmp_path / f"s{t}" / "images.lance")).to_table()["id"].to_pylist()
        assert len(ids) == 40 and len(set(ids)) == 40, f"trial {t}: {len(ids)} rows"


def test_a_write_while_another_process_writes_is_refused_with_its_pid(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=2)
    store = tmp_path / "s"
    embedstore.ingest(
        tmp_path / "imgs", store, backbones=[str(tiny_dino)], workers=0, progress=False
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, embedstore; st = embedstore.connect(sys.argv[1]); "
            "cm = st.writing('embedstore ingest'); cm.__enter__(); print('held', flush=True); "
            "sys.stdin.read()",
            str(store),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        r = CliRunner().invoke(embedstore_cli, ["split", "--store", str(store), "--folds", "2"])
        assert r.exit_code == 2, r.output
        assert f"the store is being written by PID {holder.pid} (embedstore ingest" in r.output
        assert "Traceback" not in r.output
    finally:
        holder.kill()  # kill -9: the lock dies with its process
        holder.wait()
    r = CliRunner().invoke(embedstore_cli, ["split", "--store", str(store), "--folds", "2"])
    assert r.exit_code == 0, r.output


def test_the_first_commit_carries_the_store_format(tmp_path, tiny_dino):
    """A kill right after the first commit must not leave a table without its format."""
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=2)
    embedstore.ingest(
        tmp_path / "imgs", tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False
    )
    first = lance.dataset(str(tmp_path / "s" / "images.lance"), version=1)
    md = {k.decode(): v.decode() for k, v in (first.schema.metadata or {}).items()}
    assert json.loads(md["embedstore.format"]) == 1 and "embedstore.embeddings_token" in md
    assert first.count_rows() > 0


# ---------------------------------------------------------------------- files that are not files


@pytest.mark.slow
def test_a_fifo_and_a_link_to_dev_zero_are_skipped_quickly_and_good_images_stored(
    tmp_path, tiny_dino
):
    """Before: pipe.jpg hung ingest forever and z.jpg read /dev/zero until memory ran out."""
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=1, per_class=3)
    os.mkfifo(imgs / "class_0" / "pipe.jpg")
    os.symlink("/dev/zero", imgs / "class_0" / "z.jpg")
    big = imgs / "class_0" / "big.png"
    big.write_bytes((imgs / "class_0" / "img_0.jpg").read_bytes() + b"\0" * 5000)
    store = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "ingest",
        str(imgs),
        "--store",
        str(store),
        "--backbone",
        str(tiny_dino),
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--max-bytes",
        "4000",
        "--quiet",
        "--json",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t0 < 60
    s = json.loads(r.stdout)
    assert s["new_images"] == 3 and s["skipped"] == 3
    reasons = {
        row["rel"]: row["reason"] for row in embedstore.connect(store).records.skipped().to_pylist()
    }
    assert (
        reasons["class_0/pipe.jpg"]
        == "not a regular file: a named pipe (FIFO) (after resolving links)"
    )
    assert (
        reasons["class_0/z.jpg"] == "not a regular file: a character device (after resolving links)"
    )
    assert reasons["class_0/big.png"].startswith("file too large: ")
    assert "--max-bytes" in reasons["class_0/big.png"]


def test_read_bytes_refuses_a_file_that_became_a_fifo_after_the_scan(tmp_path):
    os.mkfifo(tmp_path / "late.jpg")  # opened without blocking, checked on the open file
    with pytest.raises(embedstore.ingestion.ImageError, match="not a regular file: a named pipe"):
        embedstore._images.read_bytes(tmp_path / "late.jpg")


# ---------------------------------------------------------------------- metadata column names


def _ingest(root, store, model, **kw):
    return embedstore.ingest(root, store, backbones=[str(model)], workers=0, progress=False, **kw)


def test_reserved_metadata_names_are_renamed_and_the_store_stays_usable(tmp_path, tiny_dino):
    """Before: emb_notes ingested with exit 0, then info and lookup failed with tracebacks;
    _rowid crashed ingest after all the embedding work."""
    imgs = tmp_path / "imgs"
    paths = write_class_images(imgs, n_classes=2, per_class=2)
    rows = "\n".join(f"{p.relative_to(imgs).as_posix()},n{i},{i},wood" for i, p in enumerate(paths))
    (tmp_path / "m.csv").write_text("path,emb_notes,_rowid,habitat\n" + rows + "\n")
    store = tmp_path / "s"
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(imgs),
            "--store",
            str(store),
            "--backbone",
            str(tiny_dino),
            "--metadata",
            str(tmp_path / "m.csv"),
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "warning: m.csv: column 'emb_notes' is stored as 'meta_emb_notes'" in r.output
    assert "column '_rowid' is stored as 'meta_rowid'" in r.output
    st = embedstore.connect(store)
    assert {"meta_emb_notes", "meta_rowid", "habitat"} <= set(st.schema().names)
    assert sorted(st.read(["meta_emb_notes"]).column(0).to_pylist()) == ["n0", "n1", "n2", "n3"]
    r = CliRunner().invoke(embedstore_cli, ["info", "--store", str(store)])
    assert r.exit_code == 0 and "backbone" in r.output, r.output
    # the warnings are kept in the store, not only printed once
    assert "warning    m.csv: column 'emb_notes' is stored as 'meta_emb_notes'" in r.output
    res = embedstore.lookup(store, [str(paths[0])], k=1, where="meta_emb_notes = 'n0'")
    assert [n["id"] for n in res.results[0].neighbors] == [
        embedstore.ingestion.hash_bytes(paths[0].read_bytes())
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("path,habitat,habitat", "column 'habitat' appears more than once"),
        (
            "path,label,meta_label",
            "columns 'label' and 'meta_label' would both be stored as 'meta_label'",
        ),
        ("path,,habitat", "a column has no name"),
    ],
)
def test_unusable_metadata_names_are_refused_before_any_embedding(tmp_path, header, message):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=1, per_class=2)
    (tmp_path / "m.csv").write_text(header + "\nclass_0/img_0.jpg,a,b\nclass_0/img_1.jpg,c,d\n")
    # an unknown backbone: the names are refused before any backbone is even loaded
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(imgs),
            "--store",
            str(tmp_path / "s"),
            "--backbone",
            "no-such-model",
            "--metadata",
            str(tmp_path / "m.csv"),
        ],
    )
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "s" / "images.lance").exists()


def test_drop_column_removes_a_bad_metadata_column_of_an_older_store(tmp_path, tiny_dino):
    write_class_images(tmp_path / "imgs", n_classes=1, per_class=2)
    store = tmp_path / "s"
    _ingest(tmp_path / "imgs", store, tiny_dino)
    st = embedstore.connect(store)
    ids = sorted(st.ids())
    st.update_columns(ids, {"emb_notes": ["a", "b"]})  # what an older version let through
    assert embedstore.connect(store).info().backbones[0]["embedded"] == 2  # info copes with it
    r = CliRunner().invoke(embedstore_cli, ["drop-column", "--store", str(store), "emb_notes"])
    assert r.exit_code == 0 and "dropped column emb_notes" in r.output, r.output
    assert "emb_notes" not in embedstore.connect(store).schema().names
    for name, msg in [
        ("label", "one the store itself needs"),
        ("emb_tiny_dino", "holds embeddings"),
        ("nope", "no column(s) nope"),
    ]:
        r = CliRunner().invoke(embedstore_cli, ["drop-column", "--store", str(store), name])
        assert r.exit_code == 2 and msg in r.output, r.output


# ---------------------------------------------------------------------- --where and ids


def test_where_cannot_escape_and_rows_without_an_embedding_are_never_returned(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    paths = write_class_images(imgs, n_classes=2, per_class=2)
    store = tmp_path / "s"
    _ingest(imgs, store, tiny_dino)
    st = embedstore.connect(store)
    no_emb = [f"{i:064x}" for i in range(2)]  # rows without an embedding (as after a crash)
    st.add_images([{"id": i, "path": f"x/{i}.jpg", "label": "zzz"} for i in no_emb])
    assert st.count() == 6
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "lookup",
            str(paths[0]),
            "--store",
            str(store),
            "--k",
            "6",
            "--where",
            "label = 'zzz') OR (1=1",
        ],
    )
    assert r.exit_code == 2 and "unbalanced parentheses" in r.output, r.output
    for where in ["label = 'zzz'; DROP TABLE images", "select * from images"]:
        with pytest.raises(embedstore.StoreError, match="invalid --where expression"):
            embedstore.lookup(store, [str(paths[0])], k=1, where=where)
    res = embedstore.lookup(store, [str(paths[0])], k=4, where="label = 'zzz' OR 1=1")
    assert not {n["id"] for n in res.results[0].neighbors} & set(no_emb)
    with pytest.raises(embedstore.StoreError, match="no images with tiny-dino embeddings match"):
        embedstore.lookup(store, [str(paths[0])], k=1, where="label = 'zzz'")
    X, cols = st.embeddings(labelled=True)
    assert X.shape[0] == 4 and not set(cols["id"]) & set(no_emb)
    # ids go into filters escaped: a quote in an id selects nothing rather than everything
    assert st.read(["id"], ids=["x') OR ('1'='1"]).num_rows == 0
    assert st.read(["id"], ids=[no_emb[0], "a'b"]).column("id").to_pylist() == [no_emb[0]]


# ---------------------------------------------------------------------- damaged stores


def _two_version_store(tmp_path, tiny_dino) -> Path:
    write_class_images(tmp_path / "a", n_classes=2, per_class=2, seed=1)
    write_class_images(tmp_path / "b", n_classes=1, per_class=2, seed=2)
    store = tmp_path / "s"
    _ingest(tmp_path / "a", store, tiny_dino)
    _ingest(tmp_path / "b", store, tiny_dino)  # a second commit with new data files
    return store


def _newest_manifest(store: Path) -> Path:
    return min((store / "images.lance" / "_versions").glob("*.manifest"), key=lambda m: int(m.stem))


@pytest.mark.parametrize("damage", ["data file deleted", "manifest truncated"])
def test_check_says_what_is_damaged_and_repair_goes_back_to_the_last_good_version(
    tmp_path, tiny_dino, damage
):
    store = _two_version_store(tmp_path, tiny_dino)
    ds = lance.dataset(str(store / "images.lance"))
    good = ds.version - 1
    if damage == "data file deleted":
        newest = ds.get_fragments()[-1].metadata.files[0].path
        (store / "images.lance" / "data" / newest).unlink()
    else:
        with open(_newest_manifest(store), "r+b") as f:
            f.truncate(40)
    for args in (["info"], ["lookup", str(next((tmp_path / "a").rglob("*.jpg"))), "--k", "1"]):
        r = CliRunner().invoke(embedstore_cli, [*args, "--store", str(store)])
        assert r.exit_code == 2 and f"embedstore check --store {store}" in r.output, r.output
        assert ".rs:" not in r.output and "--where" not in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(embedstore_cli, ["check", "--store", str(store)])
    assert r.exit_code == 1 and "images   DAMAGED" in r.output, r.output
    why = "is missing or empty" if damage == "data file deleted" else "its manifest cannot be read"
    assert why in r.output and f"version {good} is the last good one" in r.output
    assert f"--repair` to go back to version {good}" in r.output and ".rs:" not in r.output
    r = CliRunner().invoke(embedstore_cli, ["check", "--store", str(store), "--repair"])
    assert r.exit_code == 0 and "store is sound" in r.output, r.output
    assert embedstore.connect(store).count() == 4  # back at the good version
    s = _ingest(tmp_path / "b", store, tiny_dino)  # the ingest adds what was lost
    assert s.new_images == 2 and embedstore.connect(store).count() == 6
    assert embedstore.check(store).ok


def test_check_on_a_store_without_version_history_says_to_ingest_again(tmp_path, tiny_dino):
    store = _two_version_store(tmp_path, tiny_dino)
    shutil.rmtree(store / "images.lance" / "_versions")
    r = CliRunner().invoke(embedstore_cli, ["info", "--store", str(store)])
    assert r.exit_code == 2 and "images.lance has no committed version" in r.output, r.output
    rep = embedstore.check(store, repair=True)
    assert not rep.ok and not rep.repaired
    assert "version history" in rep.problems[0] and "into a new store" in rep.advice[0]


# ---------------------------------------------------------------------- a killed re-train


def _heads_of(run: Path) -> set[str]:
    """The head of a run, or of every member of a fold ensemble (a mixed run has several)."""
    from heads.runs._rundir import read_config

    cfg = read_config(run)
    if cfg.get("kind") != "ensemble":
        return {cfg["head"]}
    return {read_config(f)["head"] for f in sorted(run.glob("fold*"))}


@pytest.mark.slow
def test_replacing_a_run_folder_never_leaves_a_moment_without_it(tmp_path):
    """A reader polling the run folder while it is replaced 300 times always finds a whole run
    (one atomic exchange on Linux; two renames left a moment with no folder at all)."""
    import threading

    from heads.runs._rundir import _exchange, replace_dir

    dest = tmp_path / "run"
    dest.mkdir()
    (dest / "config.json").write_text("0")
    if not _exchange(dest, dest):  # swapping a path with itself: is the call offered here?
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system or file system")
    missing, done = [], threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                (dest / "config.json").read_text()
            except FileNotFoundError:
                missing.append(1)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(1, 301):
            new = tmp_path / f".run.partial-{k}"
            new.mkdir()
            (new / "config.json").write_text(str(k))
            replace_dir(new, dest)
    finally:
        done.set()
        t.join()
    assert not missing, f"the run folder was missing {len(missing)} times"
    assert (dest / "config.json").read_text() == "300"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # old folders removed


@pytest.mark.slow
def test_a_retrain_killed_at_any_moment_leaves_the_old_run_whole(tmp_path):
    """kill -9 of a real `heads train --overwrite` into an existing run folder, at several
    moments: the folder is always the old linear run (or, once the swap is done, the new one),
    never linear and MLP folds mixed, and eval gives the old run's own score."""
    import heads
    from tests.conftest import make_synthetic_store

    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=30)
    embedstore.split(st, folds=3, seed=0)
    run = tmp_path / "run"
    heads.train(st, fold="all", head="linear", out=run, progress=False, epochs=5, device="cpu")
    before = heads.evaluate(run, plots=False).metrics
    cmd = [
        str(Path(sys.executable).parent / "heads"),
        "train",
        "--store",
        str(tmp_path / "s"),
        "--fold",
        "all",
        "--head",
        "mlp",
        "--epochs",
        "400",
        "--patience",
        "0",
        "--device",
        "cpu",
        "--out",
        str(run),
        "--overwrite",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seen_partial = 0
    for delay in (0.0, 0.3, 1.0, 2.5):  # after the new run's folder appears
        for stale in tmp_path.glob(".run.partial-*"):  # left by the previous kill
            shutil.rmtree(stale)
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        t0 = time.time()
        while not list(tmp_path.glob(".run.partial-*")) and proc.poll() is None:
            assert time.time() - t0 < 120
            time.sleep(0.02)
        time.sleep(delay)
        seen_partial += bool(list(tmp_path.glob(".run.partial-*/fold*")))
        proc.kill()
        proc.wait()
        assert _heads_of(run) in ({"linear"}, {"mlp"}), "a mixed run"
        if _heads_of(run) == {"linear"}:
            assert heads.evaluate(run, plots=False).metrics == before
    assert seen_partial, "never killed while folds were being written; make the test slower"


# ---------------------------------------------------------------------- smaller ones


def test_at_every_version_the_fold_summary_matches_the_fold_column_or_says_interrupted(tmp_path):
    """A split killed between its commits must not leave info's summary out of step: walk every
    version a split wrote (what a kill could leave) and compare."""
    from tests.conftest import make_synthetic_store

    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=12)
    embedstore.split(st, folds=3, seed=0)
    first = st.version
    embedstore.split(st, folds=2, seed=1)
    uri = str(tmp_path / "s" / "images.lance")
    checked = 0
    for v in range(first, st.version + 1):
        ds = lance.dataset(uri, version=v)
        md = {k.decode(): v for k, v in (ds.schema.metadata or {}).items()}
        summary = json.loads(md["embedstore.folds"])
        folds = ds.to_table(columns=["fold"])["fold"].drop_null().to_pylist()
        counts = {str(k): folds.count(k) for k in sorted(set(folds)) if k >= 0}
        if summary.get("complete", True):
            assert counts == summary["images_per_fold"], f"version {v}"
            checked += 1
    assert checked >= 2
    with embedstore.connect(tmp_path / "s").writing():  # as a split killed half-way leaves it
        st.meta.set_table_metadata(
            {"folds": {"folds": 4, "images_per_fold": {}, "complete": False}}
        )
    r = CliRunner().invoke(embedstore_cli, ["info", "--store", str(tmp_path / "s")])
    assert "a split was stopped before it finished" in r.output, r.output


def test_info_on_a_store_that_holds_only_skipped_files(tmp_path, tiny_dino):
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    (tmp_path / "imgs" / "c" / "a.jpg").write_bytes(b"")
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(tmp_path / "imgs"),
            "--store",
            str(tmp_path / "s"),
            "--backbone",
            str(tiny_dino),
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert r.exit_code == 1 and "no image could be ingested" in r.output
    r = CliRunner().invoke(embedstore_cli, ["info", "--store", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "images     0" in r.output and "skipped    1  (empty file: 1" in r.output


def test_non_utf8_names_keep_their_bytes_and_are_not_read_again(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=1, per_class=2)
    d = os.fsencode(imgs / "class_0")
    for raw in (b"caf\xe9.jpg", b"caf\xe8.jpg"):  # Latin-1 names: two files, two names
        src = imgs / "class_0" / "img_0.jpg"
        data = (
            src.read_bytes()
            if raw.endswith(b"\xe9.jpg")
            else (imgs / "class_0" / "img_1.jpg").read_bytes()
        )
        with open(os.path.join(d, raw), "wb") as f:
            f.write(data)
    store = tmp_path / "s"
    s1 = _ingest(imgs, store, tiny_dino)
    assert s1.files_found == 4 and s1.new_images == 2 and s1.duplicates == 2
    rels = lance.dataset(str(store / "files.lance")).to_table()["rel"].to_pylist()
    assert sorted(rels)[:2] == ["class_0/caf\\xe8.jpg", "class_0/caf\\xe9.jpg"], rels
    s2 = _ingest(imgs, store, tiny_dino)
    # nothing is read again; the two further names of the two images are counted again
    assert (s2.already_stored, s2.duplicates, s2.new_images, s2.files_found) == (2, 2, 0, 4)


def test_a_stored_image_with_a_non_utf8_name_is_found_by_id(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=1, per_class=1)
    src = imgs / "class_0" / "img_0.jpg"
    data = src.read_bytes()
    src.unlink()
    with open(os.path.join(os.fsencode(imgs / "class_0"), b"\xe9t\xe9.jpg"), "wb") as f:
        f.write(data)  # the photo's only name is Latin-1
    st = embedstore.connect(tmp_path / "s")
    _ingest(imgs, st.path, tiny_dino)
    image_id = embedstore.ingestion.hash_bytes(data)
    path = st.image_file(image_id)  # what the service's thumbnail route opens
    assert path is not None and path.read_bytes() == data
    assert os.fsencode(path).endswith(b"\xe9t\xe9.jpg")


def test_info_tells_of_deleted_and_overwritten_files_and_prune_removes_their_rows(
    tmp_path, tiny_dino
):
    imgs = tmp_path / "imgs"
    paths = write_class_images(imgs, n_classes=1, per_class=3)
    store = tmp_path / "s"
    _ingest(imgs, store, tiny_dino)
    old_ids = {embedstore.ingestion.hash_bytes(p.read_bytes()) for p in paths}
    paths[0].unlink()
    write_class_images(tmp_path / "other", n_classes=2, per_class=1, seed=7)
    new_bytes = (tmp_path / "other" / "class_1" / "img_0.jpg").read_bytes()
    paths[1].write_bytes(new_bytes)  # the same name, other bytes
    r = CliRunner().invoke(embedstore_cli, ["info", "--store", str(store)])
    assert "1 ingested file(s) deleted and 1 changed on disk since" in r.output, r.output
    r = CliRunner().invoke(
        embedstore_cli,
        [
            "ingest",
            str(imgs),
            "--store",
            str(store),
            "--backbone",
            str(tiny_dino),
            "--workers",
            "0",
            "--quiet",
            "--prune",
        ],
    )
    assert r.exit_code == 0 and "pruned 2 image(s)" in r.output, r.output
    st = embedstore.connect(store)
    keep = embedstore.ingestion.hash_bytes(paths[2].read_bytes())
    assert st.ids() == {keep, embedstore.ingestion.hash_bytes(new_bytes)} and keep in old_ids
    assert st.read(["path"], ids=[embedstore.ingestion.hash_bytes(new_bytes)])[
        "path"
    ].to_pylist() == ["class_0/img_1.jpg"]
    assert st.info().stale_files == {"gone": 0, "changed": 0}
    assert sorted(st.records.file_records()["rel"].to_pylist()) == [
        "class_0/img_1.jpg",
        "class_0/img_2.jpg",
    ]


def test_after_a_crash_re_checked_files_are_not_counted_as_duplicate_names(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    write_class_images(imgs, n_classes=2, per_class=3)
    store = tmp_path / "s"
    _ingest(imgs, store, tiny_dino)
    # a kill between the images commit and the file records commit leaves the images stored
    # and the files unrecorded: the next run reads them again
    shutil.rmtree(store / "files.lance")
    s = _ingest(imgs, store, tiny_dino)
    assert s.new_images == 0 and s.duplicates == 0 and s.already_stored == 6
    (imgs / "class_0" / "copy.jpg").write_bytes((imgs / "class_1" / "img_0.jpg").read_bytes())
    assert _ingest(imgs, store, tiny_dino).duplicates == 1  # a real duplicate name still counts
