"""The pruning-at-initialisation mask sources, each checked against an independent computation
written here (autograd by hand, the ERK formula, SynFlow's conservation law), and every source
against the contract on real small models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lth_core.config import ModelConfig
from lth_core.mask_sources import SOURCES, MaskRequest, grasp, snip, synflow
from lth_core.mask_sources.erk import erk_densities
from lth_core.mask_sources.synflow import linearized, synflow_scores
from lth_core.masks import Mask
from lth_core.models import build_model

AT_INIT = ("random", "erk", "snip", "grasp", "synflow")
SMALL = (1, 4, 4)  # input shape of the hand-checked MLPs
IMAGE = (1, 8, 8)  # input shape of the real models


def fixed_batches(shape: tuple[int, ...], classes: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """`batches(n)`: the first n of eight fixed random batches, as `MaskRequest.batches` promises."""
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(16, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (16,), generator=g))
            for _ in range(8)]

    def batches(n: int):
        assert n <= len(data)
        return iter(data[:n])
    return batches


def mlp(*widths: int, bias: bool = True, seed: int = 0) -> nn.Sequential:
    """Flatten, then Linear-ReLU pairs (no ReLU after the last), in double precision."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(n_in, n_out, bias=bias)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers).double()


def request_for(model: nn.Module, sparsity: float, previous: Mask | None = None, seed: int = 0,
                batches=None, input_shape=IMAGE, **kw) -> MaskRequest:
    return MaskRequest(model=model, previous=previous if previous is not None else Mask.ones_like(model),
                       sparsity=sparsity, seed=seed, batches=batches or fixed_batches(input_shape, 10),
                       input_shape=input_shape, **kw)


def top_k(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The k highest scores over all layers, after checking no tie straddles the cut."""
    names = sorted(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    ranked = flat.sort(descending=True).values
    assert ranked[k - 1] - ranked[k] > 1e-6 * ranked.abs().max(), "a near-tie at the cut: choose other data"
    keep = (flat >= ranked[k - 1]).split([scores[n].numel() for n in names])
    return {n: t.view_as(scores[n]) for n, t in zip(names, keep)}


def assert_mask_is(mask: Mask, expected: dict[str, torch.Tensor]) -> None:
    assert set(mask) == set(expected)
    for n in mask:
        assert torch.equal(mask[n], expected[n]), f"{n}: {int((mask[n] != expected[n]).sum())} entries differ"


# --- SNIP and GraSP against autograd by hand -------------------------------------------------

def test_snip_keeps_the_top_gradient_times_weight():
    net = mlp(16, 12, 5, seed=1)
    batches = fixed_batches(SMALL, 5, torch.float64)
    previous = Mask.ones_like(net, prune_linear=True)
    mask = SOURCES["snip"].mask(request_for(net, 0.7, previous, batches=batches, input_shape=SMALL))

    params = dict(net.named_parameters())
    names = list(previous)
    loss = sum(F.cross_entropy(net(x), y) for x, y in batches(snip.BATCHES))
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    expected = top_k({n: (g * params[n]).abs().detach() for n, g in zip(names, grads)}, round(previous.total * 0.3))
    assert_mask_is(mask, expected)


def test_grasp_removes_the_highest_minus_theta_hg():
    """The Hessian is built explicitly (every second derivative of the summed loss over the flat
    weights), so Hg here is a plain matrix-vector product, not the source's double backward."""
    net = mlp(16, 12, 5, seed=2)
    batches = fixed_batches(SMALL, 5, torch.float64, seed=3)
    previous = Mask.ones_like(net, prune_linear=True)
    mask = SOURCES["grasp"].mask(request_for(net, 0.6, previous, batches=batches, input_shape=SMALL))

    names = list(previous)
    params = {n: p.detach() for n, p in net.named_parameters()}
    sizes = [params[n].numel() for n in names]
    theta = torch.cat([params[n].flatten() for n in names])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        weights = {n: w.view_as(params[n]) for n, w in zip(names, flat.split(sizes))}
        return sum(F.cross_entropy(functional_call(net, {**params, **weights}, (x,)) / 200.0, y)  # T = 200
                   for x, y in batches(grasp.BATCHES))

    g = torch.autograd.functional.jacobian(loss, theta)
    hessian = torch.autograd.functional.hessian(loss, theta)
    s = -theta * (hessian @ g)  # GraSP's score; it removes the highest, so the mask keeps the lowest
    expected = top_k({n: -t.view_as(params[n]) for n, t in zip(names, s.split(sizes))}, round(theta.numel() * 0.4))
    assert_mask_is(mask, expected)


# --- ERK against its formula --------------------------------------------------------------------

def test_erk_densities_follow_the_formula():
    shapes = {"a": torch.Size((64, 32, 3, 3)), "b": torch.Size((128, 64, 3, 3)), "fc": torch.Size((100, 512))}
    densities = erk_densities(shapes, 0.9)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    formula = {"a": (32 + 64 + 3 + 3) / (32 * 64 * 9), "b": (64 + 128 + 3 + 3) / (64 * 128 * 9),
               "fc": (512 + 100) / (512 * 100)}
    eps = 0.1 * sum(numel.values()) / sum(formula[n] * numel[n] for n in shapes)
    assert max(eps * f for f in formula.values()) < 1  # no layer overflows here
    for n in shapes:
        assert densities[n] == pytest.approx(eps * formula[n], rel=1e-12)


def test_erk_makes_overflowing_layers_dense_and_redistributes():
    """At 92% `tiny` and `fc` overflow at once; fixing them raises the others' scale, which makes
    `small` overflow on the second pass (0.90 -> 1.32): all three dense, `big` takes the rest."""
    shapes = {"tiny": torch.Size((4, 1, 1, 1)), "small": torch.Size((16, 8, 3, 3)),
              "big": torch.Size((256, 128, 3, 3)), "fc": torch.Size((10, 256))}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    target = 0.08 * sum(numel.values())
    densities = erk_densities(shapes, 0.92)
    assert densities["tiny"] == densities["small"] == densities["fc"] == 1.0
    assert densities["big"] == pytest.approx((target - 4 - 16 * 8 * 9 - 2560) / numel["big"], rel=1e-12)
    assert sum(densities[n] * numel[n] for n in shapes) == pytest.approx(target, rel=1e-12)


def test_erk_mask_keeps_the_layer_counts_and_is_reproducible():
    model = build_model(ModelConfig(arch="resnet18", width=0.125), in_channels=1, num_classes=10, image_size=8)
    mask = SOURCES["erk"].mask(request_for(model, 0.8, seed=5))
    densities = erk_densities({n: mask[n].shape for n in mask}, 0.8)
    assert {n: int(mask[n].sum()) for n in mask} == {n: round(d * mask[n].numel()) for n, d in densities.items()}
    assert abs(mask.kept - 0.2 * mask.total) <= len(mask) / 2
    assert SOURCES["erk"].mask(request_for(model, 0.8, seed=5)) == mask
    assert SOURCES["erk"].mask(request_for(model, 0.8, seed=6)) != mask


# --- random ---------------------------------------------------------------------------------------

def test_random_is_uniform_per_layer_and_reproducible():
    model = build_model(ModelConfig(arch="resnet18", width=0.125), in_channels=1, num_classes=10, image_size=8)
    mask = SOURCES["random"].mask(request_for(model, 0.8, seed=3, scope="global"))
    assert {n: int(mask[n].sum()) for n in mask} == {n: round(mask[n].numel() * 0.2) for n in mask}
    assert SOURCES["random"].mask(request_for(model, 0.8, seed=3)) == mask
    assert SOURCES["random"].mask(request_for(model, 0.8, seed=4)) != mask


# --- SynFlow ------------------------------------------------------------------------------------

def test_synflow_scores_conserve_flow_through_every_neuron():
    """On a bias-free ReLU net every hidden neuron passes on the flow it receives, and each layer's
    scores add up to R = 1ᵀ|W3||W2||W1|1."""
    net = mlp(16, 12, 10, 5, bias=False, seed=4)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    scores = synflow_scores(linearized(net), Mask.ones_like(net, prune_linear=True), SMALL)
    w1, w2, w3 = (net[i].weight.detach().abs() for i in (1, 3, 5))
    s1, s2, s3 = scores["1.weight"], scores["3.weight"], scores["5.weight"]
    torch.testing.assert_close(s1.sum(1), s2.sum(0), rtol=1e-12, atol=0)  # into vs out of layer-1 neurons
    torch.testing.assert_close(s2.sum(1), s3.sum(0), rtol=1e-12, atol=0)
    r = (w3 @ w2 @ w1 @ torch.ones(16, dtype=torch.float64)).sum()
    for s in (s1, s2, s3):
        torch.testing.assert_close(s.sum(), r, rtol=1e-12, atol=0)
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())


def test_synflow_linearizes_batchnorm_statistics():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    net[1].running_mean.fill_(-0.5)
    net[1].weight.data.fill_(-2.0)
    lin = linearized(net)
    assert not lin.training and lin[1].running_mean.dtype == torch.float64
    assert (lin[1].running_mean == 0.5).all() and (lin[1].weight == 2.0).all()
    assert (net[1].running_mean == -0.5).all()


def test_synflow_reaches_the_target_on_an_mlp():
    net = mlp(16, 12, 10, 5, bias=False, seed=4)
    previous = Mask.ones_like(net, prune_linear=True)
    mask = SOURCES["synflow"].mask(request_for(net, 0.9, previous, input_shape=SMALL))
    assert mask.kept == round(previous.total * 0.1)
    assert all(mask[n].any() for n in mask)


def test_synflow_rescores_on_the_exponential_schedule(monkeypatch):
    """Round k scores the net pruned to density d^((k-1)/100), d = 1 - sparsity: 100 re-scorings,
    not one shot."""
    seen: list[int] = []

    def recording(net, mask, input_shape):
        seen.append(mask.kept)
        return synflow_scores(net, mask, input_shape)

    monkeypatch.setattr(synflow, "synflow_scores", recording)
    net = mlp(16, 12, 10, 5, bias=False, seed=4)
    previous = Mask.ones_like(net, prune_linear=True)
    SOURCES["synflow"].mask(request_for(net, 0.9, previous, input_shape=SMALL))
    assert seen == [round(previous.total * 0.1 ** (k / 100)) for k in range(100)]


# --- every source against the contract on real models -------------------------------------------

def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, model.training)


def _assert_untouched(model: nn.Module, snapshot) -> None:
    state, grads, training = snapshot
    assert model.training == training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "weights or buffers changed"
    now = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(now) == set(grads) and all(torch.equal(now[n], grads[n]) for n in grads), "gradients changed"


def _model_with_grads(arch: str) -> nn.Module:
    model = build_model(ModelConfig(arch=arch, width=0.125), in_channels=1, num_classes=10, image_size=8)
    x, y = next(fixed_batches(IMAGE, 10, seed=9)(1))
    F.cross_entropy(model(x), y).backward()  # so "gradients unchanged" has something to compare
    return model


def _expected_kept(source: str, previous: Mask, sparsity: float) -> tuple[int, int]:
    """(target kept count, allowed deviation): exact for global top-k, layer-wise rounding otherwise."""
    return round(previous.total * (1 - sparsity)), (len(previous) // 2 + 1 if source in ("random", "erk") else 0)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
@pytest.mark.parametrize("source", AT_INIT)
def test_source_on_a_real_model(source, sparsity, arch):
    model = _model_with_grads(arch)
    snapshot = _snapshot(model)
    request = request_for(model, sparsity)
    mask = SOURCES[source].mask(request)
    _assert_untouched(model, snapshot)
    assert list(mask) == request.names and all(mask[n].shape == request.previous[n].shape for n in mask)
    target, slack = _expected_kept(source, request.previous, sparsity)
    assert abs(mask.kept - target) <= slack
    assert all(mask[n].any() for n in mask), "a layer was emptied"


@pytest.mark.parametrize("source", AT_INIT)
def test_source_never_revives_what_previous_pruned(source):
    model = _model_with_grads("resnet18")
    g = torch.Generator().manual_seed(11)
    dense = Mask.ones_like(model)
    previous = Mask({n: torch.rand(dense[n].shape, generator=g) < 0.7 for n in dense})  # ~30% pruned
    snapshot = _snapshot(model)
    mask = SOURCES[source].mask(request_for(model, 0.8, previous))
    _assert_untouched(model, snapshot)
    assert all(not (mask[n] & ~previous[n]).any() for n in mask), "a pruned weight was revived"
    target, slack = _expected_kept(source, previous, 0.8)
    assert abs(mask.kept - target) <= slack
    assert all(mask[n].any() for n in mask)
