"""The head protocol (``heads/_base.py``): the example head of ``docs/heads.md``, copied from the
doc, registers and trains through ``heads.train`` like the built-in heads; the built-in heads
declare their capabilities."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import embedstore
import heads
from heads._base import HeadTags, head_tags
from heads._registry import HEADS
from tests.conftest import make_synthetic_store

DOC = Path(__file__).parent.parent / "docs" / "heads.md"


def _doc_example() -> str:
    text = DOC.read_text()
    section = text[text.index("## A head in 30 lines") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def doc_head(monkeypatch):
    """The doc's head, registered for this test only."""
    HEADS.list()  # the built-in heads loaded first, so that they stay registered
    monkeypatch.setattr(HEADS, "_items", dict(HEADS._items))
    namespace: dict = {}
    exec(compile(_doc_example(), str(DOC), "exec"), namespace)
    return namespace["NearestMeanHead"]


def test_the_doc_example_is_short():
    assert len(_doc_example().strip().splitlines()) <= 40


def test_the_doc_example_head_trains_through_heads_train(doc_head, tmp_path):
    assert "nearest-mean" in heads.list_heads() and isinstance(doc_head(), heads.Head)
    st = make_synthetic_store(tmp_path / "s", n_classes=5, per_class=30, dim=12)
    embedstore.split(st, folds=3, holdout=0.2, seed=0)
    res = heads.train(st, fold="all", head="nearest-mean", out=tmp_path / "r", progress=False)
    assert len(res.runs) == 3 and res.ensemble == str(tmp_path / "r")
    assert all(m.metrics["top1"] > 0.95 for m in res.metrics)
    assert res.ensemble_metrics.metrics["top1"] > 0.95
    run = heads.load(tmp_path / "r" / "fold0", device="cpu")
    assert type(run.head).__name__ == "NearestMeanHead" and len(run.classes) == 5


# the neural heads take row weights (pseudo-labels) and soft targets (heads distill)
_WEIGHTS = {"sample_weight": True, "soft_targets": True}


@pytest.mark.parametrize(
    "name, tags",
    [
        ("mlp", HeadTags(arch="mlp", takes_views=True, iterative=True, **_WEIGHTS)),
        ("linear", HeadTags(arch="linear", takes_views=True, iterative=True, **_WEIGHTS)),
        (
            "transformer",
            HeadTags("transformer", True, token_fusion=True, iterative=True, **_WEIGHTS),
        ),
        ("knn", HeadTags(multi_k=True)),
        ("centroid", HeadTags()),
    ],
)
def test_builtin_heads_declare_their_capabilities(name, tags):
    assert head_tags(heads.create_head(name)) == tags


def test_centroid_train_val_declares_its_refit_and_the_folds_settings():
    tags = head_tags(heads.create_head("centroid", reference="train+val"))
    assert tags.needs_refit and dict(tags.fold_settings) == {"reference": "train"}


def test_progress_is_a_callback_called_after_each_epoch():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 8)).astype(np.float32), np.repeat([0, 1, 2], 20)
    calls = []
    heads.create_head("linear", epochs=4, device="cpu").fit(
        X, y, progress=lambda done, total, info: calls.append((done, total, sorted(info)))
    )
    assert calls == [(e, 4, ["train_loss"]) for e in range(1, 5)]
