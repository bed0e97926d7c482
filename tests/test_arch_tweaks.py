"""Architecture tweaks: activation swapping and injected skips, on every family."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_core.config import ARCHS, ModelConfig
from lth_core.masks import Mask, prunable_names
from lth_core.models import ConvUnit, build_model, load_ticket_weights
from lth_core.tweaks.activations import PSwish, make_activation, swap_activations
from lth_core.tweaks.skips import IdentitySkip, inject_skips

INPUTS = [(1, 8, 10), (3, 32, 10), (3, 64, 200)]

REFERENCE = {
    "relu": F.relu,
    "swish": F.silu,
    "mish": F.mish,
    "gelu": F.gelu,
    "elu": F.elu,
    "softplus": F.softplus,
    "pswish": lambda x: x * torch.sigmoid(2 * x),
}


def small(arch: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch, 0.125), in_channels=in_channels, num_classes=num_classes,
                       image_size=image_size)


def trained_like(model: nn.Module) -> nn.Module:
    """Give BN non-trivial affine parameters and statistics, as a trained ticket would have."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


def random_mask(model: nn.Module, sparsity: float = 0.5) -> Mask:
    g = torch.Generator().manual_seed(2)
    params = dict(model.named_parameters())
    return Mask({n: torch.rand(params[n].shape, generator=g) >= sparsity for n in prunable_names(model)})


# --- activations -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_make_activation_computes_reference(name):
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(make_activation(name)(x), REFERENCE[name](x))


def test_activation_types():
    assert isinstance(make_activation("swish"), nn.SiLU)
    assert isinstance(make_activation("mish"), nn.Mish)
    assert isinstance(make_activation("pswish"), PSwish)
    with pytest.raises(ValueError, match="allowed"):
        make_activation("tanh")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["swish", "mish", "pswish"])
def test_swap_matches_torch_activation(arch, name):
    ticket = small(arch).eval()
    n_relu = sum(isinstance(m, nn.ReLU) for m in ticket.modules())
    swapped = swap_activations(copy.deepcopy(ticket), name)

    assert not any(isinstance(m, nn.ReLU) for m in swapped.modules())
    new = [m for m in swapped.modules() if type(m) is type(make_activation(name))]
    assert len(new) == n_relu and len({id(m) for m in new}) == n_relu

    # The ticket's state_dict loads unchanged.
    assert list(swapped.state_dict()) == list(ticket.state_dict())
    swapped.load_state_dict(ticket.state_dict(), strict=True)

    # Reference: the original model with each ReLU's output replaced by torch's own function.
    for m in ticket.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out: REFERENCE[name](inp[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), ticket(x))


def test_swap_returns_model_and_rejects_bad_name():
    model = small("resnet18")
    assert swap_activations(model, "gelu") is model
    with pytest.raises(ValueError, match="allowed"):
        swap_activations(small("resnet18"), "tanh")


# --- skips -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels,image_size,num_classes", INPUTS)
@pytest.mark.parametrize("variant", ["identity", "conv1x1"])
def test_skip_keeps_output_shape(arch, in_channels, image_size, num_classes, variant):
    model = inject_skips(small(arch, in_channels, image_size, num_classes), variant)
    x = torch.randn(2, in_channels, image_size, image_size)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.sum().backward()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["identity", "conv1x1"])
def test_skip_sets_every_injectable_unit_only(arch, variant):
    model = inject_skips(small(arch), variant)
    for unit in (m for m in model.modules() if isinstance(m, ConvUnit)):
        assert (unit.skip is not None) == unit.injectable
        if variant == "conv1x1" and unit.skip is not None:
            assert unit.skip[0].groups == unit.conv.groups and unit.skip[0].stride == unit.conv.stride


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["identity", "conv1x1"])
def test_skip_keeps_mask(arch, variant):
    model = small(arch)
    mask = random_mask(model)
    mask.apply_(model)
    inject_skips(model, variant)

    mask.check_fits(model)
    assert list(mask) == sorted(n for n in prunable_names(model) if ".skip." not in n)
    params = dict(model.named_parameters())
    for name in mask:
        assert not params[name][~mask[name]].any()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["identity", "conv1x1"])
def test_skip_loads_ticket_weights_unchanged(arch, variant):
    ticket = small(arch, seed=0)
    model = inject_skips(small(arch, seed=1), variant)
    load_ticket_weights(model, ticket.state_dict())
    if variant == "identity":
        model.load_state_dict(ticket.state_dict(), strict=True)
    state = model.state_dict()
    for name, value in ticket.state_dict().items():
        assert torch.equal(state[name], value)


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_adds_no_parameters(arch):
    ticket = small(arch)
    model = inject_skips(small(arch), "identity")
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in ticket.named_parameters()]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ticket.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_conv1x1_adds_parameters_only_under_skip(arch):
    ticket_names = {n for n, _ in small(arch).named_parameters()}
    model = inject_skips(small(arch), "conv1x1")
    new = {n for n, _ in model.named_parameters()} - ticket_names
    assert ticket_names <= {n for n, _ in model.named_parameters()}
    assert new and all(".skip." in n for n in new)
    n_units = sum(isinstance(m, ConvUnit) and m.injectable for m in model.modules())
    assert len(new) == 3 * n_units  # conv weight, BN weight and bias per unit


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["identity", "conv1x1"])
def test_skip_changes_the_function(arch, variant):
    ticket = trained_like(small(arch)).eval()
    model = inject_skips(copy.deepcopy(ticket), variant).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), ticket(x), atol=1e-4)


def test_identity_unit_computes_act_of_bn_of_conv_plus_shortcut():
    model = trained_like(inject_skips(small("resnet18"), "identity")).eval()
    x = torch.randn(2, 8, 16, 16)  # layer2.0 maps 8 -> 16 channels with stride 2
    with torch.no_grad():
        unit = model.layer2[0].unit1
        assert isinstance(unit.skip, IdentitySkip)
        shortcut = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 8, 8, 8)], dim=1)
        torch.testing.assert_close(unit(x), F.relu(unit.bn(unit.conv(x) + shortcut)))

        plain = model.layer2[0].unit2  # no activation: the block's own ReLU comes after the shortcut
        y = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(plain(y), plain.bn(plain.conv(y) + y))

        depthwise = inject_skips(small("mobilenet"), "identity").eval().blocks[1].depthwise
        torch.testing.assert_close(depthwise(x), F.relu(depthwise.bn(depthwise.conv(x) + x[:, :, ::2, ::2])))


def test_conv1x1_unit_adds_its_normalised_branch_after_bn():
    model = trained_like(inject_skips(small("resnet18"), "conv1x1")).eval()
    unit = model.layer1[0].unit1
    x = torch.randn(2, unit.conv.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), F.relu(unit.bn(unit.conv(x)) + unit.skip(x)))


def test_identity_skip_cuts_extra_channels():
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(IdentitySkip(4, 2, (2, 2))(x), x[:, :2, ::2, ::2])


def test_conv1x1_created_on_model_dtype_and_memory_format():
    model = small("resnet18").to(dtype=torch.float64, memory_format=torch.channels_last)
    inject_skips(model, "conv1x1")
    weight = model.layer2[0].unit1.skip[0].weight
    assert weight.dtype == torch.float64 and weight.is_contiguous(memory_format=torch.channels_last)
    assert model.layer2[0].unit1.skip[1].weight.dtype == torch.float64
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_conv1x1_created_on_model_device():
    model = inject_skips(small("mobilenet").cuda(), "conv1x1")
    assert all(p.is_cuda for p in model.parameters())
    assert model(torch.randn(2, 3, 32, 32, device="cuda")).shape == (2, 10)


def test_none_and_unknown_variant():
    model = small("vgg16")
    before = [n for n, _ in model.named_modules()]
    assert inject_skips(model, "none") is model
    assert [n for n, _ in model.named_modules()] == before
    with pytest.raises(ValueError, match="allowed"):
        inject_skips(model, "dense")


def test_load_ticket_weights_refuses_mismatches():
    model = inject_skips(small("resnet18"), "conv1x1")
    state = small("resnet18").state_dict()
    with pytest.raises(ValueError, match="unexpected keys \\['bogus'\\]"):
        load_ticket_weights(model, {**state, "bogus": torch.zeros(1)})
    del state["layer1.0.unit1.conv.weight"]
    with pytest.raises(ValueError, match="layer1.0.unit1.conv.weight"):
        load_ticket_weights(model, state)


def test_tweaks_compose():
    ticket = small("mobilenet")
    model = swap_activations(inject_skips(small("mobilenet", seed=1), "conv1x1"), "mish")
    load_ticket_weights(model, ticket.state_dict())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
