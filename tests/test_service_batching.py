"""What keeps the service at the CPU's pace without changing its answers: concurrent
predictions share one head forward (``BatchedPredictor``), and the store's version and the runs'
checksums are looked at every ``RECHECK_S`` at most, at once after the service's own writes."""

from __future__ import annotations

import io
import shutil
import threading
import time

import embedstore_service as service
import embedstore_service._state as state_module
import numpy as np
import pytest
import torch
from embedstore_service._batcher import BatchedBackbone, BatchedPredictor
from PIL import Image

import embedstore
import heads
from heads.runs import WrappedPredictor, compile_predictor
from tests.conftest import make_synthetic_store

FAST = {"epochs": 3, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("batching")
    make_synthetic_store(d / "s", n_classes=4, per_class=30, dim=32)
    embedstore.split(d / "s", folds=2, seed=0)
    heads.train(d / "s", fold="all", head="mlp", unknown="energy-knn", out=d / "runs" / "m", **FAST)
    return d / "s", d / "runs"


class _Gate(WrappedPredictor):
    """The model, whose first forward waits for ``open`` (so that the others queue meanwhile)."""

    def __init__(self, model):
        super().__init__(model)
        self.open, self.calls = threading.Event(), []

    def logits_and_scores(self, embeddings, table=None):
        self.calls.append(len(next(iter(embeddings.values()))))
        if len(self.calls) == 1:
            assert self.open.wait(30)
        return super().logits_and_scores(embeddings, table)


def _rows(store):
    res = embedstore.Resident(embedstore.connect(store), ["emb_synthetic"])
    return res.X["emb_synthetic"]


def test_concurrent_predictions_share_one_head_forward_and_get_their_own_rows(synthetic_run):
    store, runs = synthetic_run
    model = compile_predictor(heads.load(runs / "m", device="cpu"))
    gate = _Gate(model)
    batched = BatchedPredictor(gate)
    X = _rows(store)[:16]
    want_z, want_s = model.logits_and_scores({"emb_synthetic": X})
    got: dict[int, tuple] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: got.__setitem__(
                i, batched.logits_and_scores({"emb_synthetic": X[i : i + 1]}, {})
            )
        )
        for i in range(16)
    ]
    threads[0].start()
    while not gate.calls:  # the first caller runs its forward alone, at once
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while batched.queued < 15:  # the others queue behind it
        time.sleep(0.001)
    gate.open.set()
    for t in threads:
        t.join()
    assert gate.calls == [1, 15] and batched.batches == 2 and batched.rows == 16
    for i in range(16):
        np.testing.assert_allclose(got[i][0], want_z[i : i + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[i][1], want_s[i : i + 1], rtol=1e-5, atol=1e-5)
    # alone: no waiting for company
    z, _ = batched.logits_and_scores({"emb_synthetic": X[:3]})
    assert gate.calls[-1] == 3 and len(z) == 3
    assert isinstance(batched, heads.Predictor) and batched.classes == model.classes


def test_a_bad_row_fails_its_own_caller_only(synthetic_run):
    store, runs = synthetic_run
    model = compile_predictor(heads.load(runs / "m", device="cpu"))
    gate = _Gate(model)
    batched = BatchedPredictor(gate)
    X = _rows(store)[:4].copy()
    bad = X[:1].copy()
    bad[0, 0] = np.nan
    out: dict[int, object] = {}

    def call(i, x):
        try:
            out[i] = batched.logits_and_scores({"emb_synthetic": x})[0]
        except ValueError as e:
            out[i] = e

    first = threading.Thread(target=call, args=(0, X[:1]))
    first.start()
    while not gate.calls:
        time.sleep(0.001)
    rest = [threading.Thread(target=call, args=(1, bad))] + [
        threading.Thread(target=call, args=(i, X[i : i + 1])) for i in (2, 3)
    ]
    for t in rest:
        t.start()
    while batched.queued < 3:
        time.sleep(0.001)
    gate.open.set()
    for t in [first, *rest]:
        t.join()
    assert isinstance(out[1], ValueError) and "NaN" in str(out[1])
    for i in (0, 2, 3):
        np.testing.assert_allclose(out[i], model.logits({"emb_synthetic": X[i : i + 1]}), atol=1e-5)


def _png(seed: int) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_a_write_by_another_writer_is_seen_within_the_interval_and_the_services_own_at_once(
    photo_store, tmp_path, monkeypatch
):
    store = tmp_path / "s"
    shutil.copytree(photo_store, store)
    state = state_module.State(service.Settings(store=str(store), device="cpu"))
    monkeypatch.setattr(state_module, "RECHECK_S", 3600.0)
    before = state.resident()
    # another writer (another process, or another connection: the service learns of a write
    # only through the store's version) adds an image
    other = embedstore.add_images(embedstore.connect(store), [_png(1)], labels=["class_0"])
    assert state.resident() is before  # not looked at again within the interval
    monkeypatch.setattr(state_module, "RECHECK_S", 0.05)
    time.sleep(0.1)
    after = state.resident()
    assert after is not before and other.ids[0] in after.row
    # the service's own write: seen by the next request, whatever the interval
    monkeypatch.setattr(state_module, "RECHECK_S", 3600.0)
    state.resident()
    own = state.add_images([_png(2)], "class_1", {}, ["p.png"])
    assert own.ids[0] in state.resident().row
    assert state.resident() is state.resident()  # and then not reloaded again


def test_a_run_replaced_by_another_process_is_seen_within_the_interval(
    synthetic_run, tmp_path, monkeypatch
):
    store, runs = synthetic_run
    mine = tmp_path / "runs"
    shutil.copytree(runs, mine)
    state = state_module.State(service.Settings(store=str(store), runs=str(mine), device="cpu"))
    monkeypatch.setattr(state_module, "RECHECK_S", 3600.0)
    first = state.run("m")
    assert isinstance(first, BatchedPredictor) and first.config.kind == "ensemble"
    heads.train(store, fold=0, head="linear", out=mine / "m", overwrite=True, **FAST)
    assert state.run("m") is first  # within the interval: the loaded one answers
    monkeypatch.setattr(state_module, "RECHECK_S", 0.05)
    time.sleep(0.1)
    again = state.run("m")
    assert again is not first and again.config.kind == "run"
    with pytest.raises(embedstore.errors.NotFound):
        state.run("nope")


def test_two_forwards_in_flight_answer_every_caller_its_own_rows(tiny_dino):
    bb = embedstore.create_backbone(str(tiny_dino))
    batched = BatchedBackbone(bb, max_batch=4, max_wait_ms=50, workers=2)
    x = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8)
    want = bb.embed(x)
    out: dict[int, torch.Tensor] = {}
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, batched.embed(x[i : i + 1])))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(torch.cat([out[i] for i in range(16)]), want, rtol=1e-4, atol=1e-4)
    assert batched.images == 16 and 4 <= batched.batches < 16 and len(batched._threads) == 2
