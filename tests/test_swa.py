"""SWA: the average of the last epochs' weights, BN statistics recomputed, masks held, and a
resume in the middle of averaging continues the same average."""

from __future__ import annotations

import pytest
import torch

from conftest import train_checking_the_mask
from lth_core import tweaks
from lth_core.config import SpendConfig, TweakConfig, replace
from lth_core.lottery import prepare_spend, spend, train_spend
from lth_core.store import ArtifactStore
from lth_core.tweaks import REGISTRY
from lth_core.tweaks.swa import SWAConfig

FAST = {"rescale_init": {"iterations": 2, "batch_size": 32}}
"""Settings that keep a tweak quick on the CPU (others use their declared example)."""


def spend_config(ticket, swa: SWAConfig | None = SWAConfig(start=0.5), epochs: int = 4, **others) -> SpendConfig:
    return SpendConfig(ticket=ticket, level=2, recipe=replace(ticket.recipe, epochs=epochs),
                       tweaks=tweaks.from_flat(others, {"swa": swa and {"start": swa.start, "lr": swa.lr}}))


@pytest.mark.parametrize("other", [t.name for t in REGISTRY if t.name != "swa"] + [None])
def test_pruned_weights_stay_zero_with_swa_alone_and_with_every_other_tweak(drawn, tmp_path, other):
    store, ticket, _ = drawn
    extra = {} if other is None else {other: FAST.get(other, tweaks.TWEAKS[other].example)}
    config = spend_config(ticket, SWAConfig(start=0.0), epochs=2, **extra)
    assert config.tweaks.swa is not None and (other is None or getattr(config.tweaks, other) != getattr(
        TweakConfig(), other))
    revived = train_checking_the_mask(prepare_spend(config, store))
    assert not revived, f"pruned weights revived in {revived}"


def test_final_weights_are_the_average_of_the_averaged_epochs(drawn):
    store, ticket, _ = drawn
    config = spend_config(ticket)  # 4 epochs, start 0.5: epochs 3 and 4 are averaged
    assert config.tweaks.swa.first_epoch(4) == 3
    run = prepare_spend(config, store)
    seen = {}

    def on_epoch(record, payload):
        seen[record.epoch] = {k: v.clone() for k, v in payload()["model"].items()}

    train_spend(run, persist_checkpoints=False, on_epoch=on_epoch)
    final = run.model.state_dict()
    for name, _ in run.model.named_parameters():
        expected = (seen[3][name] + seen[4][name]) / 2
        torch.testing.assert_close(final[name].cpu(), expected, rtol=1e-5, atol=1e-6)
    bn = "stem.bn.running_mean" if "stem.bn.running_mean" in final else next(k for k in final if "running_mean" in k)
    assert not torch.equal(final[bn].cpu(), seen[4][bn]), "BN statistics were not recomputed for the average"


def test_a_spend_resumed_while_averaging_continues_the_same_average(drawn):
    store, ticket, _ = drawn
    config = spend_config(ticket)
    checkpoints, epochs_run = {}, []

    def keep(record, payload):
        checkpoints[record.epoch] = payload()

    whole = prepare_spend(config, store)
    train_spend(whole, persist_checkpoints=False, on_epoch=keep)

    resumed = prepare_spend(config, store, with_init=False)
    train_spend(resumed, persist_checkpoints=False, resume=checkpoints[3],
                on_epoch=lambda record, payload: epochs_run.append(record.epoch))
    assert epochs_run == [4], "the resumed spend must train only the epoch after its checkpoint"
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_swa_spend_records_and_reads_back(drawn, tmp_path):
    store, ticket, _ = drawn
    config = spend_config(ticket, epochs=2)
    result = spend(config, store)
    assert result["tweak"] == "swa0.5,0.05" and 0 <= result["test_acc"] <= 1
    assert spend(config, store) == result
    assert SpendConfig(ticket=ticket, level=2, tweaks=TweakConfig(swa=SWAConfig())).tweaks.describe() == "swa"


def test_swa_settings_are_checked():
    with pytest.raises(ValueError, match="tweaks.swa.start"):
        SWAConfig(start=1.0)
    with pytest.raises(ValueError, match="tweaks.swa.lr"):
        SWAConfig(lr=0.0)


def test_swa_runs_through_the_grid_into_mlflow_and_the_report(ray_session, tmp_path):
    """SWA with no code of its own outside its module: the grid's combos, the MLflow params and
    the report's rows all come from the registry (the Optuna space too: test_tweak_registry)."""
    from dashboards import analysis, collect
    from test_sweep import run_grid, runs_of, sweep_args

    grid = run_grid(tmp_path, sweep_args(tmp_path, "swa", "--levels", "2", "--set", 'combos=[{}, {"swa": "on"}]'))
    assert grid.code == 0, grid.err[-3000:]
    (swa_run,) = [r for r in runs_of(tmp_path, "swa")[2] if r.data.tags["tweak"] == "swa"]
    assert swa_run.data.params["swa"] == "on" and swa_run.data.params["swa_start"] == "0.75"
    sweep = collect.load_sweep(collect.connect(f"sqlite:///{tmp_path / 'mlflow.db'}"), "swa")
    summary = analysis.analyze(sweep.trials, sweep.draw_levels).summary
    assert set(summary["tweak"]) == {"vanilla", "swa"}
