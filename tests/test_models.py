"""Model families: shapes on every input size, ReLU modules, parameter counts and names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_core.config import ARCHS, ModelConfig
from lth_core.masks import prunable_names
from lth_core.models import ConvUnit, build_model

# (in_channels, image_size, num_classes): digits, MNIST and Fashion-MNIST, CIFAR, Tiny-ImageNet.
INPUTS = [(1, 8, 10), (1, 28, 10), (3, 32, 10), (3, 64, 200)]


def small(arch: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
          width: float = 0.125) -> nn.Module:
    return build_model(ModelConfig(arch, width), in_channels=in_channels, num_classes=num_classes,
                       image_size=image_size)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels,image_size,num_classes", INPUTS)
def test_forward_backward_every_input_size(arch, in_channels, image_size, num_classes):
    torch.manual_seed(0)
    model = small(arch, in_channels, image_size, num_classes)
    x = torch.randn(2, in_channels, image_size, image_size)
    out = model(x)
    assert out.shape == (2, num_classes)
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_width_keeps_one_channel(arch):
    model = small(arch, width=0.001)
    assert min(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) == 1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# nn.ReLU modules per family: ResNet: stem + (unit1 + block relu) per block; VGG: 13 convs;
# MobileNet: stem + 2 per block.
RELU_COUNT = {"resnet18": 1 + 2 * 8, "resnet34": 1 + 2 * 16, "vgg16": 13, "mobilenet": 1 + 2 * 13}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_activation_is_its_own_relu_module(arch):
    # image_size=1 makes VGG skip every max-pool, so with its ReLUs gone each model is affine.
    model = small(arch, image_size=1).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == RELU_COUNT[arch]
    assert len({id(m) for m in relus}) == len(relus)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())

    # No functional relu hides anywhere: with every ReLU module made the identity, the model is affine.
    for m in relus:
        m.register_forward_hook(lambda mod, inp, out: inp[0])
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        zero = model(torch.zeros_like(x))
        torch.testing.assert_close(model(x + y) + zero, model(x) + model(y), rtol=1e-4, atol=1e-4)


def test_resnet18_parameter_count():
    model = small("resnet18", width=1.0)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 11.17e6) <= 0.01 * 11.17e6


def test_init():
    model = small("resnet18", width=1.0)
    w = model.layer4[1].unit2.conv.weight
    assert w.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.05)
    bn = model.layer4[1].unit2.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_resnet_structure():
    model = small("resnet18")
    names = {n for n, _ in model.named_parameters()}
    assert {"stem.conv.weight", "layer1.0.unit1.conv.weight", "layer1.0.unit2.bn.weight",
            "layer2.0.downsample.conv.weight", "layer4.1.unit2.conv.weight", "fc.weight", "fc.bias"} <= names
    assert not any(n.startswith(("layer1.0.downsample", "layer2.1.downsample")) for n in names)
    assert isinstance(model.layer1[0].unit1.act, nn.ReLU) and isinstance(model.layer1[0].unit2.act, nn.Identity)
    assert isinstance(model.layer1[0].relu, nn.ReLU)
    assert model.layer2[0].downsample.conv.kernel_size == (1, 1)
    assert model.layer2[0].downsample.conv.stride == (2, 2)
    injectable = {n for n, m in model.named_modules() if isinstance(m, ConvUnit) and m.injectable}
    not_injectable = {n for n, m in model.named_modules() if isinstance(m, ConvUnit) and not m.injectable}
    assert not_injectable == {"stem", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"}
    assert all(model.get_submodule(n).conv.kernel_size == (3, 3) for n in injectable)
    assert len(injectable) == 16


def test_resnet34_blocks():
    model = small("resnet34")
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_vgg_and_mobilenet_every_unit_injectable():
    for arch, count in (("vgg16", 13), ("mobilenet", 1 + 2 * 13)):
        units = [m for m in small(arch).modules() if isinstance(m, ConvUnit)]
        assert len(units) == count and all(u.injectable for u in units)


def test_mobilenet_depthwise_and_strides():
    model = small("mobilenet", image_size=8)
    block = model.blocks[1]
    assert block.depthwise.conv.groups == block.depthwise.conv.in_channels == block.depthwise.conv.out_channels
    assert block.pointwise.conv.kernel_size == (1, 1)
    strides = [b.depthwise.conv.stride[0] for b in model.blocks]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1]  # 8 -> 4 -> 2 -> 1, then no more halving
    strides32 = [b.depthwise.conv.stride[0] for b in small("mobilenet", image_size=32).blocks]
    assert strides32 == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    strides28 = [b.depthwise.conv.stride[0] for b in small("mobilenet", in_channels=1, image_size=28).blocks]
    assert strides28 == strides32  # 28 -> 14 -> 7 -> 4 -> 2


def test_vgg_skips_pools_only_for_small_inputs():
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.features)  # noqa: E731
    assert pools(small("vgg16", image_size=32)) == 5
    assert pools(small("vgg16", in_channels=1, image_size=8)) == 3
    assert pools(small("vgg16", in_channels=1, image_size=28)) == 4  # 28 -> 14 -> 7 -> 3 -> 1


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_names_stable(arch):
    """Masks are keyed by parameter names: they must not depend on the seed or the input size."""
    def shapes(in_channels, image_size, seed):
        torch.manual_seed(seed)
        model = small(arch, in_channels=in_channels, image_size=image_size)
        return [(n, tuple(p.shape)) for n, p in model.named_parameters()]

    cifar = shapes(3, 32, 0)
    assert cifar == shapes(3, 32, 1) == shapes(3, 64, 0)
    assert [n for n, _ in shapes(1, 8, 0)] == [n for n, _ in cifar]


@pytest.mark.parametrize("arch", ARCHS)
def test_prunable_names_are_every_conv_weight(arch):
    model = small(arch)
    params = dict(model.named_parameters())
    names = prunable_names(model)
    assert set(names) == {n for n, p in params.items() if p.dim() == 4}
    assert all(n.endswith(".conv.weight") for n in names)
    assert "fc.weight" not in names and "fc.weight" in prunable_names(model, prune_linear=True)


def test_unknown_arch_rejected_by_config():
    with pytest.raises(ValueError, match="model.arch"):
        ModelConfig("alexnet")


# ------------------------------------------------------------------ 28x28x1 (MNIST, Fashion-MNIST)

FAMILIES = ["resnet18", "vgg16", "mobilenet"]


def tweak_examples() -> dict[str, dict]:
    """Every registered tweak switched on (its declared example; both skips), sized for 36 images."""
    from lth_core.tweaks import REGISTRY

    examples = {t.name: {t.name: t.example} for t in REGISTRY}
    examples["rescale_init"] = {"rescale_init": {"iterations": 2, "batch_size": 8}}
    examples["skip-conv1x1"] = {"skip": "conv1x1"}
    examples["shuffle"] = {"init": "shuffle"}
    return examples


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_and_tweak_spends_at_28x28x1(tmp_path, tiny_idx, arch):
    """A tiny MNIST-shaped draw per family, then one epoch of every tweak on its level-1 mask."""
    from conftest import write_idx_set
    from lth_core import tweaks
    from lth_core.config import DataConfig, PruneConfig, RecipeConfig, SpendConfig, TicketConfig
    from lth_core.lottery import spend
    from lth_core.store import ArtifactStore

    write_idx_set(tmp_path / "mnist")
    ticket = TicketConfig(data=DataConfig(name="mnist", root=str(tmp_path / "mnist")),
                          model=ModelConfig(arch, 0.0625), recipe=RecipeConfig(epochs=2, batch_size=16, device="cpu"),
                          pruning=PruneConfig(levels=1), keep_epochs=(1,))
    store = ArtifactStore(str(tmp_path / "store"))
    for name, flat in tweak_examples().items():
        config = SpendConfig(ticket=ticket, level=1, recipe=RecipeConfig(epochs=1, batch_size=16, device="cpu"),
                             tweaks=tweaks.from_flat(flat))
        result = spend(config, store)
        assert result["sparsity"] == pytest.approx(0.2, abs=0.01), name
        assert 0 <= result["test_acc"] <= 1, name
