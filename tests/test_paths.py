"""`lth_core/paths.py` owns the store layout: the strings are pinned (existing stores must stay
readable), a draw and a spend leave exactly the files it names, and no other module builds one."""

import re
from pathlib import Path

import pytest
from conftest import tiny_ticket

from lth_core import paths
from lth_core.config import PruneConfig, RecipeConfig, SpendConfig
from lth_core.store import ArtifactStore

ROOT = Path(__file__).resolve().parent.parent
K = "0123abcd"

# The layout as stores written before paths.py existed hold it: change these only with a migration.
PINNED = [
    (paths.ticket_dir(K), "tickets/0123abcd"),
    (paths.ticket_config(K), "tickets/0123abcd/config.json"),
    (paths.live_weights(K), "tickets/0123abcd/live.safetensors"),
    (paths.dense_dir(K), "tickets/0123abcd/dense"),
    (paths.rewind_weights(K, 0), "tickets/0123abcd/dense/rewind_0.safetensors"),
    (paths.rewind_weights(K, 33), "tickets/0123abcd/dense/rewind_33.safetensors"),
    (paths.dense_final(K), "tickets/0123abcd/dense/final.safetensors"),
    (paths.dense_metrics(K), "tickets/0123abcd/dense/metrics.json"),
    (paths.dense_checkpoint(K), "tickets/0123abcd/dense/checkpoint.pt"),
    (paths.level_dir(K, 3), "tickets/0123abcd/level_3"),
    (paths.level_mask(K, 3), "tickets/0123abcd/level_3/mask.safetensors"),
    (paths.level_final(K, 3), "tickets/0123abcd/level_3/final.safetensors"),
    (paths.level_metrics(K, 12), "tickets/0123abcd/level_12/metrics.json"),
    (paths.level_checkpoint(K, 3), "tickets/0123abcd/level_3/checkpoint.pt"),
    (paths.ticket_summary(K), "tickets/0123abcd/summary.json"),
    (paths.ticket_failure(K), "tickets/0123abcd/failed.json"),
    (paths.ticket_lock(K), "ticket-0123abcd"),
    (paths.spend_lock(K), "spend-0123abcd"),
    (paths.spend_dir(K), "spends/0123abcd"),
    (paths.spend_weights(K), "spends/0123abcd/final.safetensors"),
    (paths.spend_snapshot(K, 5), "spends/0123abcd/snapshot_5.safetensors"),
    (paths.spend_result(K), "spends/0123abcd/result.json"),
    (paths.spend_checkpoint(K), "spends/0123abcd/checkpoint.pt"),
]


@pytest.mark.parametrize("built, expected", PINNED, ids=[e for _, e in PINNED])
def test_layout_strings_are_pinned(built, expected):
    assert built == expected


@pytest.mark.parametrize("key", ["", "a/b", "../x", ".hidden", "a\\b", None, 7])
def test_a_key_that_would_leave_its_folder_is_refused(key):
    with pytest.raises(ValueError, match="not a content key"):
        paths.ticket_summary(key)
    with pytest.raises(ValueError, match="not a content key"):
        paths.spend_result(key)


def test_every_file_of_the_layout_and_nothing_else_is_the_store_s():
    files = [built for built, expected in PINNED if "." in expected.rsplit("/", 1)[-1]]
    assert len(files) == 17 and all(paths.is_layout_file(f) for f in files)
    assert all(paths.finished_mark(f) in (paths.ticket_summary(K), paths.spend_result(K)) for f in files)
    for other in ("README.txt", "tickets/notes.txt", "tickets/0123abcd/README.md", "tickets/notes/config.json",
                  "tickets/0123abcd/level_1/mask.safetensors.bak", "tickets/0123abcd/level_1/mask.safetensors.sha256",
                  "tickets/0123abcd/level_x/metrics.json", "tickets/0123abcd/.summary.json.tmp-1",
                  "spends/0123abcd/final.safetensors/x", "old/tickets/0123abcd/config.json",
                  "locks/ticket-0123abcd.lock",
                  paths.ticket_dir(K), paths.level_dir(K, 1)):
        assert not paths.is_layout_file(other), other


def test_levels_and_epochs_must_be_integers():
    with pytest.raises(ValueError):
        paths.level_mask(K, 1.5)
    with pytest.raises(ValueError):
        paths.rewind_weights(K, "0")
    with pytest.raises(ValueError):
        paths.spend_snapshot(K, 1.5)


def test_a_store_written_by_draw_and_spend_is_found_by_these_paths(tmp_path):
    """Every file a draw and a spend leave (and every checkpoint they write while training)
    is one that paths.py names; nothing else is in their folders."""
    from lth_core.lottery import draw, spend

    store = ArtifactStore(str(tmp_path))
    ticket = tiny_ticket(pruning=PruneConfig(levels=2))
    key = ticket.key
    checkpoints_seen = set()

    def on_stage_epoch(stage, record):
        path = paths.dense_checkpoint(key) if stage == "dense" else paths.level_checkpoint(key, int(stage.split()[-1]))
        if store.exists(path):
            checkpoints_seen.add(path)

    summary = draw(ticket, store, on_stage_epoch)
    levels = range(1, ticket.num_levels + 1)
    assert checkpoints_seen == {paths.dense_checkpoint(key), *(paths.level_checkpoint(key, lv) for lv in levels)}
    expected = {paths.ticket_config(key), paths.ticket_summary(key), paths.live_weights(key),
                paths.dense_final(key), paths.dense_metrics(key),
                *(paths.rewind_weights(key, e) for e in ticket.rewind_epochs),
                *(f for lv in levels for f in (paths.level_mask(key, lv), paths.level_final(key, lv),
                                               paths.level_metrics(key, lv)))}
    assert set(store.list(paths.ticket_dir(key))) == expected
    assert all(paths.is_layout_file(p) for p in expected)
    assert store.read_json(paths.ticket_summary(key)) == summary
    assert store.read_json(paths.level_metrics(key, 2))["level"] == 2

    cfg = SpendConfig(ticket=ticket, level=2, recipe=RecipeConfig(epochs=1, batch_size=128, device="cpu"),
                      snapshot_epochs=(0,))
    spend_checkpoints = []
    result = spend(cfg, store, on_epoch=lambda record, payload: spend_checkpoints.append(
        store.exists(paths.spend_checkpoint(cfg.key))))
    assert spend_checkpoints == [True]
    assert set(store.list(paths.spend_dir(cfg.key))) == {paths.spend_result(cfg.key), paths.spend_weights(cfg.key),
                                                         paths.spend_snapshot(cfg.key, 0)}
    assert store.read_json(paths.spend_result(cfg.key))["spend_key"] == cfg.key == result["spend_key"]


# A store path built outside paths.py: a quoted or f-string "tickets"/"spends" prefix, a file name
# of the layout, a lock name, or a level/rewind/dense folder spliced into an f-string.
STORE_PATH_LITERAL = re.compile(
    r"""["'](tickets|spends)\b|f["'](tickets|spends)|/(summary|result|metrics|config)\.json"""
    r"""|/checkpoint\.pt|\.safetensors["']|["']ticket-|/level_\{|/rewind_\{|/dense/""")
# The source tree: every top-level package but the tests (lth_core, trainables, sweeps, dashboards, ...).
SCANNED = sorted({"lth_core", "trainables", "sweeps", "dashboards"}
                 | {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"})


def store_path_literals() -> list[str]:
    hits = []
    for folder in SCANNED:
        for file in sorted((ROOT / folder).rglob("*.py")):
            if file == ROOT / "lth_core" / "paths.py":
                continue
            for number, line in enumerate(file.read_text().splitlines(), start=1):
                if STORE_PATH_LITERAL.search(line):
                    hits.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_the_literal_scan_catches_the_old_spellings():
    for line in ('path = f"tickets/{key}/summary.json"', "f'{folder}/level_{level}'",
                 'f"{d}/dense/final.safetensors"', 'store.lock(f"ticket-{key}")', '"spends/" + key',
                 'f"{spend_dir(s)}/result.json"', 'f"{folder}/checkpoint.pt"'):
        assert STORE_PATH_LITERAL.search(line), line
    for line in ('"""Draw lottery tickets once"""', "for ticket in sweep.tickets():", '"sweep_config.json"',
                 'out_dir / "analysis.json"', "paths.ticket_summary(ticket.key)"):
        assert not STORE_PATH_LITERAL.search(line), line


def test_no_module_but_paths_builds_a_store_path():
    hits = store_path_literals()
    assert not hits, "store paths built outside lth_core/paths.py:\n" + "\n".join(hits)
