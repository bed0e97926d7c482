"""Live weights (`lth_core.live`): checked against hand computation on small conv nets and on
ResNet-18's geometry, stored with the ticket, and reported beside the nominal sparsity."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_ticket
from torch import nn

from lth_core import paths
from lth_core.config import ModelConfig, PruneConfig
from lth_core.live import live_sparsity, live_weights
from lth_core.masks import Mask
from lth_core.models import build_model
from lth_core.store import ArtifactStore

CENTRE = torch.zeros(3, 3, dtype=torch.bool)
CENTRE[1, 1] = True
ALL = torch.ones(3, 3, dtype=torch.bool)


def conv(c_in: int = 2, c_out: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


def taps(live: Mask, name: str) -> torch.Tensor:
    """The live taps of a conv, checked to be the same for every (output, input) channel pair."""
    t = live[name]
    assert torch.equal(t, t[:1, :1].expand_as(t)), name
    return t[0, 0]


@pytest.mark.parametrize("size, expected", [(1, CENTRE), (2, ALL), (5, ALL)], ids=["1x1", "2x2", "5x5"])
def test_one_conv_on_small_maps(size, expected):
    """A padded 3x3 conv on a 1x1 map reads its input through the centre tap only (the other eight
    multiply padding); on a 2x2 map each tap reads a real pixel for some output position."""
    net = nn.Sequential(conv())
    assert torch.equal(taps(live_weights(net, (2, size, size)), "0.weight"), expected)


def test_a_pool_to_1x1_leaves_the_next_conv_its_centre_tap():
    net = nn.Sequential(conv(), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), conv(3, 4), nn.BatchNorm2d(4))
    live = live_weights(net, (2, 2, 2))
    assert torch.equal(taps(live, "0.weight"), ALL)
    assert torch.equal(taps(live, "4.weight"), CENTRE)
    assert (live.total, live.kept) == (2 * 3 * 9 + 3 * 4 * 9, 2 * 3 * 9 + 3 * 4)


def test_a_strided_conv_on_a_2x2_map_sees_through_its_lower_right_taps():
    """Stride 2 on 2x2: one output, centred on input pixel (0, 0); rows and columns -1 are padding."""
    live = live_weights(nn.Sequential(conv(stride=2)), (2, 2, 2))
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[1:, 1:] = True
    assert torch.equal(taps(live, "0.weight"), expected)


def test_a_linear_layer_is_live_when_pruned():
    net = nn.Sequential(conv(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    live = live_weights(net, (2, 1, 1), prune_linear=True)
    assert set(live) == {"0.weight", "3.weight"} and bool(live["3.weight"].all())
    assert set(live_weights(net, (2, 1, 1))) == {"0.weight"}


def test_resnet18_on_8x8_loses_exactly_its_last_stage_taps():
    """8x8 digits reach layer4 as a 2x2 map: its strided first conv keeps 4 of 9 taps, the three
    3x3 convs on 1x1 maps their centre tap; every earlier weight, and the 1x1 shortcuts, are live.
    At 28x28 (layer4 on 4x4 maps) every weight is live."""
    model = build_model(ModelConfig("resnet18", 0.25), in_channels=1, num_classes=10, image_size=8)
    live = live_weights(model, (1, 8, 8))
    c3, c4 = 64, 128
    dead = c4 * c3 * 5 + 3 * c4 * c4 * 8
    assert live.total - live.kept == dead == 434176
    for name in live:
        if not name.startswith("layer4") or "downsample" in name:
            assert bool(live[name].all()), name
    assert torch.equal(taps(live, "layer4.1.unit2.conv.weight"), CENTRE)
    wide = live_weights(build_model(ModelConfig("resnet18", 0.25), in_channels=1, num_classes=10, image_size=28),
                        (1, 28, 28))
    assert wide.kept == wide.total == live.total


def test_the_probe_leaves_the_model_alone():
    model = build_model(ModelConfig("resnet18", 0.125), in_channels=1, num_classes=10, image_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    live_weights(model.train(), (1, 8, 8))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_live_sparsity_counts_only_live_weights():
    live = Mask({"w": torch.tensor([True, True, True, True, False, False])})
    assert live_sparsity(None, live) == 0.0
    assert live_sparsity(Mask({"w": torch.tensor([True, True, True, True, False, False])}), live) == 0.0
    assert live_sparsity(Mask({"w": torch.tensor([False, True, True, True, True, True])}), live) == 0.25
    assert Mask({"w": torch.tensor([False, True, True, True, True, True])}).sparsity == pytest.approx(1 / 6)


# ---------------------------------------------------------------- stored with the ticket, reported


@pytest.mark.parametrize("method", ["imp", "random"])
def test_a_draw_stores_its_live_set_and_reports_both_sparsities(tmp_path, method):
    from lth_core.lottery import draw, load_level, live_set
    from lth_core.data import load_dataset
    from lth_core.tables import format_levels

    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(method=method, levels=2))
    summary = draw(ticket, store)
    live = Mask.from_bytes(store.read_bytes(paths.live_weights(ticket.key)))
    assert live == live_set(ticket, load_dataset(ticket.data))
    assert summary["weights"] == {"prunable": live.total, "live": live.kept} and live.kept < live.total  # 8x8
    for lv in summary["levels"]:
        assert lv["live_sparsity"] == live_sparsity(load_level(ticket, lv["level"], store), live)
    table = format_levels(summary)
    assert f"{live.kept:,} live" in table and f"{summary['levels'][1]['live_sparsity']:.2%}" in table


def test_a_draw_stored_before_live_sets_gets_one_without_training(tmp_path):
    """An older store: the live set and the summary's counts are added when the draw is read
    back (`draw` checks its files); nothing is trained again. `show` names the missing file."""
    from lth_core.lottery import draw, read_draw
    from lth_core.tables import format_levels

    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(levels=1))
    summary = draw(ticket, store)
    old = {k: v for k, v in summary.items() if k != "weights"}
    old["levels"] = [{k: v for k, v in lv.items() if k != "live_sparsity"} for lv in summary["levels"]]
    store.write_json(paths.ticket_summary(ticket.key), old)
    store.delete(paths.live_weights(ticket.key))
    assert "-" in format_levels(old).splitlines()[-1].split()  # shown, without live numbers
    assert read_draw(ticket.key, store)[1] == [paths.live_weights(ticket.key)]
    trained = []
    assert draw(ticket, store, lambda stage, record: trained.append(stage)) == summary
    assert trained == [] and read_draw(ticket.key, store)[1] == []


def test_a_spend_records_the_live_sparsity_of_the_mask_it_trained(tmp_path):
    """A shuffled mask keeps each layer's count (nominal sparsity) but not which taps it keeps."""
    from lth_core.config import RecipeConfig, SpendConfig, TweakConfig
    from lth_core.lottery import draw, spend

    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(levels=2))
    level = draw(ticket, store)["levels"][1]
    recipe = RecipeConfig(epochs=1, batch_size=128, device="cpu")
    vanilla = spend(SpendConfig(ticket=ticket, level=2, recipe=recipe), store)
    shuffled = spend(SpendConfig(ticket=ticket, level=2, recipe=recipe, tweaks=TweakConfig(init="shuffle")), store)
    assert vanilla["live_sparsity"] == level["live_sparsity"]
    assert shuffled["sparsity"] == pytest.approx(vanilla["sparsity"])
    assert shuffled["live_sparsity"] != vanilla["live_sparsity"]
    dense = spend(SpendConfig(ticket=ticket, level=0, recipe=recipe), store)
    assert dense["live_sparsity"] == 0.0


def test_the_draw_plan_counts_live_weights_and_warns_when_many_are_dead(tmp_path, tiny_idx):
    from conftest import write_idx_set
    from lth_core.cli import draw_plan
    from lth_core.config import DataConfig

    store = ArtifactStore(str(tmp_path / "store"))
    digits = draw_plan(tiny_ticket(), store).splitlines()
    assert any(line.strip().startswith("weights: 174,408 prunable weights, 65,864 live (37.8%)") for line in digits)
    assert sum(line.strip().startswith("warning: 62.2% of the prunable weights") for line in digits) == 1
    write_idx_set(tmp_path / "mnist")
    mnist = draw_plan(tiny_ticket(data=DataConfig(name="mnist", root=str(tmp_path / "mnist"))), store)
    assert "174,408 live (100.0%)" in mnist and "warning" not in mnist
