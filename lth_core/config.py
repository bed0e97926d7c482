"""The core's configuration types: what a draw needs and what a spend re-trains.

One configuration type flows from the sweep to the core: a `TicketConfig` says
what a draw needs (data, model, dense recipe, pruning); a `SpendConfig` names a
ticket, a level and the re-training settings (recipe and `TweakConfig`, which
`lth_core.tweaks` derives from its registry). All are frozen dataclasses with
stable content keys (`lth_core.schema`, re-exported here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lth_core.mask_sources import SOURCES, MaskSource
from lth_core.models import ARCHS
from lth_core.schema import (Config, ConfigError, canonical_json, choice, content_key, dump_config, from_dict,
                             key_dict, load_config, not_keyed, read_mapping, replace, require, to_dict)
from lth_core.tweaks import TweakConfig, check_spend

__all__ = ["ARCHS", "Config", "ConfigError", "DataConfig", "ModelConfig", "PruneConfig", "RecipeConfig",
           "SpendConfig", "TicketConfig", "TweakConfig", "canonical_json", "content_key", "dump_config",
           "from_dict", "key_dict", "load_config", "read_mapping", "recipe_overlay", "replace", "to_dict"]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "tinyimagenet")
# Where a data set is read from when data.root is not set: Debian's and Ubuntu's package
# dataset-fashion-mnist installs the four official files here (digits ships with scikit-learn).
DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
PRUNE_METHODS = tuple(SOURCES)
PRUNE_SCOPES = ("global", "layerwise")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
GRAPHS = ("auto", "on", "off")
SEED_MAX = 2**63 - 1  # a seed fits a signed 64-bit integer: torch, numpy, sqlite and JSON readers all take it


def check_seed(seed: int, field_path: str) -> None:
    """Seeds are whole numbers in [0, SEED_MAX]: a negative one would let a control's derived seed
    (`tweaks.ticket_init.control_seed`) equal the ticket's, and a larger one does not fit torch."""
    require(0 <= seed <= SEED_MAX, field_path, f"must be in [0, 2**63 - 1], got {seed}")


@dataclass(frozen=True)
class DataConfig:
    """Which data set, and how the official training set is split 9:1 into train/validation.
    `train_size` > 0 trains on a seeded, stratified subset of that many training images;
    `test_size` > 0 tests on a fixed, stratified subset of the official test set, the same images
    for every config (its test accuracy is measured at every new best validation accuracy, so on
    a CPU a 10,000-image test set can cost more than the training): the knobs that size a CPU run
    on a large data set."""

    name: str = "digits"
    root: str | None = not_keyed(None)
    val_fraction: float = 0.1
    split_seed: int = 0
    augment: bool = True
    train_size: int = 0
    test_size: int = 0

    def __post_init__(self) -> None:
        choice(self.name, DATASETS, "data.name")
        require(0.0 < self.val_fraction <= 0.5, "data.val_fraction",
                 f"must be in (0, 0.5], got {self.val_fraction}: the validation split is held out of the training "
                 "set, at most half of it (default 0.1)")
        require(self.train_size >= 0, "data.train_size", f"must be >= 0 (0 = every training image), "
                                                         f"got {self.train_size}")
        require(self.test_size >= 0, "data.test_size", f"must be >= 0 (0 = the whole test set), got {self.test_size}")
        if self.name != "digits" and self.name not in DEFAULT_ROOTS:
            require(self.root is not None, "data.root",
                     f"data set {self.name!r} is read from a folder: set data.root (flag --data-root)")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture family and width multiplier; input channels and classes come from the data."""

    arch: str = "resnet18"
    width: float = 1.0

    def __post_init__(self) -> None:
        choice(self.arch, ARCHS, "model.arch")
        require(self.width > 0, "model.width", f"must be > 0, got {self.width}")


@dataclass(frozen=True)
class RecipeConfig:
    """SGD training recipe (the authors' defaults). `milestones=()` means 50% and 75% of the epochs.

    The unkeyed fields say how a run goes, not what it computes. `channels_last` is the memory
    format on CUDA and `channels_last_cpu` on the CPU (off by default: most CPU convolutions are
    slower in it; on, it runs the CUDA code path on a machine without one). `checkpoint_seconds`
    sets the checkpoint cadence: a checkpoint is due after the first epoch of a run (so a store
    that refuses it fails at once), after the last, and whenever waiting one more epoch would
    leave more than that many seconds unsaved; so a crash loses at most `checkpoint_seconds` or
    one epoch, whichever is longer. 0 checkpoints every epoch. `graphs` replays each training and
    evaluation step of the recipe's batch size as a CUDA graph (`lth_core.steps`): `on`, `off`,
    or `auto` (on where CUDA is, see `Runtime.resolve`); it changes speed, not results."""

    epochs: int = 180
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    device: str = not_keyed("auto")
    precision: str = not_keyed("auto")
    channels_last: bool = not_keyed(True)
    channels_last_cpu: bool = not_keyed(False)
    checkpoint_seconds: float = not_keyed(60.0)
    graphs: str = not_keyed("auto")

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "recipe.epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "recipe.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "recipe.lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "recipe.momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "recipe.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 < self.lr_gamma <= 1, "recipe.lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        for m in self.milestones:
            require(1 <= m < self.epochs, "recipe.milestones",
                     f"epoch {m} is past the last epoch ({self.epochs}); milestones must be in [1, {self.epochs - 1}]",
                     ("recipe.epochs",))
        require(list(self.milestones) == sorted(set(self.milestones)), "recipe.milestones",
                 f"must be strictly increasing, got {list(self.milestones)}")
        choice(self.device, DEVICES, "recipe.device")
        choice(self.precision, PRECISIONS, "recipe.precision")
        choice(self.graphs, GRAPHS, "recipe.graphs")
        require(self.checkpoint_seconds >= 0, "recipe.checkpoint_seconds",
                 f"must be >= 0 (0 checkpoints every epoch), got {self.checkpoint_seconds}")

    @property
    def lr_milestones(self) -> tuple[int, ...]:
        if self.milestones:
            return self.milestones
        return tuple(sorted({m for m in (self.epochs // 2, (3 * self.epochs) // 4) if 1 <= m < self.epochs}))


@dataclass(frozen=True)
class PruneConfig:
    """How masks are drawn (`method`: a source of `lth_core.mask_sources`). Level k has sparsity
    1 - (1 - rate)^k for every source, so results line up across sources. IMP reaches it in k
    rounds, each re-training the survivors from `rewind_epoch`; OMP prunes the trained dense net
    once per level; the pruning-at-init sources score the initialisation and train nothing.
    A one-shot source may take explicit `sparsities` instead."""

    method: str = "imp"
    rate: float = 0.2
    levels: int = 5
    sparsities: tuple[float, ...] = ()
    scope: str = "global"
    prune_linear: bool = False
    rewind_epoch: int = 0
    allow_empty_layers: bool = False

    def __post_init__(self) -> None:
        choice(self.method, PRUNE_METHODS, "pruning.method")
        choice(self.scope, PRUNE_SCOPES, "pruning.scope")
        require(0 < self.rate < 1, "pruning.rate", f"must be in (0, 1), got {self.rate}")
        require(self.levels >= 1, "pruning.levels", f"must be >= 1, got {self.levels}")
        require(self.rewind_epoch >= 0, "pruning.rewind_epoch", f"must be >= 0, got {self.rewind_epoch}")
        for s in self.sparsities:
            require(0 <= s < 1, "pruning.sparsities", f"sparsity {s} is outside [0, 1)")
        if self.sparsities:
            require(self.method != "imp", "pruning.sparsities",
                     "explicit sparsities are for one-shot sources (omp and the pruning-at-init ones); "
                     "IMP follows 1 - (1 - rate)^k", ("pruning.method",))
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("levels", "rate"):  # given with sparsities, they would change the key and nothing else
                require(getattr(self, name) == defaults[name], f"pruning.{name}",
                         f"is not used with explicit sparsities (the draw has one level per sparsity); leave it "
                         f"at its default ({defaults[name]}) or drop pruning.sparsities", ("pruning.sparsities",))
        require(self.scope == "global" or self.source.uses_scope, "pruning.scope",
                 f"{self.method} sets each layer's sparsity itself and ignores the scope; leave pruning.scope "
                 "global, or pick a source that ranks scores (imp, omp, snip, grasp, synflow)", ("pruning.method",))
        if self.source.at_init:
            require(self.rewind_epoch == 0, "pruning.rewind_epoch",
                     f"{self.method} draws its masks at initialisation and trains no level; rewind a spend "
                     "instead (tweak rewind_epoch, flag --rewind-epoch)")

    @property
    def source(self) -> MaskSource:
        return SOURCES[self.method]

    @property
    def retrain_text(self) -> str:
        """How each level re-trains, for a plan line: nothing from init, else the rewound epoch."""
        return f", rewound to epoch {self.rewind_epoch}" if self.rewind_epoch else ""

    def level_sparsities(self) -> tuple[float, ...]:
        """Target sparsity of levels 1..L."""
        if self.sparsities:
            return self.sparsities
        return tuple(1 - (1 - self.rate) ** k for k in range(1, self.levels + 1))


@dataclass(frozen=True)
class TicketConfig:
    """Everything a draw needs. `keep_epochs` are the dense run's epochs whose weights are kept
    as rewind points (epoch 0, the initialisation, is always kept)."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    recipe: RecipeConfig = RecipeConfig()
    pruning: PruneConfig = PruneConfig()
    keep_epochs: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        # Epoch 0 is always kept and order does not matter: one spelling, one key.
        object.__setattr__(self, "keep_epochs", tuple(sorted(set(self.keep_epochs) - {0})))
        for e in self.keep_epochs:
            require(0 <= e < self.recipe.epochs, "keep_epochs",
                     f"epoch {e} is not in the dense run of {self.recipe.epochs} epoch(s) (epochs "
                     f"0..{self.recipe.epochs - 1})", ("recipe.epochs",))
        require(self.pruning.rewind_epoch in self.rewind_epochs, "pruning.rewind_epoch",
                 f"IMP rewinds to epoch {self.pruning.rewind_epoch}, which the dense run does not keep; "
                 f"add it to keep_epochs (kept: {list(self.rewind_epochs)})", ("keep_epochs",))
        check_seed(self.seed, "seed")

    @property
    def rewind_epochs(self) -> tuple[int, ...]:
        return tuple(sorted({0, *self.keep_epochs}))

    @property
    def num_levels(self) -> int:
        return len(self.pruning.level_sparsities())

    @property
    def key(self) -> str:
        return content_key(self)


@dataclass(frozen=True)
class SpendConfig:
    """Re-train level `level` of a ticket. `recipe=None` re-uses the ticket's dense recipe.
    `snapshot_epochs` are the epochs after which the spend's weights are kept besides its final
    ones (0 = the starting weights), for the analyses at an epoch; they change nothing the spend
    computes, so they are no part of its key."""

    ticket: TicketConfig = TicketConfig()
    level: int = 1
    recipe: RecipeConfig | None = None
    tweaks: TweakConfig = TweakConfig()
    seed: int = 0
    snapshot_epochs: tuple[int, ...] = not_keyed(())

    def __post_init__(self) -> None:
        n = self.ticket.num_levels
        require(0 <= self.level <= n, "level", f"must be in [0, {n}] (0 is the dense net), got {self.level}",
                 ("ticket.pruning.levels",))
        check_seed(self.seed, "seed")
        # Order and repeats do not matter: one spelling.
        object.__setattr__(self, "snapshot_epochs", tuple(sorted(set(self.snapshot_epochs))))
        epochs = self.train_recipe.epochs
        for e in self.snapshot_epochs:
            require(0 <= e <= epochs, "snapshot_epochs",
                     f"epoch {e} is not in the spend (epochs 0..{epochs}, 0 = the starting weights)")
        check_spend(self)

    @property
    def train_recipe(self) -> RecipeConfig:
        return self.recipe if self.recipe is not None else self.ticket.recipe

    @property
    def sparsity(self) -> float:
        return 0.0 if self.level == 0 else self.ticket.pruning.level_sparsities()[self.level - 1]

    @property
    def key(self) -> str:
        return content_key(self)


def recipe_overlay(base: RecipeConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """A spend recipe given in part: the fields not given come from the ticket's recipe (its
    explicit milestones only while the epochs stay the same)."""
    merged = to_dict(base)
    if "epochs" in changes and "milestones" not in changes:
        merged["milestones"] = []
    return {**merged, **changes}


