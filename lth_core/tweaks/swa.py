"""Stochastic weight averaging (Izmailov et al. 2018): average the weights of the last epochs,
then recompute BatchNorm statistics for the average. The paper names trajectory averaging among
the smoothness tweaks it builds on.

Built on `torch.optim.swa_utils`: `AveragedModel` keeps the running average, `SWALR` anneals
the learning rate to `lr` once averaging starts (it replaces the recipe's schedule from then
on) and `update_bn` recomputes the BN statistics on the training data at the end. Every
averaged weight is an average of masked weights, so pruned weights stay exactly zero; the
training loop re-applies the mask after the average is loaded all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from lth_core.hooks import Loop, TrainHook
from lth_core.schema import require
from lth_core.tweaks.base import SpendContext, Tweak


@dataclass(frozen=True)
class SWAConfig:
    """When averaging starts and the learning rate it trains at."""

    start: float = field(default=0.75, metadata={"help": "share of the epochs after which averaging starts"})
    lr: float = field(default=0.05, metadata={"help": "learning rate while averaging (SWALR)"})

    def __post_init__(self) -> None:
        require(0 <= self.start < 1, "tweaks.swa.start", f"must be in [0, 1), got {self.start}")
        require(self.lr > 0, "tweaks.swa.lr", f"must be > 0, got {self.lr}")

    def first_epoch(self, epochs: int) -> int:
        """The first epoch (1-based) whose weights go into the average."""
        return math.floor(self.start * epochs) + 1


class SWAHook(TrainHook):
    name = "swa"

    def __init__(self, config: SWAConfig):
        self.config = config
        self.averaged: AveragedModel | None = None
        self.scheduler: SWALR | None = None
        self.restored: dict[str, Any] | None = None

    def on_train_start(self, loop: Loop) -> None:
        self.averaged = AveragedModel(loop.model)
        self.scheduler = SWALR(loop.optimizer, swa_lr=self.config.lr, anneal_epochs=1, anneal_strategy="cos")
        if self.restored is not None:
            self.averaged.load_state_dict(self.restored["averaged"])
            self.scheduler.load_state_dict(self.restored["scheduler"])

    def on_epoch_start(self, loop: Loop) -> None:
        if loop.epoch >= self.config.first_epoch(loop.epochs):
            loop.scheduler = self.scheduler

    def on_epoch_end(self, loop: Loop) -> None:
        if loop.epoch >= self.config.first_epoch(loop.epochs):
            self.averaged.update_parameters(loop.model)

    def on_train_end(self, loop: Loop) -> bool:
        if int(self.averaged.n_averaged) == 0:
            return False
        with torch.no_grad():
            for mine, average in zip(loop.model.parameters(), self.averaged.module.parameters()):
                mine.copy_(average)
        from lth_core.data import iterate_batches, lone_last_image

        drop = lone_last_image(loop.dataset, "train", loop.batch_size)
        batches = (loop.runtime.images(x) for x, _ in iterate_batches(loop.dataset, "train", loop.batch_size,
                                                                      drop_last=drop))
        update_bn(batches, loop.model)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state


class SWA(Tweak):
    name = "swa"
    summary = "stochastic weight averaging of the last epochs, BN statistics recomputed at the end"
    section = SWAConfig
    search = ("off", "on")

    def label(self, value: Any) -> str:
        return "swa" if value == SWAConfig() else f"swa{value.start:g},{value.lr:g}"

    def train_hooks(self, value: Any, ctx: SpendContext) -> list[TrainHook]:
        return [SWAHook(value)]


TWEAK = SWA()
