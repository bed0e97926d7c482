"""The tweak registry: every registered tweak reaches every surface, with no per-tweak code.

Each test walks `REGISTRY`, so a tweak added with one module and one registry line is checked
on every surface at once, and one that some surface misses fails here, not silently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lth_core import tweaks
from lth_core.config import SpendConfig, TweakConfig, content_key
from lth_core.tweaks import REGISTRY, TWEAKS
from lth_core.tweaks.base import HOOKS, Tweak
from conftest import tiny_ticket

NAMES = [t.name for t in REGISTRY]


def on(tweak: Tweak) -> TweakConfig:
    """The vanilla config with only `tweak` switched on (its declared example)."""
    return tweaks.from_flat({tweak.name: tweak.example})


def test_tweak_config_has_one_vanilla_field_per_tweak():
    assert [f.name for f in dataclasses.fields(TweakConfig)] == NAMES
    vanilla = TweakConfig()
    assert vanilla.describe() == "vanilla" and not vanilla.active()
    for tweak in REGISTRY:
        assert not tweak.is_on(getattr(vanilla, tweak.name)), tweak.name


@pytest.mark.parametrize("name", NAMES)
def test_a_tweak_declares_a_summary_a_search_an_example_and_its_hooks(name):
    tweak = TWEAKS[name]
    assert tweak.summary and tweak.search and tweak.hooks(), name
    assert set(tweak.hooks()) <= set(HOOKS)
    assert tweak.is_on(tweak.decode(tweak.example)), f"{name}: its example must switch it on"
    for choice in tweak.search:
        tweak.decode(choice)


@pytest.mark.parametrize("name", NAMES)
def test_label_names_the_tweak_and_vanilla_keys_stay(name):
    tweak = TWEAKS[name]
    config = on(tweak)
    label = tweak.label(getattr(config, name))
    assert label and config.describe() == label
    spend = SpendConfig(ticket=tiny_ticket(), tweaks=config)
    assert spend.key != SpendConfig(ticket=tiny_ticket()).key
    # Off is the vanilla value, left out of the key: a store made before the tweak existed still fits.
    assert content_key(SpendConfig(ticket=tiny_ticket(), tweaks=TweakConfig())) == SpendConfig(ticket=tiny_ticket()).key


@pytest.mark.parametrize("name", [t.name for t in REGISTRY if t.section is not None])
def test_each_setting_of_a_section_tweak_changes_its_label(name):
    """The report groups runs by label: two settings of one tweak must not share one."""
    tweak = TWEAKS[name]
    defaults = tweak.section()
    labels = [tweak.label(defaults)]
    for f in dataclasses.fields(tweak.section):
        value = getattr(defaults, f.name)
        changed = value + 1 if isinstance(value, int) else value / 2
        labels.append(tweak.label(dataclasses.replace(defaults, **{f.name: changed})))
    assert len(set(labels)) == len(labels), labels


@pytest.mark.parametrize("name", NAMES)
def test_flat_form_round_trips_through_trial_dicts(name):
    from trainables.common import tweaks_from_trial

    config = on(TWEAKS[name])
    flat = tweaks.to_flat(config)
    assert tweaks.from_flat(flat) == config
    assert tweaks_from_trial({"tweaks": {}, name: flat[name]}) == config
    assert tweaks_from_trial({"tweaks": dataclasses.asdict(config)}) == config


@pytest.mark.parametrize("name", NAMES)
def test_core_cli_has_the_tweak_flag_and_its_settings(name):
    from lth_core.cli import build_parser, spend_from_args

    tweak = TWEAKS[name]
    ticket = ["--keep-epochs", "1,2", "--epochs", "3"]
    argv = ["spend", *ticket, tweaks.flag_name(tweak), str(tweak.example)]
    config = spend_from_args(build_parser().parse_args(argv))
    assert config.tweaks == on(tweak)
    if tweak.section is not None:
        alone = spend_from_args(build_parser().parse_args(["spend", *ticket, tweaks.flag_name(tweak)]))
        assert getattr(alone.tweaks, name) == tweak.section()
        options = build_parser()._subparsers._group_actions[0].choices["spend"]._option_string_actions
        for f in dataclasses.fields(tweak.section):
            assert tweaks.flag_name(tweak, f.name) in options, f.name


@pytest.mark.parametrize("name", NAMES)
def test_sweeps_search_and_set_every_tweak(name):
    from sweeps.config import OptunaSpace, SweepConfig
    from sweeps.optuna_search import optuna_space

    tweak = TWEAKS[name]
    assert getattr(OptunaSpace(), name) == tweak.search
    sweep = SweepConfig(ticket=tiny_ticket())
    assert name in optuna_space(sweep)
    grid = SweepConfig(ticket=tiny_ticket(), combos=(on(tweak),))
    assert [s.tweaks for s in grid.spends()] == [on(tweak)] * len(grid.spends())


@pytest.mark.parametrize("name", NAMES)
def test_mlflow_params_name_the_tweak_and_read_back(name):
    tweak = TWEAKS[name]
    config = on(tweak)
    params = tweaks.mlflow_params(config)
    vanilla = tweaks.mlflow_params(TweakConfig())
    assert set(NAMES) <= set(params) and params[name] != vanilla[name]
    assert all(isinstance(v, str) for v in params.values())
    assert tweaks.from_params(params) == config
    assert tweaks.from_params(vanilla) == TweakConfig()


def test_docs_table_is_the_registry():
    page = (Path(__file__).parent.parent / "docs" / "tweaks.md").read_text()
    assert tweaks.docs_table() in page, "docs/tweaks.md is out of date: paste `python -m lth_core tweaks`"


@pytest.mark.parametrize("name", NAMES)
def test_config_files_and_combos_take_the_flat_spelling(name):
    """`combos=[{kd: "0.5,4"}, {rescale_init: on}]` in a sweep file means what the flags mean."""
    from lth_core.config import from_dict
    from sweeps.config import SweepConfig

    tweak = TWEAKS[name]
    assert from_dict(TweakConfig, {name: tweak.example}) == on(tweak)
    sweep = from_dict(SweepConfig, {"ticket": dataclasses.asdict(tiny_ticket()), "combos": [{name: tweak.example}]})
    assert sweep.combos == (on(tweak),)


def test_a_section_with_its_first_setting_alone_reads_back_from_params_parsed_as_numbers():
    """A report table parses the param "390" (GradInit's iterations alone) into a number."""
    config = tweaks.from_flat({"rescale_init": {"iterations": 390}})
    params = tweaks.mlflow_params(config)
    assert params["rescale_init"] == "390"
    parsed = {k: (int(v) if v.isdigit() else v) for k, v in params.items()}
    assert tweaks.from_params(parsed) == config


def test_two_plug_ins_of_one_name_are_refused_when_the_registry_loads():
    """Names key flags, params and store paths: a second module defining a taken name must not load."""
    from lth_core import registry

    plugins, by_name = registry.load("lth_core.tweaks", ["activations", "skips"], "TWEAK")
    assert [p.name for p in plugins] == list(by_name) == ["activation", "skip"]
    with pytest.raises(ImportError, match="more than one module defines activation"):
        registry.load("lth_core.tweaks", ["activations", "skips", "activations"], "TWEAK")
