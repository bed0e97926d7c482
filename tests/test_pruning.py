"""Masks and magnitude pruning: exact schedules, explicit masks, no empty layers."""

import pytest
import torch
from torch import nn

from lth_core.config import PruneConfig
from lth_core.masks import Mask, prunable_names
from lth_core.pruning import EmptyLayerError, prune_to_sparsity


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3),
                         nn.BatchNorm2d(32), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def weights(net):
    return {n: p.detach() for n, p in net.named_parameters()}


def test_prunable_names_are_conv_weights_only_by_default():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert prunable_names(net) == ["0.weight"]
    assert prunable_names(net, prune_linear=True) == ["0.weight", "3.weight"]


def test_mask_round_trip_and_sparsity(tmp_path):
    net = small_net()
    mask = Mask.ones_like(net)
    assert mask.sparsity == 0.0 and set(mask) == {"0.weight", "3.weight"}
    pruned = prune_to_sparsity(weights(net), mask, 0.5)
    pruned.save(tmp_path / "m.safetensors")
    back = Mask.load(tmp_path / "m.safetensors")
    assert back == pruned and back.kept == pruned.kept
    with pytest.raises(TypeError):
        Mask({"w": torch.ones(3)})


def test_mask_is_explicit_not_inferred_from_zeros():
    net = small_net()
    with torch.no_grad():
        net[0].weight.zero_()  # zero weights do not make a mask
    mask = Mask.ones_like(net)
    assert mask.sparsity == 0.0


def test_imp_schedule_is_exact_to_one_weight():
    net = small_net()
    w = weights(net)
    mask = Mask.ones_like(net)
    total = mask.total
    for k, s in enumerate(PruneConfig(levels=8).level_sparsities(), start=1):
        new = prune_to_sparsity(w, mask, s)
        assert new.kept == round(total * 0.8 ** k)
        # nested: IMP never revives a weight
        for n in new:
            assert not (new[n] & ~mask[n]).any()
        mask = new


def test_global_pruning_removes_smallest_magnitudes():
    w = {"a": torch.tensor([[0.1, -5.0], [0.3, 2.0]]), "b": torch.tensor([[-0.2, 4.0]])}
    mask = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    new = prune_to_sparsity(w, mask, 0.5)
    assert new["a"].tolist() == [[False, True], [False, True]]
    assert new["b"].tolist() == [[False, True]]


def test_pruned_weights_never_come_back_even_if_large():
    w = {"a": torch.tensor([10.0, 1.0, 2.0, 3.0])}
    mask = Mask({"a": torch.tensor([False, True, True, True])})
    new = prune_to_sparsity(w, mask, 0.5)
    assert new["a"].tolist() == [False, False, True, True]


def test_layerwise_prunes_every_layer_equally():
    net = small_net()
    new = prune_to_sparsity(weights(net), Mask.ones_like(net), 0.6, scope="layerwise")
    for n, s in new.layer_sparsity().items():
        assert s == pytest.approx(0.6, abs=1.0 / new[n].numel())


def test_omp_hits_any_target_from_dense():
    net = small_net()
    for s in (0.1, 0.5, 0.8, 0.9):
        new = prune_to_sparsity(weights(net), Mask.ones_like(net), s)
        assert new.kept == round(new.total * (1 - s))


def test_emptying_a_layer_is_refused_unless_allowed():
    w = {"big": torch.full((100,), 5.0), "small": torch.full((4,), 0.01)}
    mask = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    with pytest.raises(EmptyLayerError, match="small"):
        prune_to_sparsity(w, mask, 0.05)
    allowed = prune_to_sparsity(w, mask, 0.05, allow_empty_layers=True)
    assert not allowed["small"].any()


def test_apply_zeroes_exactly_the_pruned_weights():
    net = small_net()
    mask = prune_to_sparsity(weights(net), Mask.ones_like(net), 0.7)
    mask.apply_(net)
    for n, p in net.named_parameters():
        if n in mask:
            assert (p[~mask[n]] == 0).all() and (p[mask[n]] != 0).all()


def test_mask_must_fit_the_model():
    net = small_net()
    with pytest.raises(KeyError, match="does not have"):
        Mask({"nope.weight": torch.ones(2, dtype=torch.bool)}).apply_(net)
    with pytest.raises(ValueError, match="shape"):
        Mask({"0.weight": torch.ones(2, dtype=torch.bool)}).apply_(net)
