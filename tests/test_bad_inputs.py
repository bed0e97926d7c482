"""Every bad input ends with one line, `error: <what is wrong>; <what to do>`, and exit status 2,
before any work: no traceback, a message naming the flag, field or file, nothing trained or
written, and no Ray started. The core CLI, both sweeps and the report run in-process (a few as
real processes, to see that no traceback reaches the terminal)."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parent.parent
TINY_TICKET = ["--width", "0.125", "--epochs", "2", "--batch-size", "128", "--device", "cpu", "--num-levels", "2",
               "--keep-epochs", "1"]


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
    ("unknown-dataset", ["draw", "--dataset", "mnist"], ["data.name", "--dataset"]),
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
    ("empty-store", ["draw", *TINY_TICKET, "--store", ""], ["--store"]),
    ("unknown-store-scheme", ["draw", *TINY_TICKET, "--store", "foo://bar"], ["--store", "foo://bar"]),
    ("key-not-a-key", ["show", "--key", "../x"], ["--key", "../x"]),
    ("no-store-to-show", ["show", "--key", "0" * 20, "--store", "STORE"], ["no artifact store", "--store"]),
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
        code = main(argv)
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
], ids=["storage-under-a-file", "storage-unknown-driver", "zero-trials"])
def test_the_optuna_search_checks_its_storage_before_ray_starts(tmp_path, monkeypatch, extra, words):
    code, out, err = run_sweep(optuna_search.main, tmp_path, sweep_argv(tmp_path, *fill(extra, tmp_path)),
                               monkeypatch)
    assert_one_error(code, err, words)
    nothing_written(tmp_path)


def test_a_bad_sweep_config_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text("seeds: [0\n")
    code, _, err = run_sweep(full_grid.main, tmp_path, sweep_argv(tmp_path, "--config", str(tmp_path / "s.yaml")),
                             monkeypatch)
    assert_one_error(code, err, ["--config"])


def test_the_sweep_help_shows_real_defaults(capsys):
    with pytest.raises(SystemExit):
        full_grid.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out
    assert "(default: smoke 0.25; paper 1; fidelity 0.0625)" in out and "(default: smoke 5; paper 16; fidelity 16)" in out


# ------------------------------------------------------------------------------ the report


@pytest.mark.parametrize("argv, words", [
    ([], ["--experiment"]),
    (["--experiment", "e", "--tracking-uri", "sqlite:////nonexistent/x.db"], ["/nonexistent/x.db", "--tracking-uri"]),
    (["--experiment", "e", "--tracking-uri", "CLOSED"], ["tracking server", "--tracking-uri"]),
    (["--experiment", "e", "--out", "FILE", "--tracking-uri", "sqlite:////nonexistent/x.db"], ["--out"]),
], ids=["no-experiment", "no-store", "server-down", "out-is-a-file"])
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
