"""Any mask: draws at initialisation train nothing, their dense run is trained once and only when
a spend needs it, the lottery-ticket controls (reinit, shuffle) do what they say, and pruned
weights stay zero for every mask source under every tweak."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_ticket, train_checking_the_mask
from lth_core import lottery, paths, tweaks
from lth_core.config import ConfigError, PruneConfig, SpendConfig, replace
from lth_core.lottery import draw, load_level, prepare_spend, spend
from lth_core.mask_sources import REGISTRY, docs_table
from lth_core.store import ArtifactStore

AT_INIT = [s.name for s in REGISTRY if s.at_init]
FAST = {"rescale_init": {"iterations": 2, "batch_size": 32}}
EVERY_TWEAK = {"activation": "swish", "skip": "identity", "label_smoothing": 0.1, "kd": "on",
               "rescale_init": FAST["rescale_init"], "rewind_epoch": 1, "swa": "on", "init": "shuffle"}


def ticket_of(method: str):
    return tiny_ticket(pruning=PruneConfig(method=method, levels=2))


def spend_of(ticket, level: int = 2, epochs: int = 1, seed: int = 0, **flat) -> SpendConfig:
    return SpendConfig(ticket=ticket, level=level, recipe=replace(ticket.recipe, epochs=epochs), seed=seed,
                       tweaks=tweaks.from_flat(flat))


@pytest.fixture
def counted_fits(monkeypatch):
    """Every training stage the core runs, by name ('dense', 'level 2', 'spend level 1')."""
    stages: list[str] = []
    real = lottery._train_stage

    def counting(*args, **kwargs):
        stages.append(kwargs["stage"])
        return real(*args, **kwargs)

    monkeypatch.setattr(lottery, "_train_stage", counting)
    return stages


@pytest.fixture(scope="module")
def snip(tmp_path_factory):
    store = ArtifactStore(str(tmp_path_factory.mktemp("snip")))
    ticket = ticket_of("snip")
    return store, ticket, draw(ticket, store)


@pytest.mark.parametrize("method", AT_INIT)
def test_a_draw_at_initialisation_trains_nothing(method, tmp_path, counted_fits):
    store = ArtifactStore(str(tmp_path))
    ticket = ticket_of(method)
    summary = draw(ticket, store)
    assert counted_fits == []
    assert summary["dense"] is None and [lv["level"] for lv in summary["levels"]] == [1, 2]
    assert not store.exists(paths.dense_final(ticket.key)) and store.exists(paths.rewind_weights(ticket.key, 0))
    for level, target in zip((1, 2), ticket.pruning.level_sparsities()):
        assert load_level(ticket, level, store).sparsity == pytest.approx(target, abs=2e-3)
    assert lottery.read_draw(ticket.key, store) == (summary, [])


def test_the_dense_run_of_a_draw_at_init_is_trained_once_when_a_spend_needs_it(snip, counted_fits):
    store, ticket, _ = snip
    vanilla = spend(spend_of(ticket), store)
    assert counted_fits == [] and vanilla["dense_test_acc"] is None and vanilla["vanilla_test_acc"] is None
    rewound = spend(spend_of(ticket, rewind_epoch=1), store)
    spend(spend_of(ticket, seed=1, rewind_epoch=1), store)
    spend(spend_of(ticket, kd="on"), store)
    assert counted_fits == ["dense"], "the dense run must be trained once, for the first spend that needs it"
    assert rewound["dense_test_acc"] is not None and rewound["vanilla_test_acc"] is None


def test_a_corrupt_mask_at_init_is_named_and_drawn_again(tmp_path, caplog):
    store = ArtifactStore(str(tmp_path))
    ticket = ticket_of("random")
    draw(ticket, store)
    path = paths.level_mask(ticket.key, 2)
    before = load_level(ticket, 2, store)
    local = Path(store.local_path()) / path
    data = bytearray(local.read_bytes())
    data[-1] ^= 0xFF
    local.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="lth_core.lottery"):
        draw(ticket, store)
    assert any(path in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert load_level(ticket, 2, store) == before  # seeded: the same mask again


def test_shuffle_keeps_each_layers_count_and_the_tickets_init(drawn):
    store, ticket, _ = drawn
    drawn_mask = load_level(ticket, 2, store)
    run = prepare_spend(spend_of(ticket, init="shuffle"), store)
    assert set(run.mask) == set(drawn_mask) and run.mask != drawn_mask
    init = store.read_tensors(paths.rewind_weights(ticket.key, 0))
    params = dict(run.model.named_parameters())
    for name in drawn_mask:
        assert int(run.mask[name].sum()) == int(drawn_mask[name].sum()), name
        torch.testing.assert_close(params[name].detach().cpu(), init[name] * run.mask[name])


def test_reinit_is_a_fresh_init_of_the_same_distribution(drawn):
    store, ticket, _ = drawn
    mask = load_level(ticket, 2, store)
    init = store.read_tensors(paths.rewind_weights(ticket.key, 0))
    first = dict(prepare_spend(spend_of(ticket, init="reinit"), store).model.named_parameters())
    other = dict(prepare_spend(spend_of(ticket, seed=1, init="reinit"), store).model.named_parameters())
    for name in mask:
        fresh, kept = first[name].detach().cpu(), mask[name]
        assert torch.equal(fresh[~kept], torch.zeros_like(fresh[~kept])), "the drawn mask still holds"
        assert not torch.equal(fresh[kept], init[name][kept]), f"{name} kept the ticket's initialisation"
        assert not torch.equal(fresh[kept], other[name].detach().cpu()[kept]), "the control seed follows the spend seed"
        if kept.sum() >= 200:  # same initialiser: the kept weights spread like the ticket's whole layer
            ratio = float(fresh[kept].std() / init[name].std())
            assert 0.8 < ratio < 1.25, f"{name}: std ratio {ratio:.2f}"


def test_reinit_refuses_a_rewind_point(drawn):
    _, ticket, _ = drawn
    with pytest.raises(ConfigError, match="tweaks.init"):
        spend_of(ticket, init="reinit", rewind_epoch=1)


@pytest.mark.parametrize("method", [s.name for s in REGISTRY])
def test_pruned_weights_stay_zero_for_every_source_under_every_tweak(method, tmp_path):
    store = ArtifactStore(str(tmp_path))
    ticket = ticket_of(method)
    drawn_mask = None
    for flat in (EVERY_TWEAK, {**EVERY_TWEAK, "init": "reinit", "rewind_epoch": 0}):
        run = prepare_spend(spend_of(ticket, **flat), store)
        drawn_mask = drawn_mask or load_level(ticket, 2, store)
        assert {n: int(run.mask[n].sum()) for n in run.mask} == {n: int(drawn_mask[n].sum()) for n in drawn_mask}
        revived = train_checking_the_mask(run)
        assert not revived, f"{method} with {flat}: pruned weights revived in {revived}"


def test_the_sweep_draws_once_per_mask_source():
    from sweeps.config import PRESETS, SweepConfig
    from lth_core.config import from_dict

    sweep = from_dict(SweepConfig, PRESETS["smoke"]())
    methods = [t.pruning.method for t in sweep.tickets()]
    assert methods == ["imp", "random", "snip"]
    assert len({t.key for t in sweep.tickets()}) == 3
    assert len(sweep.spends()) == 3 * len(sweep.spend_levels) * len(sweep.combos) * len(sweep.seeds)


def test_the_docs_list_every_source():
    page = (Path(__file__).parent.parent / "docs" / "mask_sources.md").read_text()
    assert docs_table() in page, "docs/mask_sources.md is out of date: paste `python -m lth_core masks`"


def test_the_report_compares_sources_and_the_ticket_with_its_controls():
    import pandas as pd

    from dashboards import analysis

    rows = [("imp", "vanilla", 0.90), ("imp", "reinit", 0.80), ("imp", "shuffle", 0.85), ("imp", "swish", 0.93),
            ("snip", "vanilla", 0.70), ("snip", "swish", 0.72)]
    summary = pd.DataFrame([{"setting": f"digits {s}", "tweak": t, "level": 5, "sparsity": 0.672, "mean": m}
                            for s, t, m in rows])
    controls = analysis.lottery_controls(summary)
    assert len(controls) == 1 and controls.iloc[0]["setting"] == "digits imp"
    assert controls.iloc[0]["ticket_minus_reinit_pp"] == pytest.approx(10.0)
    assert controls.iloc[0]["ticket_minus_shuffle_pp"] == pytest.approx(5.0)
    baseline = summary[summary["tweak"] == "vanilla"].assign(std=0.0, n=1, ci_low=None, ci_high=None, source="x")
    by_source = analysis.gains_by_source(analysis.gains(summary, baseline))
    assert by_source.loc["swish", "digits imp @ 67.2%"] == pytest.approx(3.0)
    assert by_source.loc["swish", "digits snip @ 67.2%"] == pytest.approx(2.0)
