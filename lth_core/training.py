"""The SGD training recipe shared by the dense run, IMP levels and every spend.

`fit` trains a (possibly masked) model epoch by epoch, calling its `TrainHook`s
(`lth_core.hooks`) at fixed points. After each epoch it hands the caller an
`EpochRecord` and a way to build a checkpoint payload (`Payload`, which also says
whether the recipe's cadence wants it persisted); feeding that payload back as
`resume` continues to the same final weights as an uninterrupted run (model,
optimizer, scheduler, data RNG and every hook's state are restored).

The test split is evaluated only when the validation accuracy reaches a new best and
after the last epoch: the reported test accuracy is the best-validation epoch's, so
evaluating it at every other epoch only cost time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lth_core.config import RecipeConfig
from lth_core.data import Dataset, iterate_batches, lone_last_image
from lth_core.hooks import LossFn, Loop, TrainHook, cross_entropy_loss
from lth_core.masks import Mask, MaskApplier
from lth_core.steps import EvalStep, TrainStep

log = logging.getLogger(__name__)


# `recipe.graphs: auto` captures CUDA graphs on CUDA: a GPU run checked them against eager (the
# mask after every graphed step with every tweak on, and test accuracies equal to the last digit
# for fixed seeds), 2026-12-04 on one H200: see docs/benchmarks.md. False would keep `auto` eager.
GRAPHS_VERIFIED_ON_CUDA = True


@dataclass(frozen=True)
class Runtime:
    """Where and how fast to run, resolved from a recipe and the machine. `graphs` runs the
    steps of `lth_core.steps` on static tensors, captured as CUDA graphs where `capture`."""

    device: torch.device
    bf16: bool
    channels_last: bool
    graphs: bool = False

    @classmethod
    def resolve(cls, recipe: RecipeConfig) -> Runtime:
        """'auto' precision is bf16 only where the GPU has it natively; an explicit 'bf16' is honoured
        on the CPU too (CPU autocast), so the GPU's mixed-precision path can be tested without one.
        Graphs likewise: 'auto' is on for CUDA (once verified there), 'on' also runs the graph code
        path on the CPU, where nothing is captured."""
        if recipe.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("recipe.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        device = torch.device("cuda" if recipe.device != "cpu" and torch.cuda.is_available() else "cpu")
        on_cuda = device.type == "cuda"
        native_bf16 = on_cuda and torch.cuda.is_bf16_supported(including_emulation=False)
        bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and native_bf16)
        channels_last = recipe.channels_last if on_cuda else recipe.channels_last_cpu
        graphs = recipe.graphs == "on" or (recipe.graphs == "auto" and on_cuda and GRAPHS_VERIFIED_ON_CUDA)
        return cls(device=device, bf16=bf16, channels_last=channels_last, graphs=graphs)

    @property
    def capture(self) -> bool:
        return self.graphs and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            # A captured graph must not reuse casts cached outside it.
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=not self.capture)
        return contextlib.nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers. `test_acc` is measured when `val_acc` is a new best and after the last
    epoch; in the epochs between it repeats the best-validation epoch's so far."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    test_acc: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochRecord]
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def best(self) -> EpochRecord:
        """The best-validation epoch (earliest on ties); its test accuracy is the one reported."""
        return max(self.history, key=lambda r: (r.val_acc, -r.epoch))

    def summary(self) -> dict[str, float]:
        best = self.best
        return {"best_epoch": best.epoch, "best_val_acc": best.val_acc, "test_acc": best.test_acc,
                "final_val_acc": self.history[-1].val_acc, "final_test_acc": self.history[-1].test_acc,
                "wall_seconds": self.wall_seconds}


class Payload:
    """An epoch's checkpoint, built on the first call and the same object on every call after it,
    so each writer (store, Tune, a test) shares one copy of the weights. `due` says whether the
    recipe's cadence (`RecipeConfig.checkpoint_seconds`) wants it persisted: writers skip it
    otherwise, and a caller that only looks at it may still build it. Build it during the
    `on_epoch` call: later it would hold later weights. `history` is the epochs so far (those of
    earlier attempts included) without building anything."""

    def __init__(self, build: Callable[[], dict[str, Any]], due: bool, history: Sequence[EpochRecord] = ()):
        self._build = build
        self._built: dict[str, Any] | None = None
        self.due = due
        self.history = tuple(history)

    def __call__(self) -> dict[str, Any]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def extended(self, extra: Callable[[], dict[str, Any]]) -> Payload:
        """This payload with the entries of `extra()` added, equally due, built once as well."""
        return Payload(lambda: {**self(), **extra()}, self.due, self.history)


EpochCallback = Callable[[EpochRecord, Payload], None]


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights on the CPU in the contiguous format, copied once (a channels_last tensor too)."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()}


EVAL_BATCH = 512


def evaluate(model: nn.Module, dataset: Dataset, split: str, runtime: Runtime,
             loss_fn: LossFn = cross_entropy_loss, batch_size: int = EVAL_BATCH,
             step: EvalStep | None = None) -> tuple[float, float]:
    """Mean loss and accuracy over a split, in eval mode (through `step`, whose graph `fit` keeps)."""
    step = step or EvalStep(model, loss_fn, runtime, batch_size)
    was_training = model.training
    model.eval()
    step.reset()
    for images, labels in iterate_batches(dataset, split, batch_size):
        step(images, labels)
    model.train(was_training)
    count = max(step.seen, 1)
    return float(step.loss_sum) / count, float(step.correct) / count


def fit(model: nn.Module, dataset: Dataset, recipe: RecipeConfig, *, seed: int, runtime: Runtime,
        mask: Mask | None = None, loss_fn: LossFn = cross_entropy_loss, keep_epochs: Iterable[int] = (),
        resume: dict[str, Any] | None = None, on_epoch: EpochCallback | None = None,
        hooks: Sequence[TrainHook] = ()) -> TrainResult:
    """Train `model` (already on `runtime.device`) with the recipe; the mask is re-applied after
    every optimizer step so pruned weights stay exactly zero. Snapshots of the weights after the
    epochs in `keep_epochs` (0 = before training) are returned for rewinding. When a hook's
    `on_train_end` replaces the weights, the last epoch's record is re-evaluated on them, so
    the history always ends with the weights `fit` returns. `on_epoch` gets each epoch's record
    and its `Payload`; the time it takes counts towards the checkpoint cadence."""
    keep = set(keep_epochs)
    applier = MaskApplier(model, mask) if mask is not None else None
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.lr_milestones), recipe.lr_gamma)
    generator = torch.Generator()  # on the CPU: a checkpoint then resumes on any device
    generator.manual_seed(seed)
    result = TrainResult(history=[])
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        start_epoch = int(resume["epoch"])
        result.history = [EpochRecord(**r) for r in resume["history"]]
        result.snapshots = {int(e): s for e, s in resume["snapshots"].items()}
        result.wall_seconds = float(resume["wall_seconds"])
        states = resume.get("hooks", {})
        for hook in hooks:
            if hook.name in states:
                hook.load_state_dict(states[hook.name])
    if applier is not None:
        applier.apply_()
    if start_epoch == 0 and 0 in keep:
        result.snapshots[0] = state_copy(model)

    if len({hook.name for hook in hooks}) != len(hooks):
        raise ValueError(f"hooks need distinct names, got {[hook.name for hook in hooks]}")
    loop = Loop(model=model, optimizer=optimizer, scheduler=scheduler, dataset=dataset, runtime=runtime,
                mask=mask, epochs=recipe.epochs, batch_size=recipe.batch_size, epoch=start_epoch)
    for hook in hooks:
        hook.on_train_start(loop)
    best_val = max((r.val_acc for r in result.history), default=None)
    test_acc = result.best.test_acc if result.history else None
    unsaved_since = time.perf_counter()
    lone_batch = lone_last_image(dataset, "train", recipe.batch_size)  # BatchNorm cannot train on one image
    train_step = TrainStep(model, loss_fn, runtime, recipe.batch_size)
    eval_step = EvalStep(model, cross_entropy_loss, runtime, EVAL_BATCH)
    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        started = time.perf_counter()
        loop.epoch = epoch
        for hook in hooks:
            hook.on_epoch_start(loop)
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        train_step.reset()
        for images, labels in iterate_batches(dataset, "train", recipe.batch_size, generator=generator,
                                              shuffle=True, augment=True, drop_last=lone_batch):
            for hook in hooks:
                images, labels = hook.on_batch(loop, images, labels)
            train_step(images, labels)
            optimizer.step()
            if applier is not None:
                applier.apply_()
            for hook in hooks:
                hook.on_step_end(loop)
        loop.scheduler.step()
        for hook in hooks:
            hook.on_epoch_end(loop)
        val_loss, val_acc = evaluate(model, dataset, "val", runtime, step=eval_step)
        if best_val is None or val_acc > best_val or epoch == recipe.epochs:
            _, test_acc = evaluate(model, dataset, "test", runtime, step=eval_step)
        best_val = val_acc if best_val is None else max(best_val, val_acc)
        runtime.synchronize()
        seconds = time.perf_counter() - started
        seen = max(train_step.seen, 1)
        record = EpochRecord(epoch=epoch, lr=lr, train_loss=float(train_step.loss_sum) / seen,
                             train_acc=float(train_step.correct) / seen, val_loss=val_loss,
                             val_acc=val_acc, test_acc=test_acc, seconds=seconds)
        if not math.isfinite(record.train_loss) and all(math.isfinite(r.train_loss) for r in result.history):
            log.warning("warning: training diverged at epoch %d (training loss %s): the weights are no longer "
                        "finite and the accuracy is chance; a lower recipe.lr may train this setting", epoch,
                        record.train_loss)
        result.history.append(record)
        result.wall_seconds += seconds
        if epoch in keep:
            result.snapshots[epoch] = state_copy(model)
        if on_epoch is not None:
            # Due when waiting one more epoch (as long as this one) would leave over the cadence unsaved.
            due = (epoch in (start_epoch + 1, recipe.epochs)
                   or time.perf_counter() - unsaved_since + seconds > recipe.checkpoint_seconds)
            on_epoch(record, Payload(lambda: _checkpoint(model, optimizer, scheduler, generator, epoch, result,
                                                         hooks), due, result.history))
            if due:
                unsaved_since = time.perf_counter()
    replaced = [hook.on_train_end(loop) for hook in hooks]
    if applier is not None:
        applier.zero_pruned_()
    if any(replaced):
        val_loss, val_acc = evaluate(model, dataset, "val", runtime, step=eval_step)
        _, test_acc = evaluate(model, dataset, "test", runtime, step=eval_step)
        result.history[-1] = dataclasses.replace(result.history[-1], val_loss=val_loss, val_acc=val_acc,
                                                 test_acc=test_acc)
    return result


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                epoch: int, result: TrainResult, hooks: Sequence[TrainHook]) -> dict[str, Any]:
    """Everything `fit(resume=...)` needs; loadable with torch.load(weights_only=True)."""
    return {
        "epoch": epoch,
        "model": result.snapshots.get(epoch) or state_copy(model),  # a rewind snapshot is this epoch's weights
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "history": [dataclasses.asdict(r) for r in result.history],
        "snapshots": {str(e): s for e, s in result.snapshots.items()},
        "wall_seconds": result.wall_seconds,
        "hooks": {hook.name: _to_cpu(hook.state_dict()) for hook in hooks},
    }


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
