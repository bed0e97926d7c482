"""`python -m lth_core`: flags and files to configs, clear errors, JSON on stdout."""

import json
import subprocess
import sys

import pytest

from lth_core.cli import main

TINY = ["--width", "0.125", "--epochs", "2", "--batch-size", "128", "--device", "cpu", "--num-levels", "2",
        "--keep-epochs", "1"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_the_level_table(drawn, capsys):
    store, ticket, summary = drawn
    code, out, err = run_cli(capsys, "show", "--store", store.uri, *TINY)
    assert code == 0
    assert f"ticket {ticket.key}" in err and "36.00%" in err
    assert json.loads(out)["key"] == ticket.key


def test_spend_with_tweak_flags_prints_a_json_summary(drawn, capsys):
    store, ticket, _ = drawn
    code, out, err = run_cli(capsys, "spend", "--store", store.uri, *TINY, "--level", "1", "--activation", "mish",
                             "--label-smoothing", "0.1", "--rewind-epoch", "1", "--spend-epochs", "1")
    assert code == 0, err
    result = json.loads(out)
    assert result["tweak"] == "mish+ls0.1+rewind1" and result["ticket_key"] == ticket.key
    assert result["config"]["recipe"]["epochs"] == 1 and "spent level 1" in err
    assert result["config"]["recipe"]["batch_size"] == 128  # the rest is the ticket's recipe


def test_config_file_and_flags_compose(drawn, capsys, tmp_path):
    store, ticket, _ = drawn
    (tmp_path / "t.yaml").write_text("model: {width: 0.125}\nrecipe: {epochs: 2, batch_size: 128, device: cpu}\n"
                                     "pruning: {levels: 2}\n")
    code, out, _ = run_cli(capsys, "show", "--store", store.uri, "--config", str(tmp_path / "t.yaml"),
                           "--keep-epochs", "1")
    assert code == 0 and json.loads(out)["key"] == ticket.key


@pytest.mark.parametrize("argv, words", [
    (["draw", "--dataset", "imagenet"], "data.name: unknown value 'imagenet'"),
    (["draw", "--dataset", "cifar10"], "--data-root"),
    (["draw", "--lr", "-1"], "recipe.lr: must be > 0"),
    (["draw", "--epochs", "4", "--milestones", "2,9"], "past the last epoch"),
    (["spend", "--level", "1", "--rewind-epoch", "3"], "tweaks.rewind_epoch"),
    (["spend", "--kd", "0.9,5,1"], "--kd: cannot read"),
    (["spend", "--kd", "nine"], "--kd: cannot read"),
    (["spend", "--label-smoothing", "1.5"], "tweaks.label_smoothing"),
])
def test_bad_input_fails_before_any_work(capsys, tmp_path, argv, words):
    code, _, err = run_cli(capsys, *argv, "--store", str(tmp_path / "store"))
    assert code == 2 and words in err
    assert not (tmp_path / "store").exists()


def test_show_of_a_missing_draw_says_what_to_do(tmp_path, capsys):
    code, _, err = run_cli(capsys, "show", "--store", str(tmp_path), "--key", "0000")
    assert code == 2 and "run `python -m lth_core draw`" in err


def test_show_refuses_a_key_that_is_not_one(tmp_path, capsys):
    code, _, err = run_cli(capsys, "show", "--store", str(tmp_path), "--key", "../x")
    assert code == 2 and "not a content key: '../x'" in err


def test_analyze_writes_the_table_and_plots(drawn, capsys, tmp_path):
    store, _, _ = drawn
    code, out, err = run_cli(capsys, "analyze", "--store", store.uri, *TINY, "--level", "2", "--out",
                             str(tmp_path / "an"), "--grid", "3", "--batches", "1")
    assert code == 0, err
    assert "relu" in err and "swish" in err and "layer4" in err
    for name in ("analysis.json", "landscape.npz", "surface_2d.png", "activation_sparsity.png"):
        assert (tmp_path / "an" / name).stat().st_size > 0
    result = json.loads(out)
    relu = result["activation_comparison"]["relu"]["overall"]
    swish = result["activation_comparison"]["swish"]["overall"]
    assert relu > 10 * swish


def test_module_entry_point_has_help():
    out = subprocess.run([sys.executable, "-m", "lth_core", "spend", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--activation", "--skip", "--kd", "--rescale-init", "--rewind-epoch", "--store"):
        assert flag in out


def test_the_draw_plan_says_whether_levels_retrain_from_init_or_a_rewound_epoch(tmp_path):
    from conftest import tiny_ticket

    from lth_core.cli import draw_plan
    from lth_core.config import PruneConfig
    from lth_core.store import ArtifactStore

    store = ArtifactStore(str(tmp_path))
    assert "then 2 IMP level(s) (2 epochs each) = 6 epochs" in draw_plan(tiny_ticket(), store)
    rewound = tiny_ticket(pruning=PruneConfig(levels=2, rewind_epoch=1))
    assert "then 2 IMP level(s) (2 epochs each, rewound to epoch 1) = 6 epochs" in draw_plan(rewound, store)
