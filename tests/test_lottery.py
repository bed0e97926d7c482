"""Draw and spend end to end on digits: artifacts, idempotence, rewinding, corruption, resume."""

import dataclasses
import time

import pytest
import torch

from conftest import tiny_ticket
from lth_core import paths
from lth_core.analysis.hessian import HessianObserver
from lth_core.config import SpendConfig, TweakConfig
from lth_core.tweaks.distillation import KDConfig
from lth_core.tweaks.rescale_init import RescaleInitConfig
from lth_core.lottery import draw, load_level, prepare_spend, spend
from lth_core.store import ArtifactStore
from lth_core.training import Runtime


def test_draw_stores_every_level_with_the_exact_schedule(drawn):
    store, ticket, summary = drawn
    key = ticket.key
    assert [lv["level"] for lv in summary["levels"]] == [1, 2]
    for lv, target in zip(summary["levels"], (0.2, 0.36)):
        mask = load_level(ticket, lv["level"], store)
        assert mask.kept == round(mask.total * (1 - target))
        metrics = store.read_json(paths.level_metrics(key, lv["level"]))
        assert metrics["start"] == paths.rewind_weights(key, 0)
        assert 0 < metrics["summary"]["test_acc"] <= 1
    for path in (paths.rewind_weights(key, 0), paths.rewind_weights(key, 1), paths.dense_final(key)):
        assert store.exists(path)
    assert not store.exists(paths.dense_checkpoint(key))


def test_asking_again_reads_the_draw_back_quickly(drawn):
    store, ticket, summary = drawn
    started = time.perf_counter()
    again = draw(ticket, store)
    assert time.perf_counter() - started < 1.0
    assert again == summary


def test_rewinding_restores_exactly_the_stored_weights_under_the_mask(drawn):
    store, ticket, _ = drawn
    spend_cfg = SpendConfig(ticket=ticket, level=2, tweaks=TweakConfig(rewind_epoch=1))
    run = prepare_spend(spend_cfg, store)
    model, mask = run.model, run.mask
    stored = store.read_tensors(paths.rewind_weights(ticket.key, 1))
    for name, p in model.state_dict().items():
        expected = stored[name] * mask[name] if name in mask else stored[name]
        assert torch.equal(p, expected), name


def test_a_corrupt_artifact_is_detected_and_recomputed(drawn, tmp_path):
    store, ticket, summary = drawn
    copy = ArtifactStore(str(tmp_path / "copy"))
    for path in store.list(paths.ticket_dir(ticket.key)):
        copy.write_bytes(path, store.read_bytes(path))
    mask_path = paths.level_mask(ticket.key, 2)
    original_mask = load_level(ticket, 2, copy)
    for path in (mask_path, paths.ticket_summary(ticket.key)):
        raw = bytearray((tmp_path / "copy" / path).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (tmp_path / "copy" / path).write_bytes(bytes(raw))
    assert not copy.verify(mask_path)
    again = draw(ticket, copy)
    assert without_timings(again) == without_timings(summary)  # CPU training is deterministic
    assert copy.verify(mask_path)
    assert load_level(ticket, 2, copy) == original_mask


def without_timings(summary):
    def strip(d):
        return {k: v for k, v in d.items() if k != "wall_seconds"}
    return {**summary, "dense": strip(summary["dense"]), "levels": [strip(lv) for lv in summary["levels"]]}


def test_a_ticket_file_corrupted_after_the_draw_is_redrawn_by_the_next_spend(drawn, tmp_path):
    store, ticket, summary = drawn
    copy = ArtifactStore(str(tmp_path / "copy"))
    for path in store.list(paths.ticket_dir(ticket.key)):
        copy.write_bytes(path, store.read_bytes(path))
    rewind = tmp_path / "copy" / paths.rewind_weights(ticket.key, 0)
    original = rewind.read_bytes()
    rewind.write_bytes(original[:-10] + b"0123456789")
    result = spend(SpendConfig(ticket=ticket, level=1, seed=7), copy)
    assert rewind.read_bytes() == original  # recomputed, identical on the CPU
    assert result["vanilla_test_acc"] == summary["levels"][0]["test_acc"]


def test_asking_for_hessian_tracking_retrains_a_cached_spend_without_it(drawn):
    store, ticket, _ = drawn
    cfg = SpendConfig(ticket=ticket, level=2, seed=11)
    assert "hessian" not in spend(cfg, store)
    tracked = spend(cfg, store, observers=[HessianObserver(every=2, batches=1)])
    assert [epoch for epoch, _ in tracked["hessian"]["history"]] == [2]
    assert spend(cfg, store) == tracked  # and the tracked result serves plain requests


def test_gradinit_batch_larger_than_the_data_fails_instead_of_spinning(drawn):
    store, ticket, _ = drawn
    tweaks = TweakConfig(rescale_init=RescaleInitConfig(iterations=1, batch_size=100_000))
    with pytest.raises(ValueError, match="larger than the training set"):
        spend(SpendConfig(ticket=ticket, level=1, tweaks=tweaks), store)


def test_all_tweaks_together_keep_pruned_weights_zero(drawn):
    store, ticket, _ = drawn
    tweaks = TweakConfig(activation="swish", skip="conv1x1", label_smoothing=0.1, kd=KDConfig(),
                         rescale_init=RescaleInitConfig(iterations=3, batch_size=32), rewind_epoch=1)
    cfg = SpendConfig(ticket=ticket, level=2, tweaks=tweaks)
    captured = {}
    result = spend(cfg, store, on_epoch=lambda record, payload: captured.update(payload()))
    mask = load_level(ticket, 2, store)
    for name in mask:
        assert (captured["model"][name][~mask[name]] == 0).all(), name
    assert result["tweak"] == "swish+skip-conv1x1+ls0.1+kd0.9,5+gradinit(iterations=3,batch_size=32)+rewind1"
    scales = result["init_records"]["rescale_init"]["scales"]
    assert scales and all(v >= 0 for v in scales.values())
    assert any(".skip." in k for k in captured["model"])
    assert spend(cfg, store) == result  # cached
    assert not store.exists(paths.spend_checkpoint(cfg.key))


def test_spend_of_an_undrawn_ticket_draws_it_first(tmp_path):
    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=tiny_ticket().pruning.__class__(levels=1))
    result = spend(SpendConfig(ticket=ticket, level=1), store)
    assert store.exists(paths.ticket_summary(ticket.key))
    assert result["sparsity"] == pytest.approx(0.2, abs=1e-4)


def test_hessian_tracking_during_a_spend(drawn):
    store, ticket, _ = drawn
    cfg = SpendConfig(ticket=ticket, level=1, seed=5)
    result = spend(cfg, store, observers=[HessianObserver(every=1, batches=1)])
    assert [epoch for epoch, _ in result["hessian"]["history"]] == [1, 2]
    assert all(value > 0 for _, value in result["hessian"]["history"])


def test_a_diverged_spend_is_stored_with_null_losses_and_read_back(drawn, monkeypatch):
    """A spend whose loss went NaN is a result (chance accuracy), not a failed trial: its stored
    JSON has null where a number was not finite (JSON has no NaN), and the next ask reads it back
    instead of training again."""
    from lth_core import lottery

    store, ticket, _ = drawn
    cfg = SpendConfig(ticket=ticket, level=2, recipe=dataclasses.replace(ticket.recipe, lr=1e6))
    result = spend(cfg, store)
    assert result["history"][0]["train_loss"] != result["history"][0]["train_loss"]  # NaN in memory
    stored = store.read_json(paths.spend_result(cfg.key))
    assert stored["history"][0]["train_loss"] is None and 0 <= stored["test_acc"] <= 1

    def must_not_train(*args, **kwargs):
        raise AssertionError("a stored diverged spend trained again")

    monkeypatch.setattr(lottery, "train_spend", must_not_train)
    assert spend(cfg, store) == stored

