"""Every read verifies: a corrupt artifact (checksum, format, or valid JSON of the wrong shape) is
named in one warning line and exactly what depends on it is recomputed; identical spends train once.

Training is counted, not compared: on the CPU a retrained result equals the stored one."""

from __future__ import annotations

import logging
import shutil
import threading

import pytest

import lth_core.lottery as lottery
from lth_core import paths
from lth_core.config import SpendConfig, TweakConfig
from lth_core.store import ArtifactStore
from lth_core.training import fit


@pytest.fixture
def store(drawn, tmp_path):
    """A private copy of the shared tiny draw, without the spends other tests made in it."""
    source, ticket, _ = drawn
    shutil.copytree(source.local_path() / paths.TICKETS, tmp_path / "store" / paths.TICKETS)
    return ArtifactStore(str(tmp_path / "store")), ticket


@pytest.fixture
def trained(monkeypatch):
    """The stages `fit` trained, as (epochs run) per call, across threads."""
    runs: list[int] = []

    def counting_fit(*args, **kwargs):
        result = fit(*args, **kwargs)
        resumed = kwargs.get("resume")
        runs.append(len(result.history) - (int(resumed["epoch"]) if resumed else 0))
        return result

    monkeypatch.setattr(lottery, "fit", counting_fit)
    return runs


def flip_a_byte(store: ArtifactStore, path: str) -> None:
    full = store.local_path() / path
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0xFF
    full.write_bytes(bytes(data))


def accuracies(summary: dict) -> list:
    """What a draw computed, without its timings."""
    return [(summary["dense"]["test_acc"], None)] + [(lv["test_acc"], lv["sparsity"]) for lv in summary["levels"]]


def spend_config(ticket, **tweaks) -> SpendConfig:
    return SpendConfig(ticket=ticket, level=2, tweaks=TweakConfig(**tweaks))


def test_corrupt_spend_weights_are_named_and_the_spend_trained_again(store, trained, caplog):
    store, ticket = store
    config = spend_config(ticket)
    first = lottery.spend(config, store)
    assert trained == [ticket.recipe.epochs]
    assert lottery.spend(config, store) == first and len(trained) == 1  # read back
    flip_a_byte(store, paths.spend_weights(config.key))
    with caplog.at_level(logging.WARNING, logger="lth_core.lottery"):
        again = lottery.spend(config, store)
    assert len(trained) == 2 and again["test_acc"] == first["test_acc"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert paths.spend_weights(config.key) in line and "trained again" in line
    assert store.verify(paths.spend_weights(config.key))


@pytest.mark.parametrize("bad", [{"spend_key": 1}, [], {"tweak": "vanilla"}])
def test_a_spend_result_of_the_wrong_shape_counts_as_corrupt(store, trained, caplog, bad):
    store, ticket = store
    config = spend_config(ticket)
    lottery.spend(config, store)
    store.write_json(paths.spend_result(config.key), bad)  # a valid checksum over valid JSON
    with caplog.at_level(logging.WARNING, logger="lth_core.lottery"):
        result = lottery.spend(config, store)
    assert len(trained) == 2 and result["spend_key"] == config.key
    assert any("wrong shape" in r.getMessage() for r in caplog.records)


def test_a_corrupt_level_file_is_found_by_draw_and_only_what_depends_on_it_is_recomputed(store, trained, caplog):
    store, ticket = store
    summary = lottery.draw(ticket, store)
    assert trained == []  # sound: read back
    flip_a_byte(store, paths.level_final(ticket.key, 2))
    with caplog.at_level(logging.WARNING, logger="lth_core.lottery"):
        again = lottery.draw(ticket, store)
    assert trained == [ticket.recipe.epochs]  # level 2 only: the dense run and level 1 are sound
    assert accuracies(again) == accuracies(summary)
    assert any(paths.level_final(ticket.key, 2) in r.getMessage() for r in caplog.records)


def test_a_level_mask_corrupt_under_a_finished_draw_is_redrawn_from_that_level(store, trained, caplog):
    store, ticket = store
    flip_a_byte(store, paths.level_mask(ticket.key, 1))  # IMP: level 2 is pruned from level 1
    with caplog.at_level(logging.WARNING, logger="lth_core.lottery"):
        lottery.draw(ticket, store)
    assert trained == [ticket.recipe.epochs] * 2
    assert any("level 1 and the levels after it" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path_of", [paths.ticket_summary, paths.dense_metrics,
                                     lambda key: paths.level_metrics(key, 1)])
def test_valid_json_of_the_wrong_shape_in_a_draw_is_recomputed_not_fatal(store, trained, path_of):
    store, ticket = store
    summary = lottery.draw(ticket, store)
    store.write_json(path_of(ticket.key), {"unexpected": True})
    assert accuracies(lottery.draw(ticket, store)) == accuracies(summary)
    expected = {paths.ticket_summary(ticket.key): 0, paths.dense_metrics(ticket.key): 1 + ticket.num_levels}
    assert len(trained) == expected.get(path_of(ticket.key), ticket.num_levels)


def test_identical_spends_started_together_train_once(store, trained):
    store, ticket = store
    config = spend_config(ticket, activation="swish")
    results, errors = [], []

    def run() -> None:
        try:
            results.append(lottery.spend(config, ArtifactStore(str(store.local_path()))))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert trained == [ticket.recipe.epochs], "three identical spends must train once"
    assert all(r == results[0] for r in results)


def test_show_names_a_corrupt_level_file_instead_of_printing_the_table(store, capsys):
    from lth_core.cli import main

    store, ticket = store
    assert main(["show", "--key", ticket.key, "--store", str(store.local_path())]) == 0
    flip_a_byte(store, paths.level_mask(ticket.key, 2))
    capsys.readouterr()
    assert main(["show", "--key", ticket.key, "--store", str(store.local_path())]) == 2
    err = capsys.readouterr().err
    assert paths.level_mask(ticket.key, 2) in err and "corrupt" in err and "Traceback" not in err
