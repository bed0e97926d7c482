"""Every bad input ends with one line, `error: <what is wrong>; <what to do>`, and exit status 2,
before any work: no traceback, a message naming the flag, field or file, nothing trained or
written, and no Ray started. The core CLI, both sweeps and the report run in-process (a few as
real processes, to see that no traceback reaches the terminal)."""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lth_core import paths
from lth_core.cli import main as core_main
from sweeps import full_grid, optuna_search, runner
from sweeps.config import add_arguments, sweep_from_args

ROOT = Path(__file__).resolve().parent.parent
TINY_TICKET = ["--width", "0.125", "--epochs", "2", "--batch-size", "128", "--device", "cpu", "--num-levels", "2",
               "--keep-epochs", "1"]


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Training is the work no bad input may start: a check that let one through fails its case at
    once, instead of training the default recipe's 180 epochs."""
    from lth_core import lottery

    monkeypatch.setattr(lottery, "fit", must_not_run)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there any more


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# ------------------------------------------------------------------------------ data files


def cifar10(tmp_path: Path, damage: str) -> Path:
    """A CIFAR-10 folder in the real layout, one file damaged: `missing` (no folder), `truncated`,
    `not-cifar` (a pickle of the wrong shape) or `no-test` (test_batch missing)."""
    root = tmp_path / "data"
    if damage == "missing":
        return root
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = pickle.dumps({b"data": bytes(3072 * 2), b"labels": [0, 1]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(good)
    if damage == "truncated":
        (folder / "data_batch_1").write_bytes(good[:40])
    elif damage == "not-cifar":
        (folder / "data_batch_1").write_bytes(pickle.dumps({"x": 1}))
    elif damage == "no-test":
        (folder / "test_batch").unlink()
    return root


# ------------------------------------------------------------------------------ config files

CONFIGS = {
    "bad-yaml": ("t.yaml", "recipe: {epochs: [2\n", ["t.yaml", "--config"]),
    "bad-json": ("t.json", '{"recipe": {"epochs": 2,}}', ["t.json", "--config"]),
    "unknown-field": ("t.yaml", "recipes: {epochs: 2}\n", ["recipes", "unknown field"]),
    "unknown-nested-field": ("t.yaml", "pruning: {foo: 1}\n", ["pruning", "unknown field"]),
    "wrong-type": ("t.yaml", "recipe: {epochs: many}\n", ["recipe.epochs", "expected an integer"]),
    "bool-for-string": ("t.yaml", "recipe: {device: on}\n", ["recipe.device", "quote"]),
    "not-a-mapping": ("t.yaml", "- 1\n- 2\n", ["t.yaml", "mapping"]),
    "binary": ("t.yaml", b"\xff\xfe\x00garbage", ["t.yaml", "--config"]),
}


def write_config(tmp_path: Path, case: str) -> Path:
    name, text, _ = CONFIGS[case]
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ------------------------------------------------------------------------------ the core CLI

CORE = [
    # (id, argv (STORE: the test's store), words the message must hold)
    ("unknown-dataset", ["draw", "--dataset", "imagenet"], ["data.name", "--dataset"]),
    ("cifar-without-root", ["draw", "--dataset", "cifar10"], ["--data-root"]),
    ("negative-lr", ["draw", "--lr", "-1"], ["recipe.lr", "--lr"]),
    ("zero-epochs", ["draw", "--epochs", "0"], ["--epochs"]),
    ("zero-batch", ["draw", "--batch-size", "0"], ["--batch-size"]),
    ("momentum-1.5", ["draw", "--momentum", "1.5"], ["--momentum"]),
    ("zero-width", ["draw", "--width", "0"], ["--width"]),
    ("val-fraction", ["draw", "--val-fraction", "1.5"], ["--val-fraction"]),
    ("unknown-arch", ["draw", "--arch", "resnet99"], ["model.arch", "--arch"]),
    ("prune-rate", ["draw", "--prune-rate", "1.5"], ["--prune-rate"]),
    ("zero-levels", ["draw", "--num-levels", "0"], ["--num-levels"]),
    ("old-levels-draw", ["draw", "--levels", "3"], ["--levels", "--num-levels"]),
    ("old-levels-spend", ["spend", "--levels", "3"], ["--levels", "--num-levels"]),
    ("unknown-scope", ["draw", "--scope", "diagonal"], ["--scope"]),
    ("unknown-precision", ["draw", "--precision", "fp64"], ["--precision"]),
    ("unknown-device", ["draw", "--device", "tpu"], ["--device"]),
    ("kd-too-many-values", ["spend", "--kd", "0.9,5,1"], ["--kd", "cannot read"]),
    ("milestone-past-end", ["draw", "--epochs", "4", "--milestones", "2,9"], ["--milestones"]),
    ("keep-epoch-past-end", ["draw", "--epochs", "4", "--keep-epochs", "9"], ["keep_epochs", "--keep-epochs"]),
    ("rewind-not-kept", ["draw", "--imp-rewind-epoch", "3"], ["pruning.rewind_epoch", "--imp-rewind-epoch"]),
    ("unknown-prune-method", ["draw", "--prune-method", "bogus"], ["pruning.method", "--prune-method"]),
    ("rewind-at-init", ["draw", "--prune-method", "snip", "--keep-epochs", "1", "--imp-rewind-epoch", "1"],
     ["pruning.rewind_epoch", "--imp-rewind-epoch"]),
    ("schedule-empties-a-layer", ["draw", "--width", "0.125", "--device", "cpu", "--num-levels", "40", "--scope",
                                  "layerwise"], ["--num-levels", "every weight"]),
    ("schedule-empties-every-layer", ["draw", "--width", "0.125", "--device", "cpu", "--num-levels", "90"],
     ["--num-levels", "every weight"]),
    ("reinit-with-rewind", ["spend", "--keep-epochs", "1", "--init", "reinit", "--rewind-epoch", "1"],
     ["tweaks.init", "--init"]),
    ("epochs-not-a-number", ["draw", "--epochs", "x"], ["--epochs", "cannot read"]),
    ("level-not-drawn", ["spend", "--level", "9"], ["--level"]),
    ("negative-level", ["spend", "--level", "-1"], ["--level"]),
    ("kd-unreadable", ["spend", "--kd", "nine"], ["--kd"]),
    ("label-smoothing", ["spend", "--label-smoothing", "1.5"], ["label_smoothing"]),
    ("unknown-activation", ["spend", "--activation", "swishy"], ["activation"]),
    ("zero-spend-epochs", ["spend", "--spend-epochs", "0"], ["--spend-epochs"]),
    ("grid-0", ["analyze", "--grid", "0"], ["--grid"]),
    ("batches-0", ["analyze", "--batches", "0"], ["--batches"]),
    ("top-k-0", ["analyze", "--top-k", "0"], ["--top-k"]),
    ("unknown-compared-activation", ["analyze", "--compare-activations", "relu,foo"],
     ["--compare-activations", "foo"]),
    ("no-compared-activation", ["analyze", "--compare-activations", ","], ["--compare-activations"]),
    ("negative-threshold", ["analyze", "--threshold", "-1"], ["--threshold"]),
    ("epoch-past-end", ["analyze", "--epoch", "999"], ["--epoch 999", "it trains 180"]),
    ("snapshot-past-end", ["spend", "--snapshot-epochs", "5,999"], ["snapshot_epochs", "--snapshot-epochs"]),
    ("empty-store", ["draw", *TINY_TICKET, "--store", ""], ["--store"]),
    ("unknown-store-scheme", ["draw", *TINY_TICKET, "--store", "foo://bar"], ["--store", "foo://bar"]),
    ("key-not-a-key", ["show", "--key", "../x"], ["--key", "../x"]),
    ("no-store-to-show", ["show", "--key", "0" * 20, "--store", "STORE"], ["no artifact store", "--store"]),
    # hints name every flag that fixes the problem, the related ones too
    ("keep-epoch-names-epochs", ["draw", "--epochs", "2", "--keep-epochs", "3"], ["--keep-epochs", "--epochs"]),
    ("level-names-num-levels", ["spend", "--level", "9"], ["--level", "--num-levels"]),
    ("ticket-recipe-in-a-spend", ["spend", "--epochs", "0"], ["ticket.recipe.epochs", "fix --epochs"]),
    # seeds: whole numbers in [0, 2**63 - 1]
    ("seed-negative", ["draw", "--seed", "-1"], ["seed", "--seed", "2**63"]),
    ("seed-past-64-bits", ["draw", "--seed", "99999999999999999999999"], ["--seed", "99999999999999999999999"]),
    ("spend-seed-negative-reinit", ["spend", "--spend-seed", "-1", "--init", "reinit"], ["--spend-seed"]),
    ("spend-seed-past-64-bits", ["spend", "--spend-seed", str(2**63)], ["--spend-seed"]),
    ("empty-list-entry", ["draw", "--keep-epochs", "1,,2"], ["--keep-epochs", "empty"]),
    # flags that would be ignored
    ("num-levels-with-sparsities", ["draw", "--prune-method", "omp", "--sparsities", "0.5", "--num-levels", "3"],
     ["pruning.levels", "--num-levels", "--sparsities"]),
    ("prune-rate-with-sparsities", ["draw", "--prune-method", "omp", "--sparsities", "0.5", "--prune-rate", "0.3"],
     ["pruning.rate", "--prune-rate"]),
    ("scope-with-erk", ["draw", "--prune-method", "erk", "--scope", "layerwise"], ["--scope", "erk"]),
    ("scope-with-random", ["draw", "--prune-method", "random", "--scope", "layerwise"], ["--scope", "random"]),
    # flags that contradict each other, in either order
    ("swa-off-with-its-lr", ["spend", "--swa", "off", "--swa-lr", "0.1"], ["--swa-lr", "--swa off"]),
    ("kd-values-with-kd-alpha", ["spend", "--kd", "0.5,5", "--kd-alpha", "0.7"], ["--kd-alpha", "--kd 0.5,5"]),
    ("kd-alpha-with-kd-values", ["spend", "--kd-alpha", "0.7", "--kd", "0.5,5"], ["--kd-alpha", "--kd 0.5,5"]),
    # what only the data set can tell, read before any training
    ("val-fraction-0.999", ["draw", "--val-fraction", "0.999"], ["--val-fraction", "0.5"]),
    ("erk-schedule-empties-a-layer", ["draw", "--width", "0.125", "--device", "cpu", "--prune-method", "erk",
                                      "--sparsities", "0.5,0.9999"], ["--sparsities", "every weight"]),
    ("gradinit-batch-beyond-the-training-set", ["spend", *TINY_TICKET, "--rescale-init-batch-size", "100000"],
     ["--rescale-init-batch-size", "training set"]),
    # found by the census of issue 20
    ("shuffle-of-the-dense-net", ["spend", "--level", "0", "--init", "shuffle"], ["--init", "--level", "dense"]),
    ("threshold-nan", ["analyze", "--threshold", "nan"], ["--threshold", "finite"]),
    ("config-is-a-folder", ["draw", "--config", "/"], ["--config", "/ is a folder"]),
]
if not __import__("torch").cuda.is_available():
    CORE.append(("cuda-not-there", ["draw", *TINY_TICKET, "--device", "cuda"], ["--device", "cuda"]))


def run_core(capsys, argv: list[str]) -> tuple[int, str]:
    code = core_main(argv)
    out, err = capsys.readouterr()
    assert out == ""  # no JSON summary: nothing ran
    return code, err


def assert_one_error(code: int, err: str, words: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and ";" in last, err
    for word in words:
        assert word in last, (word, last)


@pytest.mark.parametrize("argv, words", [c[1:] for c in CORE], ids=[c[0] for c in CORE])
def test_the_core_cli_refuses_a_bad_flag_before_any_work(capsys, tmp_path, argv, words):
    store = tmp_path / "store"
    argv = [str(store) if a == "STORE" else a for a in argv]
    if "--store" not in argv:
        argv += ["--store", str(store)]
    code, err = run_core(capsys, argv)
    assert_one_error(code, err, words)
    assert not store.exists()


@pytest.mark.parametrize("argv, words", [
    ([], ["required: command", "python -m lth_core --help"]),
    (["analyze", "--grid", "1.5"], ["--grid", "python -m lth_core analyze --help"]),
    (["draw", "--bogus"], ["--bogus"]),
], ids=["no-command", "int-flag-not-an-int", "unknown-flag"])
def test_argument_errors_are_one_line_too(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        core_main(argv)
    assert_one_error(exit_.value.code, capsys.readouterr().err, words)


def test_a_store_under_a_file_is_refused(capsys, tmp_path):
    store = a_file(tmp_path) / "store"
    code, err = run_core(capsys, ["draw", *TINY_TICKET, "--store", str(store)])
    assert_one_error(code, err, ["--store", str(store)])


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("command", ["draw", "spend"])
def test_a_bad_config_file_is_named(capsys, tmp_path, case, command):
    config = write_config(tmp_path, case)
    code, err = run_core(capsys, [command, "--config", str(config), "--store", str(tmp_path / "store")])
    _, _, words = CONFIGS[case]
    assert_one_error(code, err, words)
    assert not (tmp_path / "store").exists()


def test_a_missing_config_file_is_named(capsys, tmp_path):
    code, err = run_core(capsys, ["draw", "--config", str(tmp_path / "nope.yaml"), "--store", str(tmp_path / "s")])
    assert_one_error(code, err, ["--config", "nope.yaml", "not found"])


@pytest.mark.parametrize("damage, words", [
    ("missing", ["data", "not found", "--data-root"]),
    ("truncated", ["data_batch_1", "--data-root"]),
    ("not-cifar", ["data_batch_1", "--data-root"]),
    ("no-test", ["test_batch", "not found"]),
])
@pytest.mark.parametrize("command", ["draw", "spend"])
def test_a_missing_or_damaged_data_set_is_named(capsys, tmp_path, damage, words, command):
    root = cifar10(tmp_path, damage)
    code, err = run_core(capsys, [command, *TINY_TICKET, "--dataset", "cifar10", "--data-root", str(root),
                                  "--store", str(tmp_path / "store")])
    assert_one_error(code, err, words)
    assert not (tmp_path / "store").exists()


def test_a_data_root_that_is_a_file_is_named(capsys, tmp_path):
    root = a_file(tmp_path)
    code, err = run_core(capsys, ["draw", *TINY_TICKET, "--dataset", "cifar100", "--data-root", str(root),
                                  "--store", str(tmp_path / "store")])
    assert_one_error(code, err, [str(root)])


def test_show_of_a_missing_draw_exits_2(capsys, tmp_path):
    (tmp_path / "store").mkdir()
    code, err = run_core(capsys, ["show", "--key", "0" * 20, "--store", str(tmp_path / "store")])
    assert_one_error(code, err, ["no finished draw", "python -m lth_core draw"])
    assert list((tmp_path / "store").iterdir()) == []


def test_show_of_a_corrupt_draw_exits_2(capsys, tmp_path):
    from lth_core.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "store"))
    key = "1" * 20
    store.write_bytes(paths.ticket_summary(key), b"{not json")
    before = sorted(p.name for p in (tmp_path / "store").rglob("*"))
    code, err = run_core(capsys, ["show", "--key", key, "--store", store.uri])
    assert_one_error(code, err, ["corrupt", "summary.json", "draw"])
    assert sorted(p.name for p in (tmp_path / "store").rglob("*")) == before


def test_a_path_leading_out_of_the_store_is_refused(capsys, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "tickets").symlink_to(outside)
    code, err = run_core(capsys, ["show", "--key", "2" * 20, "--store", str(tmp_path / "store")])
    assert_one_error(code, err, ["refused path", "tickets", "symlink"])
    assert list(outside.iterdir()) == []


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_DEBUG", "1")
    code = core_main(["show", "--key", "0" * 20, "--store", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        core_main(["spend", "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    for text in ("(default: 180)", "(default: 5)", "(default: resnet18)", "(default: 1)"):
        assert text in " ".join(out.split()), text
    from lth_core.mask_sources import SOURCES

    assert all(name in out for name in SOURCES)


# ------------------------------------------------------------------------------ the sweeps

SWEEP_TINY = ["--width", "0.125", "--epochs", "2", "--num-levels", "2", "--levels", "1,2", "--prune-methods", "imp",
              "--set", "combos=[{}]"]


def sweep_argv(root: Path, *extra: str) -> list[str]:
    return [*SWEEP_TINY, "--name", "bad", "--store", str(root / "store"), "--results-dir", str(root / "results"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--optuna-storage", f"sqlite:///{root / 'optuna.db'}",
            *extra]


def must_not_run(*args, **kwargs):
    raise AssertionError("work started")


SWEEPS = [
    # (id, extra argv (ROOT: the test's folder, FILE: a plain file in it), words)
    ("name-with-dots", ["--name", "a..b"], ["name", "'..'"]),
    ("empty-store", ["--store", ""], ["store", "empty"]),
    ("asha-grace-0", ["--asha", "--set", "asha_grace_epochs=0"], ["asha_grace_epochs", ">= 1"]),
    ("num-cpus-negative", ["--num-cpus", "-1"], ["num_cpus", "--num-cpus"]),
    ("max-concurrent-negative", ["--max-concurrent", "-1"], ["max_concurrent", "--max-concurrent"]),
    ("level-not-drawn", ["--levels", "9"], ["levels", "--levels"]),
    ("cpus-per-trial-0", ["--cpus-per-trial", "0"], ["cpus_per_trial", "--cpus-per-trial"]),
    ("gpus-per-trial-negative", ["--gpus-per-trial", "-1"], ["gpus_per_trial"]),
    ("unknown-tweak-value", ["--set", 'combos=[{"activation": "swishy"}]'], ["combos[0].activation", "--set 'combos="]),
    ("unknown-field", ["--set", "foo=1"], ["foo", "unknown field"]),
    ("set-without-value", ["--set", "foo"], ["--set", "FIELD=VALUE"]),
    ("empty-results-dir", ["--set", "results_dir=''"], ["results_dir", "empty"]),
    ("empty-tracking-uri", ["--set", "tracking_uri=''"], ["tracking_uri", "empty"]),
    ("store-under-a-file", ["--store", "FILE/store"], ["--store"]),
    ("results-under-a-file", ["--results-dir", "FILE/results"], ["--results-dir"]),
    ("tracking-server-down", ["--tracking-uri", "CLOSED"], ["tracking server", "--tracking-uri"]),
    ("tracking-db-under-a-file", ["--tracking-uri", "sqlite:///FILE/mlflow.db"], ["--tracking-uri"]),
    ("tracking-db-not-a-db", ["--tracking-uri", "sqlite:///FILE"], ["not a usable sqlite database", "--tracking-uri"]),
    ("tracking-unknown-scheme", ["--tracking-uri", "foo://x"], ["--tracking-uri", "foo"]),
    ("ray-address-closed", ["--ray-address", "127.0.0.1:CLOSEDPORT"], ["--ray-address", "Ray cluster"]),
    ("ray-address-garbage", ["--ray-address", "nonsense"], ["--ray-address", "nonsense"]),
    ("data-missing", ["--dataset", "cifar100", "--data-root", "ROOT/none"],
     ["https://www.cs.toronto.edu/~kriz/cifar.html", "--data-root"]),
    ("data-truncated", ["--dataset", "cifar10", "--data-root", "CIFAR-truncated"], ["data_batch_1"]),
    ("analyze-epoch-past-end", ["--analyze-epochs", "1,9"], ["analyze_epochs", "epoch 9"]),
    ("unknown-arch", ["--archs", "resnet18,resnet50"], ["archs", "resnet50"]),
    # hints name a path the user can set
    ("hint-ticket-field-at-the-top", ["--set", "pruning.method=omp"], ["--set ticket.pruning.method="]),
    ("hint-recipe-at-the-top", ["--set", "recipe.epochs=3"], ["ticket.recipe.epochs", "spend_recipe.epochs"]),
    ("hint-tweak-outside-combos", ["--set", "kd=on"], ["--set 'combos=[{kd:"]),
    ("spend-recipe-path", ["--set", "spend_recipe.epochs=0"], ["error: spend_recipe.epochs", "--set spend_recipe"]),
    ("combo-setting-path", ["--set", "combos=[{}, {swa: {start: 2}}]"], ["combos[1].swa.start", "--set 'combos="]),
    ("preset-value-names-the-flag", ["--preset", "fidelity-digits", "--epochs", "1"],
     ["ticket.keep_epochs", "--preset fidelity-digits", "fix --epochs"]),
    # a flat form in a combo reads as on the command line: alpha 2 of "2,5" is what is refused
    ("flat-form-in-a-combo", ["--set", "combos=[{kd: 2,5}]"], ["combos[0].kd.alpha", "got 2"]),
    ("bad-yaml-in-set", ["--set", "combos=[{kd: 0.5"], ["--set", "YAML"]),
    # mask sources and the ticket's own method
    ("method-ignored-by-prune-methods", ["--set", "ticket.pruning.method=omp"],
     ["ticket.pruning.method", "--prune-methods"]),
    ("sparsities-with-an-imp-source", ["--set", "ticket.pruning.sparsities=[0.5]"],
     ["ticket.pruning.sparsities", "--prune-methods"]),
    # seeds
    ("seeds-empty-entry", ["--seeds", "0,,1"], ["--seeds", "empty"]),
    ("seed-negative", ["--seeds", "-1"], ["seeds", "--seeds"]),
    ("ticket-seed-past-64-bits", ["--ticket-seeds", "99999999999999999999999"], ["ticket_seeds", "--ticket-seeds"]),
    # what the data set or the machine tells, before Ray starts
    ("val-fraction", ["--set", "ticket.data.val_fraction=0.999"], ["ticket.data.val_fraction", "0.5"]),
    ("schedule-empties-a-layer", ["--num-levels", "60", "--levels", "1"], ["ticket.pruning.levels", "--num-levels"]),
    ("cpus-per-trial-beyond-the-machine", ["--cpus-per-trial", "4096"], ["--cpus-per-trial 4096"]),
    ("gpus-per-trial-beyond-the-machine", ["--gpus-per-trial", "64"], ["--gpus-per-trial 64"]),
    # found by the census of issue 20
    ("unknown-mask-source", ["--prune-methods", "foo"], ["prune_methods", "'foo'", "--prune-methods"]),
    ("no-combination", ["--set", "combos=[]"], ["error: combos", "--set combos"]),
    ("asha-grace-beyond-the-epochs", ["--asha", "--set", "asha_grace_epochs=100"],
     ["asha_grace_epochs", "--epochs", "--set asha_grace_epochs"]),
    ("optuna-choice-not-flat", ["--set", "optuna_space.kd=[{alpha: 0.5}]"], ["optuna_space.kd", "'0.5'"]),
    ("optuna-choice-twice", ["--set", "optuna_space.activation=[relu, relu]"], ["optuna_space.activation", "twice"]),
    ("unknown-preset", ["--preset", "nope"], ["--preset", "smoke"]),
]


def fill(argv: list[str], root: Path) -> list[str]:
    file = a_file(root)
    out = []
    for a in argv:
        if a == "CLOSED":
            a = f"http://127.0.0.1:{closed_port()}"
        elif a == "CIFAR-truncated":
            a = str(cifar10(root, "truncated"))
        a = a.replace("CLOSEDPORT", str(closed_port())).replace("ROOT", str(root)).replace("FILE", str(file))
        out.append(a)
    return out


def run_sweep(main, root: Path, argv: list[str], monkeypatch) -> tuple[int, str, str]:
    import ray

    for name in ("init_ray", "sweep_session", "start_parent_run", "draw_stage", "run_tuner"):
        monkeypatch.setattr(runner, name, must_not_run)
    # Whether *this case* starts Ray: a session-scoped Ray from an earlier test may be up already.
    monkeypatch.setattr(ray, "init", must_not_run)
    was_up = ray.is_initialized()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # the parser's own errors
            code = e.code
    assert ray.is_initialized() is was_up, "Ray was started"
    return code, out.getvalue(), err.getvalue()


def nothing_written(root: Path) -> None:
    left = sorted(p.name for p in root.iterdir() if p.name not in ("a-file", "data"))
    assert left == [], left


@pytest.mark.parametrize("extra, words", [c[1:] for c in SWEEPS], ids=[c[0] for c in SWEEPS])
@pytest.mark.parametrize("main", [full_grid.main, optuna_search.main], ids=["grid", "optuna"])
def test_a_sweep_refuses_a_bad_input_before_ray_starts(tmp_path, monkeypatch, main, extra, words):
    code, out, err = run_sweep(main, tmp_path, sweep_argv(tmp_path, *fill(extra, tmp_path)), monkeypatch)
    assert_one_error(code, err, words)
    assert out == ""
    nothing_written(tmp_path)


@pytest.mark.parametrize("extra, words", [
    (["--optuna-storage", "sqlite:///FILE/optuna.db"], ["--optuna-storage"]),
    (["--optuna-storage", "nodriver://x/y"], ["--optuna-storage", "nodriver"]),
    (["--optuna-trials", "0"], ["optuna_trials", "--optuna-trials"]),
    (["--set", "optuna_space.init=[ticket, reinit]", "--set", "optuna_space.rewind_epoch=[0, 1]"],
     ["optuna_space.init", "'reinit' cannot go with rewind_epoch 1", "--set optuna_space.rewind_epoch"]),
    (["--set", "optuna_space.rescale_init=[off, '100,0.01,0.1,1,0.01,99999']"],
     ["optuna_space.rescale_init", "training set"]),
], ids=["storage-under-a-file", "storage-unknown-driver", "zero-trials", "impossible-pair", "gradinit-batch"])
def test_the_optuna_search_checks_its_storage_and_space_before_ray_starts(tmp_path, monkeypatch, extra, words):
    code, out, err = run_sweep(optuna_search.main, tmp_path, sweep_argv(tmp_path, *fill(extra, tmp_path)),
                               monkeypatch)
    assert_one_error(code, err, words)
    nothing_written(tmp_path)


def test_a_bad_sweep_config_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text("seeds: [0\n")
    code, _, err = run_sweep(full_grid.main, tmp_path, sweep_argv(tmp_path, "--config", str(tmp_path / "s.yaml")),
                             monkeypatch)
    assert_one_error(code, err, ["--config", str(tmp_path / "s.yaml"), "does not parse"])


@pytest.mark.parametrize("extra, words", [
    (["--set", "combos=[{}, {rescale_init: {batch_size: 99999}}]"], ["combos[1].rescale_init.batch_size"]),
    (["--set", "combos=[{init: reinit, rewind_epoch: 1}]"], ["combos[0].init", "--set 'combos="]),
], ids=["gradinit-batch", "reinit-with-rewind"])
def test_the_grid_checks_its_combinations_before_ray_starts(tmp_path, monkeypatch, extra, words):
    code, out, err = run_sweep(full_grid.main, tmp_path, sweep_argv(tmp_path, *extra), monkeypatch)
    assert_one_error(code, err, words)
    nothing_written(tmp_path)


def sweep_of(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return sweep_from_args(parser.parse_args(list(argv)))


def test_flat_forms_in_combos_read_as_on_the_command_line():
    """YAML's flow mapping splits `{kd: 0.5,5}` at the comma; the combo still means --kd 0.5,5."""
    sweep = sweep_of("--set", "combos=[{kd: 0.5,5, label_smoothing: 0.1}, {rescale_init: 50,0.02}]")
    assert [c.describe() for c in sweep.combos] == ["ls0.1+kd0.5,5", "gradinit(iterations=50,lr=0.02)"]


@pytest.mark.parametrize("preset", ["smoke", "fidelity"])
def test_omp_with_explicit_sparsities_is_a_sweep(preset):
    """Legal, once refused: the mask sources decide the ticket's method, and explicit sparsities
    replace the preset's level schedule (fidelity draws 10 levels)."""
    sweep = sweep_of("--preset", preset, "--prune-methods", "omp", "--set", "ticket.pruning.sparsities=[0.5, 0.9]",
                     "--levels", "1,2")
    (ticket,) = {t.pruning for t in sweep.tickets()}
    assert (ticket.method, ticket.sparsities, ticket.level_sparsities()) == ("omp", (0.5, 0.9), (0.5, 0.9))


def test_the_sweep_help_shows_real_defaults(capsys):
    with pytest.raises(SystemExit):
        full_grid.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out
    assert ("(default: smoke 0.25; paper 1; fidelity 0.0625; fidelity-digits 0.0625; fidelity-gpu 0.5; "
            "generalization 0.0625; generalization-gpu 1)") in out
    assert ("(default: smoke 5; paper 16; fidelity 10; fidelity-digits 16; fidelity-gpu 10; generalization 16; "
            "generalization-gpu 16)") in out


# ------------------------------------------------------------------------------ the report


@pytest.mark.parametrize("argv, words", [
    ([], ["--experiment"]),
    (["--experiment", "e", "--tracking-uri", "sqlite:////nonexistent/x.db"], ["/nonexistent/x.db", "--tracking-uri"]),
    (["--experiment", "e", "--tracking-uri", "CLOSED"], ["tracking server", "--tracking-uri"]),
    (["--experiment", "e", "--out", "FILE", "--tracking-uri", "sqlite:////nonexistent/x.db"], ["--out"]),
    (["--experiment", "e", "--out", "/proc/report", "--tracking-uri", "sqlite:////nonexistent/x.db"],
     ["--out /proc/report", "not writable"]),
], ids=["no-experiment", "no-store", "server-down", "out-is-a-file", "out-not-writable-even-for-root"])
def test_the_report_refuses_bad_arguments(tmp_path, argv, words):
    from dashboards.report import main as report_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = report_main(fill(argv, tmp_path))
        except SystemExit as e:  # argparse
            code = e.code
    assert code == 2 and "Traceback" not in err.getvalue()
    last = err.getvalue().strip().splitlines()[-1]
    assert "error" in last and all(w in last for w in words), last


# ------------------------------------------------------------------------------ real processes


@pytest.mark.parametrize("argv, words", [
    ([sys.executable, "-m", "lth_core", "draw", "--epochs", "0", "--store", "STORE"], ["--epochs"]),
    ([sys.executable, "-m", "lth_core", "show", "--key", "0" * 20, "--store", "STORE"], ["--store"]),
    ([sys.executable, str(ROOT / "sweeps" / "full_grid.py"), "--name", "a..b", "--dry-run"], ["name"]),
    ([sys.executable, "-m", "dashboards.report", "--experiment", "e", "--tracking-uri", "sqlite:////nonexistent/x.db"],
     ["--tracking-uri"]),
], ids=["core-draw", "core-show", "grid", "report"])
def test_no_traceback_reaches_the_terminal(tmp_path, argv, words):
    argv = [str(tmp_path / "store") if a == "STORE" else a for a in argv]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last
    assert not (tmp_path / "store").exists()


def test_a_corrupt_tracking_db_is_found_by_the_probe(tmp_path):
    """The sqlite check behind `tracking-db-not-a-db`: a real database passes."""
    from sweeps import preflight

    db = tmp_path / "ok.db"
    sqlite3.connect(db).close()
    preflight.check_tracking(f"sqlite:///{db}")
    (tmp_path / "bad.db").write_bytes(b"garbage" * 200)
    with pytest.raises(runner.SweepError, match="not a usable sqlite database"):
        preflight.check_tracking(f"sqlite:///{tmp_path / 'bad.db'}")


# ------------------------------------------------------------------------------ IDX data sets (MNIST, Fashion-MNIST)

IDX_DAMAGE = {
    # id: (file of the tiny MNIST set, its new bytes, or None to delete it)
    "no-test-labels": ("t10k-labels-idx1-ubyte.gz", None),
    "not-gzip": ("train-images-idx3-ubyte.gz", b"\x1f\x8b not really gzip"),
    "wrong-magic": ("train-labels-idx1-ubyte.gz", __import__("gzip").compress(b"\x00\x00\x08\x03" + bytes(44))),
}


def idx_set(tmp_path: Path, damage: str) -> Path:
    """The tiny MNIST set of conftest.write_idx_set in its own folder, one file damaged or deleted."""
    from conftest import write_idx_set

    root = tmp_path / "data"
    write_idx_set(root)
    name, content = IDX_DAMAGE[damage]
    if content is None:
        (root / name).unlink()
    else:
        (root / name).write_bytes(content)
    return root


@pytest.mark.parametrize("damage, words", [
    ("no-test-labels", ["t10k-labels-idx1-ubyte", "not found", "yann.lecun.com", "--data-root"]),
    ("not-gzip", ["train-images-idx3-ubyte.gz", "gzip", "--data-root"]),
    ("wrong-magic", ["train-labels-idx1-ubyte.gz", "not an IDX label file", "--data-root"]),
])
@pytest.mark.parametrize("command", ["draw", "spend"])
def test_a_missing_or_damaged_idx_file_is_named(capsys, tmp_path, tiny_idx, damage, words, command):
    root = idx_set(tmp_path, damage)
    code, err = run_core(capsys, [command, *TINY_TICKET, "--dataset", "mnist", "--data-root", str(root),
                                  "--store", str(tmp_path / "store")])
    assert_one_error(code, err, words)
    assert not (tmp_path / "store").exists()


def test_missing_fashion_mnist_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    from lth_core import config

    monkeypatch.setitem(config.DEFAULT_ROOTS, "fashion-mnist", str(tmp_path / "not-installed"))
    code, err = run_core(capsys, ["draw", *TINY_TICKET, "--dataset", "fashion-mnist",
                                  "--store", str(tmp_path / "store")])
    assert_one_error(code, err, ["not-installed", "apt-get install dataset-fashion-mnist",
                                 "github.com/zalandoresearch/fashion-mnist", "--data-root"])


def test_mnist_needs_a_data_root(capsys, tmp_path):
    code, err = run_core(capsys, ["draw", "--dataset", "mnist", "--store", str(tmp_path / "store")])
    assert_one_error(code, err, ["data.root", "--data-root"])


def test_a_train_size_larger_than_the_data_set_is_refused(capsys, tmp_path, tiny_idx):
    from conftest import write_idx_set

    write_idx_set(tmp_path / "data")
    code, err = run_core(capsys, ["draw", *TINY_TICKET, "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
                                  "--train-size", "100", "--store", str(tmp_path / "store")])
    assert_one_error(code, err, ["data.train_size", "--train-size", "36 training images"])


@pytest.mark.parametrize("damage, words", [
    ("no-test-labels", ["t10k-labels-idx1-ubyte", "--data-root"]),
    ("wrong-magic", ["train-labels-idx1-ubyte.gz", "not an IDX label file"]),
])
@pytest.mark.parametrize("main", [full_grid.main, optuna_search.main], ids=["grid", "optuna"])
def test_a_sweep_refuses_a_bad_idx_set_before_ray_starts(tmp_path, monkeypatch, tiny_idx, main, damage, words):
    root = idx_set(tmp_path, damage)
    argv = sweep_argv(tmp_path, "--dataset", "mnist", "--data-root", str(root), "--set", "ticket.recipe.batch_size=16")
    code, out, err = run_sweep(main, tmp_path, argv, monkeypatch)
    assert_one_error(code, err, words)
    assert out == ""
    nothing_written(tmp_path)


@pytest.mark.parametrize("argv, words", [
    (["--experiment", "e", "--tracking-uri", "sqlite:///FILE"], ["cannot read the MLflow store", "--tracking-uri"]),
    (["--experiment", "e", "--tracking-uri", "postgresql://u:secret@127.0.0.1:CLOSEDPORT/x"],
     ["cannot read the MLflow store", "postgresql://u:***@", "--tracking-uri"]),
], ids=["sqlite-file-not-a-database", "database-url-without-its-server-or-driver"])
def test_the_report_names_a_tracking_uri_that_is_not_an_mlflow_store(tmp_path, argv, words):
    from dashboards.report import main as report_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = report_main([*fill(argv, tmp_path), "--out", str(tmp_path / "report")])
    assert_one_error(code, err.getvalue(), words)
    assert "secret" not in err.getvalue()
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------------------ stores and stored files


def test_verify_on_an_unreachable_s3_store_is_one_clear_line(capsys, tmp_path):
    store = f"s3://bucket/prefix?endpoint_override=127.0.0.1:{closed_port()}&scheme=http"
    code, err = run_core(capsys, ["verify", "--store", store])
    assert_one_error(code, err, ["cannot open the artifact store", "--store"])


def test_a_level_mask_cut_short_under_a_matching_checksum_is_named(capsys, tmp_path):
    """The sidecar was recomputed over the cut file, so only parsing it finds the damage."""
    import hashlib

    from conftest import tiny_ticket
    from lth_core.config import PruneConfig
    from lth_core.lottery import draw
    from lth_core.store import ArtifactStore, CorruptArtifactError

    store = ArtifactStore(str(tmp_path / "store"))
    ticket = tiny_ticket(pruning=PruneConfig(method="random", levels=2))  # masks at initialisation: no training
    draw(ticket, store)
    mask = paths.level_mask(ticket.key, 1)
    data = store.read_bytes(mask)
    cut = data[: len(data) // 2]
    (tmp_path / "store" / mask).write_bytes(cut)
    (tmp_path / "store" / f"{mask}.sha256").write_text(hashlib.sha256(cut).hexdigest() + "\n")
    with pytest.raises(CorruptArtifactError, match=mask):
        store.read_tensors(mask)
    code, err = run_core(capsys, ["show", "--key", ticket.key, "--store", store.uri])
    assert_one_error(code, err, [mask, "corrupt"])


def test_a_layer_emptied_while_drawing_is_one_clear_line(capsys, tmp_path):
    """SNIP's global ranking empties a layer at 99.9% (found only by scoring: no training happens
    for a mask drawn at initialisation), and a trial fails on it once, without retries."""
    code, err = run_core(capsys, ["draw", "--width", "0.125", "--device", "cpu", "--prune-method", "snip",
                                  "--sparsities", "0.5,0.999", "--store", str(tmp_path / "store")])
    assert_one_error(code, err, ["every weight of", "--sparsities"])
    assert "unexpected" not in err


# ------------------------------------------------------------------------------ errors raised in trials


def project_errors() -> list[type[BaseException]]:
    """Every exception class the project defines, in the modules a trial or a sweep imports."""
    import importlib
    import inspect

    modules = ["lth_core.schema", "lth_core.inputs", "lth_core.data", "lth_core.store", "lth_core.pruning",
               "trainables.common", "sweeps.runner", "tracking.probe", "dashboards.collect"]
    return [cls for name in modules for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == name]


@pytest.mark.parametrize("cls", project_errors(), ids=lambda cls: cls.__name__)
def test_errors_raised_in_trials_pickle_with_their_message(cls):
    """Ray sends a trial's error to the driver pickled: one that cannot be rebuilt shows as a
    TypeError about its constructor instead of its message."""
    from lth_core.schema import ConfigError

    error = (ConfigError("tweaks.kd.alpha", "must be in (0, 1], got 2", ("ticket.keep_epochs",))
             if issubclass(cls, ConfigError) else cls("what is wrong; what to do"))
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls and str(back) == str(error)
    if isinstance(error, ConfigError):
        assert (back.field_path, back.message, back.related) == (error.field_path, error.message, error.related)


def test_an_emptied_layer_fails_a_trial_once():
    from lth_core.pruning import EmptyLayerError
    from trainables.common import TrialInputError, deterministic_errors

    with pytest.raises(TrialInputError, match="EmptyLayerError: pruning"):
        with deterministic_errors():
            raise EmptyLayerError("pruning to sparsity 0.999 would remove every weight of fc.weight")
    assert not runner.retryable(TrialInputError("EmptyLayerError: ..."))


# ------------------------------------------------------------------------------ seeds and the controls


@pytest.mark.parametrize("ticket_seed", [0, 1, 2**63 - 1])
@pytest.mark.parametrize("spend_seed", [0, 1, 2**62, 2**63 - 1])
def test_a_control_never_reuses_the_tickets_seed(ticket_seed, spend_seed):
    """`--init reinit` and `shuffle` draw from a seed of their own: with every seed the config
    accepts, it differs from the ticket's and fits torch's 64 bits (a spend seed of -1 once gave
    the ticket's own initialisation, so the 'reinit' control was vanilla)."""
    from types import SimpleNamespace

    import torch

    from lth_core.tweaks.ticket_init import control_seed

    ctx = SimpleNamespace(spend=SimpleNamespace(seed=spend_seed, ticket=SimpleNamespace(seed=ticket_seed)))
    seed = control_seed(ctx)
    assert seed != ticket_seed and 0 <= seed < 2**64
    torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", [-1, 2**63, 99999999999999999999999])
def test_seeds_outside_64_bits_or_negative_are_refused(seed):
    from lth_core.config import ConfigError, SpendConfig, TicketConfig

    with pytest.raises(ConfigError, match="seed"):
        SpendConfig(seed=seed)
    with pytest.raises(ConfigError, match="seed"):
        TicketConfig(seed=seed)


# ------------------------------------------------------------------------------ the benchmarks


def run_benchmark(name: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """A benchmark's main in this process; writing its synthetic data set counts as work."""
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    if hasattr(module, "write_cifar100"):
        monkeypatch.setattr(module, "write_cifar100", must_not_run)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    code = module.main()
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


BENCHMARKS = [
    ("throughput", ["--width", "0"], ["--width"]),
    ("throughput", ["--batch-size", "0"], ["--batch-size"]),
    ("throughput", ["--image-size", "-3"], ["--image-size"]),
    ("throughput", ["--steps", "0"], ["--steps"]),
    ("throughput", ["--sparsity", "1.5"], ["--sparsity"]),
    ("throughput", ["--arch", "resnet99"], ["--arch", "resnet18"]),
    ("overhead", ["--train", "-5"], ["--train"]),
    ("overhead", ["--epochs", "0"], ["--epochs"]),
    ("overhead", ["--width", "-1"], ["--width"]),
    ("gpu", ["--device", "cpu", "--data-root", "ROOT/none"], ["--data-root"]),
    ("gpu", ["--device", "cpu", "--data-root", "ROOT"], ["cifar-100-python", "--data-root"]),
    ("gpu", ["--device", "cpu", "--parts", "epochs,nonsense"], ["--parts", "nonsense"]),
]
if not __import__("torch").cuda.is_available():
    BENCHMARKS += [("throughput", ["--device", "cuda"], ["--device", "cuda"]),
                   ("gpu", ["--device", "cuda"], ["--device", "cuda"])]


@pytest.mark.parametrize("name, argv, words", BENCHMARKS, ids=[f"{c[0]} {' '.join(c[1])}" for c in BENCHMARKS])
def test_the_benchmarks_check_their_arguments_before_any_work(tmp_path, monkeypatch, capsys, name, argv, words):
    code, err = run_benchmark(name, [a.replace("ROOT", str(tmp_path)) for a in argv], monkeypatch, capsys)
    assert_one_error(code, err, words)
