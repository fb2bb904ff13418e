"""``heads.runs.compile_predictor``: runs and ensembles answering through stacked numpy weights
give the torch path's answers (logits, unknown scores, predictions) to 1e-5, on real runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import embedstore
import heads
from heads.runs import CompiledPredictor, compile_predictor
from tests.conftest import make_synthetic_store

FAST = {"epochs": 5, "device": "cpu", "progress": False}


def _same(model, fast, embeddings, table=None) -> None:
    z, s = model.logits_and_scores(embeddings, table)
    zf, sf = fast.logits_and_scores(embeddings, table)
    np.testing.assert_allclose(zf, z, rtol=1e-5, atol=1e-5)
    p, pf = np.exp(heads.runs._loaded.log_softmax(z)), np.exp(heads.runs._loaded.log_softmax(zf))
    np.testing.assert_allclose(pf, p, rtol=0, atol=1e-5)  # the probabilities a user reads
    assert (s is None) == (sf is None)
    if s is not None:
        np.testing.assert_allclose(sf, s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.logits(embeddings, table), z, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def flowers_runs(flowers_store, tmp_path_factory):
    """A 3-fold MLP ensemble with the default unknown detector (energy-knn) on real flowers."""
    d = tmp_path_factory.mktemp("compiled")
    store = d / "store"
    shutil.copytree(flowers_store, store)
    embedstore.split(store, folds=3, use_split_column=True, seed=0)
    heads.train(store, fold="all", head="mlp", unknown="energy-knn", out=d / "mlp", **FAST)
    return store, d


def test_an_mlp_ensemble_answers_as_its_torch_path_on_real_photos(flowers_runs):
    store, d = flowers_runs
    model = heads.load(d / "mlp", device="cpu")
    fast = compile_predictor(model)
    assert isinstance(fast, heads.Predictor) and compile_predictor(fast) is fast
    assert len(fast.groups) == 1 and fast.on_torch == []  # every member stacked
    assert len(fast.knn) == 1 and fast.knn[0].index == [0, 1, 2]  # and every detector
    # each training image once: the 3 folds' detectors hold 2 copies of each
    assert fast.knn[0].n_distinct < sum(len(r) for r in fast.knn[0].rows) * 0.6
    st = embedstore.connect(store)
    col = next(iter(model.backbone_columns()))
    res = embedstore.Resident(st, [col])
    X = res.X[col]
    for rows in (slice(0, 1), slice(5, 13), slice(None)):  # one row, a batch, all 959
        _same(model, fast, {col: X[rows]})
    # predictions by stored id: the same labels, probabilities and unknown decisions
    ids = [str(i) for i in res.ids[:40]]
    want = heads.predict(model, ids=ids, top_k=3, resident=res)
    got = heads.predict(fast, ids=ids, top_k=3, resident=res)
    for w, g in zip(want, got, strict=True):
        assert (g.label, g.unknown) == (w.label, w.unknown)
        assert [t["label"] for t in g.top_k] == [t["label"] for t in w.top_k]
        np.testing.assert_allclose(
            [t["probability"] for t in g.top_k], [t["probability"] for t in w.top_k], atol=1e-5
        )
        assert g.unknown_score == pytest.approx(w.unknown_score, abs=1e-5)
    # a single run of the ensemble compiles alone
    member = heads.load(d / "mlp" / "fold0", device="cpu")
    _same(member, compile_predictor(member), {col: X[:7]})


@pytest.fixture(scope="module")
def meta_store(tmp_path_factory):
    """Clusters that only their metadata (habitat, a number) tells apart from their neighbours."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 30)
    X = (rng.normal(0, 1, (5, 24))[y // 2 * 2] * 3 + rng.normal(0, 1, (len(y), 24))).astype(
        np.float32
    )
    path = tmp_path_factory.mktemp("meta") / "s"
    st = make_synthetic_store(
        path,
        X=X,
        labels=[f"s{c}" for c in y],
        extra={
            "habitat": [f"h{c}" for c in y],
            "depth_m": list(rng.normal(y * 10.0, 1.0)),
            "poisonous": [bool(c % 2) for c in y],
        },
    )
    embedstore.split(st, folds=2, seed=0)
    return path


@pytest.mark.parametrize(
    ("head", "loss", "kw"),
    [
        ("linear", "ce", {}),
        ("linear", "arcface", {}),  # cosine classifier: logits are scale * cosine
        ("linear", "subcenter-arcface", {"metadata": ["habitat"]}),
        ("mlp", "arcface", {"metadata": ["habitat", "depth_m"]}),
        ("mlp", "ce", {"metadata": ["habitat", "depth_m"], "aux_targets": ["poisonous"]}),
        ("mlp", "seesaw", {"unknown": "msp"}),
        ("mlp", "ce", {"unknown": "knn"}),  # k = 10: the 10th nearest training row
        ("transformer", "ce", {"metadata": ["habitat"]}),  # not stacked: its own torch path
    ],
)
def test_heads_losses_and_metadata_answer_as_the_torch_path(meta_store, tmp_path, head, loss, kw):
    heads.train(meta_store, fold=0, head=head, loss=loss, out=tmp_path / "r", **FAST, **kw)
    model = heads.load(tmp_path / "r", device="cpu")
    fast = compile_predictor(model)
    assert fast.on_torch == ([0] if head == "transformer" else [])
    assert len(fast.knn) == (kw.get("unknown") == "knn")
    st = embedstore.connect(meta_store)
    res = embedstore.Resident(st, ["emb_synthetic"], model.columns)
    table = dict(res.table)
    _same(model, fast, {"emb_synthetic": res.X["emb_synthetic"]}, table)
    one = {c: v[3:4] for c, v in table.items()}
    _same(model, fast, {"emb_synthetic": res.X["emb_synthetic"][3:4]}, one)
    if kw.get("metadata"):  # a new image: no metadata, the encoder's missing values
        _same(model, fast, {"emb_synthetic": res.X["emb_synthetic"][:2]}, None)


def test_tta_views_answer_as_the_torch_path(flowers, tiny_dino, tmp_path):
    root = tmp_path / "imgs"
    for c in ("bluebell", "daisy", "sunflower"):
        (root / c).mkdir(parents=True)
        for f in sorted((flowers / "train" / c).glob("*.jpg"))[:6]:
            shutil.copy(f, root / c / f.name)
    store = tmp_path / "s"
    embedstore.ingest(
        root, store, backbones=[str(tiny_dino)], views="flip", workers=0, progress=False
    )
    embedstore.split(store, folds=2, seed=0)
    heads.train(store, fold="all", head="mlp", out=tmp_path / "r", **FAST)
    model = heads.load(tmp_path / "r", device="cpu")
    fast = compile_predictor(model)
    assert fast.members[0].tta_views == ["flip"] and fast.on_torch == []
    st = embedstore.connect(store)
    cols = list(model.backbone_columns())
    res = embedstore.Resident(st, cols)
    _same(model, fast, {c: res.X[c] for c in cols})
    _same(model, fast, {c: res.X[c][:1] for c in cols})


def test_a_row_the_compiled_path_cannot_take_gets_the_torch_paths_error(flowers_runs):
    _, d = flowers_runs
    model = heads.load(d / "mlp" / "fold0", device="cpu")
    fast = compile_predictor(model)
    X = np.zeros((2, 1280), np.float32)
    X[1, 3] = np.nan
    col = next(iter(model.backbone_columns()))
    with pytest.raises(ValueError, match="NaN or Inf"):
        fast.logits({col: X})
    with pytest.raises(ValueError, match="1280 features|features"):
        fast.logits({col: X[:, :100]})


def test_compiled_predictor_is_a_predictor_for_every_caller(flowers_runs):
    _, d = flowers_runs
    fast = compile_predictor(heads.load(d / "mlp", device="cpu"))
    assert isinstance(fast, CompiledPredictor)
    assert fast.classes == fast.model.classes and fast.columns == []
    assert fast.threshold == 0.0 and fast.store_path == fast.model.store_path
    assert fast.config.kind == "ensemble" and list(fast.backbone_columns()) == list(
        fast.model.backbone_columns()
    )
