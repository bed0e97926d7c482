"""`python -m lth_core verify`: every corrupt, missing or orphaned artifact of a store is named,
the exit code says whether the store is sound, and `--repair` removes exactly what the next draw
or spend then recomputes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_ticket
from lth_core import paths, tweaks
from lth_core.config import PruneConfig, SpendConfig, replace, to_dict
from lth_core.lottery import draw, load_level, spend
from lth_core.store import ArtifactStore
from lth_core.verify import repair, scan


@pytest.fixture
def filled(tmp_path):
    """A store with a draw at initialisation (quick) and one finished spend of it."""
    store = ArtifactStore(str(tmp_path / "store"))
    ticket = tiny_ticket(pruning=PruneConfig(method="random", levels=2))
    draw(ticket, store)
    config = SpendConfig(ticket=ticket, level=2, recipe=replace(ticket.recipe, epochs=1), tweaks=tweaks.from_flat({}))
    spend(config, store)
    return store, ticket, config


def verify_cli(store: ArtifactStore, *extra: str) -> int:
    from lth_core.cli import main

    return main(["verify", "--store", str(store.local_path()), *extra])


def flip_a_byte(store: ArtifactStore, path: str) -> None:
    local = Path(store.local_path()) / path
    data = bytearray(local.read_bytes())
    data[len(data) // 2] ^= 0xFF
    local.write_bytes(bytes(data))


def kinds(store: ArtifactStore) -> dict[str, str]:
    return {f.path: f.kind for f in scan(store)}


def test_a_sound_store_passes(filled, capsys):
    store, _, _ = filled
    assert kinds(store) == {}
    assert verify_cli(store) == 0
    assert "the store is sound" in capsys.readouterr().out


def test_a_corrupt_mask_is_named_and_a_repair_lets_the_next_draw_recompute_it(filled, capsys):
    store, ticket, _ = filled
    mask_path = paths.level_mask(ticket.key, 2)
    before = load_level(ticket, 2, store)
    flip_a_byte(store, mask_path)
    assert kinds(store) == {mask_path: "corrupt"}
    assert verify_cli(store) == 1
    assert mask_path in capsys.readouterr().out and store.exists(mask_path)
    assert verify_cli(store, "--repair") == 0
    assert not store.exists(mask_path) and verify_cli(store) == 1  # the finished draw now misses it
    draw(ticket, store)
    assert load_level(ticket, 2, store) == before and verify_cli(store) == 0


def test_valid_json_of_the_wrong_shape_is_corrupt(filled):
    store, ticket, config = filled
    store.write_json(paths.level_metrics(ticket.key, 1), {"level": "one"})
    store.write_json(paths.spend_result(config.key), {"spend_key": config.key})
    assert kinds(store) == {paths.level_metrics(ticket.key, 1): "corrupt", paths.spend_result(config.key): "corrupt"}


def test_a_missing_file_of_a_finished_draw_unmarks_it(filled):
    store, ticket, _ = filled
    store.delete(paths.level_mask(ticket.key, 1))
    found = scan(store)
    assert [(f.kind, f.path) for f in found] == [("missing", paths.level_mask(ticket.key, 1))]
    repair(store, found)
    assert not store.exists(paths.ticket_summary(ticket.key))  # the next draw completes it
    draw(ticket, store)
    assert kinds(store) == {}


def test_corrupt_spend_weights_are_named_and_the_spend_trains_again(filled):
    store, _, config = filled
    flip_a_byte(store, paths.spend_weights(config.key))
    assert kinds(store) == {paths.spend_weights(config.key): "corrupt"}
    repair(store, scan(store))
    spend(config, store)
    assert kinds(store) == {}


def test_leftovers_are_orphans_and_unknown_folders_are_kept(filled):
    store, ticket, _ = filled
    root = Path(store.local_path())
    temp = f"{paths.level_dir(ticket.key, 1)}/.mask.safetensors.tmp-123"
    (root / temp).write_bytes(b"half")
    (root / "tickets" / ticket.key / "stray.sha256").write_text("0" * 64)
    store.write_json("notes/readme.json", {"a": 1})
    found = kinds(store)
    assert found == {temp: "orphaned", f"tickets/{ticket.key}/stray.sha256": "orphaned", "notes/readme.json": "orphaned"}
    repair(store, scan(store))
    assert kinds(store) == {"notes/readme.json": "orphaned"} and store.exists("notes/readme.json")


def test_work_in_progress_is_listed_but_not_a_fault(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(method="random", levels=2))
    store.write_json(paths.ticket_config(ticket.key), {"key": ticket.key, "config": to_dict(ticket)})
    assert kinds(store) == {paths.ticket_dir(ticket.key): "in progress"}
    assert verify_cli(store) == 0
