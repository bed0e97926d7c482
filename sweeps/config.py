"""Sweep settings: presets, YAML files and flags, all resolved into one frozen `SweepConfig`.

Precedence: preset < `--config FILE` < named flags < `--set dotted.field=value`.
Everything is validated before Ray, MLflow or any training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lth_core.config import (ARCHS, DATASETS, ConfigError, RecipeConfig, SpendConfig, TicketConfig, TweakConfig,
                             check_seed, from_dict, read_mapping, recipe_overlay, replace, to_dict)
from lth_core.flags import FlagTable, Parsed, add_flags, deep_merge, field_default, overrides, set_dotted
from lth_core.mask_sources import SOURCES
from lth_core.tweaks import REGISTRY


def _check_space(self: Any) -> None:
    """Each dimension: at least one choice, each once, each a flat value the tweak reads (Optuna
    samples plain values only: a mapping is refused with its flat spelling)."""
    for tweak in REGISTRY:
        choices = getattr(self, tweak.name)
        path = f"optuna_space.{tweak.name}"
        if not choices:
            raise ConfigError(path, "needs at least one choice")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(path, f"lists a choice twice: {list(choices)}")
        for value in choices:
            decoded = tweak.decode(value)
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise ConfigError(path, f"{value!r} is not a flat value Optuna can sample; write it as "
                                        f"{tweak.encode(decoded)!r}")


OptunaSpace = dataclasses.make_dataclass(
    "OptunaSpace", [(t.name, tuple[Any, ...], dataclasses.field(default=t.search)) for t in REGISTRY],
    namespace={"__post_init__": _check_space,
               "__doc__": "The tweak space Optuna searches at each level: categorical choices per registered "
                          "tweak, in flat form (lth_core.tweaks.base)."},
    frozen=True)
OptunaSpace.__module__ = __name__


@dataclass(frozen=True)
class SweepConfig:
    """A tweak grid over the sparsity levels of one or more tickets: one per data set (`datasets`),
    architecture (`archs`), mask source (`prune_methods`) and ticket seed; an empty list is the
    ticket's own setting. `analyze` analyses every spend's final weights, `analyze_epochs` its
    weights after those epochs (kept as snapshots)."""

    name: str = "smoke"
    ticket: TicketConfig = TicketConfig()
    datasets: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()
    prune_methods: tuple[str, ...] = ()
    ticket_seeds: tuple[int, ...] = (0,)
    spend_recipe: RecipeConfig | None = None
    levels: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)
    combos: tuple[TweakConfig, ...] = (TweakConfig(),)
    store: str = "artifacts"
    tracking_uri: str = "sqlite:///mlflow.db"
    results_dir: str = "ray_results"
    ray_address: str = "local"
    num_cpus: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0
    asha: bool = False
    asha_grace_epochs: int = 2
    analyze: bool = False
    analyze_epochs: tuple[int, ...] = ()
    hessian_every: int = 0
    optuna_trials: int = 8
    optuna_storage: str = "sqlite:///optuna.db"
    optuna_space: OptunaSpace = OptunaSpace()

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ ") or ".." in self.name or self.name.startswith("."):
            raise ConfigError("name", f"{self.name!r}: use a non-empty name without spaces, slashes, '..' or a "
                                      "leading '.'")
        for name, what in (("store", "a folder or a URI such as s3://bucket/prefix"),
                           ("tracking_uri", "sqlite:///mlflow.db or http://<server>"),
                           ("results_dir", "a folder (default ./ray_results)"),
                           ("optuna_storage", "sqlite:///optuna.db or a database URL"),
                           ("ray_address", "local, auto or host:port")):
            if not getattr(self, name).strip():
                raise ConfigError(name, f"is empty; give {what}")
        for name, least in (("num_cpus", 0), ("max_concurrent", 0), ("asha_grace_epochs", 1)):
            value = getattr(self, name)
            if value < least:
                raise ConfigError(name, f"must be >= {least}, got {value}")
        n = self.ticket.num_levels
        for level in self.levels:
            if not 0 <= level <= n:
                raise ConfigError("levels", f"level {level} is not drawn: the ticket has levels 0..{n}",
                                  ("ticket.pruning.levels",))
        for name in ("seeds", "ticket_seeds", "combos"):
            if not getattr(self, name):
                raise ConfigError(name, "needs at least one entry")
        for method in self.prune_methods:
            if method not in SOURCES:
                raise ConfigError("prune_methods", f"unknown mask source {method!r}; allowed: {', '.join(SOURCES)}")
        for name in ("seeds", "ticket_seeds"):
            for seed in getattr(self, name):
                check_seed(seed, name)
        for name in ("levels", "seeds", "ticket_seeds", "datasets", "archs", "prune_methods", "combos",
                     "analyze_epochs"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(name, f"lists an entry twice: {list(values)}")
        for name, values, allowed in (("datasets", self.datasets, DATASETS), ("archs", self.archs, ARCHS)):
            for value in values:
                if value not in allowed:
                    raise ConfigError(name, f"unknown value {value!r}; allowed: {', '.join(allowed)}")
        if self.cpus_per_trial <= 0:
            raise ConfigError("cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError("gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError("gpus_per_trial", "above 1 must be a whole number of GPUs")
        epochs = (self.spend_recipe or self.ticket.recipe).epochs
        if self.asha and self.asha_grace_epochs > epochs:
            raise ConfigError("asha_grace_epochs", f"{self.asha_grace_epochs} is more than the {epochs} epochs of a "
                                                   "spend: ASHA would stop nothing",
                              ("spend_recipe.epochs" if self.spend_recipe else "ticket.recipe.epochs",))
        if self.hessian_every < 0:
            raise ConfigError("hessian_every", f"must be >= 0 (0 = off), got {self.hessian_every}")
        if self.optuna_trials < 1:
            raise ConfigError("optuna_trials", f"must be >= 1, got {self.optuna_trials}")
        epochs = (self.spend_recipe or self.ticket.recipe).epochs
        for epoch in self.analyze_epochs:
            if not 0 <= epoch <= epochs:
                raise ConfigError("analyze_epochs", f"epoch {epoch} is not in a spend (epochs 0..{epochs}, 0 = its "
                                                    "starting weights)")
        self._check_spends()

    def _check_spends(self) -> None:
        """Every combination must be a valid spend before anything runs; a problem is named where
        the sweep sets it (`ticket.pruning.sparsities` with a mask source, `combos[2].init`)."""
        try:
            tickets = self.tickets()
        except ConfigError as e:  # the template fits its own source, not one that prune_methods names
            raise ConfigError(f"ticket.{e.field_path}", e.message, ("prune_methods",)) from None
        for index, tweaks in enumerate(self.combos):
            for ticket in tickets:
                try:
                    SpendConfig(ticket=ticket, level=self.spend_levels[0], recipe=self.spend_recipe, tweaks=tweaks,
                                seed=self.seeds[0])
                except ConfigError as e:
                    raise combo_error(e, index) from None

    @property
    def spend_levels(self) -> tuple[int, ...]:
        return self.levels or tuple(range(1, self.ticket.num_levels + 1))

    def tickets(self) -> list[TicketConfig]:
        datasets = self.datasets or (self.ticket.data.name,)
        archs = self.archs or (self.ticket.model.arch,)
        methods = self.prune_methods or (self.ticket.pruning.method,)
        return [replace(self.ticket, seed=s, **{"data.name": d, "model.arch": a, "pruning.method": m})
                for d in datasets for a in archs for m in methods for s in self.ticket_seeds]

    def spends(self) -> list[SpendConfig]:
        return [SpendConfig(ticket=t, level=level, recipe=self.spend_recipe, tweaks=tweaks, seed=seed,
                            snapshot_epochs=self.analyze_epochs)
                for t in self.tickets() for level in self.spend_levels for tweaks in self.combos
                for seed in self.seeds]


def combo_error(e: ConfigError, index: int) -> ConfigError:
    """A spend's error with its tweak paths named as the sweep sets them: tweaks.kd -> combos[2].kd."""
    def path(p: str) -> str:
        return f"combos[{index}]{p[len('tweaks'):]}" if p == "tweaks" or p.startswith("tweaks.") else p

    return ConfigError(path(e.field_path), e.message, tuple(path(p) for p in e.related))


def _smoke() -> dict[str, Any]:
    """Digits, narrow ResNet-18, CPU: the whole sweep in a couple of minutes on 2 cores."""
    return {
        "name": "smoke",
        "ticket": {"model": {"arch": "resnet18", "width": 0.25},
                   "recipe": {"epochs": 5, "batch_size": 64, "device": "cpu"},
                   "pruning": {"levels": 5}, "keep_epochs": [1]},
        "prune_methods": ["imp", "random", "snip"],
        "levels": [2, 5],
        "combos": [{}, {"init": "reinit"},
                   {"activation": "swish", "skip": "identity", "label_smoothing": 0.1, "rewind_epoch": 1}],
        "optuna_trials": 4,
        "optuna_space": {"activation": ["relu", "swish"], "skip": ["none", "identity"],
                         "label_smoothing": [0.0, 0.1], "kd": ["off"], "rescale_init": ["off"],
                         "rewind_epoch": [0, 1]},
    }


def _paper() -> dict[str, Any]:
    """ResNet-18 on CIFAR-100 with the paper's recipe: IMP to 97.2% (16 levels), rewinding to epoch 33,
    every tweak alone and the paper's AT + TRT (Swish, a skip, label smoothing, GradInit) together,
    twice: with the identity skip and with the RepVGG 1x1 skip of the authors' code; all from init
    and rewound; GPUs."""
    gradinit = {"rescale_init": {"iterations": 390}}  # about one CIFAR epoch at batch 128, as GradInit does
    singles = [{}, {"activation": "swish"}, {"activation": "mish"}, {"skip": "identity"}, {"skip": "conv1x1"},
               {"label_smoothing": 0.1}, {"kd": {"alpha": 0.9, "temperature": 5.0}}, gradinit, {"swa": {}}]
    combined = [{"activation": "swish", "skip": skip, "label_smoothing": 0.1, **gradinit}
                for skip in ("identity", "conv1x1")]
    combos = [*singles, *combined]
    return {
        "name": "paper",
        "ticket": {"data": {"name": "cifar100", "root": os.environ.get("LTH_DATA_ROOT")},
                   "model": {"arch": "resnet18", "width": 1.0},
                   "recipe": {"epochs": 180, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                              "weight_decay": 2e-4},
                   "pruning": {"method": "imp", "rate": 0.2, "levels": 16}, "keep_epochs": [33]},
        "combos": combos + [{**c, "rewind_epoch": 33} for c in combos],
        "seeds": [0, 1, 2],
        "cpus_per_trial": 2.0,
        "gpus_per_trial": 1.0,  # graphed trials gain nothing from sharing a GPU: docs/benchmarks.md
        "asha": False,
        "optuna_trials": 24,
        "optuna_space": {"activation": ["relu", "swish", "mish"], "skip": ["none", "identity", "conv1x1"],
                         "label_smoothing": [0.0, 0.1], "kd": ["off", "on"], "rescale_init": ["off", "on"],
                         "rewind_epoch": [0, 33]},
    }


def _fidelity_digits() -> dict[str, Any]:
    """The first CPU fidelity design, on digits (docs/results.md has its run and the pilot that
    picked it): ResNet-18 x0.0625, 8 epochs, IMP to 97.2% sparsity (16 levels, rate 0.2), spent
    at 89.3% and 97.2% (levels 10 and 16), where the pilot's vanilla LTH fell 4.7 and 13.6 points
    below the dense net. Each AT + TRT tweak alone, rewinding alone, AT + TRT (the authors' RepVGG
    1x1 skip) from init and rewound, the reinit and shuffle controls; IMP, random and SNIP masks;
    5 ticket seeds (a pair = one ticket seed: its mask draw and initialisation, and with the one
    spend seed the same data order across tweaks); --analyze for Table A1. 300 trials. At 8x8
    input 62% of the prunable weights only ever see padding (lth_core.live): `fidelity` moved to
    Fashion-MNIST for that."""
    gradinit = {"rescale_init": "on"}
    at_trt = {"activation": "swish", "skip": "conv1x1", "label_smoothing": 0.1, **gradinit}
    return {
        "name": "fidelity-digits",
        "ticket": {"model": {"arch": "resnet18", "width": 0.0625},
                   "recipe": {"epochs": 8, "batch_size": 64, "device": "cpu"},
                   "pruning": {"method": "imp", "rate": 0.2, "levels": 16}, "keep_epochs": [1]},
        "prune_methods": ["imp", "random", "snip"],
        "levels": [10, 16],
        "ticket_seeds": [0, 1, 2, 3, 4],
        "seeds": [0],
        "combos": [{}, {"init": "reinit"}, {"init": "shuffle"},
                   {"activation": "swish"}, {"skip": "conv1x1"}, {"label_smoothing": 0.1}, gradinit,
                   {"rewind_epoch": 1}, at_trt, {**at_trt, "rewind_epoch": 1}],
        "cpus_per_trial": 1.0,
        "analyze": True,
        "optuna_trials": 4,
    }


def _fidelity_design(gradinit: dict[str, Any]) -> dict[str, Any]:
    """What `fidelity` and `fidelity-gpu` share: IMP to 98.8% (10 levels, rate 0.36: two of the
    paper's 0.2 steps per level, so its 89.3% and 97.2% are levels 5 and 8) spent at 89.3% and 98.8%
    (levels 5 and 10), the top level being where the pilot's vanilla tickets fell below the dense
    net (docs/fidelity.md); IMP, random (ERK layer densities) and SNIP masks; 5 paired ticket seeds
    (a pair = one ticket seed, its mask draw and initialisation, with the one spend seed the same
    data order across combinations); the reinit and shuffle controls, each AT + TRT tweak alone,
    rewinding alone, and AT + TRT with the identity and with the RepVGG 1x1 skip, each from init
    and rewound to epoch 1: 12 combinations, 360 trials. Random masks use ERK's densities because
    uniform ones must empty ResNet-18 x0.0625's 32- and 36-weight layers past 98.4%."""
    at_trt = {"activation": "swish", "label_smoothing": 0.1, "rescale_init": gradinit}
    combos = [{}, {"init": "reinit"}, {"init": "shuffle"},
              {"activation": "swish"}, {"skip": "conv1x1"}, {"label_smoothing": 0.1}, {"rescale_init": gradinit},
              {"rewind_epoch": 1}]
    for skip in ("identity", "conv1x1"):
        combos += [{**at_trt, "skip": skip}, {**at_trt, "skip": skip, "rewind_epoch": 1}]
    return {
        "ticket": {"data": {"name": "fashion-mnist"}, "model": {"arch": "resnet18"},
                   "pruning": {"method": "imp", "rate": 0.36, "levels": 10}, "keep_epochs": [1]},
        "prune_methods": ["imp", "erk", "snip"],
        "levels": [5, 10],
        "ticket_seeds": [0, 1, 2, 3, 4],
        "seeds": [0],
        "combos": combos,
        "optuna_trials": 4,
    }


def _fidelity() -> dict[str, Any]:
    """The paper's claims on Fashion-MNIST on the CPU, where no weight is dead: at 28x28 every
    3x3 tap of ResNet-18 sees data (layer4 runs on 4x4 maps; lth_core.live), where digits' 8x8
    left 62% of them over padding. Sized from pilots to finish in about an hour on the 2-core
    machine (docs/fidelity.md, "Sizing the Fashion-MNIST fidelity run"):
    - x0.0625 (43,620 prunable weights, all live; 503 left at 98.8%): the width at which 360 spends
      fit the hour;
    - 800 training images (80 per class), 9 epochs at batch 32 with the lr dropped x0.1 at epochs
      6 and 8: the first run's 5 epochs left the dense net under-trained, below its own tickets;
      with 9 the pilot's vanilla tickets fell below it at 98.8% (2.5 points on 4 seeds);
    - 600 validation images (val_fraction 0.01) and a fixed 1,000-image test subset: the test set
      is evaluated at every new best validation accuracy, and the whole 10,000 cost more than the
      training; every run tests on the same images, so paired differences keep their meaning;
    - GradInit cut to 20 iterations of 32 images (640 images, most of one epoch of the subset, as
      the paper's search takes about one epoch of CIFAR), where its default 100 x 128 would cost
      about 50 s of CPU a spend;
    - no --analyze (C1 then cannot be judged): its Hessian power iteration costs about 5 s a spend
      at 28x28, 15 minutes over the grid."""
    design = _fidelity_design({"iterations": 20, "batch_size": 32})
    design["ticket"] = deep_merge(design["ticket"], {
        "data": {"train_size": 800, "val_fraction": 0.01, "test_size": 1000},
        "model": {"width": 0.0625},
        "recipe": {"epochs": 9, "batch_size": 32, "milestones": [6, 8], "device": "cpu"}})
    return {"name": "fidelity", **design, "cpus_per_trial": 1.0}


def _fidelity_gpu() -> dict[str, Any]:
    """`fidelity`'s design on one GPU at full scale: ResNet-18 x0.5 (2.79M prunable weights, all
    live) on the whole Fashion-MNIST (54,000 training, 6,000 validation and 10,000 test images),
    2 epochs at batch 128 (lr 0.1, then 0.01; the rewind point, epoch 1, is half of training),
    GradInit at its defaults, four trials per GPU. 2 epochs is what about 10 minutes of one H200
    holds for 360 spends and 55 IMP stages: docs/fidelity.md has the estimate and its basis."""
    design = _fidelity_design({})
    design["ticket"] = deep_merge(design["ticket"], {
        "model": {"width": 0.5},
        "recipe": {"epochs": 2, "batch_size": 128, "device": "cuda"}})
    # Four at once although graphed trials only take turns on a GPU (docs/benchmarks.md): these
    # trials last seconds, and the others' start-up (process, CUDA context, MLflow) overlaps them.
    return {"name": "fidelity-gpu", **design, "cpus_per_trial": 2.0, "gpus_per_trial": 0.25}


def _generalization() -> dict[str, Any]:
    """Figures 6 and 7 on the CPU: vanilla LTH and AT + TRT (Swish, the RepVGG 1x1 skip, label
    smoothing, GradInit) across ResNet-18, ResNet-34, VGG-16 and MobileNet at width 0.0625 on
    digits, in the fidelity-digits preset's regime: 8 epochs, IMP to 97.2% (16 levels), spent at 59%,
    83%, 93% and 97.2% (levels 4, 8, 12, 16), 3 ticket seeds. The report's cross-family panel
    draws it. Another offline data set joins with --datasets (docs/report.md: its cost)."""
    at_trt = {"activation": "swish", "skip": "conv1x1", "label_smoothing": 0.1, "rescale_init": "on"}
    return {
        "name": "generalization",
        "ticket": {"model": {"arch": "resnet18", "width": 0.0625},
                   "recipe": {"epochs": 8, "batch_size": 64, "device": "cpu"},
                   "pruning": {"method": "imp", "rate": 0.2, "levels": 16}},
        "datasets": ["digits"],
        "archs": list(ARCHS),
        "levels": [4, 8, 12, 16],
        "ticket_seeds": [0, 1, 2],
        "combos": [{}, at_trt],
        "cpus_per_trial": 1.0,
        "optuna_trials": 4,
    }


def _generalization_gpu() -> dict[str, Any]:
    """Figures 6 and 7 as the paper ran them, on GPUs: the four architectures at width 1 on
    CIFAR-10, CIFAR-100 and Tiny-ImageNet ($LTH_DATA_ROOT: the folder holding the three extracted
    data sets) with the paper's recipe (180 epochs, IMP to 97.2%), vanilla LTH and AT + TRT at
    every level, 3 ticket seeds."""
    gpu = _paper()
    return {
        "name": "generalization-gpu",
        "ticket": {**gpu["ticket"], "model": {"arch": "resnet18", "width": 1.0}, "keep_epochs": []},
        "datasets": ["cifar10", "cifar100", "tinyimagenet"],
        "archs": list(ARCHS),
        "ticket_seeds": [0, 1, 2],
        "combos": [{}, {"activation": "swish", "skip": "conv1x1", "label_smoothing": 0.1,
                        "rescale_init": {"iterations": 390}}],
        "cpus_per_trial": gpu["cpus_per_trial"],
        "gpus_per_trial": gpu["gpus_per_trial"],
        "optuna_trials": gpu["optuna_trials"],
    }


PRESETS = {"smoke": _smoke, "paper": _paper, "fidelity": _fidelity, "fidelity-digits": _fidelity_digits,
           "fidelity-gpu": _fidelity_gpu, "generalization": _generalization,
           "generalization-gpu": _generalization_gpu}





# flag -> (dotted field of SweepConfig, kind, help); kinds: lth_core.flags
FLAGS: FlagTable = {
    "--name": ("name", str, "sweep name: MLflow experiment, Ray Tune experiment (rerun it to resume)"),
    "--store": ("store", str, "artifact store: folder or pyarrow URI (s3://bucket/prefix); default $LTH_STORE_URI or ./artifacts"),
    "--tracking-uri": ("tracking_uri", str, "MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"),
    "--results-dir": ("results_dir", str, "Ray Tune storage path and its log file (shared or s3:// on a "
                                          "multi-node cluster)"),
    "--ray-address": ("ray_address", str, "'local' (default) starts Ray in-process; 'auto' or an address joins a "
                                          "cluster; a driver started by `ray job submit` joins its cluster"),
    "--num-cpus": ("num_cpus", int, "CPUs of the in-process Ray (0 = all)"),
    "--data-root": ("ticket.data.root", str, "folder with the data set's files (preset paper: $LTH_DATA_ROOT; "
                                             "fashion-mnist: /usr/share/datasets/fashion-mnist when not set)"),
    "--dataset": ("ticket.data.name", str, "digits | mnist | fashion-mnist | cifar10 | cifar100 | tinyimagenet"),
    "--train-size": ("ticket.data.train_size", int, "train on a seeded, stratified subset of this many images "
                                                    "(0 = all)"),
    "--arch": ("ticket.model.arch", str, "resnet18 | resnet34 | vgg16 | mobilenet"),
    "--width": ("ticket.model.width", float, "width multiplier"),
    "--epochs": ("ticket.recipe.epochs", int, "epochs of the dense run and each IMP level"),
    "--num-levels": ("ticket.pruning.levels", int, "IMP levels to draw"),
    "--device": ("ticket.recipe.device", str, "auto | cpu | cuda"),
    "--levels": ("levels", "ints", "levels to spend, comma separated (default: smoke 2,5; paper every drawn "
                                  "level); the number of levels to draw is --num-levels"),
    "--seeds": ("seeds", "ints", "re-training seeds, comma separated"),
    "--ticket-seeds": ("ticket_seeds", "ints", "one ticket per seed, comma separated"),
    "--datasets": ("datasets", Parsed(lambda text: [d.strip() for d in text.split(",") if d.strip()], "DATASETS"),
                   "one draw per data set, comma separated (default: --dataset's)"),
    "--archs": ("archs", Parsed(lambda text: [a.strip() for a in text.split(",") if a.strip()], "ARCHS"),
                "one draw per architecture, comma separated (default: --arch's)"),
    "--prune-methods": ("prune_methods", Parsed(lambda text: [m.strip() for m in text.split(",") if m.strip()],
                                                "METHODS"),
                        "mask sources, one draw each, comma separated: " + ", ".join(SOURCES)),
    "--cpus-per-trial": ("cpus_per_trial", float, "CPUs per trial"),
    "--gpus-per-trial": ("gpus_per_trial", float, "GPUs per trial (0.25 puts four trials on a GPU; graphed trials do not gain from it)"),
    "--max-concurrent": ("max_concurrent", int, "most trials at once (0 = as resources allow)"),
    "--asha": ("asha", "flag", "stop weak combinations early (ASHA on validation accuracy)"),
    "--analyze": ("analyze", "flag", "log activation sparsity, the top Hessian eigenvalue and the loss landscapes "
                                     "(weights and inputs) of every spend's final weights"),
    "--analyze-epochs": ("analyze_epochs", "ints", "also analyse every spend's weights after these epochs (kept as "
                                                   "snapshots; 0 = its start), comma separated"),
    "--hessian-every": ("hessian_every", int, "track the top Hessian eigenvalue every N epochs of each spend"),
    "--optuna-trials": ("optuna_trials", int, "completed Optuna trials per level study, counted over every run"),
    "--optuna-storage": ("optuna_storage", str, "Optuna RDB storage URL (sqlite default; a database URL on a cluster)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS),
                        help="starting point: smoke (digits, CPU, minutes), fidelity (Fashion-MNIST, CPU, the "
                             "paper's claims where no weight is dead, under an hour on 2 cores), fidelity-digits "
                             "(the first, digits design of docs/results.md), fidelity-gpu (fidelity's design on "
                             "the whole Fashion-MNIST, about 10 minutes on one H200), paper (CIFAR-100, GPUs), "
                             "generalization (Figures 6 and 7: four architectures on the offline data sets, CPU) "
                             "or generalization-gpu (the same at width 1 on CIFAR-10/100 and Tiny-ImageNet, GPUs) "
                             "(default: smoke)")
    parser.add_argument("--config", help="YAML or JSON file with SweepConfig fields, laid over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any field, e.g. --set ticket.recipe.lr=0.05 (value parsed as YAML)")
    add_flags(parser, FLAGS, default_of=_preset_defaults())
    parser.add_argument("--dry-run", action="store_true", help="print the plan (draws, trials, resources) and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: LTH_DEBUG=1)")


def _preset_defaults() -> Any:
    """`dotted field -> its default as --help shows it`: the presets' values where they set the
    field ('smoke X; paper Y' when they differ), else SweepConfig's."""
    from lth_core.flags import default_text, field_default

    base = SweepConfig()
    presets = {name: make() for name, make in PRESETS.items()}

    def shown(dotted: str) -> str | None:
        values = {}
        for name, data in presets.items():
            value = field_default(data, dotted)
            if value is dataclasses.MISSING:
                value = field_default(base, dotted)
            if value is dataclasses.MISSING or dataclasses.is_dataclass(value):
                return None
            values[name] = default_text(tuple(value) if isinstance(value, list) else value)
        if len(set(values.values())) == 1:
            return next(iter(values.values()))
        return "; ".join(f"{name} {value}" for name, value in values.items())

    return shown


def sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    preset = PRESETS[args.preset]()
    preset.setdefault("store", os.environ.get("LTH_STORE_URI", "artifacts"))
    preset.setdefault("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    if os.environ.get("RAY_ADDRESS") and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        preset.setdefault("ray_address", os.environ["RAY_ADDRESS"])  # a driver started by `ray job submit`
    user = read_mapping(args.config) if args.config else {}  # what the user set, over the preset
    user = deep_merge(user, overrides(args, FLAGS))
    for item in args.set:
        field, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError("--set", f"{item!r}: use FIELD=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError("--set", f"{item!r}: the value does not parse as YAML ({' '.join(str(e).split())})"
                                       "; quote it, e.g. --set 'combos=[{kd: \"0.5,5\"}]'") from None
        set_dotted(user, field.strip(), value)
    data = deep_merge(_preset_under(preset, user), user)
    try:
        if isinstance(data.get("spend_recipe"), dict):  # given in part: the rest is the ticket's recipe
            data["spend_recipe"] = recipe_overlay(from_dict(TicketConfig, data.get("ticket"), "ticket.").recipe,
                                                  data["spend_recipe"])
        return resolve_paths(from_dict(SweepConfig, data))
    except ConfigError as e:
        message, related = e.message, e.related
        if data.get("prune_methods"):  # they pick the ticket's method: a hint names them
            related = tuple("prune_methods" if p == "ticket.pruning.method" else p for p in related)
        if field_default(user, e.field_path) is dataclasses.MISSING and \
                field_default(preset, e.field_path) is not dataclasses.MISSING:
            message += f" (the value of --preset {args.preset})"
        raise ConfigError(e.field_path, message, related) from None


def _preset_under(preset: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The preset as the user's settings leave it. With mask sources (`prune_methods`) the ticket's
    own `pruning.method` is not used: one the user sets that is not among them is refused, and the
    template takes the first source (so `pruning.sparsities` fit an OMP-only sweep). Explicit
    `pruning.sparsities` replace the preset's level schedule (`levels`, `rate`)."""
    preset = deep_merge(preset, {})
    methods = user.get("prune_methods", preset.get("prune_methods"))
    method = field_default(user, "ticket.pruning.method")
    pruning = preset.setdefault("ticket", {}).setdefault("pruning", {})
    if isinstance(methods, list) and methods:
        if method is not dataclasses.MISSING and method not in methods:
            listed = ", ".join(map(str, methods))
            raise ConfigError("ticket.pruning.method", f"{method!r} is not used: prune_methods ({listed}) names "
                                                       "the mask sources, one ticket each; put it there instead",
                              ("prune_methods",))
        sparsities = field_default(user, "ticket.pruning.sparsities") is not dataclasses.MISSING
        known = [m for m in methods if m in SOURCES]  # an unknown one is named by SweepConfig
        one_shot = [m for m in known if m != "imp"]  # explicit sparsities fit these; each ticket is checked
        if known and (pruning.get("method", "imp") not in methods or (sparsities and one_shot)):
            pruning["method"] = one_shot[0] if sparsities and one_shot else known[0]
    if field_default(user, "ticket.pruning.sparsities") is not dataclasses.MISSING:
        for name in ("levels", "rate"):
            pruning.pop(name, None)
    return preset


def _absolute_uri(uri: str) -> str:
    """Local paths become absolute, so Ray workers (other working directories) see the same place."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


def _absolute_sqlite(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def _absolute_tracking(uri: str) -> str:
    """sqlite:///relative.db and plain or file: folders made absolute (trials run in their own folders)."""
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        return Path("/" + path.lstrip("/") if path.startswith("/") else path).expanduser().resolve().as_uri()
    if ":" not in uri and ("/" in uri or uri.startswith((".", "~")) or uri == "mlruns"):  # a bare folder
        return Path(uri).expanduser().resolve().as_uri()
    return _absolute_sqlite(uri)


def resolve_paths(sweep: SweepConfig) -> SweepConfig:
    """Local paths become absolute: Ray runs every trial in a folder of its own."""
    root = sweep.ticket.data.root
    return replace(sweep, store=_absolute_uri(sweep.store), results_dir=_absolute_uri(sweep.results_dir),
                   tracking_uri=_absolute_tracking(sweep.tracking_uri),
                   optuna_storage=_absolute_sqlite(sweep.optuna_storage),
                   **{"ticket.data.root": str(Path(root).expanduser().resolve()) if root else None})


def trial_base(sweep: SweepConfig, parent_run_id: str | None) -> dict[str, Any]:
    """The fixed part of every trial's config (the search varies the rest)."""
    return {"store": sweep.store, "tracking_uri": sweep.tracking_uri if parent_run_id else None,
            "parent_run_id": parent_run_id, "cpus_per_trial": sweep.cpus_per_trial,
            "gpus_per_trial": sweep.gpus_per_trial, "analyze": sweep.analyze,
            "analyze_epochs": list(sweep.analyze_epochs), "hessian_every": sweep.hessian_every,
            "spend_recipe": to_dict(sweep.spend_recipe) if sweep.spend_recipe is not None else None}
