"""What both trainables share: a trial's config into the core's config types, Tune checkpoints
and reports, and the MLflow run's end."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from ray import tune

from lth_core import tweaks
from lth_core.config import RecipeConfig, SpendConfig, TicketConfig, TweakConfig, from_dict
from lth_core.paths import ticket_summary
from lth_core.store import ArtifactStore
from lth_core.training import EpochRecord, Payload

STATE_FILE = "state.pt"
log = logging.getLogger(__name__)


class TrialInputError(RuntimeError):
    """A trial error that would recur on a retry (a config, data-format or store error, a level
    that empties a layer), in one line: the sweep fails the trial once and shows it
    (`sweeps.runner.retryable`)."""


@contextlib.contextmanager
def deterministic_errors() -> Iterator[None]:
    """Re-raise a config, data or store error as TrialInputError (one line, its type named)."""
    from lth_core.config import ConfigError
    from lth_core.data import DatasetFormatError, DatasetNotFoundError
    from lth_core.pruning import EmptyLayerError
    from lth_core.store import OutsideStoreError

    try:
        yield
    except (ConfigError, DatasetNotFoundError, DatasetFormatError, OutsideStoreError, EmptyLayerError) as e:
        raise TrialInputError(f"{type(e).__name__}: {e}") from e
    except FileNotFoundError as e:  # the store of this node lacks the draw (level_sparsities)
        raise TrialInputError(f"store: {e}") from e


def tweaks_from_trial(config: dict[str, Any]) -> TweakConfig:
    """`config["tweaks"]` (a TweakConfig dict) with any flat search parameters (a search samples
    one per tweak, named after it: `lth_core.tweaks.from_flat`) laid over it."""
    return tweaks.from_flat(config, config.get("tweaks"))


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
    """The trial's spend; it keeps its weights at the epochs the sweep analyses (`--analyze-epochs`)."""
    recipe = config.get("spend_recipe")
    return SpendConfig(ticket=ticket_from_trial(config), level=int(config["level"]),
                       recipe=from_dict(RecipeConfig, on_granted_devices(config, recipe)) if recipe else None,
                       tweaks=tweaks_from_trial(config), seed=int(config.get("seed", 0)),
                       snapshot_epochs=tuple(int(e) for e in config.get("analyze_epochs") or ()))


def device_share(config: dict[str, Any]) -> float:
    """The share of devices a trial holds: its GPUs when it has some, else its CPUs."""
    return float(config.get("gpus_per_trial") or config.get("cpus_per_trial") or 1.0)


def resume_state() -> dict[str, Any] | None:
    """The training state of this trial's newest checkpoint, by its epoch (None on a first start).

    Not simply `tune.get_checkpoint()`: that is the checkpoint Tune's experiment state names, and
    Tune saves that state only every few seconds (and after every `num_to_keep` checkpoints of a
    trial), so after a killed driver (or a restore for a lost node) it can name a checkpoint one or
    two older than the newest one the trial wrote, or none. The trial's folder holds every checkpoint
    it kept, the newer ones Tune never heard of included; the folder names cannot order them (a
    restored trial numbers its next checkpoints on from the index Tune's state restored, and so
    writes over those newer folders one by one), the epoch inside each can. One that cannot be read
    (cut short by the crash) is skipped."""
    best = None
    for checkpoint in _trial_checkpoints():
        try:
            with checkpoint.as_directory() as folder:
                state = torch.load(Path(folder) / STATE_FILE, weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - a checkpoint cut short by a crash: another one serves
            log.warning("warning: checkpoint %s cannot be read (%s); the trial resumes from another one",
                        checkpoint.path, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            continue
        if best is None or int(state["epoch"]) > int(best["epoch"]):
            best = state
    return best


def _trial_checkpoints() -> list[tune.Checkpoint]:
    """The checkpoint folders of this trial (`checkpoint_<index>`, Tune's naming) on its storage,
    the one Tune's restored state names among them."""
    named = tune.get_checkpoint()
    folder, fs = _trial_folder(named)
    checkpoints = []
    if folder is not None:
        try:
            infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            infos = []
        checkpoints = [tune.Checkpoint(f"{folder}/{info.base_name}", filesystem=fs) for info in infos
                       if info.type == pafs.FileType.Directory and CHECKPOINT_FOLDER.fullmatch(info.base_name)]
    if named is not None and all(c.path.rstrip("/") != named.path.rstrip("/") for c in checkpoints):
        checkpoints.append(named)
    return checkpoints


CHECKPOINT_FOLDER = re.compile(r"checkpoint_\d{6,}")


def _trial_folder(named: tune.Checkpoint | None) -> tuple[str | None, Any]:
    """The trial's folder on its storage and the filesystem it is on: Tune's storage context
    (a developer API), else the folder of the checkpoint Tune named."""
    try:
        from ray.train._internal.session import get_session

        storage = get_session().storage
        return storage.trial_fs_path, storage.storage_filesystem
    except Exception:  # noqa: BLE001 - another Ray version or no Tune session: the named checkpoint's folder
        if named is None:
            return None, None
        return named.path.rstrip("/").rsplit("/", 1)[0], named.filesystem


def report_epoch(record: EpochRecord, payload: Payload, hessian: float | None = None) -> None:
    """One epoch to Tune, with the full training state as its checkpoint when the recipe's cadence
    wants one (`payload.due`, `RecipeConfig.checkpoint_seconds`): saving it and Tune's copy of it
    are the costly part of a short epoch, and every checkpoint makes Tune sync its experiment
    state. `best_*` is the best-validation epoch so far, the epochs of earlier attempts included
    (`payload.history`: the state is built only when a checkpoint is due)."""
    best = max(payload.history, key=lambda r: (r.val_acc, -r.epoch))
    metrics = {"epoch": record.epoch, "train_loss": record.train_loss, "val_acc": record.val_acc,
               "test_acc": record.test_acc, "best_val_acc": best.val_acc, "best_test_acc": best.test_acc}
    if hessian is not None:
        metrics["hessian_top_eigenvalue"] = hessian
    if not payload.due:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(payload(), Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def level_sparsities(spend: SpendConfig, store: ArtifactStore) -> tuple[float, float | None]:
    """The level's measured sparsity, nominal and among live weights (docs/tracking.md), not the
    schedule's target. The draw stage stored them; a trial that cannot read them sees another
    store than the driver, and says so."""
    if spend.level == 0:
        return 0.0, 0.0
    path = ticket_summary(spend.ticket.key)
    if not store.exists(path):
        raise FileNotFoundError(f"{store.uri}/{path} is missing on this node: the artifact store must be the "
                                "same for every Ray node (s3://... or a shared filesystem)")
    summary = store.read_json(path)
    level = next(lv for lv in summary["levels"] if lv["level"] == spend.level)
    return level["sparsity"], level.get("live_sparsity")


@contextlib.contextmanager
def tracked(run: Any) -> Iterator[None]:
    """The trial's MLflow run (None when not tracked) ends FINISHED, or FAILED when the body raises."""
    try:
        yield
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise
    if run is not None:
        run.finish()
