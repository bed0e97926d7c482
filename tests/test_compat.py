"""Content keys and stored artifacts outlive refactors: the keys of representative configs are
pinned, and a store written by an earlier version of the code is read back with nothing retrained.

Never update a pinned key to make this test pass: a changed key silently orphans every artifact
that users have already computed under the old one."""

import shutil
from pathlib import Path

import pytest
import torch

from lth_core.config import SpendConfig, TicketConfig, from_dict

SMOKE = {"model": {"arch": "resnet18", "width": 0.25}, "recipe": {"epochs": 6, "batch_size": 64, "device": "cpu"},
         "pruning": {"levels": 5}, "keep_epochs": [1]}
PAPER = {"data": {"name": "cifar100", "root": "/data"}, "model": {"arch": "resnet18", "width": 1.0},
         "recipe": {"epochs": 180, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
         "pruning": {"method": "imp", "rate": 0.2, "levels": 16}, "keep_epochs": [33]}
TINY = {"model": {"width": 0.125}, "recipe": {"epochs": 2, "batch_size": 128, "device": "cpu"},
        "pruning": {"levels": 2}, "keep_epochs": [1]}

TICKET_KEYS = [
    ({}, "6b0db61d7d6f43b13ec0"),
    (SMOKE, "006e913ad59c461dae97"),
    (PAPER, "8797685843f800b5ac85"),
    ({"model": {"arch": "vgg16", "width": 0.5}, "pruning": {"method": "omp", "sparsities": [0.5, 0.9]}, "seed": 3},
     "d7d35e27a3895ef01d1b"),
    (TINY, "075e0ac778cfb20eda80"),
]

SPEND_KEYS = [
    ({"ticket": SMOKE, "level": 2}, "fe2acc6eaa04b69a52a8"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"activation": "swish"}}, "d1f9395e97f4881f965d"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"skip": "identity"}}, "23280526b386ba58873b"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"skip": "conv1x1"}}, "873a04570cc8947085e0"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"label_smoothing": 0.1}}, "20920dad1cfe2c0b1ede"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"kd": {}}}, "d144f61c4f45c30684be"),
    ({"ticket": SMOKE, "level": 2, "tweaks": {"kd": {"alpha": 0.5, "temperature": 4}}}, "961df5cb09c5c510da2f"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"rescale_init": {"iterations": 20, "batch_size": 64}}},
     "5b5a3a03580628e010d6"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"rewind_epoch": 1}, "seed": 1}, "f924203f63e67a9b8ccf"),
    ({"ticket": SMOKE, "level": 5, "tweaks": {"activation": "swish", "skip": "identity", "label_smoothing": 0.1,
                                              "rewind_epoch": 1}}, "3940df1f5a88cbc63d3f"),
    ({"ticket": PAPER, "level": 16, "recipe": {"epochs": 30}, "seed": 2,
      "tweaks": {"activation": "mish", "skip": "conv1x1", "label_smoothing": 0.1,
                 "kd": {"alpha": 0.9, "temperature": 5.0}, "rescale_init": {"iterations": 390}, "rewind_epoch": 33}},
     "f062519cd18cd60e2bbf"),
    ({"ticket": TINY, "level": 0, "tweaks": {"activation": "pswish"}}, "dbdcec3e44f7cd174a54"),
]


@pytest.mark.parametrize("fields,key", TICKET_KEYS)
def test_ticket_keys_are_pinned(fields, key):
    assert from_dict(TicketConfig, fields).key == key


@pytest.mark.parametrize("fields,key", SPEND_KEYS)
def test_spend_keys_are_pinned(fields, key):
    assert from_dict(SpendConfig, fields).key == key


# Written by the code of commit 03511e5 (before the tweak registry): one draw and four spends.
STORED_TICKET = {"model": {"width": 0.0625}, "recipe": {"epochs": 2, "batch_size": 128, "device": "cpu"},
                 "pruning": {"levels": 2}, "keep_epochs": [1]}
STORED_SPENDS = [
    ({}, 2, "824975346b933e579f08", "vanilla"),
    ({"activation": "swish", "skip": "conv1x1"}, 2, "9754737b9e1c252648e1", "swish+skip-conv1x1"),
    ({"label_smoothing": 0.1, "kd": {}}, 1, "2e8bc221478c9cb538e4", "ls0.1+kd0.9,5"),
    ({"rescale_init": {"iterations": 2, "batch_size": 32}, "rewind_epoch": 1}, 2, "cf4b79a00f34aca0b4eb",
     "gradinit+rewind1"),
]


@pytest.fixture
def old_store(tmp_path, monkeypatch):
    """A copy of the stored store, in which building any optimizer (any training) fails."""
    from lth_core.store import ArtifactStore

    shutil.copytree(Path(__file__).parent / "data" / "store_v1", tmp_path / "store")

    def no_training(*args, **kwargs):
        raise AssertionError("something was retrained from a store that holds every result")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_training)
    return ArtifactStore(str(tmp_path / "store"))


def test_a_store_written_before_the_refactor_is_read_back_without_training(old_store):
    from lth_core.lottery import draw, spend

    ticket = from_dict(TicketConfig, STORED_TICKET)
    assert ticket.key == "1715c9c9ca1fffc59250"
    summary = draw(ticket, old_store)
    assert [lv["level"] for lv in summary["levels"]] == [1, 2]
    for tweaks, level, key, label in STORED_SPENDS:
        config = from_dict(SpendConfig, {"ticket": STORED_TICKET, "level": level, "tweaks": tweaks,
                                         "recipe": {"epochs": 1}})
        assert config.key == key
        result = spend(config, old_store)
        assert result["spend_key"] == key and result["tweak"] == label
