"""Runs written by the run-format code of 2026-12-07 (``tests/fixtures/runs``, made by
``tests/fixtures/make_fixture_runs.py``) still load with today's code and predict the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedstore
import heads
from tests.fixtures.make_fixture_runs import fixture_embeddings

RUNS = Path(__file__).parent / "fixtures" / "runs"


def _batch(X: np.ndarray) -> embedstore.EmbeddedInputs:
    n = len(X)
    return embedstore.EmbeddedInputs(
        inputs=[embedstore.Input(f"row{i}", f"{i:064x}") for i in range(n)],
        embeddings={"emb_synthetic": X},
        have={"emb_synthetic": np.ones(n, bool)},
        in_store=np.ones(n, bool),
        table={},
    )


@pytest.mark.parametrize("name", ["mlp", "linear-all"])
def test_old_run_loads_and_predicts_as_when_written(name):
    X, labels = fixture_embeddings()
    expected = np.load(RUNS / "expected.npz")
    run = heads.load(RUNS / name, device="cpu")
    assert list(run.classes) == [f"species_{c}" for c in range(4)]
    logits = run.logits({"emb_synthetic": X}, {})
    np.testing.assert_allclose(logits, expected[f"{name}_logits"], rtol=1e-5, atol=1e-5)
    if f"{name}_scores" in expected:
        scores = run.unknown_scores({"emb_synthetic": X}, logits, {})
        np.testing.assert_allclose(scores, expected[f"{name}_scores"], rtol=1e-5, atol=1e-5)
    preds = heads.predict_embeddings(run, _batch(X), top_k=2)
    assert len(preds) == len(X) and all(len(p.top_k) == 2 for p in preds)
    top1 = np.array([p.top_k[0]["label"] for p in preds])
    assert (top1 == np.asarray(run.classes)[expected[f"{name}_logits"].argmax(1)]).all()
    if name == "linear-all":  # 5 epochs of a linear head: better than chance (0.25)
        assert (top1 == labels).mean() > 0.5
