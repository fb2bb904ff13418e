"""Runs written by the run-format code of 2026-12-07 (``tests/fixtures/runs``, made by
``tests/fixtures/make_fixture_runs.py``) still load with today's code and predict the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import embedstore
import heads
from heads.runs._config import RunConfig, parse_config, read_run_config, write_run_config
from tests.fixtures.make_fixture_runs import fixture_embeddings

RUNS = Path(__file__).parent / "fixtures" / "runs"


def _batch(X: np.ndarray) -> embedstore.search.EmbeddedInputs:
    n = len(X)
    return embedstore.search.EmbeddedInputs(
        inputs=[embedstore.search.Input(f"row{i}", f"{i:064x}") for i in range(n)],
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


@pytest.mark.parametrize("path", ["mlp", "linear-all", "linear-all/fold0"])
def test_run_config_reads_and_writes_the_old_keys_unchanged(path, tmp_path):
    raw = json.loads((RUNS / path / "config.json").read_text())
    cfg = read_run_config(RUNS / path)
    assert cfg.to_dict() == raw  # every key, in the same JSON
    assert cfg["classes"] == cfg.classes and cfg.get("nothing") is None  # by key, as the dict
    write_run_config(tmp_path, cfg)
    again = read_run_config(tmp_path)
    assert again.config_sha256 == raw["config_sha256"]  # the same checksum rule


def test_a_run_config_lacking_newer_keys_loads_with_their_defaults():
    raw = json.loads((RUNS / "mlp" / "config.json").read_text())
    for key in ("views", "knn_top1_by_k", "poison_column", "backbones", "refit"):
        raw.pop(key, None)
    raw["added_later"] = {"kept": True}
    cfg = parse_config(raw)
    assert isinstance(cfg, RunConfig) and cfg.tta_views == [] and cfg.knn_top1_by_k is None
    assert cfg.to_dict()["added_later"] == {"kept": True}  # unknown keys written back
