"""The sweep report on a small MLflow store laid out as docs/tracking.md says, with accuracies
chosen so the frontier, the critical sparsity and the gains can be worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from dashboards import analysis, collect, report

EXPERIMENT = "sweep-test"
SETTING = {"dataset": "digits", "arch": "resnet20", "width": "0.25", "prune_method": "imp"}
SPARSITY = {1: 0.2, 2: 0.36, 3: 0.488}
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
    """Writes runs the way the sweeps do (docs/tracking.md), with explicit timestamps so the
    final metrics are logged strictly after the per-epoch ones."""

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
            "mlflow.parentRunId": parent, "stage": "draw", "ticket_key": f"tk{seed}", "tweak": "vanilla"})
        params = {**SETTING, "seed": str(seed), "levels": str(len(vanilla))}
        metrics = [("dense_test_acc", dense, 0), ("dense_best_val_acc", dense, 0), ("wall_seconds", 5.0, 0)]
        for level, acc in vanilla.items():
            metrics += [("vanilla_test_acc", acc, level), ("vanilla_best_val_acc", acc, level),
                        ("level_sparsity", SPARSITY[level], level)]
        self._log(run.info.run_id, params, metrics, self.t0)
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def spend(self, exp: str, parent: str, tweak: str, level: int, seed: int, acc: float | None,
              dense: float = 0.91, vanilla: float | None = 0.9, running: bool = False) -> str:
        run = self.client.create_run(exp, run_name=f"{tweak}-L{level}-s{seed}", tags={
            "mlflow.parentRunId": parent, "stage": "spend", "ticket_key": f"tk{seed}",
            "spend_key": f"{tweak}-{level}-{seed}", "tweak": tweak})
        params = {**SETTING, "seed": str(seed), "level": str(level), "sparsity": f"{SPARSITY[level]:.6f}",
                  "skip": "none", "kd_alpha": "0", "kd_temperature": "0", "rescale_init": "false",
                  **TWEAK_PARAMS[tweak]}
        # Per-epoch test_acc well below the final one: the report must take the final value.
        epochs = [(name, 0.1 + 0.1 * e, e) for e in range(EPOCHS) for name in ("train_loss", "val_acc", "test_acc")]
        self._log(run.info.run_id, params, epochs, self.t0)
        if not running:
            final = [("best_val_acc", acc, 0), ("wall_seconds", 10.0 * level, 0),
                     ("device_seconds", 10.0 * level, 0), ("dense_test_acc", dense, 0)]
            if vanilla is not None:
                final.append(("vanilla_test_acc", vanilla, 0))
            self._log(run.info.run_id, {}, final + [("test_acc", acc, 0)], self.t0 + 60_000)
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def _log(self, run_id: str, params: dict, metrics: list, t0: int) -> None:
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                              metrics=[Metric(k, v, t0 + 1000 * step + i, step) for i, (k, v, step) in enumerate(metrics)])


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
                            dense=DENSE[seed], vanilla=ACC["vanilla"][level] - 0.01)
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
                   "level", "sparsity", "activation", "label_smoothing", "rewind_epoch", "rescale_init",
                   "test_acc", "best_val_acc", "device_seconds", "dense_test_acc", "vanilla_test_acc"]:
        assert column in trials.columns, column
    for column in ["seed", "level", "sparsity", "label_smoothing", "rewind_epoch", "width", "kd_alpha"]:
        assert pd.api.types.is_numeric_dtype(trials[column]), column
    assert pd.api.types.is_bool_dtype(trials["rescale_init"])
    spends = trials[(trials["stage"] == "spend") & (trials["status"] == "FINISHED")]
    row = spends[spends["spend_key"] == "swish-3-1"].iloc[0]
    assert row["test_acc"] == pytest.approx(0.885)  # the final value, not the last epoch's 0.2
    assert row["sparsity"] == pytest.approx(0.488) and row["level"] == 3
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
    assert collect.redact("http://me:secret@host:5000") == "http://me:***@host:5000"
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
