"""Every name of the MLflow layout (docs/tracking.md): experiments, runs, tags, params, metrics.

The writers (`tracking.runs`, used by the trainables and the sweeps) and the reader
(`tracking.reader`, used by the dashboards) take their names from here and nowhere else.

Metric names. A spend run logs two kinds of metrics, told apart by name only:

- per epoch, step = epoch: `train_loss`, `val_acc`, `test_acc`, `lr`, and with
  `--hessian-every N` `hessian_top_eigenvalue` (every N epochs);
- final, logged once after the last epoch (step = the last epoch): the same quantity's
  name with the prefix `final_`, e.g. `final_best_val_acc` (the best validation accuracy
  over the epochs) and `final_test_acc` (the test accuracy at the best-validation epoch);
  see `SPEND_FINAL_METRICS`. With `--analyze` also `final_act_sparsity`,
  `final_act_sparsity_<stage>` and `final_hessian_top_eigenvalue`.

So `test_acc` is only ever a per-epoch value and `final_test_acc` only ever the result: no
timestamp or step decides which value is the final one. The report shows a final metric in
the column named without the prefix (`result_column`): `final_test_acc` -> `test_acc`.

With `--analyze` / `--analyze-epochs K,...` a spend run also carries one JSON artifact per
analysed set of weights, `analysis/final.json` and `analysis/epoch_<K>.json`
(`analysis_artifact`: the metrics and the arrays of the landscapes, in weight and in input
space), named in its tag `analyses` (e.g. `epoch_1,final`), so a reader fetches only those.

A draw run has no per-epoch series: `dense_test_acc`, `dense_best_val_acc`, `wall_seconds`
(step 0) and per IMP level (step = level) `vanilla_test_acc`, `vanilla_best_val_acc`,
`level_sparsity` and `level_live_sparsity` (the sparsity among live weights, `lth_core.live`).
An Optuna parent run logs `best_val_acc` and `best_test_acc` per level (step = level; suffixed
`_<mask source>` with several sources, `_ticket<seed>` with several ticket seeds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # types only: the reader side needs no lth_core at run time
    from lth_core.config import SpendConfig, TicketConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""Where the sweeps log and the report reads when neither a flag nor $MLFLOW_TRACKING_URI says."""

# ------------------------------------------------------------------------ experiments

KIND_GRID = "grid"
KIND_OPTUNA = "optuna"
KINDS = (KIND_GRID, KIND_OPTUNA)


def experiment_name(sweep_name: str, kind: str = KIND_GRID) -> str:
    """One experiment per sweep and kind: the grid logs to `<name>`, an Optuna search to
    `<name>-optuna`, so that each report stays about one kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown sweep kind {kind!r}; one of {', '.join(KINDS)}")
    return sweep_name if kind == KIND_GRID else f"{sweep_name}-{KIND_OPTUNA}"


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def runs_page_url(server: str, experiment_id: str) -> str:
    """The experiment's runs page in the MLflow UI at `server`. It opens on "Training runs" whatever
    mode the browser's sidebar is in: MLflow 3 keeps that mode in the browser and ignores the
    experiment's `mlflow.experimentKind` tag (mlflow/mlflow#24498), so a link to the experiment
    alone can open on the GenAI overview. Credentials in `server` are left out: a browser asks."""
    parts = urlsplit(server)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{urlunsplit((parts.scheme, host, parts.path.rstrip('/'), '', ''))}/#/experiments/{experiment_id}/runs"


# ------------------------------------------------------------------------ tags

PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own nesting tag
MLFLOW_TAG_PREFIX = "mlflow."

STAGE = "stage"
KIND = "kind"
SWEEP_NAME = "sweep_name"
PRESET = "preset"
TRIAL_KEY = "trial_key"
TICKET_KEY = "ticket_key"
SPEND_KEY = "spend_key"
TWEAK = "tweak"
INIT_RECORDS = "init_records.json"  # artifact: what the tweaks' init hooks learned
ANALYSES = "analyses"  # the analysis artifacts a spend run holds (`analysis_label`s, comma separated)
OPTUNA_STORAGE = "optuna_storage"
OPTUNA_STUDY_PREFIX = "optuna_study_prefix"
OPTUNA_STUDY_PREFIXES = "optuna_study_prefixes"

# values of the `stage` tag
STAGE_SWEEP = "sweep"  # the parent run
STAGE_DRAW = "draw"
STAGE_SPEND = "spend"

VANILLA = "vanilla"  # the `tweak` tag of a run with every tweak off (and of a draw run)

# ------------------------------------------------------------------------ run names and trial keys

PARENT_RUN_NAME = "sweep"


def draw_trial_key(ticket: TicketConfig) -> str:
    return f"draw-{ticket.key}"


def draw_run_name(ticket: TicketConfig) -> str:
    """E.g. 'draw imp resnet18 w0.25 seed0': the mask source and ticket at a glance in the UI."""
    return f"draw {ticket.pruning.method} {ticket.model.arch} w{ticket.model.width:g} seed{ticket.seed}"


def spend_trial_key(spend: SpendConfig) -> str:
    return spend.key


def spend_run_name(spend: SpendConfig) -> str:
    """E.g. 'imp t0 L2 36.0% swish seed0': mask source, ticket seed, level, sparsity, tweaks and
    re-training seed at a glance in the MLflow UI's run list."""
    return (f"{spend.ticket.pruning.method} t{spend.ticket.seed} L{spend.level} {spend.sparsity:.1%} "
            f"{spend.tweaks.describe()} seed{spend.seed}")


# ------------------------------------------------------------------------ params (strings)

TICKET_PARAMS = ("dataset", "arch", "width", "seed", "ticket_seed", "prune_method")
DRAW_PARAMS = (*TICKET_PARAMS, "levels")
LEVEL = "level"
SPARSITY = "sparsity"  # a spend's level, measured: the share of its prunable weights the mask removes
LIVE_SPARSITY = "live_sparsity"  # the share of its live weights (lth_core.live) the mask removes
# A draw's, logged when it has finished: how many prunable weights it has and how many are live.
PRUNABLE_WEIGHTS = "prunable_weights"
LIVE_WEIGHTS = "live_weights"
# The platform a draw or spend was computed on (lth_core.machine: cpu, cpu_flags, cpu_capability,
# torch, blas, threads, gpu on CUDA), logged once its result is in, as `platform.<field>`.
PLATFORM_PREFIX = "platform."


def platform_params(platform: dict[str, str] | None) -> dict[str, str]:
    """A stored result's platform as params (none for a result stored before platforms were)."""
    return {PLATFORM_PREFIX + name: str(value) for name, value in (platform or {}).items()}

# ------------------------------------------------------------------------ metrics

# spend, per epoch (step = epoch)
TRAIN_LOSS = "train_loss"
VAL_ACC = "val_acc"
TEST_ACC = "test_acc"
LR = "lr"
HESSIAN = "hessian_top_eigenvalue"  # --hessian-every N; the final one (--analyze) is final_<this>
EPOCH_METRICS = (TRAIN_LOSS, VAL_ACC, TEST_ACC, LR)

# spend, final (once, after the last epoch)
FINAL_PREFIX = "final_"


def final(name: str) -> str:
    """The final metric of quantity `name`: `final_<name>`."""
    return name if name.startswith(FINAL_PREFIX) else FINAL_PREFIX + name


def is_final(name: str) -> bool:
    return name.startswith(FINAL_PREFIX)


def result_column(name: str) -> str:
    """The report's column for a spend metric: a final metric without its prefix, any other as is."""
    return name[len(FINAL_PREFIX):] if is_final(name) else name


BEST_VAL_ACC = "best_val_acc"
WALL_SECONDS = "wall_seconds"
DEVICE_SECONDS = "device_seconds"
VANILLA_TEST_ACC = "vanilla_test_acc"
DENSE_TEST_ACC = "dense_test_acc"
ACT_SPARSITY = "act_sparsity"  # overall; act_sparsity_<stage> per top-level stage of the model

FINAL_BEST_VAL_ACC = final(BEST_VAL_ACC)  # the best validation accuracy over the epochs
FINAL_TEST_ACC = final(TEST_ACC)  # the test accuracy at the best-validation epoch
FINAL_WALL_SECONDS = final(WALL_SECONDS)  # the spend's wall seconds, earlier attempts included
FINAL_DEVICE_SECONDS = final(DEVICE_SECONDS)  # wall seconds times the trial's device share
FINAL_VANILLA_TEST_ACC = final(VANILLA_TEST_ACC)  # the draw's vanilla LTH accuracy at this level
FINAL_DENSE_TEST_ACC = final(DENSE_TEST_ACC)  # the draw's dense accuracy
FINAL_ACT_SPARSITY = final(ACT_SPARSITY)  # --analyze
FINAL_HESSIAN = final(HESSIAN)  # --analyze
SPEND_FINAL_METRICS = (FINAL_BEST_VAL_ACC, FINAL_TEST_ACC, FINAL_WALL_SECONDS, FINAL_DEVICE_SECONDS,
                       FINAL_VANILLA_TEST_ACC, FINAL_DENSE_TEST_ACC)
SPEND_DONE_METRIC = FINAL_BEST_VAL_ACC
"""A spend run is complete once it has this metric (logged with the other final ones)."""


def spend_final_metrics(result: dict, device_share: float) -> dict[str, float]:
    """A finished spend's result (`lth_core.lottery.spend`) as the final metrics; the vanilla and
    dense accuracies are left out where the draw has none (a draw at initialisation)."""
    metrics = {FINAL_BEST_VAL_ACC: result["best_val_acc"], FINAL_TEST_ACC: result["test_acc"],
               FINAL_WALL_SECONDS: result["spend_seconds"],
               FINAL_DEVICE_SECONDS: result["spend_seconds"] * device_share,
               FINAL_VANILLA_TEST_ACC: result["vanilla_test_acc"], FINAL_DENSE_TEST_ACC: result["dense_test_acc"]}
    return {name: value for name, value in metrics.items() if value is not None}


def analysis_final_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The `--analyze` metrics (`lth_core.analysis.run.spend_analysis`'s `metrics`: `act_sparsity`,
    `act_sparsity_<stage>`, `hessian_top_eigenvalue`) under their final names."""
    return {final(name): float(value) for name, value in metrics.items()}


# draw (step 0; per level: step = level)
DENSE_BEST_VAL_ACC = "dense_best_val_acc"
VANILLA_BEST_VAL_ACC = "vanilla_best_val_acc"
LEVEL_SPARSITY = "level_sparsity"
LEVEL_LIVE_SPARSITY = "level_live_sparsity"
DRAW_LEVEL_METRICS = (VANILLA_TEST_ACC, VANILLA_BEST_VAL_ACC, LEVEL_SPARSITY, LEVEL_LIVE_SPARSITY)

# Optuna parent run (step = level)
OPTUNA_BEST_VAL_ACC = "best_val_acc"
OPTUNA_BEST_TEST_ACC = "best_test_acc"


def optuna_best_metric(name: str, ticket: str | None = None) -> str:
    """`best_val_acc` / `best_test_acc`, suffixed with the ticket when a search has several: its mask
    source, `ticket<seed>`, or both (`best_val_acc_snip_ticket1`)."""
    return name if not ticket else f"{name}_{ticket.replace('-', '_')}"


# ------------------------------------------------------------------------ artifacts

SWEEP_CONFIG_ARTIFACT = "sweep_config.json"  # on the parent run: the first invocation's settings
OPTUNA_BEST_ARTIFACT = "optuna_best.json"  # on an Optuna parent run
REPORT_ARTIFACT_PATH = "report"  # the report's files, on the parent run
ANALYSIS_ARTIFACT_PATH = "analysis"  # a spend run's analyses (--analyze, --analyze-epochs)
FINAL_WEIGHTS = "final"


def analysis_label(epoch: int | None) -> str:
    """Which weights an analysis is of: `final`, or `epoch_<K>` for the snapshot after epoch K."""
    return FINAL_WEIGHTS if epoch is None else f"epoch_{int(epoch)}"


def analysis_epoch(label: str) -> int | None:
    """The epoch of an `analysis_label` (None for the final weights)."""
    return None if label == FINAL_WEIGHTS else int(label.removeprefix("epoch_"))


def analysis_artifact(label: str) -> str:
    """A spend run's analysis document of the weights `label` names."""
    return f"{ANALYSIS_ARTIFACT_PATH}/{label}.json"
