"""The GPU's code paths on the CPU: bf16 autocast and the channels_last memory format, with every
tweak of the registry, and the Hessian and the loss landscape under bf16.

Each spend trains one epoch of the shared tiny ticket (level 2) and is compared with the same spend
in fp32 and the contiguous format: finite losses, pruned weights exactly zero, and the first
epoch's mean training loss within 10% of fp32 (measured deviations are below 5%; later epochs are
not compared, since SGD at lr 0.1 turns rounding differences into different trajectories). The CUDA
default is bf16 together with channels_last, so that is the bf16 mode here; bf16 in the contiguous
format (a slow reference convolution on most CPUs) runs in the analyses.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lth_core import tweaks
from lth_core.analysis.hessian import HessianObserver, top_hessian_eigenvalues
from lth_core.analysis.landscape import loss_along, random_direction
from conftest import revived_layers, tiny_ticket
from lth_core.config import ConfigError, SpendConfig, replace
from lth_core.data import iterate_batches
from lth_core.lottery import prepare_spend, train_spend
from lth_core.training import Runtime
from lth_core.tweaks.distillation import clear_teachers

FAST = {"rescale_init": {"iterations": 2, "batch_size": 32}, "swa": {"start": 0.0}}
"""Settings that keep a tweak quick in a one-epoch spend (others use their declared example)."""

MODES = {"fp32": {"precision": "fp32"},
         "channels_last": {"precision": "fp32", "channels_last_cpu": True},
         "bf16": {"precision": "bf16", "channels_last_cpu": True}}


def _values(tweak: tweaks.Tweak) -> list[object]:
    """Every non-vanilla choice of a tweak with choices, else its example (quickened by FAST)."""
    choices = getattr(tweak, "choices", ())
    return [c for c in choices if c != tweak.default] if choices else [FAST.get(tweak.name, tweak.example)]


def _cases() -> dict[str, dict[str, object]]:
    """Vanilla, each value of `_values` alone (every activation, both skips, ...), and all tweaks
    at once: each at its example, or at the first other value that the tweaks already chosen
    accept (chosen last to first, so a newer tweak gives way to the older ones)."""
    cases: dict[str, dict[str, object]] = {"vanilla": {}}
    for tweak in tweaks.REGISTRY:
        for value in _values(tweak):
            cases[f"{tweak.name}={value}" if getattr(tweak, "choices", ()) else tweak.name] = {tweak.name: value}
    together: dict[str, object] = {}
    for tweak in reversed(tweaks.REGISTRY):
        for value in sorted(_values(tweak), key=lambda v: v != tweak.example):
            try:
                SpendConfig(ticket=tiny_ticket(), level=2, tweaks=tweaks.from_flat({**together, tweak.name: value}))
            except ConfigError:
                continue
            together[tweak.name] = value
            break
    cases["all"] = together
    return cases


CASES = _cases()


class Forward:
    """The dtypes and memory formats the first convolution saw in train mode (a forward hook): the
    training steps, and SWA's recomputation of BN statistics, which runs outside autocast."""

    def __init__(self, model: nn.Module):
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        self.seen: set[tuple[torch.dtype, bool]] = set()
        conv.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training:
            self.seen.add((output.dtype, module.weight.is_contiguous(memory_format=torch.channels_last)))


def run_spend(store, ticket, case: str, mode: str) -> dict[str, object]:
    config = SpendConfig(ticket=ticket, level=2, recipe=replace(ticket.recipe, epochs=1, **MODES[mode]),
                         tweaks=tweaks.from_flat(CASES[case]))
    clear_teachers()  # the teacher cache is keyed by device only: build it in this mode's format
    run = prepare_spend(config, store)
    forward = Forward(run.model)
    observer = HessianObserver(every=1, batches=1) if case == "vanilla" else None
    result = train_spend(run, persist_checkpoints=False, observers=[observer] if observer else [])
    revived = revived_layers(dict(run.model.named_parameters()), run.mask)
    return {"runtime": run.runtime, "history": result.history, "revived": revived,
            "forward": forward.seen, "hessian": observer.history if observer else None, "model": run.model}


@pytest.fixture(scope="module")
def spends(drawn):
    """Spends by (case, mode), each trained once on the shared draw and kept for every test."""
    store, ticket, _ = drawn
    cache: dict[tuple[str, str], dict[str, object]] = {}

    def get(case: str, mode: str) -> dict[str, object]:
        if (case, mode) not in cache:
            cache[case, mode] = run_spend(store, ticket, case, mode)
        return cache[case, mode]

    return get


FORMAT_CASES = ("vanilla", "skip=conv1x1", "all")
"""fp32 in channels_last alone, for the cases that add layers of their own (the RepVGG branch):
every other case already runs in channels_last under bf16."""


@pytest.mark.parametrize("case, mode", [(case, "bf16") for case in CASES]
                         + [(case, "channels_last") for case in FORMAT_CASES])
def test_a_spend_in_bf16_and_channels_last_matches_fp32(spends, case, mode):
    out, reference = spends(case, mode), spends(case, "fp32")
    runtime: Runtime = out["runtime"]
    assert runtime.channels_last and runtime.bf16 == (mode == "bf16")
    dtypes, formats = zip(*out["forward"])
    assert (torch.bfloat16 in dtypes) == (mode == "bf16") and all(formats), out["forward"]
    record = out["history"][-1]
    assert all(math.isfinite(v) for v in (record.train_loss, record.val_loss, record.val_acc, record.test_acc))
    assert not out["revived"], f"pruned weights revived: {out['revived']}"
    loss, expected = out["history"][0].train_loss, reference["history"][0].train_loss
    assert loss == pytest.approx(expected, rel=0.10), f"first-epoch loss {loss:.4f} vs fp32 {expected:.4f}"


def test_the_hessian_observer_runs_on_a_model_trained_in_bf16(spends):
    (epoch, value), = spends("vanilla", "bf16")["hessian"]
    assert epoch == 1 and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def trained(spends, drawn):
    """The fp32 vanilla spend's model (contiguous format) and a fixed training batch."""
    store, ticket, _ = drawn
    run = prepare_spend(SpendConfig(ticket=ticket, level=2), store, with_init=False)
    batches = list(itertools.islice(iterate_batches(run.dataset, "train", 32), 1))
    return spends("vanilla", "fp32")["model"], run.mask, batches


def bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_the_top_hessian_eigenvalue_under_bf16_is_close_to_fp32(trained):
    model, mask, batches = trained
    fp32 = top_hessian_eigenvalues(model, batches, mask=mask, max_iter=5, seed=0).eigenvalues[0]
    with bf16():
        low = top_hessian_eigenvalues(model, batches, mask=mask, max_iter=5, seed=0).eigenvalues[0]
    assert math.isfinite(low) and low == pytest.approx(fp32, rel=0.15), (low, fp32)


def test_the_loss_landscape_under_bf16_is_close_to_fp32(trained):
    model, mask, batches = trained
    direction = random_direction(model, mask, seed=0)
    for name, d in direction.items():
        if name in mask:
            assert not d[~mask[name]].any(), f"the direction moves pruned weights of {name}"
    alphas = [-0.5, 0.0, 0.5]
    fp32 = loss_along(model, batches, direction, alphas)
    with bf16():
        low = loss_along(model, batches, direction, alphas)
    assert all(math.isfinite(v) for v in low)
    assert list(low) == pytest.approx(list(fp32), rel=0.05)
