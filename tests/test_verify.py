"""`python -m lth_core verify`: every corrupt, missing or orphaned artifact of a store is named,
the exit code says whether the store is sound, and `--repair` removes exactly what the next draw
or spend then recomputes, after which a plain `verify` calls the store sound.

Data safety: `--repair` deletes only files of the store's layout. A folder without the store's
layout is refused (exit 2), also through a link, and inside a store every other file survives
byte for byte."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conftest import tiny_ticket
from lth_core import lottery, paths, tweaks
from lth_core.config import PruneConfig, SpendConfig, replace, to_dict
from lth_core.lottery import draw, load_level, spend
from lth_core.pruning import EmptyLayerError
from lth_core.store import ArtifactStore
from lth_core.verify import FAILED, IN_PROGRESS, NOT_OURS, repair, scan


@pytest.fixture
def filled(tmp_path):
    """A store with a draw at initialisation (quick) and one finished spend of it."""
    store = ArtifactStore(str(tmp_path / "store"))
    ticket = tiny_ticket(pruning=PruneConfig(method="random", levels=2))
    draw(ticket, store)
    config = SpendConfig(ticket=ticket, level=2, recipe=replace(ticket.recipe, epochs=1), tweaks=tweaks.from_flat({}))
    spend(config, store)
    return store, ticket, config


def verify_cli(store: ArtifactStore | Path, *extra: str) -> int:
    from lth_core.cli import main

    folder = store.local_path() if isinstance(store, ArtifactStore) else store
    return main(["verify", "--store", str(folder), *extra])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def plant(folder: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


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
    out = capsys.readouterr().out
    assert "1 fault(s) removed" in out and "the store is sound (1 in progress)" in out
    assert not store.exists(mask_path) and not store.exists(paths.ticket_summary(ticket.key))
    assert verify_cli(store) == 0  # one repair is enough: the draw is unfinished, not broken
    assert kinds(store) == {paths.ticket_dir(ticket.key): IN_PROGRESS}
    draw(ticket, store)
    assert load_level(ticket, 2, store) == before and verify_cli(store) == 0 and kinds(store) == {}


@pytest.mark.parametrize("damage", ["config", "summary", "level metrics", "spend weights", "spend result"])
def test_one_repair_leaves_a_store_that_verify_calls_sound(filled, damage, capsys):
    store, ticket, config = filled
    path = {"config": paths.ticket_config(ticket.key), "summary": paths.ticket_summary(ticket.key),
            "level metrics": paths.level_metrics(ticket.key, 1), "spend weights": paths.spend_weights(config.key),
            "spend result": paths.spend_result(config.key)}[damage]
    flip_a_byte(store, path)
    assert verify_cli(store) == 1
    assert verify_cli(store, "--repair") == 0
    assert verify_cli(store) == 0
    assert "the store is sound" in capsys.readouterr().out.splitlines()[-1]
    draw(ticket, store)
    spend(config, store)
    assert kinds(store) == {}


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


def test_leftovers_of_the_store_are_orphans_and_a_repair_removes_them(filled):
    store, ticket, config = filled
    root = Path(store.local_path())
    temp = f"{paths.level_dir(ticket.key, 1)}/.mask.safetensors.tmp-{uuid.uuid4().hex}"
    temp_sidecar = f"{paths.spend_dir(config.key)}/.result.json.sha256.tmp-{uuid.uuid4().hex}"
    lone_sidecar = paths.level_final(ticket.key, 1) + ".sha256"
    no_sidecar = paths.dense_checkpoint(ticket.key)
    plant(root, {temp: b"half", temp_sidecar: b"0" * 64, lone_sidecar: b"0" * 64, no_sidecar: b"half"})
    assert kinds(store) == {temp: "orphaned", temp_sidecar: "orphaned", lone_sidecar: "orphaned",
                            no_sidecar: "orphaned"}
    repair(store, scan(store))
    assert kinds(store) == {}


# ------------------------------------------------------------------------------ data safety

USER_FILES = {"thesis.tex": b"\\chapter{One}", "notes/README.txt": b"my notes", "src/main.py": b"print(1)\n",
              ".hidden": b"secret", "data.bin": b"\x00\x01", "data.bin.sha256": b"0" * 64, "lone.sha256": b"1" * 64,
              f".draft.tex.tmp-{'a' * 32}": b"named like a temporary file"}


@pytest.mark.parametrize("via_link", [False, True], ids=["folder", "link"])
def test_a_folder_without_the_store_layout_is_refused_and_kept(tmp_path, capsys, via_link):
    folder = tmp_path / "thesis"
    before = plant(folder, USER_FILES)
    given = folder
    if via_link:
        given = tmp_path / "store-link"
        given.symlink_to(folder, target_is_directory=True)
    for extra in (("--repair",), ()):
        assert verify_cli(given, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {folder} is not an artifact store: it has no tickets/, spends/ or locks/ folder")
        assert "nothing was changed" in err and "Traceback" not in err
        assert ("is a link to it" in err) == via_link
    assert snapshot(folder) == before and snapshot(tmp_path) == {f"thesis/{k}": v for k, v in before.items()}


@pytest.mark.parametrize("via_link", [False, True], ids=["folder", "link"])
def test_inside_a_store_only_the_store_files_are_repaired(filled, tmp_path, capsys, via_link):
    """Files the store did not write are listed and kept byte for byte, wherever they lie; the
    store's own faults are repaired in one pass, and verify then calls the store sound."""
    store, ticket, config = filled
    root = Path(store.local_path())
    key = ticket.key
    user = plant(root, {
        "README.txt": b"what this store is", ".DS_Store": b"\x00", "tickets/notes.txt": b"notes",
        f"tickets/{key}/README.md": b"about this ticket", f"tickets/{key}/level_1/notes.txt": b"level notes",
        f"tickets/{key}/level_1/mask.safetensors.bak": b"my backup",
        f"tickets/{key}/.mask.safetensors.tmp-123": b"not the store's temporary naming",
        f"tickets/{key}/.notes.txt.tmp-{'b' * 32}": b"a temporary of no layout file",
        f"spends/{config.key}/mine.json": b"{}", f"spends/{config.key}/mine.json.sha256": b"0" * 64,
        "lone.sha256": b"1" * 64, f"tickets/{'c' * 20}/thesis.tex": b"in a folder named like a key"})
    store.write_json("notes/readme.json", {"mine": True})  # a complete artifact, but of no layout file
    user["notes/readme.json"] = (root / "notes/readme.json").read_bytes()
    user["notes/readme.json.sha256"] = (root / "notes/readme.json.sha256").read_bytes()
    mask = paths.level_mask(key, 2)
    flip_a_byte(store, mask)
    leftover = f"{paths.level_dir(key, 1)}/.final.safetensors.tmp-{uuid.uuid4().hex}"
    plant(root, {leftover: b"half"})
    given = root
    if via_link:
        given = tmp_path / "link-to-store"
        given.symlink_to(root, target_is_directory=True)

    assert verify_cli(given) == 1
    listed = capsys.readouterr().out
    assert all(f"{NOT_OURS:<15} {name}" in listed for name in user if not name.endswith(".sha256")
               or name == "lone.sha256")
    assert verify_cli(given, "--repair") == 0
    assert verify_cli(given) == 0
    assert "the store is sound" in capsys.readouterr().out.splitlines()[-1]
    assert {name: (root / name).read_bytes() for name in user} == user
    assert not (root / leftover).exists() and not store.exists(mask)
    draw(ticket, store)
    assert {f.kind for f in scan(store)} == {NOT_OURS}


def test_work_in_progress_is_listed_but_not_a_fault(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(method="random", levels=2))
    store.write_json(paths.ticket_config(ticket.key), {"key": ticket.key, "config": to_dict(ticket)})
    assert kinds(store) == {paths.ticket_dir(ticket.key): "in progress"}
    assert verify_cli(store) == 0


def test_a_draw_that_failed_for_good_is_named_not_left_in_progress(tmp_path, monkeypatch, capsys):
    """A schedule that empties a layer at a level only the draw reveals (global magnitude pruning):
    the draw records its error, verify names it, and the next attempt replaces the record."""
    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(method="random", levels=2))
    real_draw_mask = lottery._draw_mask

    def empties_level_2(ticket, model, previous, sparsity, dataset):
        if sparsity == ticket.pruning.level_sparsities()[1]:
            raise EmptyLayerError(f"pruning to sparsity {sparsity:.4f} would remove every weight of fc.weight")
        return real_draw_mask(ticket, model, previous, sparsity, dataset)

    monkeypatch.setattr(lottery, "_draw_mask", empties_level_2)
    with pytest.raises(EmptyLayerError):
        draw(ticket, store)
    assert kinds(store) == {paths.ticket_dir(ticket.key): FAILED}
    assert verify_cli(store, "--repair") == 0
    out = capsys.readouterr().out
    assert "the draw failed for good: pruning to sparsity" in out and "fc.weight" in out and "(1 failed)" in out
    monkeypatch.setattr(lottery, "_draw_mask", real_draw_mask)
    draw(ticket, store)
    assert kinds(store) == {} and not store.exists(paths.ticket_failure(ticket.key))
