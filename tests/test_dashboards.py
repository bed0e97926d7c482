"""The sweep report on a small MLflow store laid out as docs/tracking.md says, with accuracies
chosen so the frontier, the critical sparsity and the gains can be worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from dashboards import analysis, collect, plots, report
from lth_core import tweaks
from tracking import layout as L
from tracking.probe import redact

EXPERIMENT = "sweep-test"
SETTING = {"dataset": "digits", "arch": "resnet20", "width": "0.25", "prune_method": "imp"}
SPARSITY = {1: 0.2, 2: 0.36, 3: 0.488}
LIVE_SPARSITY = {1: 0.1, 2: 0.25, 3: 0.4}  # the main experiment's spends log these too
DENSE = {0: 0.90, 1: 0.92}  # per seed: mean 0.91, std 0.01 * sqrt(2)
# Mean test accuracy per level; seed 0 logs mean - 0.005, seed 1 mean + 0.005.
ACC = {
    "vanilla": {1: 0.90, 2: 0.88, 3: 0.84},
    "swish": {1: 0.91, 2: 0.90, 3: 0.88},
    "ls0.1": {1: 0.905, 2: 0.895, 3: 0.86},
    "rewind33": {1: 0.92, 2: 0.89, 3: 0.87},
    "swish+rewind33": {1: 0.90, 2: 0.905, 3: 0.90},
}
TWEAK_PARAMS = {
    "vanilla": {"activation": "relu", "label_smoothing": "0.0", "rewind_epoch": "0"},
    "swish": {"activation": "swish", "label_smoothing": "0.0", "rewind_epoch": "0"},
    "ls0.1": {"activation": "relu", "label_smoothing": "0.1", "rewind_epoch": "0"},
    "rewind33": {"activation": "relu", "label_smoothing": "0.0", "rewind_epoch": "33"},
    "swish+rewind33": {"activation": "swish", "label_smoothing": "0.0", "rewind_epoch": "33"},
}
EPOCHS = 2


class Store:
    """Writes runs the way the sweeps do (docs/tracking.md): per-epoch metrics at step = epoch,
    the final ones under their own `final_*` names (at `final_step`)."""

    def __init__(self, uri: str, artifacts: Path):
        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.artifacts = artifacts
        self.t0 = int(time.time() * 1000)
        self.parent_id = ""  # the main experiment's sweep run

    def experiment(self, name: str) -> str:
        return self.client.create_experiment(name, artifact_location=str(self.artifacts / name))

    def parent(self, exp: str, kind: str = "grid", **tags) -> str:
        run = self.client.create_run(exp, run_name="sweep", tags={
            "stage": "sweep", "sweep_name": "test", "preset": "smoke", "kind": kind, **tags})
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def draw(self, exp: str, parent: str, seed: int, dense: float, vanilla: dict[int, float]) -> str:
        run = self.client.create_run(exp, run_name=f"draw-s{seed}", tags={
            L.PARENT_RUN_ID: parent, "stage": "draw", "ticket_key": f"tk{seed}", "tweak": "vanilla"})
        params = {**SETTING, "seed": str(seed), "levels": str(len(vanilla)), **platform(seed)}
        metrics = [("dense_test_acc", dense, 0), ("dense_best_val_acc", dense, 0), ("wall_seconds", 5.0, 0)]
        for level, acc in vanilla.items():
            metrics += [("vanilla_test_acc", acc, level), ("vanilla_best_val_acc", acc, level),
                        ("level_sparsity", SPARSITY[level], level), ("level_live_sparsity", LIVE_SPARSITY[level], level)]
        self._log(run.info.run_id, params, metrics, self.t0)
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def spend(self, exp: str, parent: str, tweak: str, level: int, seed: int, acc: float | None,
              dense: float = 0.91, vanilla: float | None = 0.9, running: bool = False,
              per_epoch: dict[str, list[float]] | None = None, final_extra: dict[str, float] | None = None,
              final_step: int = 0, live: bool = False) -> str:
        """`per_epoch` adds metrics logged with the epochs (one value per epoch, as --hessian-every
        does), `final_extra` metrics logged with the final ones at `final_step` under their final
        names (as --analyze does: `act_sparsity` -> `final_act_sparsity`). `live`: the run logs
        its live sparsity and platform, as runs have since they were recorded."""
        run = self.client.create_run(exp, run_name=f"{tweak}-L{level}-s{seed}", tags={
            L.PARENT_RUN_ID: parent, "stage": "spend", "ticket_key": f"tk{seed}",
            "spend_key": f"{tweak}-{level}-{seed}", "tweak": tweak})
        params = {**SETTING, "seed": str(seed), "level": str(level), "sparsity": f"{SPARSITY[level]:.6f}",
                  **tweaks.mlflow_params(tweaks.from_params(TWEAK_PARAMS[tweak]))}
        if live:
            params.update({"live_sparsity": f"{LIVE_SPARSITY[level]:.6f}", **platform(seed)})
        # Per-epoch test_acc well below the final one: the report must take the final value.
        epochs = [(name, 0.1 + 0.1 * e, e) for e in range(EPOCHS) for name in ("train_loss", "val_acc", "test_acc")]
        epochs += [(name, values[e], e) for name, values in (per_epoch or {}).items() for e in range(len(values))]
        self._log(run.info.run_id, params, epochs, self.t0)
        if not running:
            step = final_step
            final = [(L.FINAL_BEST_VAL_ACC, acc, step), (L.FINAL_WALL_SECONDS, 10.0 * level, step),
                     (L.FINAL_DEVICE_SECONDS, 10.0 * level, step), (L.FINAL_DENSE_TEST_ACC, dense, step)]
            if vanilla is not None:
                final.append((L.FINAL_VANILLA_TEST_ACC, vanilla, step))
            final += [(L.final(name), value, step) for name, value in (final_extra or {}).items()]
            # Timestamped before the epochs on purpose: the final values are told apart by name only.
            self._log(run.info.run_id, {}, final + [(L.FINAL_TEST_ACC, acc, step)], self.t0 - 60_000)
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def _log(self, run_id: str, params: dict, metrics: list, t0: int) -> None:
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                              metrics=[Metric(k, v, t0 + 1000 * step + i, step) for i, (k, v, step) in enumerate(metrics)])


def platform(seed: int) -> dict[str, str]:
    """The platform params of a run: seed 1's ran on two threads, seed 0's on one."""
    return L.platform_params({"cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": str(1 + seed)})


def make_optuna(storage: str, prefix: str) -> None:
    """Level 1: three completed trials (importances); level 2: one (a note instead)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"activation": optuna.distributions.CategoricalDistribution(["relu", "swish"]),
             "label_smoothing": optuna.distributions.FloatDistribution(0.0, 0.2)}
    for level, trials in [(1, [("relu", 0.0, 0.90), ("swish", 0.1, 0.93), ("swish", 0.0, 0.91)]),
                          (2, [("swish", 0.1, 0.89)])]:
        study = optuna.create_study(study_name=f"{prefix}-level{level}", storage=storage, direction="maximize")
        for activation, ls, value in trials:
            study.add_trial(optuna.trial.create_trial(
                params={"activation": activation, "label_smoothing": ls}, distributions=space, value=value))


# The paper's analyses (--analyze, --hessian-every): a small sweep with hand-picked numbers.
# Mean activation sparsity per stage at level 2 (level 1: half); seed 0 logs mean - 0.01, seed 1 + 0.01.
ACT = {
    "vanilla": {"stem": 0.30, "layer1": 0.50, "layer2": 0.70, "overall": 0.52},
    "swish": {"stem": 0.02, "layer1": 0.04, "layer2": 0.06, "overall": 0.045},
    "ls0.1": {"stem": 0.35, "layer1": 0.55, "layer2": 0.75, "overall": 0.60},
}
# Mean final (--analyze) top Hessian eigenvalue per level; seed 0 logs mean - 1, seed 1 mean + 1.
# --hessian-every 1 logs HESSIAN_EPOCH_FACTOR[e] times the run's final value at epoch e, so the
# last epoch's value differs from the final one logged at the same step.
HESSIAN = {"vanilla": {1: 20.0, 2: 40.0}, "swish": {1: 10.0, 2: 15.0}, "ls0.1": {1: 12.0, 2: 25.0}}
HESSIAN_EPOCH_FACTOR = [0.5, 0.75]


def analysis_metrics(tweak: str, level: int, seed: int) -> tuple[dict, dict]:
    """(per-epoch, final) analysis metrics of one spend run of the 'analyzed' sweep."""
    offset = 1 if seed else -1
    final = {("act_sparsity" if stage == "overall" else f"act_sparsity_{stage}"): value * level / 2 + 0.01 * offset
             for stage, value in ACT[tweak].items()}
    final["hessian_top_eigenvalue"] = HESSIAN[tweak][level] + offset
    per_epoch = {"hessian_top_eigenvalue": [f * final["hessian_top_eigenvalue"] for f in HESSIAN_EPOCH_FACTOR]}
    return per_epoch, final


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    store = Store(f"sqlite:///{root}/mlflow.db", root / "artifacts")
    optuna_storage = f"sqlite:///{root}/optuna.db"
    make_optuna(optuna_storage, EXPERIMENT)

    exp = store.experiment(EXPERIMENT)
    store.parent_id = store.parent(exp, kind="optuna", optuna_storage=optuna_storage,
                                   optuna_study_prefix=EXPERIMENT)
    for seed, dense in DENSE.items():
        store.draw(exp, store.parent_id, seed, dense, {lv: acc - 0.01 for lv, acc in ACC["vanilla"].items()})
    for tweak, levels in ACC.items():
        for level, mean in levels.items():
            for seed in DENSE:
                store.spend(exp, store.parent_id, tweak, level, seed, mean + (0.01 * seed - 0.005),
                            dense=DENSE[seed], vanilla=ACC["vanilla"][level] - 0.01, live=True)
    store.spend(exp, store.parent_id, "swish", 3, 2, None, running=True)

    single = store.experiment("single-seed")
    parent = store.parent(single)
    for tweak, level, acc in [("vanilla", 1, 0.88), ("vanilla", 2, 0.85), ("swish", 1, 0.90),
                              ("swish", 2, 0.89), ("swish", 3, 0.86)]:
        store.spend(single, parent, tweak, level, 0, acc, dense=0.90,
                    vanilla=None if level == 3 else acc)
    store.spend(single, parent, "swish", 3, 1, None, running=True)

    started = store.experiment("just-started")
    store.spend(started, store.parent(started), "vanilla", 1, 0, None, running=True)

    analyzed = store.experiment("analyzed")  # --analyze --hessian-every 1
    parent = store.parent(analyzed)
    for tweak in ACT:
        for level in (1, 2):
            for seed in (0, 1):
                per_epoch, final = analysis_metrics(tweak, level, seed)
                store.spend(analyzed, parent, tweak, level, seed, 0.9, per_epoch=per_epoch, final_extra=final,
                            final_step=EPOCHS - 1)
    store.spend(analyzed, parent, "swish", 2, 2, None, running=True,  # unfinished: left out
                per_epoch={"hessian_top_eigenvalue": [1000.0]})

    hessian_only = store.experiment("hessian-only")  # --hessian-every 1 without --analyze
    parent = store.parent(hessian_only)
    for tweak, values in [("vanilla", [3.0, 5.0]), ("swish", [2.0, 2.5])]:
        store.spend(hessian_only, parent, tweak, 1, 0, 0.9, per_epoch={"hessian_top_eigenvalue": values},
                    final_step=EPOCHS - 1)
    return store


@pytest.fixture(scope="module")
def sweep(store) -> collect.Sweep:
    return collect.load_sweep(collect.connect(store.uri), EXPERIMENT)


@pytest.fixture(scope="module")
def result(sweep) -> analysis.Analysis:
    return analysis.analyze(sweep.trials, sweep.draw_levels)


@pytest.fixture(scope="module")
def built(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert report.main(["--experiment", EXPERIMENT, "--tracking-uri", store.uri, "--out", str(out)]) == 0
    return out


def test_trials_table(built):
    trials = pd.read_parquet(built / "trials.parquet")
    assert len(trials) == 2 + 5 * 3 * 2 + 1  # draws, spends, the running one (no parent)
    for column in ["run_id", "status", "stage", "tweak", "ticket_key", "spend_key", "dataset", "seed",
                   "level", "sparsity", *(t.name for t in tweaks.REGISTRY),  # a column per registered tweak
                   "test_acc", "best_val_acc", "device_seconds", "dense_test_acc", "vanilla_test_acc"]:
        assert column in trials.columns, column
    for column in ["seed", "level", "sparsity", "live_sparsity", "label_smoothing", "rewind_epoch", "width"]:
        assert pd.api.types.is_numeric_dtype(trials[column]), column
    assert set(trials["kd"].dropna()) == {"off"}
    spends = trials[(trials["stage"] == "spend") & (trials["status"] == "FINISHED")]
    row = spends[spends["spend_key"] == "swish-3-1"].iloc[0]
    assert row["test_acc"] == pytest.approx(0.885)  # the final value, not the last epoch's 0.2
    assert row["sparsity"] == pytest.approx(0.488) and row["level"] == 3
    assert row["live_sparsity"] == pytest.approx(0.4) and row["platform.threads"] == 2
    running = trials[trials["status"] == "RUNNING"]
    assert len(running) == 1 and running["test_acc"].isna().all() and not running["final"].any()


def test_summary_and_baseline(result):
    s = result.summary.set_index(["tweak", "level"])
    assert len(s) == 15 and (s["n"] == 2).all()  # the running run is left out
    assert s.loc[("swish", 3), "mean"] == pytest.approx(0.88)
    half = 12.7062 * 0.005  # t(0.975, 1) * std / sqrt(2), std = 0.01 / sqrt(2)
    assert s.loc[("swish", 3), "ci_high"] - 0.88 == pytest.approx(half, rel=1e-3)
    base = result.baseline.set_index("level")
    assert (base["source"] == "vanilla spend runs").all()
    assert base["mean"].to_dict() == pytest.approx(ACC["vanilla"])
    dense = result.dense.iloc[0]
    assert dense["dense_mean"] == pytest.approx(0.91) and dense["n_tickets"] == 2
    assert dense["dense_std"] == pytest.approx(0.01 * math.sqrt(2))


def test_gain_heatmap_values(result):
    gain = analysis.matrix(result.gains, "gain_pp")
    assert list(gain.columns) == [20.0, 36.0, 48.8]
    expected = {"swish": [1, 2, 4], "ls0.1": [0.5, 1.5, 2], "rewind33": [2, 1, 3], "swish+rewind33": [0, 2.5, 6]}
    assert sorted(gain.index) == sorted(expected)
    for tweak, values in expected.items():
        assert gain.loc[tweak].tolist() == pytest.approx(values, abs=1e-9), tweak


def test_frontier(result):
    # Threshold: dense 0.91 - dense std 0.01414 = 0.89586.
    front = result.frontier.set_index("tweak")
    expected = {"vanilla": 0.2, "swish": 0.36, "ls0.1": 0.2, "rewind33": 0.2, "swish+rewind33": 0.488}
    assert front["frontier_sparsity"].to_dict() == pytest.approx(expected)
    assert front.loc["swish", "matched_levels"] == "1, 2"
    assert "highest sparsity" in front.loc["swish+rewind33", "note"]


def test_critical_sparsity(result):
    crit = result.critical.set_index("from_init")
    assert crit.loc["swish", "rewound"] == "swish+rewind33"
    assert crit.loc["swish", "critical_sparsity"] == pytest.approx(0.36)  # behind at 20%, ahead from 36%
    assert crit.loc["ls0.1", "rewound"] == "rewind33"  # no ls0.1+rewind: plain rewinding
    assert crit.loc["ls0.1", "critical_sparsity"] == pytest.approx(0.488)  # ahead at 20%, behind at 36%
    assert math.isnan(crit.loc["vanilla", "critical_sparsity"])
    assert "ahead at every sparsity" in crit.loc["vanilla", "note"]


def test_critical_sparsity_never_crosses():
    summary = pd.DataFrame({
        "setting": "s", "tweak": ["a"] * 2 + ["a+rewind5"] * 2, "base_tweak": "a",
        "rewind_epoch": [0, 0, 5, 5], "level": [1, 2, 1, 2], "sparsity": [0.2, 0.36] * 2,
        "mean": [0.9, 0.8, 0.85, 0.75], "n": 1})
    row = analysis.critical_sparsity(summary).iloc[0]
    assert math.isnan(row["critical_sparsity"]) and "never ahead" in row["note"]


def test_html_has_every_section(built):
    page = (built / "report.html").read_text()
    for section in ["overview", "accuracy", "gain", "frontier", "optuna", "cost", "trials"]:
        assert f'<section id="{section}">' in page, section
    pngs = sorted(p.name for p in built.glob("*.png"))
    assert {"accuracy_vs_sparsity.png", "accuracy_overview.png", "gain_heatmap.png", "frontier.png",
            "critical_sparsity.png", "cost.png", "optuna_importances.png"} <= set(pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert "<link" not in page and 'src="http' not in page
    assert "still running" in page


def test_artifacts_logged_to_parent(store, built):
    logged = {Path(f.path).name for f in store.client.list_artifacts(store.parent_id, "report")}
    assert "report.html" in logged
    assert {p.name for p in built.glob("*.png")} <= logged


def test_optuna_section(sweep, built):
    levels = {lv.level: lv for lv in sweep.optuna}
    assert levels[1].n_complete == 3 and levels[1].best_value == pytest.approx(0.93)
    assert levels[1].best_params == {"activation": "swish", "label_smoothing": 0.1}
    assert set(levels[1].importances) == {"activation", "label_smoothing"}
    assert levels[2].importances is None and "at least 2 completed" in levels[2].note
    page = (built / "report.html").read_text()
    assert f"{EXPERIMENT}-level1" in page and "activation=swish, label_smoothing=0.1" in page


def test_single_seed_no_draw_is_noted(store, tmp_path):
    assert report.main(["--experiment", "single-seed", "--tracking-uri", store.uri, "--out", str(tmp_path),
                        "--no-log-artifacts"]) == 0
    page = (tmp_path / "report.html").read_text()
    for text in ["single seed", "No draw run", "No vanilla LTH accuracy at level 3", "still running",
                 "This is a grid sweep"]:
        assert text in page, text
    sweep = collect.load_sweep(collect.connect(store.uri), "single-seed")
    front = analysis.analyze(sweep.trials, sweep.draw_levels).frontier.set_index("tweak")
    assert front.loc["swish", "frontier_sparsity"] == pytest.approx(0.2)  # 0.90 >= dense 0.90, no tolerance
    assert front.loc["swish", "tolerance"] == "none (single seed)"


def test_sweep_without_finished_runs_renders(store, tmp_path):
    assert report.main(["--experiment", "just-started", "--tracking-uri", store.uri, "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "still running" in page and "No finished spend run yet" in page
    assert not list(tmp_path.glob("*.png"))
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 1


def test_unknown_experiment_lists_names(store, capsys):
    assert report.main(["--experiment", "nope", "--tracking-uri", store.uri]) == 2
    err = capsys.readouterr().err
    assert "no experiment named 'nope'" in err and EXPERIMENT in err


def test_unreachable_tracking_uri_fails_fast(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dashboards.report", "--experiment", "x",
                           "--tracking-uri", "http://127.0.0.1:9"], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=60)
    assert proc.returncode == 2 and "cannot reach the MLflow tracking server" in proc.stderr
    assert "MLFLOW_TRACKING_URI" in proc.stderr and time.monotonic() - start < 30
    missing = tmp_path / "absent.db"
    assert report.main(["--experiment", "x", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert not missing.exists()


def test_secrets_and_missing_optuna_store(tmp_path):
    assert redact("http://me:secret@host:5000") == "http://me:***@host:5000"
    absent = tmp_path / "optuna.db"
    levels, note = collect.optuna_from_tags({"optuna_storage": f"sqlite:///{absent}", "optuna_study_prefix": "p"})
    assert levels is None and "does not exist" in note and not absent.exists()


def test_vanilla_falls_back_to_the_draw():
    """No vanilla spend runs: the draw's per-level series, else the copy on the spend runs."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    trials = pd.DataFrame([
        {"run_id": "d0", "stage": "draw", "status": "FINISHED", "final": True, "ticket_key": "tk0",
         "seed": 0, "dense_test_acc": 0.9},
        *[{"run_id": f"s{lv}", "stage": "spend", "status": "FINISHED", "final": True, "ticket_key": "tk0",
           "spend_key": f"k{lv}", "tweak": "swish", "seed": 0, "level": lv, "sparsity": SPARSITY[lv],
           "rewind_epoch": 0, "test_acc": 0.85, "vanilla_test_acc": 0.5} for lv in (1, 2)],
    ]).assign(start_time=start, arch="resnet20")
    draw_levels = pd.DataFrame({"run_id": ["d0"], "ticket_key": ["tk0"], "level": [1],
                                "vanilla_test_acc": [0.8], "vanilla_best_val_acc": [0.8], "level_sparsity": [0.2]})
    result = analysis.analyze(trials, draw_levels)
    assert result.baseline.set_index("level")["mean"].to_dict() == pytest.approx({1: 0.8, 2: 0.5})
    assert analysis.matrix(result.gains, "gain_pp").loc["swish"].tolist() == pytest.approx([5.0, 35.0])


@pytest.fixture(scope="module")
def analyzed(store) -> collect.Sweep:
    return collect.load_sweep(collect.connect(store.uri), "analyzed")


@pytest.fixture(scope="module")
def analyzed_built(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyzed")
    assert report.main(["--experiment", "analyzed", "--tracking-uri", store.uri, "--out", str(out),
                        "--no-log-artifacts"]) == 0
    return out


def test_analysis_metrics_in_the_trials_table(analyzed_built):
    trials = pd.read_parquet(analyzed_built / "trials.parquet")
    for column in ["act_sparsity", "act_sparsity_stem", "act_sparsity_layer1", "act_sparsity_layer2",
                   "hessian_top_eigenvalue"]:
        assert pd.api.types.is_float_dtype(trials[column]), column
    row = trials[trials["spend_key"] == "swish-2-0"].iloc[0]
    assert row["act_sparsity_layer2"] == pytest.approx(0.06 - 0.01)
    assert row["act_sparsity"] == pytest.approx(0.045 - 0.01)
    # The final (--analyze) value, not the last epoch's 0.75 * 14 logged at the same step.
    assert row["hessian_top_eigenvalue"] == pytest.approx(14.0)
    running = trials[trials["status"] == "RUNNING"].iloc[0]
    assert running["hessian_top_eigenvalue"] == pytest.approx(1000.0) and not running["final"]


def test_hessian_history_is_the_per_epoch_series(analyzed):
    history = analyzed.hessian_history
    finished = analyzed.trials[analyzed.trials["final"]]
    assert set(history["run_id"]) == set(analyzed.trials["run_id"])  # the running run's epochs too
    run_id = finished.loc[finished["spend_key"] == "vanilla-2-1", "run_id"].iloc[0]
    series = history[history["run_id"] == run_id].set_index("epoch")["hessian_top_eigenvalue"]
    assert series.to_dict() == pytest.approx({0: 0.5 * 41.0, 1: 0.75 * 41.0})  # the final 41 left out


def test_activation_sparsity_table(analyzed):
    result = analysis.analyze(analyzed.trials, analyzed.draw_levels, analyzed.hessian_history)
    act = result.act_sparsity
    assert analysis.pick_level(act) == 2 and (act["n"] == 2).all()
    table = analysis.act_sparsity_table(act)
    assert list(table.index) == ["stem", "layer1", "layer2", "overall"]
    assert list(table.columns) == ["vanilla", "ls0.1", "swish"]  # vanilla, other relu, then swish
    for tweak, stages in ACT.items():
        assert table[tweak].to_dict() == pytest.approx({k: 100 * v for k, v in stages.items()}), tweak
    level1 = analysis.act_sparsity_table(act, level=1)
    assert level1.loc["layer2", "vanilla"] == pytest.approx(35.0)
    shown = report.act_sparsity_display(act, 2).set_index("stage")
    assert shown.loc["activation"].to_dict() == {"vanilla": "relu", "ls0.1": "relu", "swish": "swish"}
    assert shown.loc["runs", "swish"] == "2" and shown.loc["overall", "swish"] == "4.5"


def test_hessian_final_and_curves(analyzed):
    result = analysis.analyze(analyzed.trials, analyzed.draw_levels, analyzed.hessian_history)
    final = result.hessian.set_index(["tweak", "level"])
    for tweak, levels in HESSIAN.items():
        for level, mean in levels.items():
            assert final.loc[(tweak, level), "mean"] == pytest.approx(mean)
            assert final.loc[(tweak, level), "n"] == 2
    assert final.loc[("swish", 2), "sparsity"] == pytest.approx(SPARSITY[2])
    curves = result.hessian_curves.set_index(["tweak", "level", "epoch"])
    assert len(curves) == 3 * 2 * EPOCHS and (curves["n"] == 2).all()  # the running run is left out
    assert curves.loc[("swish", 2, 1), "mean"] == pytest.approx(0.75 * 15.0)
    assert curves.loc[("vanilla", 1, 0), "mean"] == pytest.approx(0.5 * 20.0)
    assert analysis.pick_level(result.hessian_curves) == 2


def test_analyses_section_and_figures(analyzed_built):
    page = (analyzed_built / "report.html").read_text()
    assert '<section id="analyses">' in page and "Activation sparsity (Table A1)" in page
    assert "at level 2 (36.0% sparsity)" in page and "Figure A12" in page
    section = page.split('<section id="analyses">')[1].split("</section>")[0]
    assert "<td>70.0</td>" in section and "<td>4.5</td>" in section  # vanilla layer2, swish overall
    assert 'class="note"' not in section  # nothing is missing: no how-to note
    pngs = {p.name for p in analyzed_built.glob("*.png")}
    assert {"act_sparsity.png", "hessian_vs_sparsity.png", "hessian_vs_epoch.png"} <= pngs
    assert section.count('src="data:image/png;base64,') == 3
    assert page.count('src="data:image/png;base64,') == len(pngs)


def test_hessian_without_analyze(store, tmp_path):
    """--hessian-every alone: the final value is the last epoch's, no activation sparsity."""
    sweep = collect.load_sweep(collect.connect(store.uri), "hessian-only")
    result = analysis.analyze(sweep.trials, sweep.draw_levels, sweep.hessian_history)
    assert result.act_sparsity.empty
    assert result.hessian.set_index("tweak")["mean"].to_dict() == pytest.approx({"vanilla": 5.0, "swish": 2.5})
    assert len(result.hessian_curves) == 4
    report.build_report(sweep, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "No activation sparsity logged: run the sweep with --analyze." in page
    assert (tmp_path / "hessian_vs_epoch.png").exists() and not (tmp_path / "act_sparsity.png").exists()


def test_sweep_without_analyses_shows_how(built, tmp_path):
    page = (built / "report.html").read_text()
    section = page.split('<section id="analyses">')[1].split("</section>")[0]
    assert "No activation-sparsity or Hessian metrics logged" in section
    assert "--analyze" in section and "--hessian-every N" in section and "<img" not in section
    assert not {"act_sparsity.png", "hessian_vs_sparsity.png", "hessian_vs_epoch.png"} & {
        p.name for p in built.glob("*.png")}


def test_analysis_ordering_rules():
    assert analysis.stage_order(["overall", "layer10", "layer2", "stem", "fc", "layer1"]) == [
        "stem", "layer1", "layer2", "layer10", "fc", "overall"]
    assert analysis.act_sparsity_stages(["act_sparsity", "act_sparsity_blocks", "test_acc"]) == {
        "act_sparsity": "overall", "act_sparsity_blocks": "blocks"}
    # Level 3 has one combination, level 2 both: level 2 is shown.
    frame = pd.DataFrame({"tweak": ["a", "b", "a", "b", "a"], "level": [1, 1, 2, 2, 3]})
    assert analysis.pick_level(frame) == 2
    assert analysis.pick_level(frame.iloc[:0]) is None


def test_optuna_studies_of_every_ticket_seed_are_read(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path}/o.db"
    for prefix in ("s-ticket0", "s-ticket1"):
        study = optuna.create_study(study_name=f"{prefix}-level2", storage=storage, direction="maximize")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    levels, note = collect.optuna_from_tags({"optuna_storage": storage, "optuna_study_prefix": "s-ticket0",
                                             "optuna_study_prefixes": "s-ticket0,s-ticket1"})
    assert note is None and [lv.study for lv in levels] == ["s-ticket0-level2", "s-ticket1-level2"]


# ------------------------------------------------------------------------------ live weights, platforms


def test_the_report_plots_against_either_sparsity(sweep, result, store, tmp_path):
    live = analysis.analyze(sweep.trials, sweep.draw_levels, sparsity="live")
    assert live.sparsity_axis == "live" and result.sparsity_axis == "nominal"
    by_level = live.summary.groupby("level")["sparsity"].mean().to_dict()
    assert by_level == pytest.approx(LIVE_SPARSITY)
    assert list(analysis.matrix(live.gains, "gain_pp").columns) == [10.0, 25.0, 40.0]
    # The same accuracies and gains, only the axis moves.
    assert live.gains["gain_pp"].tolist() == pytest.approx(result.gains["gain_pp"].tolist())
    out = tmp_path / "live"
    assert report.main(["--experiment", EXPERIMENT, "--tracking-uri", store.uri, "--out", str(out),
                        "--sparsity", "live", "--no-log-artifacts"]) == 0
    page = (out / "report.html").read_text()
    assert "sparsity among live weights (those an input" in page and (out / "gain_heatmap.png").is_file()


def test_both_sparsities_and_the_platforms_are_in_the_overview(sweep, built):
    levels = analysis.level_sparsities(sweep.trials).set_index("level")
    assert levels["sparsity"].to_dict() == pytest.approx(SPARSITY)
    assert levels["live_sparsity"].to_dict() == pytest.approx(LIVE_SPARSITY)
    machines = analysis.platforms(sweep.trials)
    # seeds 0 and 1 on one and two threads; the running spend has logged none yet
    assert machines[["threads", "draw", "spend"]].values.tolist() == [["1", 1, 15], ["2", 1, 15], ["–", 0, 1]]
    page = (built / "report.html").read_text()
    assert "live sparsity (%)" in page and "25.00" in page and "AVX512" in page


def test_live_axis_without_live_sparsity_is_refused(store, tmp_path, capsys):
    code = report.main(["--experiment", "single-seed", "--tracking-uri", store.uri, "--out", str(tmp_path / "r"),
                        "--sparsity", "live", "--no-log-artifacts"])
    err = capsys.readouterr().err
    assert code == 2 and "--sparsity live" in err and "--sparsity nominal" in err
    assert not (tmp_path / "r").exists()
    assert analysis.platforms(collect.load_sweep(collect.connect(store.uri), "single-seed").trials).empty


# Figures 6 and 7, 5 and 11: the cross-family panel and the landscapes.


def test_the_panel_draws_chosen_combinations_and_refuses_unknown_ones(store, tmp_path, capsys):
    args = ["--experiment", EXPERIMENT, "--tracking-uri", store.uri, "--no-log-artifacts"]
    assert report.main([*args, "--out", str(tmp_path / "bad"), "--panel", "nope"]) == 2
    err = capsys.readouterr().err
    assert "error: --panel nope: no finished run of that combination" in err and "swish+rewind33" in err
    assert not (tmp_path / "bad").exists()
    assert report.main([*args, "--out", str(tmp_path / "ok"), "--panel", "swish", "--panel", "ls0.1"]) == 0
    section = (tmp_path / "ok" / "report.html").read_text().split('<section id="families">')[1].split("</section>")[0]
    assert "swish, ls0.1" in section and section.count("<img") == 1 and (tmp_path / "ok" / "families.png").exists()


def test_without_at_trt_the_panel_says_how(built):
    section = (built / "report.html").read_text().split('<section id="families">')[1].split("</section>")[0]
    assert "No AT + TRT combination" in section and "--panel" in section and "<img" not in section


def test_families_are_ordered_by_data_set_then_architecture():
    trials = pd.DataFrame({"stage": ["spend"] * 4, "dataset": ["fashion-mnist", "digits", "digits", "digits"],
                           "arch": ["resnet18", "vgg16", "resnet18", "resnet34"], "width": [0.0625] * 4,
                           "prune_method": ["imp"] * 4})
    found = analysis.families(trials)
    assert list(zip(found["dataset"], found["arch"])) == [("digits", "resnet18"), ("digits", "resnet34"),
                                                          ("digits", "vgg16"), ("fashion-mnist", "resnet18")]
    assert found["setting"].iloc[0] == "digits resnet18 w0.0625 imp"


@pytest.fixture(scope="module")
def landscaped(drawn, tmp_path_factory):
    """A sweep's spend runs as the spend trainable logs them with --analyze --analyze-epochs 1:
    vanilla and Swish spends of one ticket, analysed after epoch 1 and at the end."""
    from lth_core.config import SpendConfig, TweakConfig
    from lth_core.lottery import spend
    from tracking.runs import TrialRun, start_parent_run
    from trainables.spend import spend_analyses

    store, ticket, _ = drawn
    root = tmp_path_factory.mktemp("landscaped")
    uri = f"sqlite:///{root}/mlflow.db"
    parent = start_parent_run(uri, "landscaped", "smoke", L.KIND_GRID)
    docs = {}
    for tweaks in (TweakConfig(), TweakConfig(activation="swish")):
        config = SpendConfig(ticket=ticket, level=2, tweaks=tweaks, snapshot_epochs=(1,))
        result = spend(config, store)
        run = TrialRun.for_spend(uri, parent, config, result["sparsity"])
        analyses = spend_analyses(config, store, True, batches=1, grid=3)
        run.log_spend_result(result, device_share=1.0, analysis=analyses[-1]["metrics"])
        run.log_analyses(analyses)
        run.finish()
        docs[tweaks.describe()] = analyses
    return collect.load_sweep(collect.connect(uri), "landscaped"), docs


def test_the_landscapes_a_sweep_logs_reach_the_report(landscaped, tmp_path):
    sweep, docs = landscaped
    frame = sweep.landscapes.sort_values("weights")
    assert list(frame["weights"]) == ["epoch_1", "epoch_1", "final", "final"]
    assert list(frame["epoch"].fillna(-1)) == [1, 1, -1, -1]  # -1: the final weights have no epoch
    found = analysis.landscape_sets(sweep.trials, sweep.landscapes)
    assert [(f.weights, f.level, list(f.views["surface_2d"])) for f in found] == [
        ("epoch_1", 2, ["vanilla", "swish"]), ("final", 2, ["vanilla", "swish"])]
    for f, i in zip(found, (0, 1)):
        for tweak in ("vanilla", "swish"):
            doc = docs[tweak][i]
            np.testing.assert_allclose(f.views["surface_2d"][tweak], doc["landscape"]["surface_2d"])
            np.testing.assert_allclose(f.views["input_gradient_sign_1d"][tweak],
                                       doc["input_landscape"]["gradient_sign_1d"])
    # Epoch 1 and the end are other weights: other landscapes.
    assert not np.allclose(found[0].views["surface_2d"]["vanilla"], found[1].views["surface_2d"]["vanilla"])
    report.build_report(sweep, tmp_path)
    section = (tmp_path / "report.html").read_text().split('<section id="landscapes">')[1].split("</section>")[0]
    assert "weights after epoch 1" in section and "final weights" in section and section.count("<img") == 6
    assert {"landscape_L2_epoch_1.png", "input_lines_L2_final.png", "input_landscape_L2_final.png"} <= {
        p.name for p in tmp_path.glob("*.png")}


def test_a_sweep_without_landscapes_shows_how(built):
    section = (built / "report.html").read_text().split('<section id="landscapes">')[1].split("</section>")[0]
    assert "--analyze-epochs" in section and "<img" not in section


@pytest.mark.parametrize("label, lines", [
    ("vanilla", 1), ("gradinit(iterations=20,batch_size=32)", 1),
    ("swish+skip-identity+ls0.1+gradinit(iterations=20,batch_size=32)+rewind1", 3)])
def test_a_long_combination_title_breaks_before_its_plus_signs(label, lines):
    """Accuracy panels sit three abreast; an unbroken AT + TRT label ran over its neighbours."""
    title = plots.wrapped(label).split("\n")
    assert "".join(title) == label and len(title) == lines
    assert all(len(line) <= 40 for line in title) and all(line.startswith("+") for line in title[1:])
