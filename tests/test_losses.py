"""The loss registry: every loss against a slow per-sample reference, hand-worked examples,
contract tests over ``list_losses()``, the composite loss, and a small training run per loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import heads.losses as losses_module
from heads.losses import CompositeLoss, Loss, create_loss, list_losses, register_loss

C = 5
B = 16
COUNTS = [40.0, 20.0, 7.0, 1.0, 0.0]  # a class absent from the training data included
WEIGHT = [0.5, 1.0, 2.0, 3.0, 1.5]
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
TOL = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    # bf16 inputs are computed in float32; the reference sees the same rounded inputs
    torch.bfloat16: {"rtol": 1e-4, "atol": 1e-4},
}

# ---------------------------------------------------------------------------------------------
# Slow references: one sample at a time, plain floats and the math module.
# ---------------------------------------------------------------------------------------------


def ref_log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ref_ce(z: list[float], y: int, label_smoothing: float = 0.0) -> float:
    lp = ref_log_softmax(z)
    eps = label_smoothing
    return -(1 - eps) * lp[y] - eps / len(z) * sum(lp)


def ref_focal(z: list[float], y: int, gamma: float = 2.0, alpha=None) -> float:
    lp_y = ref_log_softmax(z)[y]
    a = 1.0 if alpha is None else alpha if isinstance(alpha, float) else alpha[y]
    return -a * (1 - math.exp(lp_y)) ** gamma * lp_y


def ref_seesaw(
    z: list[float], y: int, counts: list[float], p: float = 0.8, q: float = 2.0, eps: float = 1e-2
) -> float:
    n = [max(c, 1.0) for c in counts]
    sigma = [math.exp(v) for v in ref_log_softmax(z)]
    denominator = math.exp(z[y])
    for j in range(len(z)):
        if j == y:
            continue
        s = 1.0
        if n[j] < n[y]:  # mitigation: a frequent class y pushes less on a rarer class j
            s *= (n[j] / n[y]) ** p
        ratio = sigma[j] / max(sigma[y], eps)
        if ratio > 1:  # compensation: j is predicted above the true class
            s *= ratio**q
        denominator += s * math.exp(z[j])
    return -math.log(math.exp(z[y]) / denominator)


def ref_arcface(
    cos: list[float], y: int, margin_rad: float = 0.5, scale: float = 30.0, easy_margin=False
) -> float:
    m = margin_rad
    theta = math.acos(cos[y])
    if easy_margin:
        target = math.cos(theta + m) if cos[y] > 0 else cos[y]
    else:
        target = math.cos(theta + m) if theta + m < math.pi else cos[y] - m * math.sin(m)
    z = [scale * c for c in cos]
    z[y] = scale * target
    return ref_ce(z, y)


def ref_logit_adjusted(z: list[float], y: int, counts: list[float], tau: float = 1.0) -> float:
    n = [max(c, 1.0) for c in counts]
    return ref_ce([v + tau * math.log(c / sum(n)) for v, c in zip(z, n, strict=True)], y)


def ref_reduce(losses: list[float], targets: list[int], reduction: str, weight=None):
    w = [1.0 if weight is None else weight[y] for y in targets]
    weighted = [wi * li for wi, li in zip(w, losses, strict=True)]
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return sum(weighted)
    return sum(weighted) / sum(w)


# (registered name, settings, reference for one sample)
CASES: list[tuple[str, dict, Callable[[list[float], int], float]]] = [
    ("ce", {}, ref_ce),
    ("ce", {"label_smoothing": 0.1}, lambda z, y: ref_ce(z, y, 0.1)),
    ("focal", {}, ref_focal),
    ("focal", {"gamma": 0.5, "alpha": 0.25}, lambda z, y: ref_focal(z, y, 0.5, 0.25)),
    ("focal", {"alpha": WEIGHT[::-1]}, lambda z, y: ref_focal(z, y, 2.0, WEIGHT[::-1])),
    ("seesaw", {}, lambda z, y: ref_seesaw(z, y, COUNTS)),
    ("seesaw", {"p": 0.5, "q": 1.0}, lambda z, y: ref_seesaw(z, y, COUNTS, 0.5, 1.0)),
    ("arcface", {}, ref_arcface),
    (
        "arcface",
        {"margin_rad": 0.3, "scale": 16.0, "easy_margin": True},
        lambda z, y: ref_arcface(z, y, 0.3, 16.0, True),
    ),
    ("subcenter-arcface", {"subcenters": 2}, ref_arcface),
    ("logit-adjusted", {}, lambda z, y: ref_logit_adjusted(z, y, COUNTS)),
    ("logit-adjusted", {"tau": 0.5}, lambda z, y: ref_logit_adjusted(z, y, COUNTS, 0.5)),
]


def random_inputs(
    classifier: str, seed: int, dtype=torch.float32, batch: int = B
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, C)`` (cosines in [-1, 1] for a cosine classifier) and targets ``(B,)``."""
    g = torch.Generator().manual_seed(seed)
    if classifier == "cosine":
        x = torch.rand(batch, C, generator=g, dtype=torch.float64) * 1.98 - 0.99  # (B, C)
    else:
        x = 3.0 * torch.randn(batch, C, generator=g, dtype=torch.float64)  # (B, C)
    return x.to(dtype), torch.randint(0, C, (batch,), generator=g)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_registered_loss_has_a_reference():
    assert {name for name, _, _ in CASES} == set(list_losses())


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class_weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "name,settings,ref", CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]
)
def test_matches_reference(name, settings, ref, dtype, weighted):
    weight = WEIGHT if weighted else None
    for seed, reduction in enumerate(["mean", "sum", "none"]):
        loss = create_loss(
            name,
            num_classes=C,
            class_counts=COUNTS,
            class_weight=weight,
            reduction=reduction,
            **settings,
        )
        logits, target = random_inputs(loss.classifier, seed, dtype)
        got = loss(logits, target)
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        rows, ys = logits.double().tolist(), target.tolist()
        want = ref_reduce([ref(z, y) for z, y in zip(rows, ys, strict=True)], ys, reduction, weight)
        torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), **TOL[dtype])


@pytest.mark.parametrize(
    "name,settings", [(n, s) for n, s, _ in CASES if n != "seesaw"], ids=lambda v: str(v)
)
def test_gradient_matches_finite_differences(name, settings):
    # seesaw is left out on purpose: its factors depend on the logits but are detached
    loss = create_loss(name, num_classes=C, class_counts=COUNTS, class_weight=WEIGHT, **settings)
    logits, target = random_inputs(loss.classifier, 7, torch.float64, batch=6)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), logits.requires_grad_())


# ---------------------------------------------------------------------------------------------
# Hand-worked examples.
# ---------------------------------------------------------------------------------------------


def test_ce_label_smoothing_two_classes_by_hand():
    # p = softmax([0, ln 3]) = [1/4, 3/4]; smoothed target for class 1 with eps 0.2 = [0.1, 0.9]
    # loss = -0.1 ln(1/4) - 0.9 ln(3/4) = 0.13863 + 0.25891 = 0.39754
    loss = create_loss("ce", label_smoothing=0.2)
    got = loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]))
    assert got.item() == pytest.approx(0.1 * math.log(4) + 0.9 * math.log(4 / 3), abs=1e-6)
    assert got.item() == pytest.approx(0.39754, abs=1e-5)


def test_ce_class_weight_is_torch_weighted_mean():
    logits, target = random_inputs("linear", 3)
    got = create_loss("ce", class_weight=WEIGHT)(logits, target)
    torch.testing.assert_close(got, F.cross_entropy(logits, target, weight=torch.tensor(WEIGHT)))


def test_seesaw_mitigation_by_hand():
    # counts [100, 25], sample of the frequent class 0, equal logits: no compensation,
    # the rare class's negative term is scaled by (25/100)^0.8, so loss = ln(1 + 0.25^0.8)
    loss = create_loss("seesaw", class_counts=[100, 25])
    got = loss(torch.zeros(1, 2), torch.tensor([0]))
    assert got.item() == pytest.approx(math.log(1 + 0.25**0.8), abs=1e-6)


def test_seesaw_compensation_by_hand():
    # sample of the rare class 1 predicted as class 0: p = [3/4, 1/4], no mitigation (N_0 > N_1),
    # compensation (0.75/0.25)^2 = 9 on e^{ln 3} = 3, so loss = -ln(1 / (1 + 9 * 3)) = ln 28
    loss = create_loss("seesaw", class_counts=[100, 25])
    got = loss(torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([1]))
    assert got.item() == pytest.approx(math.log(28), abs=1e-6)


def test_seesaw_is_ce_with_equal_counts_and_correct_predictions():
    logits, target = random_inputs("linear", 4)
    logits[torch.arange(B), target] += 20.0  # the true class has the top probability
    got = create_loss("seesaw", class_counts=[10] * C)(logits, target)
    torch.testing.assert_close(got, F.cross_entropy(logits, target))


def test_arcface_without_margin_is_ce_on_scaled_cosines():
    cos, target = random_inputs("cosine", 5)
    got = create_loss("arcface", margin_rad=0.0, scale=12.0)(cos, target)
    torch.testing.assert_close(got, F.cross_entropy(12.0 * cos, target))


def test_arcface_margin_by_hand():
    # theta_y = acos(0.5) = pi/3, + pi/6 = pi/2: target logit 0, other logit 0 -> ln 2
    loss = create_loss("arcface", margin_rad=math.pi / 6, scale=2.0)
    got = loss(torch.tensor([[0.5, 0.0]]), torch.tensor([0]))
    assert got.item() == pytest.approx(math.log(2), abs=1e-6)


def test_arcface_past_pi_uses_the_linear_penalty():
    # acos(-0.95) + 0.5 > pi: target cosine is -0.95 - 0.5 sin(0.5) = -1.18971, not cos(theta + m)
    loss = create_loss("arcface", margin_rad=0.5, scale=1.0)
    got = loss(torch.tensor([[-0.95, 0.0]]), torch.tensor([0]))
    phi = -0.95 - 0.5 * math.sin(0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-phi)), abs=1e-6)
    easy = create_loss("arcface", margin_rad=0.5, scale=1.0, easy_margin=True)
    got = easy(torch.tensor([[-0.5, 0.2]]), torch.tensor([0]))  # cos <= 0: no margin
    assert got.item() == pytest.approx(math.log(1 + math.exp(0.7)), abs=1e-6)


def test_focal_gamma_zero_and_logit_adjusted_uniform_prior_are_ce():
    logits, target = random_inputs("linear", 6)
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(create_loss("focal", gamma=0.0)(logits, target), ce)
    uniform = create_loss("logit-adjusted", class_counts=[3] * C)
    torch.testing.assert_close(uniform(logits, target), ce)


def test_inference_logits():
    cos, _ = random_inputs("cosine", 8)
    arc = create_loss("subcenter-arcface", scale=20.0)
    torch.testing.assert_close(arc.inference_logits(cos), 20.0 * cos)
    adjusted = create_loss("logit-adjusted", class_counts=COUNTS)
    assert adjusted.inference_logits(cos) is cos  # raw logits at prediction time


# ---------------------------------------------------------------------------------------------
# Contracts over the registry.
# ---------------------------------------------------------------------------------------------


def build(name: str, **kw) -> Loss:
    return create_loss(name, num_classes=C, class_counts=COUNTS, class_weight=None, **kw)


@pytest.mark.parametrize("name", list_losses())
def test_contract_outputs_and_gradient(name):
    loss = build(name)
    assert isinstance(loss, Loss)
    assert loss.classifier in ("linear", "cosine")
    assert isinstance(loss.subcenters, int) and loss.subcenters >= 1
    logits, target = random_inputs(loss.classifier, 9)
    logits.requires_grad_()
    value = loss(logits, target)
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    per_sample = build(name, reduction="none")(logits, target)
    assert per_sample.shape == (B,)
    torch.testing.assert_close(per_sample.mean(), value)
    torch.testing.assert_close(build(name, reduction="sum")(logits, target), per_sample.sum())
    half = loss(logits.detach().bfloat16(), target)
    assert half.dtype == torch.float32 and torch.isfinite(half)


BAD_INPUTS = {
    "logits-1d": (lambda x, t: (x[0], t), r"logits must be \(B, C\), got shape \(5,\)"),
    "target-2d": (lambda x, t: (x, t[:, None]), r"target must be \(B,\), got shape \(16, 1\)"),
    "target-float": (lambda x, t: (x, t.float()), "target must be torch.long"),
    "logits-int": (lambda x, t: (x.long(), t), "logits must be floating point"),
    "batch-mismatch": (lambda x, t: (x, t[:-1]), "B=16 rows but target has 15"),
    "target-range": (lambda x, t: (x, t.clone().fill_(C)), r"target values must lie in \[0, 5\)"),
    "classes-mismatch": (lambda x, t: (x[:, :-1], t.clamp(max=3)), "C=4 columns, expected 5"),
    "empty": (lambda x, t: (x[:0], t[:0]), "empty batch"),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("name", list_losses())
def test_contract_bad_inputs_raise(name, bad):
    loss = build(name)
    make, message = BAD_INPUTS[bad]
    logits, target = random_inputs(loss.classifier, 10)
    with pytest.raises(ValueError, match=message):
        loss(*make(logits, target))


@pytest.mark.parametrize("name", [n for n in list_losses() if build(n).classifier == "cosine"])
def test_cosine_losses_reject_logits(name):
    with pytest.raises(ValueError, match="expects cosines in"):
        build(name)(torch.full((2, C), 3.0), torch.tensor([0, 1]))
    one_up = torch.full((2, C), 1.0 + 2**-7, dtype=torch.bfloat16)  # bf16's next value after 1
    assert torch.isfinite(build(name)(one_up, torch.tensor([0, 1])))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown loss 'cross-entropy'; valid losses: arcface, ce"):
        create_loss("cross-entropy")
    with pytest.raises(ValueError, match="loss 'focal'.*gama.*valid settings:.*gamma"):
        create_loss("focal", gama=1.0)
    with pytest.raises(ValueError, match="loss 'seesaw'.*class_counts"):
        create_loss("seesaw", num_classes=C)
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none'"):
        create_loss("ce", reduction="avg")
    with pytest.raises(ValueError, match="inconsistent number of classes"):
        create_loss("ce", num_classes=3, class_weight=WEIGHT)


def test_register_loss(monkeypatch):
    list_losses()  # built-ins registered first
    monkeypatch.setattr(losses_module.LOSSES, "_items", dict(losses_module.LOSSES._items))

    @register_loss("hinge")
    class Hinge(Loss):
        def per_sample_loss(self, logits, target):
            true = logits.gather(1, target[:, None])  # (B, 1)
            return (1 + logits - true).clamp(min=0).scatter(1, target[:, None], 0).sum(1)

    assert "hinge" in list_losses("h*")
    assert isinstance(create_loss("hinge", num_classes=2), Hinge)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("ce")(Hinge)


# ---------------------------------------------------------------------------------------------
# CompositeLoss: class loss + alpha * BCE on auxiliary targets with NaN = missing.
# ---------------------------------------------------------------------------------------------


def ref_bce(x: float, t: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def aux_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    aux_logits = torch.randn(B, 2, generator=g, dtype=torch.float64)  # (B, A)
    aux_target = torch.randint(0, 2, (B, 2), generator=g).double()  # (B, A)
    aux_target[::3, 0] = float("nan")
    aux_target[1::4] = float("nan")  # some samples have no auxiliary label at all
    return aux_logits, aux_target


def test_composite_masks_missing_aux_targets():
    logits, target = random_inputs("linear", 12, torch.float64)
    aux_logits, aux_target = aux_inputs()
    composite = CompositeLoss(create_loss("ce"), alpha=0.7)
    observed = [
        ref_bce(x, t)
        for x, t in zip(aux_logits.flatten().tolist(), aux_target.flatten().tolist(), strict=True)
        if not math.isnan(t)
    ]
    want = F.cross_entropy(logits, target) + 0.7 * sum(observed) / len(observed)
    torch.testing.assert_close(composite(logits, target, aux_logits, aux_target), want)
    assert composite(logits, target).item() == pytest.approx(F.cross_entropy(logits, target))


def test_composite_reduction_none_and_gradients():
    logits, target = random_inputs("linear", 13, torch.float64)
    aux_logits, aux_target = aux_inputs()
    aux_logits.requires_grad_()
    composite = CompositeLoss(create_loss("ce", reduction="none"), alpha=2.0)
    got = composite(logits, target, aux_logits, aux_target)
    assert got.shape == (B,)
    for i in range(B):
        pairs = [
            (x, t) for x, t in zip(aux_logits[i].tolist(), aux_target[i].tolist(), strict=True)
        ]
        terms = [ref_bce(x, t) for x, t in pairs if not math.isnan(t)]
        aux = sum(terms) / len(terms) if terms else 0.0
        assert got[i].item() == pytest.approx(ref_ce(logits[i].tolist(), target[i]) + 2.0 * aux)
    got.sum().backward()
    missing = torch.isnan(aux_target)
    assert torch.isfinite(aux_logits.grad).all()
    assert (aux_logits.grad[missing] == 0).all() and (aux_logits.grad[~missing] != 0).all()


def test_composite_all_missing_and_one_dim_aux():
    logits, target = random_inputs("linear", 14)
    composite = CompositeLoss(create_loss("focal"))
    aux_logits = torch.randn(B, requires_grad=True)  # (B,) one auxiliary target
    got = composite(logits, target, aux_logits, torch.full((B,), float("nan")))
    torch.testing.assert_close(got, create_loss("focal")(logits, target))
    got.backward()
    assert (aux_logits.grad == 0).all()


def test_composite_delegates_and_checks():
    composite = CompositeLoss(create_loss("subcenter-arcface", subcenters=4, scale=10.0))
    assert (composite.classifier, composite.subcenters) == ("cosine", 4)
    cos, target = random_inputs("cosine", 15)
    torch.testing.assert_close(composite.inference_logits(cos), 10.0 * cos)
    with pytest.raises(ValueError, match="must be given together"):
        composite(cos, target, aux_logits=torch.zeros(B))
    with pytest.raises(ValueError, match="must have the same shape"):
        composite(cos, target, torch.zeros(B, 2), torch.zeros(B))
    with pytest.raises(ValueError, match="with B=16"):
        composite(cos, target, torch.zeros(B - 1), torch.zeros(B - 1))
    with pytest.raises(ValueError, match="class_loss must be a Loss"):
        CompositeLoss(torch.nn.CrossEntropyLoss())


# ---------------------------------------------------------------------------------------------
# Each loss trains a small model to separate 2-D Gaussian blobs.
# ---------------------------------------------------------------------------------------------


def blobs(counts: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four blobs at radius 4 on the axes: separable by a linear or a cosine classifier."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(len(counts)) * (2 * math.pi / len(counts))  # (K,)
    centres = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # (N,)
    x = centres[y] + 0.6 * torch.randn(len(y), 2, generator=g)  # (N, 2)
    return x, y


@pytest.mark.parametrize("composite", [False, True], ids=["plain", "composite"])
@pytest.mark.parametrize("name", list_losses())
def test_training_separates_blobs(name, composite):
    counts = [120, 80, 50, 30]  # long-tailed on purpose
    x, y = blobs(counts)
    torch.manual_seed(0)
    loss = create_loss(name, num_classes=4, class_counts=counts)
    if loss.classifier == "cosine":  # normalised weights, max-pooled over the sub-centres
        w = torch.nn.Parameter(torch.randn(4 * loss.subcenters, 2))

        def head(v: torch.Tensor) -> torch.Tensor:
            cos = F.normalize(v, dim=1) @ F.normalize(w, dim=1).T  # (N, C * K)
            return cos.view(len(v), 4, loss.subcenters).amax(dim=2)  # (N, C)

        params = [w]
    else:
        linear = torch.nn.Linear(2, 4)
        head, params = linear, list(linear.parameters())
    aux_w = torch.nn.Parameter(torch.zeros(2))  # aux target: "is the blob on the x axis"
    aux_target = (y % 2 == 0).float()  # (N,)
    aux_target[::5] = float("nan")
    criterion = CompositeLoss(loss, alpha=0.5) if composite else loss
    optimiser = torch.optim.Adam([*params, aux_w], lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        outputs = head(x)  # (N, C)
        if composite:
            value = criterion(outputs, y, x.abs() @ aux_w - aux_w.sum(), aux_target)
        else:
            value = criterion(outputs, y)
        value.backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = (criterion.inference_logits(head(x)).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.95, f"{name}: train accuracy {accuracy:.3f}"
