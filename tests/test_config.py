"""Configs: validation with clear errors, stable content keys, JSON/YAML round trips."""

import dataclasses

import pytest

from lth_core.config import (ConfigError, DataConfig, ModelConfig, PruneConfig, RecipeConfig, SpendConfig,
                             TicketConfig, TweakConfig, content_key, dump_config, from_dict, load_config, replace,
                             to_dict)
from lth_core.tweaks.distillation import KDConfig


def test_default_keys_are_stable_literals():
    # Pinned: a change here would orphan every stored artifact.
    assert TicketConfig().key == content_key(TicketConfig())
    assert len(TicketConfig().key) == 20
    assert TicketConfig().key != SpendConfig().key


def test_key_ignores_defaults_and_location_fields():
    base = TicketConfig()
    same = TicketConfig(recipe=RecipeConfig(device="cpu", precision="fp32"))
    assert base.key == same.key
    assert TicketConfig(data=DataConfig(name="cifar10", root="/a")).key == \
        TicketConfig(data=DataConfig(name="cifar10", root="/b")).key
    assert TicketConfig(seed=1).key != base.key
    assert TicketConfig(model=ModelConfig(width=0.5)).key != base.key


def test_adding_a_defaulted_field_keeps_old_keys():
    @dataclasses.dataclass(frozen=True)
    class Old:
        a: int = 1

    @dataclasses.dataclass(frozen=True)
    class Old2:  # same type name is what content_key hashes; emulate by renaming below
        a: int = 1
        b: int = 7

    Old2.__name__ = "Old"
    assert content_key(Old(a=3)) == content_key(Old2(a=3))
    assert content_key(Old2(a=3, b=8)) != content_key(Old(a=3))


def test_snapshot_epochs_are_no_part_of_a_spend_key():
    assert SpendConfig(snapshot_epochs=(5, 180)).key == SpendConfig().key


def test_vanilla_spend_key_does_not_depend_on_tweak_section():
    assert SpendConfig().key == SpendConfig(tweaks=TweakConfig()).key
    assert SpendConfig(tweaks=TweakConfig(kd=KDConfig())).key != SpendConfig().key


def test_json_and_yaml_round_trip(tmp_path):
    spend = SpendConfig(ticket=TicketConfig(keep_epochs=(2,), model=ModelConfig(width=0.25)), level=3,
                        tweaks=TweakConfig(activation="swish", kd=KDConfig(alpha=0.5), rewind_epoch=2))
    for name in ("s.json", "s.yaml"):
        dump_config(spend, tmp_path / name)
        back = load_config(SpendConfig, tmp_path / name)
        assert back == spend and back.key == spend.key
    assert from_dict(SpendConfig, to_dict(spend)) == spend


def test_replace_with_dotted_paths():
    spend = replace(SpendConfig(), **{"ticket.seed": 3, "tweaks.activation": "mish", "level": 2})
    assert spend.ticket.seed == 3 and spend.tweaks.activation == "mish" and spend.level == 2


@pytest.mark.parametrize("build, field, words", [
    (lambda: DataConfig(name="imagenet"), "data.name", "allowed: digits"),
    (lambda: DataConfig(name="cifar10"), "data.root", "--data-root"),
    (lambda: DataConfig(name="mnist"), "data.root", "--data-root"),
    (lambda: DataConfig(train_size=-1), "data.train_size", ">= 0"),
    (lambda: DataConfig(test_size=-1), "data.test_size", ">= 0"),
    (lambda: ModelConfig(arch="resnet50"), "model.arch", "resnet18"),
    (lambda: RecipeConfig(lr=-0.1), "recipe.lr", "> 0"),
    (lambda: RecipeConfig(weight_decay=-1.0), "recipe.weight_decay", ">= 0"),
    (lambda: RecipeConfig(epochs=0), "recipe.epochs", ">= 1"),
    (lambda: RecipeConfig(epochs=10, milestones=(5, 12)), "recipe.milestones", "past the last epoch"),
    (lambda: PruneConfig(rate=1.5), "pruning.rate", "(0, 1)"),
    (lambda: PruneConfig(method="omp", sparsities=(0.5, 1.0)), "pruning.sparsities", "outside [0, 1)"),
    (lambda: PruneConfig(sparsities=(0.5,)), "pruning.sparsities", "omp"),
    (lambda: TicketConfig(recipe=RecipeConfig(epochs=4), keep_epochs=(6,)), "keep_epochs", "not in the dense run"),
    (lambda: TicketConfig(pruning=PruneConfig(rewind_epoch=2)), "pruning.rewind_epoch", "keep_epochs"),
    (lambda: SpendConfig(tweaks=TweakConfig(rewind_epoch=3)), "tweaks.rewind_epoch", "keeps epochs [0]"),
    (lambda: SpendConfig(level=9), "level", "[0, 5]"),
    (lambda: TweakConfig(activation="tanh"), "tweaks.activation", "swish"),
    (lambda: TweakConfig(skip="dense"), "tweaks.skip", "identity"),
    (lambda: TweakConfig(label_smoothing=1.0), "tweaks.label_smoothing", "[0, 1)"),
    (lambda: KDConfig(temperature=0.0), "tweaks.kd.temperature", "> 0"),
])
def test_bad_values_name_the_field(build, field, words):
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.field_path == field
    assert words in str(info.value)


def test_unknown_and_mistyped_fields_from_files():
    with pytest.raises(ConfigError, match="recipe.epoch: unknown field; known fields: epochs"):
        from_dict(TicketConfig, {"recipe": {"epoch": 3}})
    with pytest.raises(ConfigError, match="recipe.epochs: expected an integer"):
        from_dict(TicketConfig, {"recipe": {"epochs": "3"}})
    with pytest.raises(ConfigError, match="config file .* not found"):
        load_config(TicketConfig, "/nonexistent.yaml")


def test_level_schedule_is_one_minus_point_eight_to_the_k():
    levels = PruneConfig(levels=16).level_sparsities()
    assert [round(100 * s, 1) for s in levels] == [20.0, 36.0, 48.8, 59.0, 67.2, 73.8, 79.0, 83.2, 86.6,
                                                   89.3, 91.4, 93.1, 94.5, 95.6, 96.5, 97.2]


def test_default_milestones_are_half_and_three_quarters():
    assert RecipeConfig(epochs=180).lr_milestones == (90, 135)
    assert RecipeConfig(epochs=4).lr_milestones == (2, 3)
    assert RecipeConfig(epochs=1).lr_milestones == ()


def test_equal_configs_get_equal_keys():
    a = SpendConfig(tweaks=TweakConfig(kd=KDConfig(temperature=4)))
    b = from_dict(SpendConfig, {"tweaks": {"kd": {"temperature": 4}}})
    assert a == b and a.key == b.key
    assert TicketConfig(keep_epochs=(3, 0, 3), recipe=RecipeConfig(epochs=10)).key == \
        TicketConfig(keep_epochs=(3,), recipe=RecipeConfig(epochs=10)).key


def test_a_partial_spend_recipe_keeps_the_rest_of_the_ticket_recipe():
    from lth_core.config import recipe_overlay

    base = RecipeConfig(epochs=8, lr=0.05, batch_size=64, milestones=(3, 6), device="cpu")
    merged = from_dict(RecipeConfig, recipe_overlay(base, {"epochs": 4}))
    assert (merged.epochs, merged.lr, merged.batch_size, merged.device) == (4, 0.05, 64, "cpu")
    assert merged.lr_milestones == (2, 3)  # the ticket's explicit milestones were for 8 epochs
    assert from_dict(RecipeConfig, recipe_overlay(base, {"lr": 0.2})).milestones == (3, 6)
