"""Draw a ticket once (its masks, from a source of `lth_core.mask_sources`), spend it many ways.

A draw with IMP or OMP trains the dense net, then each level's mask and its vanilla LTH
re-training. A pruning-at-init source (random, ERK, SNIP, GraSP, SynFlow) scores the
initialisation and trains nothing; its dense run is trained, once, when a spend first needs
it (a distillation teacher, a rewind point).

Everything a draw produces lives in the artifact store under the ticket's content key
(layout: `lth_core.paths`), written atomically and one piece at a time, so a crash loses at
most the work since the last checkpoint (`RecipeConfig.checkpoint_seconds`), and a second worker asking for the same ticket waits on the lock
instead of computing it again.

A spend runs in three steps: `prepare_spend` (the ticket's starting weights under its mask,
with the tweaks' model and init hooks applied), `train_spend` (the recipe with the tweaks'
loss and training hooks, plus any observers) and `record_spend` (the result, stored).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lth_core import paths, tweaks
from lth_core.config import ConfigError, DataConfig, SpendConfig, TicketConfig, from_dict, replace, to_dict
from lth_core.data import Dataset, iterate_batches, load_dataset, num_batches
from lth_core.hooks import Observer, cross_entropy_loss
from lth_core.live import live_sparsity, live_weights, weight_counts
from lth_core.machine import platform_info
from lth_core.mask_sources import MaskRequest
from lth_core.masks import Mask, prunable_names
from lth_core.models import build_model, load_ticket_weights
from lth_core.pruning import EmptyLayerError, refuse_empty_layers
from lth_core.store import ArtifactStore, CorruptArtifactError
from lth_core.training import EpochCallback, EpochRecord, Payload, Runtime, TrainResult, fit, state_copy
from lth_core.tweaks.distillation import Teacher, load_teacher

log = logging.getLogger(__name__)

StageCallback = Callable[[str, EpochRecord], None]
"""Progress: (stage name such as 'dense' or 'level 3', the epoch just finished)."""


@functools.lru_cache(maxsize=4)
def dataset_on(data: DataConfig, device: torch.device) -> Dataset:
    """Each worker reads and moves a data set once, however many trials it runs."""
    return load_dataset(data).to(device)


def _read_if_valid(read: Callable[[str], Any], path: str, then: str, warn: bool = True) -> Any | None:
    """An artifact, or None when it is missing or corrupt; a corrupt one (checksum, format) gets
    one warning line naming it and what is recomputed (`then`), unless `warn` is off (a first
    look that is repeated under the lock, where it warns)."""
    try:
        return read(path)
    except FileNotFoundError:
        return None
    except (CorruptArtifactError, ValueError, RuntimeError) as e:  # a bad checksum, JSON, safetensors or pickle
        if warn:
            log.warning("warning: %s is corrupt (%s); %s", path, str(e).splitlines()[0][:200], then)
        return None


def _sound(store: ArtifactStore, path: str, then: str, *, warn: bool = True, expected: bool = False) -> bool:
    """True when the file is there and matches its checksum (hashed once). A corrupt one, or with
    `expected` a missing one, gets one warning line naming it and what is recomputed (`then`)."""
    if store.verify(path):
        return True
    if warn and (expected or store.exists(path)):
        log.warning("warning: %s is %s; %s", path, "corrupt (checksum)" if store.exists(path) else "missing", then)
    return False


# Required keys and types of the JSON artifacts: valid JSON of another shape counts as corrupt.
# A draw at initialisation has "dense": null, and levels without accuracies.
SUMMARY_SHAPE = {"key": str, "config": dict, "levels": list}
DENSE_METRICS_SHAPE = {"summary": dict, "history": list}
LEVEL_METRICS_SHAPE = {"level": int, "sparsity": float, "summary": dict, "history": list}
AT_INIT_LEVEL_SHAPE = {"level": int, "sparsity": float}
FAILURE_SHAPE = {"key": str, "error": str}
RESULT_SHAPE = {"spend_key": str, "ticket_key": str, "level": int, "sparsity": float, "tweak": str,
                "test_acc": float, "best_val_acc": float, "history": list}
SUMMARY_FIELDS = {"best_val_acc": float, "test_acc": float}


def read_json_checked(store: ArtifactStore, path: str, shape: dict[str, type]) -> Any:
    """The JSON artifact at `path`, verified: its checksum, then its shape (required keys and
    types); valid JSON of another shape raises CorruptArtifactError like a bad checksum."""
    data = store.read_json(path)
    problem = _shape_problem(data, shape)
    if problem is None and "summary" in shape:
        problem = _shape_problem(data["summary"], SUMMARY_FIELDS, "summary.")
    if problem is None and shape is SUMMARY_SHAPE:
        problem = _summary_problem(data)
    if problem is None and shape is RESULT_SHAPE:
        problem = _snapshots_problem(data)
    if problem is not None:
        raise CorruptArtifactError(f"valid JSON of the wrong shape: {problem}")
    return data


def _json_reader(store: ArtifactStore, shape: dict[str, type]) -> Callable[[str], Any]:
    return functools.partial(read_json_checked, store, shape=shape)


def _summary_problem(summary: dict[str, Any]) -> str | None:
    """A trained draw's summary holds dense and per-level accuracies; one at initialisation has none."""
    try:
        at_init = from_dict(TicketConfig, summary["config"]).pruning.source.at_init
    except ValueError as e:
        return f"config: {str(e).splitlines()[0][:120]}"
    if at_init and summary.get("dense") is not None:
        return "dense is set, but a draw at initialisation trains no dense net"
    problem = None if at_init else _shape_problem(summary.get("dense"), SUMMARY_FIELDS, "dense.")
    level_shape = AT_INIT_LEVEL_SHAPE if at_init else {**AT_INIT_LEVEL_SHAPE, **SUMMARY_FIELDS}
    return problem or next(filter(None, (_shape_problem(lv, level_shape, "levels[].") for lv in summary["levels"])),
                           None)


def _snapshots_problem(result: dict[str, Any]) -> str | None:
    """A result lists its kept snapshots as epochs (results written before snapshots list none)."""
    epochs = result.get("snapshots", [])
    if not isinstance(epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in epochs):
        return f"snapshots is {epochs!r}, not a list of epochs"
    return None


def _shape_problem(data: Any, shape: dict[str, type], prefix: str = "") -> str | None:
    if not isinstance(data, dict):
        return f"{prefix or 'the document'} is a {type(data).__name__}, not an object"
    for key, kind in shape.items():
        value = data.get(key)
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) if kind is float
              else isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
        if not ok:
            return f"{prefix}{key} is {type(value).__name__ if key in data else 'missing'}, not {kind.__name__}"
    return None


def build_ticket_model(ticket: TicketConfig, dataset: Dataset) -> nn.Module:
    """The ticket's architecture with its seeded initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ticket.seed)
        return build_model(ticket.model, in_channels=dataset.in_channels, num_classes=dataset.num_classes,
                           image_size=dataset.image_size)


def live_set(ticket: TicketConfig, dataset: Dataset) -> Mask:
    """The ticket's live weights (`lth_core.live`): those an input of the data set's shape reaches."""
    return live_weights(build_ticket_model(ticket, dataset), (dataset.in_channels, dataset.image_size,
                                                              dataset.image_size), ticket.pruning.prune_linear)


def _stored_live_set(ticket: TicketConfig, store: ArtifactStore, dataset: Dataset, *, write: bool) -> Mask:
    """The live set stored with the ticket, else computed (and, with `write`, under the ticket's
    lock, stored): a draw from before live sets were stored has none."""
    path = paths.live_weights(ticket.key)
    live = _read_if_valid(_read_mask(store), path, "it is computed again", warn=write)
    if live is None:
        live = live_set(ticket, dataset)
        if write:
            store.write_bytes(path, live.to_bytes())
    return live


def _train_stage(store: ArtifactStore, checkpoint_path: str, model: nn.Module, dataset: Dataset,
                 ticket: TicketConfig, runtime: Runtime, *, mask: Mask | None, keep_epochs: tuple[int, ...],
                 stage: str, on_stage_epoch: StageCallback | None) -> TrainResult:
    """Train one stage of a draw with the dense recipe, checkpointing each epoch to the store."""
    resume = _read_if_valid(store.read_torch, checkpoint_path, f"{stage} starts from its first epoch")

    def on_epoch(record: EpochRecord, payload: Payload) -> None:
        if payload.due:  # the recipe's checkpoint cadence
            store.write_torch(checkpoint_path, payload())
        if on_stage_epoch is not None:
            on_stage_epoch(stage, record)

    return fit(model, dataset, ticket.recipe, seed=ticket.seed, runtime=runtime, mask=mask,
               keep_epochs=keep_epochs, resume=resume, on_epoch=on_epoch)


def _metrics(result: TrainResult) -> dict[str, Any]:
    return {"summary": result.summary(), "history": [vars(r) for r in result.history]}


def draw(ticket: TicketConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None = None, *,
         check_files: bool = True) -> dict[str, Any]:
    """Run (or read back) the dense run and every pruning level; returns the draw's summary.

    A finished draw is read back when its summary and, with `check_files`, every file it consists
    of are sound (checksums and JSON shapes); otherwise what is missing or corrupt, and what
    derives from it, is recomputed. A spend passes `check_files=False`: it verifies the files it
    reads as it reads them. A draw that fails for good (a level's mask would empty a layer:
    `EmptyLayerError`) leaves its error in `paths.ticket_failure`, so that `verify` names it rather
    than taking it for a draw in progress; the next attempt removes it."""
    summary_path = paths.ticket_summary(ticket.key)
    then = "the draw is checked and its missing parts recomputed"
    summary = _read_if_valid(_json_reader(store, SUMMARY_SHAPE), summary_path, then, warn=False)
    if summary is not None and (not check_files or not draw_problems(ticket, store)):
        return summary
    with store.lock(paths.ticket_lock(ticket.key)) as lease:
        summary = _read_if_valid(_json_reader(store, SUMMARY_SHAPE), summary_path, then)
        if summary is None or (check_files and draw_problems(ticket, store)):
            try:
                summary = _draw_locked(ticket, store, on_stage_epoch)
            except EmptyLayerError as e:  # the schedule, not the run: drawing again fails the same way
                store.write_json(paths.ticket_failure(ticket.key), {"key": ticket.key, "error": str(e)})
                raise
            if lease.lost:  # another worker may have drawn beside us: its files and ours can mix
                store.delete(summary_path)
                raise RuntimeError(f"lost the lock on ticket {ticket.key} while drawing it (a stalled worker or "
                                   "store); run again: the finished stages are kept and checked")
    return summary


def read_draw(key: str, store: ArtifactStore) -> tuple[dict[str, Any] | None, list[str]]:
    """A finished draw's summary by key, and the files of it that are missing or corrupt."""
    try:
        summary = read_json_checked(store, paths.ticket_summary(key), SUMMARY_SHAPE)
        ticket = from_dict(TicketConfig, summary["config"])
    except (FileNotFoundError, CorruptArtifactError, ValueError) as e:
        return None, [f"{paths.ticket_summary(key)} ({str(e).splitlines()[0][:120]})"]
    return summary, draw_problems(ticket, store)


def draw_problems(ticket: TicketConfig, store: ArtifactStore) -> list[str]:
    """The files of a finished draw that are missing or corrupt (checksum, safetensors that do not
    parse, JSON shape). The dense run of a draw at initialisation is not part of it: it is checked
    when a spend needs it."""
    key = ticket.key
    levels = range(1, ticket.num_levels + 1)
    if ticket.pruning.source.at_init:
        tensors = [paths.live_weights(key), paths.rewind_weights(key, 0)]
        tensors += [paths.level_mask(key, level) for level in levels]
        jsons = [(paths.level_metrics(key, level), AT_INIT_LEVEL_SHAPE) for level in levels]
    else:
        tensors = [paths.live_weights(key), *_dense_files(ticket)]
        jsons = [(paths.dense_metrics(key), DENSE_METRICS_SHAPE)]
        for level in levels:
            tensors += [paths.level_mask(key, level), paths.level_final(key, level)]
            jsons.append((paths.level_metrics(key, level), LEVEL_METRICS_SHAPE))
    problems = [p for p in tensors if _read_if_valid(store.read_tensors, p, "", warn=False) is None]
    for path, shape in jsons:
        try:
            read_json_checked(store, path, shape)
        except (FileNotFoundError, CorruptArtifactError, ValueError):
            problems.append(path)
    return problems


def _dense_files(ticket: TicketConfig) -> list[str]:
    return [paths.rewind_weights(ticket.key, e) for e in ticket.rewind_epochs] + [paths.dense_final(ticket.key)]


def _dense_locked(ticket: TicketConfig, store: ArtifactStore, runtime: Runtime, dataset: Dataset,
                  on_stage_epoch: StageCallback | None, then: str) -> tuple[dict[str, Any], bool]:
    """The dense run's metrics, read back when its files are sound, else trained (under the ticket's
    lock); True when it was trained now."""
    key = ticket.key
    metrics = _read_if_valid(_json_reader(store, DENSE_METRICS_SHAPE), paths.dense_metrics(key), then)
    sound = all([_sound(store, p, then) for p in _dense_files(ticket)])  # a list: each corrupt file is named
    if metrics is not None and sound:
        return metrics, False
    model = runtime.prepare(build_ticket_model(ticket, dataset))
    result = _train_stage(store, paths.dense_checkpoint(key), model, dataset, ticket, runtime, mask=None,
                          keep_epochs=ticket.rewind_epochs, stage="dense", on_stage_epoch=on_stage_epoch)
    for epoch, state in result.snapshots.items():
        store.write_tensors(paths.rewind_weights(key, epoch), state)
    store.write_tensors(paths.dense_final(key), state_copy(model))
    metrics = _metrics(result)
    store.write_json(paths.dense_metrics(key), metrics)
    store.delete(paths.dense_checkpoint(key))
    return metrics, True


def dense_run(ticket: TicketConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None = None
              ) -> dict[str, Any]:
    """The ticket's dense run (metrics), trained once when missing: a draw at initialisation trains
    it only for a spend that needs it (a distillation teacher, a rewind point)."""
    then = "the dense run is trained again"
    metrics = _read_if_valid(_json_reader(store, DENSE_METRICS_SHAPE), paths.dense_metrics(ticket.key), then,
                             warn=False)
    if metrics is not None and all(store.verify(p) for p in _dense_files(ticket)):
        return metrics
    with store.lock(paths.ticket_lock(ticket.key)):
        runtime = Runtime.resolve(ticket.recipe)
        return _dense_locked(ticket, store, runtime, dataset_on(ticket.data, runtime.device), on_stage_epoch,
                             then)[0]


def check_schedule(ticket: TicketConfig, dataset: Dataset) -> None:
    """Refuse, before anything trains, a pruning schedule that must empty a layer: a layer whose
    share rounds to none where the shapes decide the shares (`MaskSource.kept_per_layer`: a
    layer-wise scope, random, ERK), else fewer weights kept at the last level than there are
    layers. Whether a global ranking of scores empties a layer earlier depends on the scores:
    the draw refuses that at the level where it happens (`pruning.EmptyLayerError`)."""
    pruning = ticket.pruning
    if pruning.allow_empty_layers:
        return
    model = build_ticket_model(ticket, dataset)
    shapes = {name: model.get_parameter(name).shape for name in prunable_names(model, pruning.prune_linear)}
    sparsity = max(pruning.level_sparsities())
    kept = pruning.source.kept_per_layer(shapes, sparsity, pruning.scope)
    if kept is not None:
        emptied = [name for name, count in kept.items() if count == 0]
    else:
        total = sum(math.prod(shape) for shape in shapes.values())
        emptied = list(shapes) if round(total * (1 - sparsity)) < len(shapes) else []
    if emptied:
        field, related = (("pruning.sparsities", ()) if pruning.sparsities
                          else ("pruning.levels", ("pruning.rate",)))
        raise ConfigError(field, f"the last level ({sparsity:.4%} sparse) must remove every weight of "
                                 f"{', '.join(emptied[:3])}{' ...' if len(emptied) > 3 else ''}; draw fewer or "
                                 "less sparse levels, or set pruning.allow_empty_layers", related)


def _draw_locked(ticket: TicketConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None) -> dict[str, Any]:
    key = ticket.key
    runtime = Runtime.resolve(ticket.recipe)
    dataset = dataset_on(ticket.data, runtime.device)
    check_schedule(ticket, dataset)
    store.write_json(paths.ticket_config(key), {"key": key, "config": to_dict(ticket)})
    store.delete(paths.ticket_failure(key))  # an earlier attempt's: this one is in progress
    live = _stored_live_set(ticket, store, dataset, write=True)
    if ticket.pruning.source.at_init:
        return _draw_at_init(ticket, store, runtime, dataset, live)

    levels_range = range(1, ticket.num_levels + 1)
    dense_metrics, retrained = _dense_locked(ticket, store, runtime, dataset, on_stage_epoch,
                                             "the dense run and every level are recomputed")
    if retrained:
        for level in levels_range:  # every level derives from the dense run
            store.delete(paths.level_dir(key, level))

    rewind_path = paths.rewind_weights(key, ticket.pruning.rewind_epoch)
    rewind_state = store.read_tensors(rewind_path)
    pruning = ticket.pruning
    levels = []
    model = runtime.prepare(build_ticket_model(ticket, dataset))
    prev_weights = store.read_tensors(paths.dense_final(key))
    prev_mask = Mask.ones_like(model, pruning.prune_linear)
    sequential = pruning.source.weights == "previous_level"
    for level, sparsity in zip(levels_range, pruning.level_sparsities()):
        then = (f"level {level} and the levels after it are recomputed" if sequential
                else f"level {level} is recomputed")
        mask = _read_if_valid(_read_mask(store), paths.level_mask(key, level), then)
        metrics = _read_if_valid(_json_reader(store, LEVEL_METRICS_SHAPE), paths.level_metrics(key, level), then)
        final_sound = _sound(store, paths.level_final(key, level), then)
        if mask is None or metrics is None or not final_sound:
            if sequential:  # later IMP levels are pruned from this one's weights
                for later in range(level + 1, ticket.num_levels + 1):
                    store.delete(paths.level_dir(key, later))
            if mask is None:
                model.load_state_dict(prev_weights)
                mask = _draw_mask(ticket, model, prev_mask, sparsity, dataset)
                store.write_bytes(paths.level_mask(key, level), mask.to_bytes())
            model.load_state_dict(rewind_state)
            result = _train_stage(store, paths.level_checkpoint(key, level), model, dataset, ticket, runtime,
                                  mask=mask, keep_epochs=(), stage=f"level {level}", on_stage_epoch=on_stage_epoch)
            store.write_tensors(paths.level_final(key, level), state_copy(model))
            metrics = {"level": level, "sparsity": mask.sparsity, "target_sparsity": sparsity,
                       "start": rewind_path, "layer_sparsity": mask.layer_sparsity(), **_metrics(result)}
            store.write_json(paths.level_metrics(key, level), metrics)
            store.delete(paths.level_checkpoint(key, level))
        levels.append({"level": level, "sparsity": metrics["sparsity"], "live_sparsity": live_sparsity(mask, live),
                       **metrics["summary"]})
        if sequential:
            prev_weights, prev_mask = store.read_tensors(paths.level_final(key, level)), mask

    summary = {"key": key, "config": to_dict(ticket), "weights": weight_counts(live),
               "platform": platform_info(runtime.device), "dense": dense_metrics["summary"], "levels": levels}
    store.write_json(paths.ticket_summary(key), summary)
    return summary


def _draw_at_init(ticket: TicketConfig, store: ArtifactStore, runtime: Runtime, dataset: Dataset,
                  live: Mask) -> dict[str, Any]:
    """Every level's mask scored on the ticket's initialisation (stored as rewind point 0); no training."""
    key, pruning = ticket.key, ticket.pruning
    model = runtime.prepare(build_ticket_model(ticket, dataset))
    if not _sound(store, paths.rewind_weights(key, 0), "it is written again"):
        store.write_tensors(paths.rewind_weights(key, 0), state_copy(model))
    everything = Mask.ones_like(model, pruning.prune_linear)
    levels = []
    for level, sparsity in zip(range(1, ticket.num_levels + 1), pruning.level_sparsities()):
        then = f"level {level}'s mask is drawn again"
        mask = _read_if_valid(_read_mask(store), paths.level_mask(key, level), then)
        metrics = _read_if_valid(_json_reader(store, AT_INIT_LEVEL_SHAPE), paths.level_metrics(key, level), then)
        if mask is None:
            mask = _draw_mask(ticket, model, everything, sparsity, dataset)
            store.write_bytes(paths.level_mask(key, level), mask.to_bytes())
            metrics = None
        if metrics is None:
            metrics = {"level": level, "sparsity": mask.sparsity, "target_sparsity": sparsity,
                       "start": paths.rewind_weights(key, 0), "layer_sparsity": mask.layer_sparsity()}
            store.write_json(paths.level_metrics(key, level), metrics)
        levels.append({"level": level, "sparsity": metrics["sparsity"], "live_sparsity": live_sparsity(mask, live)})
    summary = {"key": key, "config": to_dict(ticket), "weights": weight_counts(live),
               "platform": platform_info(runtime.device), "dense": None, "levels": levels}
    store.write_json(paths.ticket_summary(key), summary)
    return summary


def _draw_mask(ticket: TicketConfig, model: nn.Module, previous: Mask, sparsity: float, dataset: Dataset) -> Mask:
    """One level's mask from the ticket's source, scoring `model`'s current weights."""
    pruning = ticket.pruning
    batch_size = min(ticket.recipe.batch_size, len(dataset.train_y))

    def batches(n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator()
        generator.manual_seed(ticket.seed)
        return itertools.islice(iterate_batches(dataset, "train", batch_size, generator=generator, shuffle=True,
                                                drop_last=True), n)

    mask = pruning.source.mask(MaskRequest(
        model=model, previous=previous, sparsity=sparsity, seed=ticket.seed, scope=pruning.scope,
        allow_empty_layers=pruning.allow_empty_layers, batches=batches,
        input_shape=(dataset.in_channels, dataset.image_size, dataset.image_size)))
    if not pruning.allow_empty_layers:
        refuse_empty_layers(mask, sparsity)
    return mask


def _read_mask(store: ArtifactStore) -> Callable[[str], Mask]:
    def read(path: str) -> Mask:
        tensors = store.read_tensors(path)
        try:
            return Mask(tensors)
        except TypeError as e:  # a tensor that is not bool: not a mask
            raise CorruptArtifactError(f"{path}: not a mask ({e})") from None

    return read


def load_level(ticket: TicketConfig, level: int, store: ArtifactStore) -> Mask | None:
    """The mask of a drawn level (None for level 0, the dense net)."""
    if level == 0:
        return None
    return _read_mask(store)(paths.level_mask(ticket.key, level))  # raises when corrupt: the caller redraws


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
            if ticket.pruning.source.at_init:
                dense_run(ticket, self.store)
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
        summary = draw(spend.ticket, store, on_stage_epoch, check_files=False)  # files are verified as read
        run = SpendRun(spend, store, runtime, dataset, draw_summary=summary, started=started)
        try:
            run.model, run.mask = _starting_model(run)
            break
        except (FileNotFoundError, CorruptArtifactError) as e:
            if attempt == 2:
                raise
            log.warning("warning: a file of ticket %s is missing or corrupt (%s); the draw is checked and its "
                        "missing parts recomputed", spend.ticket.key, str(e).splitlines()[0][:200])
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
    start = tweaks.start_epoch(spend.tweaks)
    if start > 0 and spend.ticket.pruning.source.at_init:
        dense_run(spend.ticket, run.store)
    model = build_ticket_model(spend.ticket, run.dataset)
    model.load_state_dict(run.store.read_tensors(paths.rewind_weights(spend.ticket.key, start)))
    for tweak, value in spend.tweaks.active():
        if "model" in tweak.hooks():
            tweak.model(value, model, run)
    model = run.runtime.prepare(model)
    run.mask = load_level(spend.ticket, spend.level, run.store)
    for tweak, value in spend.tweaks.active():
        if "mask" in tweak.hooks() and run.mask is not None:
            run.mask = tweak.mask(value, run.mask, run)
    if run.mask is not None:
        run.mask.apply_(model)
    return model, run.mask


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

    def checkpoint_epoch(record: EpochRecord, payload: Payload) -> None:
        # One payload (built once) for the store and `on_epoch`, as due as the recipe's cadence says.
        full_payload = payload.extended(lambda: {"init_records": run.init_records, "spend_key": spend.key,
                                                 "spend_seconds": run.seconds()})
        if persist_checkpoints and payload.due:
            store.write_torch(checkpoint_path, full_payload())
        if on_epoch is not None:
            on_epoch(record, full_payload)
        if on_stage_epoch is not None:
            on_stage_epoch(f"spend level {spend.level}", record)

    loss_fn = tweaks.compose_loss(spend.tweaks, run, cross_entropy_loss)
    hooks = [*tweaks.train_hooks(spend.tweaks, run), *observers]
    result = fit(run.model, run.dataset, spend.train_recipe, seed=spend.seed, runtime=run.runtime, mask=run.mask,
                 loss_fn=loss_fn, keep_epochs=spend.snapshot_epochs, resume=resume, on_epoch=checkpoint_epoch,
                 hooks=hooks)
    if run.mask is not None:
        _check_mask_holds(run.model, run.mask)
    return result


def record_spend(run: SpendRun, result: TrainResult, observers: Sequence[Observer] = ()) -> dict[str, Any]:
    """The spend's result, with its final weights and the snapshots it keeps, written to the store
    (result.json last)."""
    spend = run.spend
    lost = [e for e in spend.snapshot_epochs if e not in result.snapshots]
    if lost:  # `spend` drops a checkpoint that lacks one, so training kept every one asked for
        raise RuntimeError(f"spend {spend.key} kept no weights at epoch(s) {lost}")
    levels = {lv["level"]: lv for lv in run.draw_summary["levels"]}
    dense_acc = _dense_test_acc(run)
    out = {
        "spend_key": spend.key,
        "ticket_key": spend.ticket.key,
        "level": spend.level,
        "sparsity": run.mask.sparsity if run.mask is not None else 0.0,
        "live_sparsity": live_sparsity(run.mask, _stored_live_set(spend.ticket, run.store, run.dataset, write=False)),
        "tweak": spend.tweaks.describe(),
        "config": to_dict(spend),
        **result.summary(),
        "spend_seconds": run.seconds(),
        "platform": platform_info(run.runtime.device),
        "vanilla_test_acc": levels[spend.level].get("test_acc") if spend.level in levels else dense_acc,
        "dense_test_acc": dense_acc,
        "history": [vars(r) for r in result.history],
        "init_records": run.init_records,
        "snapshots": list(spend.snapshot_epochs),
        **{observer.name: observer.record() for observer in observers},
    }
    for epoch in spend.snapshot_epochs:
        run.store.write_tensors(paths.spend_snapshot(spend.key, epoch), result.snapshots[epoch])
    run.store.write_tensors(paths.spend_weights(spend.key), state_copy(run.model))
    run.store.write_json(paths.spend_result(spend.key), out)
    return out


def _dense_test_acc(run: SpendRun) -> float | None:
    """The dense net's test accuracy: the draw's, or for a draw at initialisation its dense run's
    when a spend has trained it (None until then)."""
    if run.draw_summary["dense"] is not None:
        return run.draw_summary["dense"]["test_acc"]
    then = "it is trained again when a spend needs it"
    metrics = _read_if_valid(_json_reader(run.store, DENSE_METRICS_SHAPE),
                             paths.dense_metrics(run.spend.ticket.key), then, warn=False)
    return metrics["summary"]["test_acc"] if metrics is not None else None


def spend(spend: SpendConfig, store: ArtifactStore, *, on_epoch: EpochCallback | None = None,
          resume: dict[str, Any] | None = None, persist_checkpoints: bool = True,
          on_stage_epoch: StageCallback | None = None, observers: Sequence[Observer] = ()) -> dict[str, Any]:
    """Re-train one (ticket, level, tweaks) combination and return its result.

    A finished spend is read back from the store when it is sound, keeps the snapshots asked for
    (`SpendConfig.snapshot_epochs`) and holds what every observer would record (`finished_spend`).
    Otherwise, under the spend's lock (identical spends train once; the others wait and read the
    result): prepare (drawing the ticket if needed), train, record. A spend trained again to add
    snapshots keeps those its earlier result listed too. `resume` (a checkpoint payload)
    continues a spend; without one, the store's does; a checkpoint past a snapshot epoch that it
    did not keep is not resumed from (the spend starts from its first epoch).
    """
    if resume is not None and resume.get("spend_key", spend.key) != spend.key:
        raise ValueError(f"the checkpoint belongs to spend {resume['spend_key']}, not {spend.key}")
    cached = finished_spend(spend, store, observers, warn=False)
    if cached is not None:
        return cached
    with store.lock(paths.spend_lock(spend.key)) as lease:  # identical spends train once
        cached = finished_spend(spend, store, observers)  # another worker may have finished it meanwhile
        if cached is not None:
            return cached
        spend = _with_earlier_snapshots(spend, store)
        if resume is None and persist_checkpoints:
            resume = _read_if_valid(store.read_torch, paths.spend_checkpoint(spend.key),
                                    "the spend starts from its first epoch")
        resume = _keeps_snapshots(spend, resume)
        run = prepare_spend(spend, store, with_init=resume is None, on_stage_epoch=on_stage_epoch)
        result = train_spend(run, resume=resume, persist_checkpoints=persist_checkpoints, on_epoch=on_epoch,
                             on_stage_epoch=on_stage_epoch, observers=observers)
        out = record_spend(run, result, observers)
        if lease.lost:  # another worker may have written the same spend beside us
            store.delete(paths.spend_result(spend.key))
            raise RuntimeError(f"lost the lock on spend {spend.key} while training it (a stalled worker or "
                               "store); run again")
    if persist_checkpoints:
        store.delete(paths.spend_checkpoint(spend.key))
    return out


def finished_spend(spend: SpendConfig, store: ArtifactStore, observers: Sequence[Observer] = (),
                   warn: bool = True) -> dict | None:
    """A finished spend's result when it, its weights and the snapshots it lists are sound, it keeps
    every snapshot `spend` asks for and holds what every observer records; None otherwise (a
    corrupt file is named in one warning line and the spend trained again)."""
    then = "the spend is trained again"
    result = _read_if_valid(_json_reader(store, RESULT_SHAPE), paths.spend_result(spend.key), then, warn)
    if result is None or missing_snapshots(spend, result):
        return None
    snapshots = [paths.spend_snapshot(spend.key, e) for e in result.get("snapshots", [])]  # none before snapshots
    files = [paths.spend_weights(spend.key), *snapshots]
    if not all([_sound(store, path, then, warn=warn, expected=True) for path in files]):  # each bad one named
        return None
    return result if all(o.covers(result.get(o.name)) for o in observers) else None


def missing_snapshots(spend: SpendConfig, result: dict[str, Any]) -> list[int]:
    """The snapshot epochs `spend` asks for that a stored result does not keep."""
    kept = set(result.get("snapshots", ()))
    return [e for e in spend.snapshot_epochs if e not in kept]


def _with_earlier_snapshots(spend: SpendConfig, store: ArtifactStore) -> SpendConfig:
    """`spend` also keeping the snapshots a stored result of it lists: training it again (for a new
    snapshot) must not drop those, and all of them then come from one run."""
    earlier = _read_if_valid(_json_reader(store, RESULT_SHAPE), paths.spend_result(spend.key), "", warn=False)
    if earlier is None:
        return spend
    missing = missing_snapshots(spend, earlier)
    if missing:
        log.info("spend %s is stored without its weights at epoch(s) %s: trained again to keep them", spend.key,
                 missing)
    kept = earlier.get("snapshots", [])
    return replace(spend, snapshot_epochs=(*spend.snapshot_epochs, *kept)) if kept else spend


def _keeps_snapshots(spend: SpendConfig, resume: dict[str, Any] | None) -> dict[str, Any] | None:
    """`resume`, unless it is past a snapshot epoch whose weights it did not keep (a checkpoint of a
    run that asked for other snapshots): then None, and the spend starts from its first epoch."""
    if resume is None:
        return None
    lacking = [e for e in spend.snapshot_epochs if e <= int(resume["epoch"]) and str(e) not in resume["snapshots"]]
    if not lacking:
        return resume
    log.warning("warning: the checkpoint of spend %s (epoch %s) lacks the weights at epoch(s) %s; the spend starts "
                "from its first epoch to keep them", spend.key, resume["epoch"], lacking)
    return None


def _check_mask_holds(model: nn.Module, mask: Mask) -> None:
    """Training must never revive a pruned weight; fail loudly if it did."""
    params = dict(model.named_parameters())
    for name in mask:
        revived = int((params[name].detach().cpu()[~mask[name]] != 0).sum())
        if revived:
            raise AssertionError(f"{revived} pruned weights of {name} are non-zero after training")
