"""embedstore.search._search against a numpy brute-force reference, with the real faiss on small
data."""

import json

import numpy as np
import pytest
import torch

import embedstore.search._search as search
from embedstore import resolve_device
from embedstore.search._search import NeighborIndex, default_nlist, l2_normalize, sidecar_path

BACKENDS = ["faiss", "torch"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _clustered(rng, n, d=32, n_clusters=50, spread=0.15):
    """Unit vectors around random cluster centres: the structure ANN indices rely on."""
    centres = l2_normalize(rng.normal(size=(n_clusters, d)))
    X = centres[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, d)) / np.sqrt(d)
    return X.astype(np.float32)


def _reference_search(X, Q, k):
    """Slow, obviously correct: full similarity matrix and a stable sort."""
    S = l2_normalize(Q).astype(np.float64) @ l2_normalize(X).astype(np.float64).T  # (Nq, N)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, idx, axis=1), idx


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_matches_reference(backend):
    rng = np.random.default_rng(0)
    X, Q = rng.normal(size=(700, 24)), rng.normal(size=(60, 24))
    index = NeighborIndex(kind="exact", backend=backend, device="cpu").build(X)
    sims, idx = index.search(Q, k=15)
    ref_s, ref_i = _reference_search(X, Q, 15)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and sims.shape == (60, 15)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    assert not index.used_ann and index.ntotal == 700 and index.dim == 24


def test_faiss_and_torch_agree_and_torch_chunks_the_store(monkeypatch):
    rng = np.random.default_rng(1)
    X, Q = rng.normal(size=(1000, 16)), rng.normal(size=(100, 16))
    s_f, i_f = NeighborIndex(backend="faiss", device="cpu").build(X).search(Q, 12)
    monkeypatch.setattr(search, "TORCH_STORE_CHUNK", 97)  # exercise the chunk merge
    s_t, i_t = NeighborIndex(backend="torch", device="cpu").build(X).search(Q, 12, batch_size=7)
    np.testing.assert_array_equal(i_f, i_t)
    np.testing.assert_allclose(s_f, s_t, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_query_returns_itself_first(backend):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 32)).astype(np.float32)
    index = NeighborIndex(backend=backend, device="cpu").build(X)
    sims, idx = index.search(X[[3, 77, 499]] * 5.0, k=4)  # scale must not matter
    np.testing.assert_array_equal(idx[:, 0], [3, 77, 499])
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_recall_at_10(kind):
    rng = np.random.default_rng(3)
    X, Q = _clustered(rng, 5000), _clustered(rng, 200)
    _, exact = NeighborIndex(kind="exact", device="cpu").build(X).search(Q, 10)
    index = NeighborIndex(kind=kind, device="cpu", nprobe=8).build(X)
    _, approx = index.search(Q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert index.used_ann and recall >= 0.9, f"{kind} recall@10 = {recall:.3f}"


def test_auto_kind_switches_to_ivf_above_the_threshold(monkeypatch):
    rng = np.random.default_rng(4)
    X = _clustered(rng, 3000, d=16)
    small = NeighborIndex(kind="auto", backend="faiss", device="cpu").build(X[:999])
    assert small.kind_ == "exact" and not small.used_ann
    monkeypatch.setattr(search, "AUTO_ANN_MIN_VECTORS", 1000)
    big = NeighborIndex(kind="auto", backend="faiss", device="cpu").build(X)
    assert big.kind_ == "ivf" and big.used_ann and big.nlist_ == default_nlist(3000)
    # the torch backend has no ANN: "auto" stays exact whatever the size
    assert NeighborIndex(kind="auto", backend="torch", device="cpu").build(X).kind_ == "exact"


@pytest.mark.parametrize(
    ("kind", "backend"),
    [("exact", "faiss"), ("ivf", "faiss"), ("hnsw", "faiss"), ("exact", "torch")],
)
def test_save_load_identical(tmp_path, kind, backend):
    rng = np.random.default_rng(5)
    X, Q = _clustered(rng, 2000, d=16), _clustered(rng, 50, d=16)
    index = NeighborIndex(kind=kind, backend=backend, device="cpu", nprobe=4).build(X)
    sidecar = index.save(tmp_path / "nn.faiss")
    meta = json.loads(sidecar.read_text())
    assert sidecar == sidecar_path(tmp_path / "nn.faiss")
    assert (meta["kind"], meta["ntotal"], meta["dim"]) == (kind, 2000, 16)
    loaded = NeighborIndex.load(tmp_path / "nn.faiss", device="cpu")
    assert (
        loaded.kind_ == kind
        and loaded.used_ann == index.used_ann
        and loaded.backend_ == index.backend_
    )
    for a, b in zip(index.search(Q, 10), loaded.search(Q, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_input_types_batching_and_incremental_add():
    rng = np.random.default_rng(6)
    X, Q = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    ref = NeighborIndex(device="cpu").build(X).search(Q, 5, batch_size=4096)
    inc = NeighborIndex(device="cpu").add(X[:100]).add(torch.from_numpy(X[100:]))
    for a, b in zip(ref, inc.search(torch.from_numpy(Q), 5, batch_size=3), strict=True):
        np.testing.assert_array_equal(a, b)
    _, idx16 = (
        NeighborIndex(device="cpu").build(X.astype(np.float16)).search(Q.astype(np.float16), 1)
    )
    assert np.mean(idx16[:, 0] == ref[1][:, 0]) > 0.95


def test_errors_are_clear():
    X = np.random.default_rng(7).normal(size=(5, 4))
    with pytest.raises(ValueError, match=r"k=6 is larger than the number of stored vectors \(5\)"):
        NeighborIndex(device="cpu").build(X).search(X, 6)
    with pytest.raises(ValueError, match="index is empty"):
        NeighborIndex(device="cpu").search(X, 1)
    with pytest.raises(ValueError, match="dimension 3, the index holds dimension 4"):
        NeighborIndex(device="cpu").build(X).search(X[:, :3], 1)
    with pytest.raises(
        ValueError, match="invalid kind 'flat'; valid values: exact, ivf, hnsw, auto"
    ):
        NeighborIndex(kind="flat")
    with pytest.raises(ValueError, match="torch backend only does exact"):
        NeighborIndex(kind="hnsw", backend="torch")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
