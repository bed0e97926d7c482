"""sweeps/optuna_search.py end to end on a tiny ticket: one study per level, the best combination
printed and logged, a rerun with more trials growing the same study, a dry run touching nothing.

The tests of this module share one search (a module fixture) and run in file order: the rerun
test comes last because it grows the study the others look at."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import optuna
import pytest

from lth_core.tweaks import REGISTRY
from sweeps import optuna_search
from tracking import layout as L

LEVEL = 2


def argv(root, trials: int, *extra: str, methods: str = "imp") -> list[str]:
    return ["--preset", "smoke", "--name", "tiny", "--width", "0.125", "--epochs", "2", "--num-levels", "2",
            "--levels", str(LEVEL), "--optuna-trials", str(trials), "--set", "ticket.recipe.batch_size=128",
            "--store", str(root / "store"), "--tracking-uri", f"sqlite:///{root}/mlflow.db",
            "--optuna-storage", f"sqlite:///{root}/optuna.db", "--results-dir", str(root / "ray_results"),
            "--ray-address", "local", "--prune-methods", methods, *extra]


def load_study(root):
    return optuna.load_study(study_name=f"tiny-level{LEVEL}", storage=f"sqlite:///{root}/optuna.db")


def complete(study) -> list:
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def parent_run(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny-optuna")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep' and tags.kind = 'optuna'")
    assert len(runs) == 1
    return client, runs[0]


def test_dry_run_makes_no_study(tmp_path, capsys):
    assert optuna_search.main(argv(tmp_path, 2, "--dry-run")) == 0
    err = capsys.readouterr().err
    assert f"studies: tiny-level{LEVEL}" in err and "2 completed trial(s) per level" in err
    assert f"sqlite:///{tmp_path}/optuna.db" in err
    assert not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("optuna")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = optuna_search.main(argv(root, 2))
    return root, rc, out.getvalue()


def test_one_study_per_level_with_the_asked_trials(searched):
    root, rc, _ = searched
    assert rc == 0
    names = optuna.get_all_study_names(f"sqlite:///{root}/optuna.db")
    assert names == [f"tiny-level{LEVEL}"]  # level 1 is drawn but not spent
    study = load_study(root)
    assert len(complete(study)) == 2 and len(study.trials) == 2
    assert set(study.best_params) == {t.name for t in REGISTRY}  # one dimension per registered tweak
    assert study.user_attrs["sweep_name"] == "tiny" and study.user_attrs["level"] == LEVEL
    assert [r["experiment"] for r in study.user_attrs["tune_runs"]] == [f"tiny-optuna-level{LEVEL}"]
    assert all(r["done"] for r in study.user_attrs["tune_runs"])


def test_best_combination_printed(searched):
    root, _, out = searched
    study = load_study(root)
    from trainables.common import tweaks_from_trial

    label = tweaks_from_trial(study.best_params).describe()
    lines = out.splitlines()  # Ray Tune's progress tables come first
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("level"))
    header, row = lines[start:start + 2]
    print("\n".join(lines[start:]))
    assert "best tweaks" in header and "vanilla test" in header
    cells = row.split()
    assert cells[0] == str(LEVEL) and cells[2] == label and cells[3] == f"{study.best_value:.2%}"
    assert cells[-1] == "2/2" and "-" not in cells[4:6]  # test and vanilla accuracies are known


def test_parent_run_tags_metrics_and_artifact(searched):
    root, _, _ = searched
    client, run = parent_run(root)
    tags = run.data.tags
    assert tags["kind"] == "optuna" and tags["sweep_name"] == "tiny"
    assert tags["optuna_storage"] == f"sqlite:///{root}/optuna.db" and tags["optuna_study_prefix"] == "tiny"
    assert run.info.status == "FINISHED"
    study = load_study(root)
    [val] = client.get_metric_history(run.info.run_id, "best_val_acc")
    assert val.step == LEVEL and val.value == pytest.approx(study.best_value)
    [test] = client.get_metric_history(run.info.run_id, "best_test_acc")
    assert test.step == LEVEL and 0.0 <= test.value <= 1.0
    (root / "download").mkdir()
    path = client.download_artifacts(run.info.run_id, "optuna_best.json", str(root / "download"))
    best = json.loads(Path(path).read_text())
    [level] = best["levels"]
    assert level["level"] == LEVEL and level["params"] == study.best_params
    assert level["values"]["best_val_acc"] == pytest.approx(study.best_value)
    assert level["values"]["test_acc"] == pytest.approx(test.value)
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.{L.PARENT_RUN_ID} = '{run.info.run_id}' and tags.stage = 'spend'")
    assert 1 <= len(children) <= 2  # TPE may draw one combination twice: one spend, one child run


@pytest.mark.parametrize("method", ["random", "snip"])
def test_summary_of_masks_drawn_at_initialisation(tmp_path, method):
    """A mask drawn at initialisation trains nothing to draw, so its levels carry no accuracy: the
    summary takes vanilla from the vanilla spend in the store, and shows '-' while there is none."""
    import argparse

    from lth_core import lottery
    from lth_core.store import ArtifactStore
    from sweeps.config import add_arguments, sweep_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sweep = sweep_from_args(parser.parse_args(argv(tmp_path, 1, methods=method)))
    [study] = optuna_search.level_studies(sweep)
    store = ArtifactStore(sweep.store)
    lottery.draw(study.ticket, store)
    storage = optuna_search.open_storage(sweep.optuna_storage)
    space = optuna_search.optuna_space(sweep)
    vanilla = {name: distribution.choices[0] for name, distribution in space.items()}
    optuna.create_study(study_name=study.study_name, storage=storage, direction="maximize").add_trial(
        optuna.trial.create_trial(params=vanilla, distributions=space, value=0.5))

    entry = optuna_search.best_of(sweep, study, storage)
    assert entry["values"] == {"best_val_acc": 0.5, "test_acc": None, "vanilla_test_acc": None}
    assert "-" in optuna_search.best_table([entry]).splitlines()[-1].split()

    result = lottery.spend(optuna_search.spend_for(sweep, study, vanilla), store)
    entry = optuna_search.best_of(sweep, study, storage)
    assert entry["values"]["test_acc"] == entry["values"]["vanilla_test_acc"] == result["test_acc"]
    row = optuna_search.best_table([entry]).splitlines()[-1].split()
    assert row[0] == str(LEVEL) and row[2] == "vanilla" and row[4] == row[5] == f"{result['test_acc']:.2%}"


def test_rerun_with_more_trials_grows_the_study(searched, capsys):
    root, _, _ = searched
    first = [(t.number, t.params, t.value) for t in complete(load_study(root))]
    assert optuna_search.main(argv(root, 3)) == 0
    study = load_study(root)
    assert len(complete(study)) == 3 and len(study.trials) == 3
    assert [(t.number, t.params, t.value) for t in complete(study)][:2] == first  # earlier trials kept
    runs = study.user_attrs["tune_runs"]
    assert [r["experiment"] for r in runs] == [f"tiny-optuna-level{LEVEL}", f"tiny-optuna-level{LEVEL}-run1"]
    assert runs[1]["trials"] == 1 and runs[0]["sampler_seed"] != runs[1]["sampler_seed"]
    assert "3/3" in capsys.readouterr().out
    client, run = parent_run(root)  # the same parent run, with the metric logged again
    assert len(client.get_metric_history(run.info.run_id, "best_val_acc")) == 2

    # the same command again: the study is complete, nothing runs
    assert optuna_search.main(argv(root, 3)) == 0
    assert len(load_study(root).trials) == 3
    err = capsys.readouterr().err
    assert "3/3 trials complete\n" in err and "running" not in err and "resuming" not in err


def test_rerun_with_another_space_is_refused(searched, capsys):
    root, _, _ = searched
    before = len(load_study(root).trials)
    assert optuna_search.main(argv(root, 4, "--set", "optuna_space.activation=[relu, mish]")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "another space" in err and "activation" in err
    assert len(load_study(root).trials) == before  # nothing was added
