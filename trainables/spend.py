"""Ray Tune trainable: re-train one (ticket, level, tweaks) combination.

Reports every epoch with a `ray.tune.Checkpoint` holding the full training
state, and resumes from `ray.tune.get_checkpoint()` after a failure or a
restore, so a killed trial ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from lth_core.config import SpendConfig
from lth_core.lottery import spend, ticket_dir
from lth_core.store import ArtifactStore
from lth_core.training import EpochRecord
from trainables.common import device_share, spend_from_trial
from trainables.tracking import TrialRun, spend_params

STATE_FILE = "state.pt"


def _resume_state() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=True, map_location="cpu")


def _real_sparsity(spend_cfg: SpendConfig, store: ArtifactStore) -> float:
    """The level's measured sparsity (docs/tracking.md), not the schedule's target. The draw stage
    stored it; a trial that cannot read it sees another store than the driver, and says so."""
    if spend_cfg.level == 0:
        return 0.0
    path = f"{ticket_dir(spend_cfg.ticket)}/summary.json"
    if not store.exists(path):
        raise FileNotFoundError(f"{store.uri}/{path} is missing on this node: the artifact store must be the "
                                "same for every Ray node (s3://... or a shared filesystem)")
    summary = store.read_json(path)
    return next(lv["sparsity"] for lv in summary["levels"] if lv["level"] == spend_cfg.level)


def spend_trainable(config: dict[str, Any]) -> None:
    config_obj = spend_from_trial(config)
    store = ArtifactStore(config["store"])
    share = device_share(config)
    run = None
    logged_epochs: set[int] = set()
    if config.get("tracking_uri"):
        tweak = config_obj.tweaks.describe()
        run = TrialRun(config["tracking_uri"], config["parent_run_id"], trial_key=config_obj.key, stage="spend",
                       tags={"ticket_key": config_obj.ticket.key, "spend_key": config_obj.key, "tweak": tweak},
                       params=spend_params(config_obj, _real_sparsity(config_obj, store)),
                       run_name=f"L{config_obj.level} {tweak} s{config_obj.seed}")
        logged_epochs = run.logged_steps("val_acc")  # a restarted trial does not log an epoch twice
    resume = _resume_state()
    best = {"val_acc": -1.0, "test_acc": 0.0}
    for r in (resume or {}).get("history", []):  # the epochs before the checkpoint count too
        if r["val_acc"] > best["val_acc"]:
            best.update(val_acc=r["val_acc"], test_acc=r["test_acc"])
    reported = []

    def on_epoch(record: EpochRecord, payload) -> None:
        if record.val_acc > best["val_acc"]:
            best.update(val_acc=record.val_acc, test_acc=record.test_acc)
        metrics = {"epoch": record.epoch, "train_loss": record.train_loss, "val_acc": record.val_acc,
                   "test_acc": record.test_acc}
        state = payload()
        hessian = state["hessian_history"]
        if hessian and hessian[-1][0] == record.epoch:
            metrics["hessian_top_eigenvalue"] = hessian[-1][1]
        if run is not None and record.epoch not in logged_epochs:
            run.log_metrics({k: v for k, v in metrics.items() if k != "epoch"} | {"lr": record.lr},
                            step=record.epoch)
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report({**metrics, "best_val_acc": best["val_acc"], "best_test_acc": best["test_acc"]},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        reported.append(record.epoch)

    try:
        result = spend(config_obj, store, on_epoch=on_epoch, resume=resume, persist_checkpoints=False,
                       hessian_every=int(config.get("hessian_every") or 0))
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise
    final = {"best_val_acc": result["best_val_acc"], "test_acc": result["test_acc"],
             "wall_seconds": result["spend_seconds"], "device_seconds": result["spend_seconds"] * share,
             "vanilla_test_acc": result["vanilla_test_acc"], "dense_test_acc": result["dense_test_acc"]}
    analysis = {}
    if config.get("analyze"):  # opt-in: activation sparsity and top Hessian eigenvalue of the result
        from lth_core.analysis.run import spend_metrics

        analysis = spend_metrics(config_obj, store)
    if run is not None:
        if not reported:  # a result read back from the store still gets its curves
            for r in result["history"]:
                if r["epoch"] not in logged_epochs:
                    run.log_metrics({k: r[k] for k in ("train_loss", "val_acc", "test_acc", "lr")}, step=r["epoch"])
        last_epoch = result["history"][-1]["epoch"] if result["history"] else 0
        if not run.logged_steps("best_val_acc"):  # an earlier attempt may have logged them already
            run.log_metrics(final, step=last_epoch)
        if analysis and not run.logged_steps("act_sparsity"):  # also when a rerun adds --analyze
            run.log_metrics(analysis, step=last_epoch)
        if result["rescale_scales"]:
            run.set_tags({"rescale_scales": ", ".join(f"{k}={v:.3g}" for k, v in
                                                      list(result["rescale_scales"].items())[:40])})
        run.finish()
    if not reported:  # read back from the store: one report with the final numbers
        tune.report({"epoch": 0, "val_acc": result["best_val_acc"], "best_val_acc": result["best_val_acc"],
                     "best_test_acc": result["test_acc"], "test_acc": result["test_acc"]})
