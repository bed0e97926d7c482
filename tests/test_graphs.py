"""`recipe.graphs`: the training and evaluation steps on static tensors, captured as CUDA graphs
on a GPU (`lth_core.steps`). On the CPU the same state machine runs without capture, so every
tweak is checked under it here: equal to eager, its replays counted, the mask held after every
step. The CUDA test is skipped without a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import revived_layers
from lth_core import steps
from lth_core.config import RecipeConfig, SpendConfig, TweakConfig
from lth_core.hooks import Loop, Observer
from lth_core.lottery import prepare_spend, train_spend
from lth_core.training import Runtime
from lth_core.tweaks import REGISTRY, from_flat
from lth_core.tweaks.distillation import KDConfig
from lth_core.tweaks.rescale_init import RescaleInitConfig
from lth_core.tweaks.swa import SWAConfig

ALL_TOGETHER = TweakConfig(activation="swish", skip="conv1x1", label_smoothing=0.1, kd=KDConfig(),
                           rescale_init=RescaleInitConfig(iterations=2, batch_size=32), rewind_epoch=1,
                           swa=SWAConfig(start=0.5))
SETTINGS = {t.name: from_flat({t.name: t.example}) for t in REGISTRY} | {"all": ALL_TOGETHER}


class MaskWatch(Observer):
    """Counts the optimizer steps after which a pruned weight was not exactly zero. With
    `drop_grads` it then sets every `.grad` to None, as a hook calling `zero_grad()` would: under
    CUDA graphs the step must give the graph's gradient tensors back before the optimizer reads."""

    name = "mask_watch"

    def __init__(self, drop_grads: bool = False) -> None:
        self.drop_grads = drop_grads
        self.steps = 0
        self.revived: list[str] = []

    def on_step_end(self, loop: Loop) -> None:
        self.steps += 1
        self.revived += revived_layers(dict(loop.model.named_parameters()), loop.mask)
        if self.drop_grads:
            loop.model.zero_grad(set_to_none=True)


@pytest.fixture
def replays(monkeypatch) -> list[int]:
    """Sizes of the batches replayed from static tensors, by every step object."""
    seen: list[int] = []
    replay = steps.Replayable.replay

    def counted(self, images, labels):
        seen.append(len(labels))
        replay(self, images, labels)

    monkeypatch.setattr(steps.Replayable, "replay", counted)
    return seen


def _spend(drawn, tweaks: TweakConfig, graphs: str, device: str = "cpu", drop_grads: bool = False):
    store, ticket, _ = drawn
    recipe = dataclasses.replace(ticket.recipe, epochs=1, device=device, graphs=graphs)
    run = prepare_spend(SpendConfig(ticket=ticket, level=2, tweaks=tweaks, recipe=recipe), store)
    watch = MaskWatch(drop_grads)
    result = train_spend(run, persist_checkpoints=False, observers=[watch])
    full_batches = len(run.dataset.train_y) // recipe.batch_size
    return [dataclasses.replace(r, seconds=0.0) for r in result.history], watch, full_batches


@pytest.mark.parametrize("name", SETTINGS)
def test_graph_path_equals_eager_for_every_tweak_and_holds_the_mask_after_every_step(drawn, replays, name):
    eager, eager_watch, _ = _spend(drawn, SETTINGS[name], "off")
    assert replays == []
    graphed, watch, full_batches = _spend(drawn, SETTINGS[name], "on")
    assert graphed == eager
    assert replays == [drawn[1].recipe.batch_size] * (full_batches - steps.WARMUP)  # one epoch's full batches
    assert watch.steps == eager_watch.steps > full_batches and watch.revived == []


def test_graphs_switch_resolves_per_device():
    assert not Runtime.resolve(RecipeConfig(device="cpu")).graphs  # auto: never on the CPU
    assert not Runtime.resolve(RecipeConfig(device="cpu", graphs="off")).graphs
    on = Runtime.resolve(RecipeConfig(device="cpu", graphs="on"))
    assert on.graphs and not on.capture  # the graph code path, nothing captured


def test_graphs_do_not_change_content_keys(drawn):
    _, ticket, _ = drawn
    keys = {SpendConfig(ticket=ticket, recipe=dataclasses.replace(ticket.recipe, graphs=g)).key
            for g in ("auto", "on", "off")}
    assert len(keys) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_capture_hold_the_mask_after_every_step_and_match_eager(drawn, replays):
    tweaks = SETTINGS["all"]
    eager, _, _ = _spend(drawn, tweaks, "off", device="cuda", drop_grads=True)
    graphed, watch, full_batches = _spend(drawn, tweaks, "on", device="cuda", drop_grads=True)
    assert watch.steps > full_batches and watch.revived == []
    assert [n for n in replays if n == drawn[1].recipe.batch_size] == [drawn[1].recipe.batch_size] * (
        full_batches - steps.WARMUP)
    for e, g in zip(eager, graphed, strict=True):  # equal on the H200 (docs/benchmarks.md); room for other GPUs
        assert abs(e.train_loss - g.train_loss) < 0.05 and abs(e.val_acc - g.val_acc) < 0.02
