"""A run or an ensemble compiled for answering a few rows at a time: stacked numpy weights.

A loaded :class:`~heads.runs.Ensemble` of five MLP heads answers one row with five torch
forwards of seven modules each, and on a busy CPU torch's per-call and thread-pool overhead costs
milliseconds where the arithmetic costs a few hundred microseconds. :func:`compile_predictor`
turns the linear and MLP members into stacked numpy arrays: every member's first layer is one
column block of one matrix (LayerNorm's scale and shift folded in), so a request is one LayerNorm,
one matrix product (ONNX Runtime's, its weights packed once: ``heads.runs._matmul``), one GELU
and one batched product for all members at once; the ensemble's
temperatures, weights and the members' unknown detectors then run as in :mod:`heads.runs._loaded`.

Members are grouped by structure (backbones, TTA views, architecture, widths, classifier), one
stacked computation per group. A member the compiled path cannot reproduce (a transformer head,
a kNN head, a loss whose inference logits are not a scaled copy of the outputs) keeps its own
torch path, and each group is checked against the torch path on random rows when it is compiled
(it falls back to torch where they differ): the answers are the torch path's to float32
rounding (``tests/test_compiled.py`` checks 1e-5 on real runs).

The large products (the first layer's, the kNN detectors') run on one ONNX Runtime thread
each: a server answers requests concurrently, and on a few rows a thread pool costs more than
it gives (a 1 x 1280 by 1280 x 5120 product took 5.6 ms with two OpenBLAS threads, 1.7 ms with
one, on a busy 2-core machine).

>>> fast = compile_predictor(heads.load("runs/mlp", device="cpu"))
>>> logits, scores = fast.logits_and_scores({"emb_efficientnet_lite0": X})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import erf

from heads.estimators._neural import NeuralHead
from heads.estimators._neural_net import CosineClassifier
from heads.runs._loaded import Ensemble, Run
from heads.runs._matmul import MatMul
from heads.runs._stacked_knn import StackedKNN, stack_detectors, stackable
from heads.runs._wrapped import WrappedPredictor

_CHECK_ROWS = 4  # random rows each group is checked on against the torch path when compiled
_CHECK_TOL = 1e-4  # relative to the logits' scale: float32 rounding is ~1e-6


@dataclass
class _Group:
    """Members of one structure, stacked: ``M`` members, input width ``D``, ``C`` classes."""

    index: list[int]  # the members' positions in the predictor
    runs: list[Run]
    arch: str  # "linear" or "mlp"
    eps: float  # LayerNorm's
    # first layer over the normalised embedding z, LayerNorm's affine folded in where it can be:
    # mlp: hidden pre-activation; linear with a linear classifier: the logits themselves
    w1: MatMul  # by (D, M * H) float32
    b1: np.ndarray  # (M, H) float32
    w1f: np.ndarray | None  # (M, H, F) weights of the metadata fields, or None without fields
    # the classifier over the features (None: folded into w1 above)
    wc: np.ndarray | None  # (M, C * K, width) float32, rows L2-normalised when cosine
    bc: np.ndarray | None  # (M, 1, C) float32, None when cosine
    cosine: bool
    subcenters: int
    gamma: np.ndarray | None  # (M, D) LayerNorm scale: linear arch with a cosine classifier
    beta: np.ndarray | None  # (M, D)
    scale: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))  # (M,)

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None
    ) -> list[np.ndarray] | None:
        """Each member's logits ``(N, C)`` float32, as ``Run.logits`` gives them; None where the
        input is not what the group was compiled for (the torch path then answers, or says why)."""
        first = self.runs[0]
        inputs = first.head_inputs(embeddings)  # main, then each TTA view: (N, D) each
        n, k = len(inputs[0]), len(inputs)
        x = np.concatenate(inputs) if k > 1 else inputs[0]  # (R, D), R = k * n
        if x.ndim != 2 or x.shape[1] != self.w1.shape[0] or not np.isfinite(x).all():
            return None
        z = _normalise(x, self.eps)  # (R, D) float32
        fields = self._fields(n, k, table)  # (M, R, F) or None
        out = self._outputs(z, fields)  # (M, R, C)
        out = out * self.scale[:, None, None]
        if k == 1:
            return [o for o in out]
        mean = out.reshape(len(self.runs), k, n, -1).astype(np.float64).mean(axis=1)  # (M, n, C)
        return [o.astype(np.float32) for o in mean]

    def _fields(self, n: int, k: int, table: dict[str, np.ndarray] | None) -> np.ndarray | None:
        if self.w1f is None and not (self.cosine and self.arch == "linear"):
            return None
        blocks = []
        for run in self.runs:
            f = run.fields(n, table)
            if f is None:
                return None
            row = np.concatenate([np.asarray(b, np.float32).reshape(n, -1) for b in f], axis=1)
            blocks.append(np.tile(row, (k, 1)))  # the same fields for every view
        return np.stack(blocks)  # (M, R, F)

    def _outputs(self, z: np.ndarray, fields: np.ndarray | None) -> np.ndarray:
        m, r = len(self.runs), z.shape[0]
        if self.arch == "linear" and self.cosine:  # features: LayerNorm(x) ++ fields
            assert self.gamma is not None and self.beta is not None
            feat = z[None] * self.gamma[:, None, :] + self.beta[:, None, :]  # (M, R, D)
            if fields is not None:
                feat = np.concatenate([feat, fields], axis=2)  # (M, R, D + F)
        else:
            pre = self.w1(z).reshape(r, m, -1).transpose(1, 0, 2) + self.b1[:, None, :]
            if self.w1f is not None and fields is not None:
                pre = pre + fields @ self.w1f.transpose(0, 2, 1)  # (M, R, H)
            if self.wc is None:  # linear arch, linear classifier: pre are the logits
                return pre
            feat = _gelu(pre)  # (M, R, H)
        assert self.wc is not None
        if not self.cosine:
            assert self.bc is not None
            return feat @ self.wc.transpose(0, 2, 1) + self.bc  # (M, R, C)
        norm = np.sqrt((feat.astype(np.float64) ** 2).sum(axis=2, keepdims=True))
        feat = (feat / np.maximum(norm, 1e-12)).astype(np.float32)
        cos = feat @ self.wc.transpose(0, 2, 1)  # (M, R, C * K)
        if self.subcenters > 1:
            cos = cos.reshape(m, r, -1, self.subcenters).max(axis=3)  # (M, R, C)
        return cos


def _normalise(x: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm without its affine: ``(x - mean) / sqrt(var + eps)`` per row, float32."""
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=1, keepdims=True)
    return ((x64 - mu) / np.sqrt(var + eps)).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU with erf, as ``torch.nn.GELU()`` (float32)."""
    return (0.5 * x * (1.0 + erf(x * np.float32(math.sqrt(0.5))))).astype(np.float32)


def _structure(run: Run) -> tuple | None:
    """What members must share to be stacked; None for a member kept on torch."""
    head = run.head
    if not isinstance(head, NeuralHead) or head._arch not in ("linear", "mlp"):
        return None
    net = head.model_
    cosine = isinstance(net.classifier, CosineClassifier)
    if not cosine and not isinstance(net.classifier, torch.nn.Linear):
        return None
    if _inference_scale(head) is None:
        return None
    return (
        tuple(b["column"] for b in run.backbones),
        tuple(run.tta_views),
        head._arch,
        int(head.n_features_in_),
        tuple(head.field_dims_),
        _hidden_layer(net).out_features if head._arch == "mlp" else 0,
        cosine,
        int(getattr(net.classifier, "subcenters", 1)),
        len(head.classes_),
    )


def _inference_scale(head: NeuralHead) -> float | None:
    """The factor the loss's ``inference_logits`` multiplies outputs by (1 for most losses,
    ArcFace's scale), or None where it is not a plain factor."""
    probe = torch.randn(3, len(head.classes_), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = head.loss_.inference_logits(probe.to(head.device_)).float().cpu()
        ones = torch.ones(1, probe.shape[1], device=head.device_)
        ones = head.loss_.inference_logits(ones).float().cpu()
    s = float(ones.reshape(-1)[0])
    ok = out.shape == probe.shape and torch.allclose(out, s * probe, rtol=1e-6, atol=1e-7)
    return s if ok and math.isfinite(s) else None


def _hidden_layer(net: torch.nn.Module) -> torch.nn.Linear:
    """An MLP head's hidden ``Linear`` (its body: Linear, GELU, Dropout)."""
    body = net.body
    assert isinstance(body, torch.nn.Sequential) and isinstance(body[0], torch.nn.Linear)
    return body[0]


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _stack(index: list[int], runs: list[Run]) -> _Group:
    """One group's arrays from its members' torch modules."""
    heads_ = [r.head for r in runs]
    nets = [h.model_ for h in heads_]
    arch = heads_[0]._arch
    d = int(heads_[0].n_features_in_)
    gamma = np.stack([_f64(n.norm.weight) for n in nets])  # (M, D) float64
    beta = np.stack([_f64(n.norm.bias) for n in nets])
    cosine = isinstance(nets[0].classifier, CosineClassifier)
    if arch == "mlp" or not cosine:  # the first Linear: the MLP's hidden layer, or the classifier
        first = [_hidden_layer(n) if arch == "mlp" else n.classifier for n in nets]
        w = np.stack([_f64(layer.weight) for layer in first])  # (M, H, D + F)
        b = np.stack([_f64(layer.bias) for layer in first])  # (M, H)
    else:  # linear arch, cosine classifier: no product before the classifier
        w, b = np.zeros((len(nets), 0, d)), np.zeros((len(nets), 0))
    wx, wf = w[:, :, :d], w[:, :, d:]
    wc = bc = None
    if arch == "mlp" or cosine:
        wc = np.stack([_f64(n.classifier.weight) for n in nets])  # (M, C * K, width)
        if cosine:
            wc = wc / np.maximum(np.linalg.norm(wc, axis=2, keepdims=True), 1e-12)
        else:
            bc = np.stack([_f64(n.classifier.bias) for n in nets])[:, None, :].astype(np.float32)
    g = _Group(
        index=index,
        runs=runs,
        arch=arch,
        eps=float(nets[0].norm.eps),
        # LayerNorm's affine folded in: W (z * gamma + beta) + b = (W * gamma) z + (W beta + b)
        w1=MatMul((wx * gamma[:, None, :]).transpose(2, 0, 1).reshape(d, -1)),
        b1=(b + np.einsum("mhd,md->mh", wx, beta)).astype(np.float32),
        w1f=np.ascontiguousarray(wf, np.float32) if wf.shape[2] else None,
        wc=None if wc is None else np.ascontiguousarray(wc, np.float32),
        bc=bc,
        cosine=cosine,
        subcenters=int(getattr(nets[0].classifier, "subcenters", 1)),
        gamma=gamma.astype(np.float32) if arch == "linear" and cosine else None,
        beta=beta.astype(np.float32) if arch == "linear" and cosine else None,
    )
    g.scale = np.array([_inference_scale(h) for h in heads_], np.float32)
    return g


def _agrees(group: _Group) -> bool:
    """The group's logits match each member's torch path on random rows (and empty metadata)."""
    rng = np.random.default_rng(0)
    first = group.runs[0]
    emb = {
        c: rng.standard_normal((_CHECK_ROWS, int(b["dim"]))).astype(np.float32)
        for c, b in first.backbone_columns().items()
    }
    got = group.logits(emb, None)
    if got is None:
        return False
    for run, z in zip(group.runs, got, strict=True):
        want = run.logits(emb, None)
        tol = _CHECK_TOL * max(1.0, float(np.abs(want).max()))
        if z.shape != want.shape or not np.allclose(z, want, rtol=0, atol=tol):
            return False
    return True


class CompiledPredictor(WrappedPredictor):
    """A :class:`~heads.runs.Predictor` over a loaded run or ensemble whose linear and MLP heads
    answer through stacked numpy weights (see the module's docstring); everything else is the
    model's own. Thread-safe: it holds no state between calls."""

    def __init__(self, model: Run | Ensemble) -> None:
        super().__init__(model)
        self.model: Run | Ensemble = model
        self.members: list[Run | Ensemble] = (
            list(model.members) if isinstance(model, Ensemble) else [model]
        )
        self.groups: list[_Group] = []
        by_key: dict[tuple, list[int]] = {}
        for i, m in enumerate(self.members):
            key = _structure(m) if isinstance(m, Run) else None
            if key is not None:
                by_key.setdefault(key, []).append(i)
        for idx in by_key.values():
            runs = [self.members[i] for i in idx]
            assert all(isinstance(r, Run) for r in runs)  # only runs have a structure
            g = _stack(idx, runs)  # type: ignore[arg-type]
            if _agrees(g):
                self.groups.append(g)
        stacked = {i for g in self.groups for i in g.index}
        self.on_torch = [i for i in range(len(self.members)) if i not in stacked]
        self.knn: list[StackedKNN] = []  # members' kNN detectors, their training rows once
        by_key = {}
        for i, m in enumerate(self.members):
            key = stackable(m) if isinstance(m, Run) else None
            if key is not None:
                by_key.setdefault(key, []).append(i)
        for idx in by_key.values():
            knn = stack_detectors(idx, [self.members[i] for i in idx])  # type: ignore[misc]
            if knn is not None:
                self.knn.append(knn)

    # ---------------------------------------------------------------- compiled
    def member_logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Each member's logits ``(N, C)`` float32, in order (one member for a run)."""
        out: list[np.ndarray | None] = [None] * len(self.members)
        for g in self.groups:
            zs = g.logits(embeddings, table)
            for j, i in enumerate(g.index):
                out[i] = zs[j] if zs is not None else self.members[i].logits(embeddings, table)
        for i in self.on_torch:
            out[i] = self.members[i].logits(embeddings, table)
        return [z for z in out if z is not None]

    def logits(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        parts = self.member_logits(embeddings, table)
        return self.model.combine_members(parts) if isinstance(self.model, Ensemble) else parts[0]

    def unknown_scores(
        self,
        embeddings: dict[str, np.ndarray],
        logits: np.ndarray,
        table: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        if isinstance(self.model, Run):
            return self.model.unknown_scores(embeddings, logits, table)
        return self.logits_and_scores(embeddings, table)[1]

    def logits_and_scores(
        self, embeddings: dict[str, np.ndarray], table: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        parts = self.member_logits(embeddings, table)
        scores = self.member_scores(embeddings, parts, table)
        if isinstance(self.model, Run):
            return parts[0], scores[0]
        return self.model.combine_members(parts), self.model.combine_scores(scores, list(parts))

    def member_scores(
        self,
        embeddings: dict[str, np.ndarray],
        parts: list[np.ndarray],
        table: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray | None]:
        """Each member's detector scores ``(N,)`` from its own logits (None: no detector)."""
        out: list[np.ndarray | None] = [None] * len(self.members)
        for knn in self.knn:
            X = knn.runs[0].head_input(embeddings)
            for i, s in zip(knn.index, knn.scores(X, [parts[i] for i in knn.index]), strict=True):
                out[i] = s
        stacked = {i for knn in self.knn for i in knn.index}
        for i, m in enumerate(self.members):
            if i not in stacked and (isinstance(m, Ensemble) or m.detector is not None):
                out[i] = m.unknown_scores(embeddings, parts[i], table)
        return out


def compile_predictor(model: Run | Ensemble | CompiledPredictor) -> CompiledPredictor:
    """``model`` (``heads.load``'s) with its linear and MLP heads compiled to stacked numpy
    weights for small batches: the same answers, without torch's per-call overhead."""
    return model if isinstance(model, CompiledPredictor) else CompiledPredictor(model)
