"""What both trainables share: turning a trial's config into the core's config types."""

from __future__ import annotations

from typing import Any

from lth_core.config import RecipeConfig, SpendConfig, TicketConfig, TweakConfig, from_dict

FLAT_TWEAKS = ("activation", "skip", "label_smoothing", "kd", "rescale_init", "rewind_epoch")
"""Tweak parameters a search algorithm may set directly in a trial's config (flat, simple values)."""


def tweaks_from_trial(config: dict[str, Any]) -> TweakConfig:
    """`config["tweaks"]` (a TweakConfig dict) with any flat search parameters laid over it:
    kd is "off" or "ALPHA,T"; rescale_init is a bool."""
    tweaks = dict(config.get("tweaks") or {})
    for name in FLAT_TWEAKS:
        if name not in config:
            continue
        value = config[name]
        if name == "kd":
            value = None if value in (None, "off") else dict(zip(("alpha", "temperature"),
                                                                (float(v) for v in str(value).split(","))))
        elif name == "rescale_init":
            value = {} if value is True else None if value is False else value
        tweaks[name] = value
    return from_dict(TweakConfig, tweaks)


def on_granted_devices(config: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """A trial granted no GPU trains on the CPU even where the node has one: Ray hides GPUs only
    from trials it gives some. The device is no part of a content key, so keys stay the same."""
    if config.get("gpus_per_trial"):
        return recipe
    return {**recipe, "device": "cpu"}


def ticket_from_trial(config: dict[str, Any]) -> TicketConfig:
    ticket = dict(config["ticket"])
    ticket["recipe"] = on_granted_devices(config, ticket.get("recipe") or {})
    return from_dict(TicketConfig, ticket)


def spend_from_trial(config: dict[str, Any]) -> SpendConfig:
    recipe = config.get("spend_recipe")
    return SpendConfig(ticket=ticket_from_trial(config), level=int(config["level"]),
                       recipe=from_dict(RecipeConfig, on_granted_devices(config, recipe)) if recipe else None,
                       tweaks=tweaks_from_trial(config), seed=int(config.get("seed", 0)))


def device_share(config: dict[str, Any]) -> float:
    """The share of devices a trial holds: its GPUs when it has some, else its CPUs."""
    return float(config.get("gpus_per_trial") or config.get("cpus_per_trial") or 1.0)
