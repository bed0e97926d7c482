"""Draw a ticket once (dense run + IMP/OMP levels), spend it many ways.

Everything a draw produces lives in the artifact store under the ticket's content key
(layout: `lth_core.paths`), written atomically and one piece at a time, so a crash loses at
most the epoch in flight, and a second worker asking for the same ticket waits on the lock
instead of computing it again.

A spend runs in three steps: `prepare_spend` (the ticket's starting weights under its mask,
with the tweaks' model and init hooks applied), `train_spend` (the recipe with the tweaks'
loss and training hooks, plus any observers) and `record_spend` (the result, stored).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lth_core import paths, tweaks
from lth_core.config import DataConfig, SpendConfig, TicketConfig, to_dict
from lth_core.data import Dataset, iterate_batches, load_dataset, num_batches
from lth_core.hooks import Observer, cross_entropy_loss
from lth_core.masks import Mask
from lth_core.models import build_model, load_ticket_weights
from lth_core.pruning import prune_to_sparsity
from lth_core.store import ArtifactStore, CorruptArtifactError
from lth_core.training import EpochCallback, EpochRecord, Runtime, TrainResult, fit, state_copy
from lth_core.tweaks.distillation import Teacher, load_teacher

StageCallback = Callable[[str, EpochRecord], None]
"""Progress: (stage name such as 'dense' or 'level 3', the epoch just finished)."""


@functools.lru_cache(maxsize=4)
def dataset_on(data: DataConfig, device: torch.device) -> Dataset:
    """Each worker reads and moves a data set once, however many trials it runs."""
    return load_dataset(data).to(device)


def _read_if_valid(read: Callable[[str], Any], path: str) -> Any | None:
    """An artifact, or None when it is missing or fails its checksum (then it is recomputed)."""
    try:
        return read(path)
    except (FileNotFoundError, CorruptArtifactError):
        return None


def build_ticket_model(ticket: TicketConfig, dataset: Dataset) -> nn.Module:
    """The ticket's architecture with its seeded initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ticket.seed)
        return build_model(ticket.model, in_channels=dataset.in_channels, num_classes=dataset.num_classes,
                           image_size=dataset.image_size)


def _train_stage(store: ArtifactStore, checkpoint_path: str, model: nn.Module, dataset: Dataset,
                 ticket: TicketConfig, runtime: Runtime, *, mask: Mask | None, keep_epochs: tuple[int, ...],
                 stage: str, on_stage_epoch: StageCallback | None) -> TrainResult:
    """Train one stage of a draw with the dense recipe, checkpointing each epoch to the store."""
    resume = _read_if_valid(store.read_torch, checkpoint_path)

    def on_epoch(record: EpochRecord, payload: Callable[[], dict[str, Any]]) -> None:
        store.write_torch(checkpoint_path, payload())
        if on_stage_epoch is not None:
            on_stage_epoch(stage, record)

    return fit(model, dataset, ticket.recipe, seed=ticket.seed, runtime=runtime, mask=mask,
               keep_epochs=keep_epochs, resume=resume, on_epoch=on_epoch)


def _metrics(result: TrainResult) -> dict[str, Any]:
    return {"summary": result.summary(), "history": [vars(r) for r in result.history]}


def draw(ticket: TicketConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None = None) -> dict[str, Any]:
    """Run (or read back) the dense run and every pruning level; returns the draw's summary."""
    summary_path = paths.ticket_summary(ticket.key)
    summary = _read_if_valid(store.read_json, summary_path)
    if summary is not None:
        return summary
    with store.lock(paths.ticket_lock(ticket.key)) as lease:
        summary = _read_if_valid(store.read_json, summary_path)
        if summary is None:
            summary = _draw_locked(ticket, store, on_stage_epoch)
            if lease.lost:  # another worker may have drawn beside us: its files and ours can mix
                store.delete(summary_path)
                raise RuntimeError(f"lost the lock on ticket {ticket.key} while drawing it (a stalled worker or "
                                   "store); run again: the finished stages are kept and checked")
    return summary


def _draw_locked(ticket: TicketConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None) -> dict[str, Any]:
    key = ticket.key
    store.write_json(paths.ticket_config(key), {"key": key, "config": to_dict(ticket)})
    runtime = Runtime.resolve(ticket.recipe)
    dataset = dataset_on(ticket.data, runtime.device)

    levels_range = range(1, ticket.num_levels + 1)
    dense_files = [paths.rewind_weights(key, e) for e in ticket.rewind_epochs] + [paths.dense_final(key)]
    dense_metrics = _read_if_valid(store.read_json, paths.dense_metrics(key))
    if dense_metrics is None or not all(store.verify(p) for p in dense_files):
        for level in levels_range:  # every level derives from the dense run
            store.delete(paths.level_dir(key, level))
        model = runtime.prepare(build_ticket_model(ticket, dataset))
        result = _train_stage(store, paths.dense_checkpoint(key), model, dataset, ticket, runtime, mask=None,
                              keep_epochs=ticket.rewind_epochs, stage="dense", on_stage_epoch=on_stage_epoch)
        for epoch, state in result.snapshots.items():
            store.write_tensors(paths.rewind_weights(key, epoch), state)
        store.write_tensors(paths.dense_final(key), state_copy(model))
        dense_metrics = _metrics(result)
        store.write_json(paths.dense_metrics(key), dense_metrics)
        store.delete(paths.dense_checkpoint(key))

    rewind_path = paths.rewind_weights(key, ticket.pruning.rewind_epoch)
    rewind_state = store.read_tensors(rewind_path)
    pruning = ticket.pruning
    levels = []
    prev_weights = store.read_tensors(paths.dense_final(key))
    model = runtime.prepare(build_ticket_model(ticket, dataset))
    prev_mask = Mask.ones_like(model, pruning.prune_linear)
    for level, sparsity in zip(levels_range, pruning.level_sparsities()):
        mask = _read_if_valid(_read_mask(store), paths.level_mask(key, level))
        metrics = _read_if_valid(store.read_json, paths.level_metrics(key, level))
        if mask is None or metrics is None or not store.verify(paths.level_final(key, level)):
            if pruning.method == "imp":  # later IMP levels are pruned from this one's weights
                for later in range(level + 1, ticket.num_levels + 1):
                    store.delete(paths.level_dir(key, later))
            if mask is None:
                mask = prune_to_sparsity(prev_weights, prev_mask, sparsity, scope=pruning.scope,
                                         allow_empty_layers=pruning.allow_empty_layers)
                store.write_bytes(paths.level_mask(key, level), mask.to_bytes())
            model.load_state_dict(rewind_state)
            result = _train_stage(store, paths.level_checkpoint(key, level), model, dataset, ticket, runtime,
                                  mask=mask, keep_epochs=(), stage=f"level {level}", on_stage_epoch=on_stage_epoch)
            store.write_tensors(paths.level_final(key, level), state_copy(model))
            metrics = {"level": level, "sparsity": mask.sparsity, "target_sparsity": sparsity,
                       "start": rewind_path, "layer_sparsity": mask.layer_sparsity(), **_metrics(result)}
            store.write_json(paths.level_metrics(key, level), metrics)
            store.delete(paths.level_checkpoint(key, level))
        levels.append({"level": level, "sparsity": metrics["sparsity"], **metrics["summary"]})
        if pruning.method == "imp":
            prev_weights, prev_mask = store.read_tensors(paths.level_final(key, level)), mask

    summary = {"key": key, "config": to_dict(ticket), "dense": dense_metrics["summary"], "levels": levels}
    store.write_json(paths.ticket_summary(key), summary)
    return summary


def _read_mask(store: ArtifactStore) -> Callable[[str], Mask]:
    return lambda path: Mask.from_bytes(store.read_bytes(path))


def load_level(ticket: TicketConfig, level: int, store: ArtifactStore) -> Mask | None:
    """The mask of a drawn level (None for level 0, the dense net)."""
    if level == 0:
        return None
    return _read_mask(store)(paths.level_mask(ticket.key, level))


@dataclass
class SpendRun:
    """One spend being prepared and trained: what its tweaks' hooks see (`SpendContext`)."""

    spend: SpendConfig
    store: ArtifactStore
    runtime: Runtime
    dataset: Dataset
    draw_summary: dict[str, Any]
    model: nn.Module | None = None
    mask: Mask | None = None
    init_records: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    earlier_seconds: float = 0.0

    def seconds(self) -> float:
        """Wall seconds this spend has taken so far, earlier attempts included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def teacher(self) -> Teacher:
        ticket = self.spend.ticket

        def build() -> nn.Module:
            model = build_ticket_model(ticket, self.dataset)
            load_ticket_weights(model, self.store.read_tensors(paths.dense_final(ticket.key)))
            return self.runtime.prepare(model)

        return load_teacher(f"{ticket.key}@{self.runtime.device}", build)

    def train_batches(self, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if num_batches(self.dataset, "train", batch_size, drop_last=True) == 0:
            raise ValueError(f"a batch of {batch_size} images is larger than the training set "
                             f"({len(self.dataset.train_y)} images); lower the tweak's batch_size")
        generator = torch.Generator()
        generator.manual_seed(seed)
        for _ in itertools.count():
            yield from iterate_batches(self.dataset, "train", batch_size, generator=generator, shuffle=True,
                                       augment=True, drop_last=True)


def prepare_spend(spend: SpendConfig, store: ArtifactStore, *, with_init: bool = True,
                  on_stage_epoch: StageCallback | None = None) -> SpendRun:
    """The ticket drawn (single-flight), its starting weights (init or a rewind point) under its
    mask, with the tweaks' model hooks and, when `with_init`, init hooks applied (a resumed spend
    skips them: its weights come from the checkpoint). The mask is never changed."""
    started = time.perf_counter()
    runtime = Runtime.resolve(spend.train_recipe)
    dataset = dataset_on(spend.ticket.data, runtime.device)
    for attempt in (1, 2):
        run = SpendRun(spend, store, runtime, dataset, draw_summary=draw(spend.ticket, store, on_stage_epoch),
                       started=started)
        try:
            run.model, run.mask = _starting_model(run)
            break
        except (FileNotFoundError, CorruptArtifactError):
            if attempt == 2:
                raise
            # A ticket file went missing or bad after the draw finished: check and redo the draw.
            store.delete(paths.ticket_summary(spend.ticket.key))
    if with_init:
        for tweak, value in spend.tweaks.active():
            if "init" in tweak.hooks():
                run.init_records[tweak.name] = tweak.init(value, run.model, run)
                if run.mask is not None:
                    run.mask.apply_(run.model)
    return run


def _starting_model(run: SpendRun) -> tuple[nn.Module, Mask | None]:
    spend = run.spend
    model = build_ticket_model(spend.ticket, run.dataset)
    model.load_state_dict(run.store.read_tensors(paths.rewind_weights(spend.ticket.key,
                                                                      tweaks.start_epoch(spend.tweaks))))
    for tweak, value in spend.tweaks.active():
        if "model" in tweak.hooks():
            tweak.model(value, model, run)
    model = run.runtime.prepare(model)
    mask = load_level(spend.ticket, spend.level, run.store)
    if mask is not None:
        mask.apply_(model)
    return model, mask


def train_spend(run: SpendRun, *, resume: dict[str, Any] | None = None, persist_checkpoints: bool = True,
                on_epoch: EpochCallback | None = None, on_stage_epoch: StageCallback | None = None,
                observers: Sequence[Observer] = ()) -> TrainResult:
    """The recipe with the tweaks' loss and training hooks; each epoch's checkpoint goes to the
    store (`persist_checkpoints`) and/or to `on_epoch`, and `resume` continues from one."""
    spend, store = run.spend, run.store
    checkpoint_path = paths.spend_checkpoint(spend.key)
    if resume is not None:
        run.init_records = dict(resume.get("init_records", {}))
        run.earlier_seconds = float(resume.get("spend_seconds", 0.0))

    def checkpoint_epoch(record: EpochRecord, payload: Callable[[], dict[str, Any]]) -> None:
        def full_payload() -> dict[str, Any]:
            return {**payload(), "init_records": run.init_records, "spend_key": spend.key,
                    "spend_seconds": run.seconds()}

        if persist_checkpoints:
            store.write_torch(checkpoint_path, full_payload())
        if on_epoch is not None:
            on_epoch(record, full_payload)
        if on_stage_epoch is not None:
            on_stage_epoch(f"spend level {spend.level}", record)

    loss_fn = tweaks.compose_loss(spend.tweaks, run, cross_entropy_loss)
    hooks = [*tweaks.train_hooks(spend.tweaks, run), *observers]
    result = fit(run.model, run.dataset, spend.train_recipe, seed=spend.seed, runtime=run.runtime, mask=run.mask,
                 loss_fn=loss_fn, resume=resume, on_epoch=checkpoint_epoch, hooks=hooks)
    if run.mask is not None:
        _check_mask_holds(run.model, run.mask)
    return result


def record_spend(run: SpendRun, result: TrainResult, observers: Sequence[Observer] = ()) -> dict[str, Any]:
    """The spend's result, with its final weights, written to the store (result.json last)."""
    spend = run.spend
    levels = {lv["level"]: lv for lv in run.draw_summary["levels"]}
    dense_acc = run.draw_summary["dense"]["test_acc"]
    out = {
        "spend_key": spend.key,
        "ticket_key": spend.ticket.key,
        "level": spend.level,
        "sparsity": run.mask.sparsity if run.mask is not None else 0.0,
        "tweak": spend.tweaks.describe(),
        "config": to_dict(spend),
        **result.summary(),
        "spend_seconds": run.seconds(),
        "vanilla_test_acc": levels[spend.level]["test_acc"] if spend.level in levels else dense_acc,
        "dense_test_acc": dense_acc,
        "history": [vars(r) for r in result.history],
        "init_records": run.init_records,
        **{observer.name: observer.record() for observer in observers},
    }
    run.store.write_tensors(paths.spend_weights(spend.key), state_copy(run.model))
    run.store.write_json(paths.spend_result(spend.key), out)
    return out


def spend(spend: SpendConfig, store: ArtifactStore, *, on_epoch: EpochCallback | None = None,
          resume: dict[str, Any] | None = None, persist_checkpoints: bool = True,
          on_stage_epoch: StageCallback | None = None, observers: Sequence[Observer] = ()) -> dict[str, Any]:
    """Re-train one (ticket, level, tweaks) combination and return its result.

    A finished spend is read back from the store when it holds what every observer would record
    (`Observer.covers`). Otherwise: prepare (drawing the ticket if needed), train, record.
    `resume` (a checkpoint payload) continues a spend; without one, the store's checkpoint does.
    """
    if resume is not None and resume.get("spend_key", spend.key) != spend.key:
        raise ValueError(f"the checkpoint belongs to spend {resume['spend_key']}, not {spend.key}")
    cached = _read_if_valid(store.read_json, paths.spend_result(spend.key))
    if (cached is not None and store.exists(paths.spend_weights(spend.key))
            and all(o.covers(cached.get(o.name)) for o in observers)):
        return cached
    if resume is None and persist_checkpoints:
        resume = _read_if_valid(store.read_torch, paths.spend_checkpoint(spend.key))
    run = prepare_spend(spend, store, with_init=resume is None, on_stage_epoch=on_stage_epoch)
    result = train_spend(run, resume=resume, persist_checkpoints=persist_checkpoints, on_epoch=on_epoch,
                         on_stage_epoch=on_stage_epoch, observers=observers)
    out = record_spend(run, result, observers)
    if persist_checkpoints:
        store.delete(paths.spend_checkpoint(spend.key))
    return out


def _check_mask_holds(model: nn.Module, mask: Mask) -> None:
    """Training must never revive a pruned weight; fail loudly if it did."""
    params = dict(model.named_parameters())
    for name in mask:
        revived = int((params[name].detach().cpu()[~mask[name]] != 0).sum())
        if revived:
            raise AssertionError(f"{revived} pruned weights of {name} are non-zero after training")
