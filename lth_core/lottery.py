"""Draw a ticket once (dense run + IMP/OMP levels), spend it many ways.

Everything a draw produces lives in the artifact store under the ticket's
content key, written atomically and one piece at a time, so a crash loses at
most the epoch in flight and a second worker asking for the same ticket waits
on the lock instead of computing it again:

    tickets/<key>/config.json
    tickets/<key>/dense/rewind_<epoch>.safetensors   weights kept for rewinding (epoch 0 = init)
    tickets/<key>/dense/final.safetensors            the trained dense net (distillation teacher)
    tickets/<key>/dense/metrics.json
    tickets/<key>/level_<k>/mask.safetensors
    tickets/<key>/level_<k>/final.safetensors        IMP prunes level k+1 from these weights
    tickets/<key>/level_<k>/metrics.json             vanilla LTH re-training at that sparsity
    tickets/<key>/summary.json                       written last: the draw is complete
    spends/<key>/final.safetensors                   a finished spend's weights (for the analyses)
    spends/<key>/result.json                         a finished spend, written last
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lth_core.config import DataConfig, SpendConfig, TicketConfig, to_dict
from lth_core.data import Dataset, iterate_batches, load_dataset, num_batches
from lth_core.masks import Mask
from lth_core.models import build_model, load_ticket_weights
from lth_core.pruning import prune_to_sparsity
from lth_core.store import ArtifactStore, CorruptArtifactError
from lth_core.training import EpochRecord, Runtime, TrainResult, fit, state_copy
from lth_core.tweaks.activations import swap_activations
from lth_core.tweaks.distillation import load_teacher, make_loss
from lth_core.tweaks.rescale_init import rescale_init
from lth_core.tweaks.skips import inject_skips

StageCallback = Callable[[str, EpochRecord], None]
"""Progress: (stage name such as 'dense' or 'level 3', the epoch just finished)."""


def ticket_dir(ticket: TicketConfig) -> str:
    return f"tickets/{ticket.key}"


def spend_dir(spend: SpendConfig) -> str:
    return f"spends/{spend.key}"


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


def _train_stage(store: ArtifactStore, folder: str, model: nn.Module, dataset: Dataset, ticket: TicketConfig,
                 runtime: Runtime, *, mask: Mask | None, keep_epochs: tuple[int, ...], stage: str,
                 on_stage_epoch: StageCallback | None) -> TrainResult:
    """Train one stage of a draw with the dense recipe, checkpointing each epoch to the store."""
    checkpoint_path = f"{folder}/checkpoint.pt"
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
    folder = ticket_dir(ticket)
    summary = _read_if_valid(store.read_json, f"{folder}/summary.json")
    if summary is not None:
        return summary
    with store.lock(f"ticket-{ticket.key}") as lease:
        summary = _read_if_valid(store.read_json, f"{folder}/summary.json")
        if summary is None:
            summary = _draw_locked(ticket, store, on_stage_epoch)
            if lease.lost:  # another worker may have drawn beside us: its files and ours can mix
                store.delete(f"{folder}/summary.json")
                raise RuntimeError(f"lost the lock on ticket {ticket.key} while drawing it (a stalled worker or "
                                   "store); run again: the finished stages are kept and checked")
    return summary


def _draw_locked(ticket: TicketConfig, store: ArtifactStore, on_stage_epoch: StageCallback | None) -> dict[str, Any]:
    folder = ticket_dir(ticket)
    store.write_json(f"{folder}/config.json", {"key": ticket.key, "config": to_dict(ticket)})
    runtime = Runtime.resolve(ticket.recipe)
    dataset = dataset_on(ticket.data, runtime.device)

    level_dirs = [f"{folder}/level_{level}" for level in range(1, ticket.num_levels + 1)]
    dense_files = [f"{folder}/dense/rewind_{e}.safetensors" for e in ticket.rewind_epochs]
    dense_files.append(f"{folder}/dense/final.safetensors")
    dense_metrics = _read_if_valid(store.read_json, f"{folder}/dense/metrics.json")
    if dense_metrics is None or not all(store.verify(p) for p in dense_files):
        for level_dir in level_dirs:  # every level derives from the dense run
            store.delete(level_dir)
        model = runtime.prepare(build_ticket_model(ticket, dataset))
        result = _train_stage(store, f"{folder}/dense", model, dataset, ticket, runtime, mask=None,
                              keep_epochs=ticket.rewind_epochs, stage="dense", on_stage_epoch=on_stage_epoch)
        for epoch, state in result.snapshots.items():
            store.write_tensors(f"{folder}/dense/rewind_{epoch}.safetensors", state)
        store.write_tensors(f"{folder}/dense/final.safetensors", state_copy(model))
        dense_metrics = _metrics(result)
        store.write_json(f"{folder}/dense/metrics.json", dense_metrics)
        store.delete(f"{folder}/dense/checkpoint.pt")

    rewind_path = f"{folder}/dense/rewind_{ticket.pruning.rewind_epoch}.safetensors"
    rewind_state = store.read_tensors(rewind_path)
    pruning = ticket.pruning
    levels = []
    prev_weights = store.read_tensors(f"{folder}/dense/final.safetensors")
    model = runtime.prepare(build_ticket_model(ticket, dataset))
    prev_mask = Mask.ones_like(model, pruning.prune_linear)
    for level, (level_dir, sparsity) in enumerate(zip(level_dirs, pruning.level_sparsities()), start=1):
        mask = _read_if_valid(_read_mask(store), f"{level_dir}/mask.safetensors")
        metrics = _read_if_valid(store.read_json, f"{level_dir}/metrics.json")
        if mask is None or metrics is None or not store.verify(f"{level_dir}/final.safetensors"):
            if pruning.method == "imp":  # later IMP levels are pruned from this one's weights
                for later in level_dirs[level:]:
                    store.delete(later)
            if mask is None:
                mask = prune_to_sparsity(prev_weights, prev_mask, sparsity, scope=pruning.scope,
                                         allow_empty_layers=pruning.allow_empty_layers)
                store.write_bytes(f"{level_dir}/mask.safetensors", mask.to_bytes())
            model.load_state_dict(rewind_state)
            result = _train_stage(store, level_dir, model, dataset, ticket, runtime, mask=mask, keep_epochs=(),
                                  stage=f"level {level}", on_stage_epoch=on_stage_epoch)
            store.write_tensors(f"{level_dir}/final.safetensors", state_copy(model))
            metrics = {"level": level, "sparsity": mask.sparsity, "target_sparsity": sparsity,
                       "start": rewind_path, "layer_sparsity": mask.layer_sparsity(), **_metrics(result)}
            store.write_json(f"{level_dir}/metrics.json", metrics)
            store.delete(f"{level_dir}/checkpoint.pt")
        levels.append({"level": level, "sparsity": metrics["sparsity"], **metrics["summary"]})
        if pruning.method == "imp":
            prev_weights, prev_mask = store.read_tensors(f"{level_dir}/final.safetensors"), mask

    summary = {"key": ticket.key, "config": to_dict(ticket), "dense": dense_metrics["summary"], "levels": levels}
    store.write_json(f"{folder}/summary.json", summary)
    return summary


def _read_mask(store: ArtifactStore) -> Callable[[str], Mask]:
    return lambda path: Mask.from_bytes(store.read_bytes(path))


def load_level(ticket: TicketConfig, level: int, store: ArtifactStore) -> Mask | None:
    """The mask of a drawn level (None for level 0, the dense net)."""
    if level == 0:
        return None
    return _read_mask(store)(f"{ticket_dir(ticket)}/level_{level}/mask.safetensors")


def prepare_spend_model(spend: SpendConfig, store: ArtifactStore, runtime: Runtime,
                        dataset: Dataset) -> tuple[nn.Module, Mask | None]:
    """The ticket's starting weights (init or a rewind point) under its mask, with the architecture
    tweaks applied; the mask is never changed."""
    ticket, tweaks = spend.ticket, spend.tweaks
    model = build_ticket_model(ticket, dataset)
    start = store.read_tensors(f"{ticket_dir(ticket)}/dense/rewind_{tweaks.rewind_epoch}.safetensors")
    model.load_state_dict(start)
    swap_activations(model, tweaks.activation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spend.seed)
        inject_skips(model, tweaks.skip)
    model = runtime.prepare(model)
    mask = load_level(ticket, spend.level, store)
    if mask is not None:
        mask.apply_(model)
    return model, mask


def _teacher_for(spend: SpendConfig, store: ArtifactStore, runtime: Runtime, dataset: Dataset):
    ticket = spend.ticket

    def build() -> nn.Module:
        model = build_ticket_model(ticket, dataset)
        load_ticket_weights(model, store.read_tensors(f"{ticket_dir(ticket)}/dense/final.safetensors"))
        return runtime.prepare(model)

    return load_teacher(f"{ticket.key}@{runtime.device}", build)


def _endless_batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if num_batches(dataset, "train", batch_size, drop_last=True) == 0:
        raise ValueError(f"tweaks.rescale_init.batch_size {batch_size} is larger than the training set "
                         f"({len(dataset.train_y)} images); lower it")
    generator = torch.Generator()
    generator.manual_seed(seed)
    for _ in itertools.count():
        yield from iterate_batches(dataset, "train", batch_size, generator=generator, shuffle=True,
                                   augment=True, drop_last=True)


def spend(spend: SpendConfig, store: ArtifactStore, *, on_epoch: Callable[[EpochRecord, Callable[[], dict]], None]
          | None = None, resume: dict[str, Any] | None = None, persist_checkpoints: bool = True,
          on_stage_epoch: StageCallback | None = None, hessian_every: int = 0,
          hessian_batches: int = 2) -> dict[str, Any]:
    """Re-train one (ticket, level, tweaks) combination and return its result.

    A finished spend is read back from the store. Otherwise the ticket is drawn if needed
    (single-flight through the store's lock), then trained; each epoch's checkpoint goes to the
    store (`persist_checkpoints`) and/or to `on_epoch`, and `resume` continues from one.
    `hessian_every=N` measures the top Hessian eigenvalue of the masked net every N epochs on
    `hessian_batches` fixed train batches (the paper's Figure A12): `result["hessian_history"]`.
    """
    if resume is not None and resume.get("spend_key", spend.key) != spend.key:
        raise ValueError(f"the checkpoint belongs to spend {resume['spend_key']}, not {spend.key}")
    result_path = f"{spend_dir(spend)}/result.json"
    cached = _read_if_valid(store.read_json, result_path)
    if (cached is not None and store.exists(f"{spend_dir(spend)}/final.safetensors")
            and (not hessian_every or cached.get("hessian_every") == hessian_every)):
        return cached
    started = time.perf_counter()
    recipe = spend.train_recipe
    runtime = Runtime.resolve(recipe)
    dataset = dataset_on(spend.ticket.data, runtime.device)
    tweaks = spend.tweaks
    for attempt in (1, 2):
        draw_summary = draw(spend.ticket, store, on_stage_epoch)
        try:
            model, mask = prepare_spend_model(spend, store, runtime, dataset)
            teacher = _teacher_for(spend, store, runtime, dataset) if tweaks.kd is not None else None
            break
        except (FileNotFoundError, CorruptArtifactError):
            if attempt == 2:
                raise
            # A ticket file went missing or bad after the draw finished: check and redo the draw.
            store.delete(f"{ticket_dir(spend.ticket)}/summary.json")
    loss_fn = make_loss(tweaks, teacher)

    checkpoint_path = f"{spend_dir(spend)}/checkpoint.pt"
    if resume is None and persist_checkpoints:
        resume = _read_if_valid(store.read_torch, checkpoint_path)
    earlier_seconds = float((resume or {}).get("spend_seconds", 0.0))

    def elapsed() -> float:
        """Seconds this spend has taken, earlier attempts included."""
        return earlier_seconds + time.perf_counter() - started

    scales: dict[str, float] = {}
    if resume is not None:
        scales = dict(resume.get("rescale_scales", {}))
    elif tweaks.rescale_init is not None:
        batches = _endless_batches(dataset, tweaks.rescale_init.batch_size, spend.seed)
        scales = rescale_init(model, batches, tweaks.rescale_init, mask=mask)  # fp32: it differentiates twice

    tracker = None
    if hessian_every:
        from lth_core.analysis.hessian import HessianTracker

        fixed = list(itertools.islice(iterate_batches(dataset, "train", recipe.batch_size), hessian_batches))
        tracker = HessianTracker(hessian_every, fixed, mask=mask, seed=spend.seed,
                                 history=[tuple(h) for h in (resume or {}).get("hessian_history", [])])

    def checkpoint_epoch(record: EpochRecord, payload: Callable[[], dict[str, Any]]) -> None:
        if tracker is not None:
            tracker.maybe_measure(record.epoch, model)

        def full_payload() -> dict[str, Any]:
            return {**payload(), "rescale_scales": scales, "spend_key": spend.key, "spend_seconds": elapsed(),
                    "hessian_history": [list(h) for h in tracker.history] if tracker else []}

        if persist_checkpoints:
            store.write_torch(checkpoint_path, full_payload())
        if on_epoch is not None:
            on_epoch(record, full_payload)
        if on_stage_epoch is not None:
            on_stage_epoch(f"spend level {spend.level}", record)

    result = fit(model, dataset, recipe, seed=spend.seed, runtime=runtime, mask=mask, loss_fn=loss_fn,
                 resume=resume, on_epoch=checkpoint_epoch)
    if mask is not None:
        _check_mask_holds(model, mask)
    level_info = next((lv for lv in draw_summary["levels"] if lv["level"] == spend.level), None)
    out = {
        "spend_key": spend.key,
        "ticket_key": spend.ticket.key,
        "level": spend.level,
        "sparsity": mask.sparsity if mask is not None else 0.0,
        "tweak": tweaks.describe(),
        "config": to_dict(spend),
        **result.summary(),
        "spend_seconds": elapsed(),
        "vanilla_test_acc": level_info["test_acc"] if level_info else draw_summary["dense"]["test_acc"],
        "dense_test_acc": draw_summary["dense"]["test_acc"],
        "history": [vars(r) for r in result.history],
        "rescale_scales": scales,
        "hessian_every": hessian_every,
        "hessian_history": [list(h) for h in tracker.history] if tracker else [],
    }
    store.write_tensors(f"{spend_dir(spend)}/final.safetensors", state_copy(model))
    store.write_json(result_path, out)
    if persist_checkpoints:
        store.delete(checkpoint_path)
    return out


def _check_mask_holds(model: nn.Module, mask: Mask) -> None:
    """Training must never revive a pruned weight; fail loudly if it did."""
    params = dict(model.named_parameters())
    for name in mask:
        revived = int((params[name].detach().cpu()[~mask[name]] != 0).sum())
        if revived:
            raise AssertionError(f"{revived} pruned weights of {name} are non-zero after training")
