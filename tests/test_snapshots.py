"""A spend's weights at chosen epochs (`snapshot_epochs`): unkeyed, stored and verified like every
artifact, added by training again when a stored spend lacks one, never answered with the final
weights; `analyze --epoch K` analyses them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_ticket

from lth_core import lottery, paths
from lth_core.analysis.run import load_spent_model
from lth_core.cli import main
from lth_core.config import RecipeConfig, SpendConfig, replace
from lth_core.lottery import spend
from lth_core.store import ArtifactStore
from lth_core.verify import scan

TWO = RecipeConfig(epochs=2, batch_size=128, device="cpu")


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshot_epochs_change_no_key_and_are_checked():
    base = SpendConfig(ticket=tiny_ticket(), level=1, recipe=TWO)
    kept = replace(base, snapshot_epochs=(2, 0, 2))
    assert kept.key == base.key and kept.snapshot_epochs == (0, 2)
    with pytest.raises(ValueError, match="snapshot_epochs: epoch 3 is not in the spend"):
        replace(base, snapshot_epochs=(3,))


@pytest.fixture(scope="module")
def spent(tmp_path_factory):
    """(store, config) of a 2-epoch spend stored without snapshots."""
    store = ArtifactStore(str(tmp_path_factory.mktemp("store")))
    config = SpendConfig(ticket=tiny_ticket(), level=2, recipe=TWO)
    spend(config, store)
    return store, config


def test_a_snapshot_is_the_weights_after_its_epoch(spent):
    """Epoch 1 of a 2-epoch spend trains at the same rate on the same batches as a 1-epoch spend
    (the rate drops after epoch 1): its snapshot is that spend's final weights."""
    store, config = spent
    one = spend(replace(config, recipe=replace(TWO, epochs=1)), store)
    kept = spend(replace(config, snapshot_epochs=(1,)), store)
    assert kept["snapshots"] == [1] and kept["spend_key"] == config.key
    snapshot = store.read_tensors(paths.spend_snapshot(config.key, 1))
    assert weights_equal(snapshot, store.read_tensors(paths.spend_weights(one["spend_key"])))
    assert not weights_equal(snapshot, store.read_tensors(paths.spend_weights(config.key)))


def test_a_stored_spend_without_the_snapshot_trains_again_and_keeps_the_earlier_ones(spent):
    store, config = spent
    spend(replace(config, snapshot_epochs=(1,)), store)
    stamp = store.read_json(paths.spend_result(config.key))["spend_seconds"]
    again = spend(replace(config, snapshot_epochs=(0,)), store)
    assert again["snapshots"] == [0, 1] and again["spend_seconds"] != stamp  # trained again, 1 kept
    assert spend(replace(config, snapshot_epochs=(0, 1)), store)["spend_seconds"] == again["spend_seconds"]
    start = store.read_tensors(paths.spend_snapshot(config.key, 0))
    model, _, _ = load_spent_model(config, store, epoch=0)
    assert weights_equal({k: v for k, v in model.state_dict().items()}, start)


def test_analysis_at_an_epoch_never_gets_the_final_weights(spent):
    """The guarantee: an epoch's analysis reads that epoch's weights, also when the stored spend
    had to be trained again to keep them."""
    store, config = spent
    store.delete(paths.spend_snapshot(config.key, 1))
    store.write_json(paths.spend_result(config.key),
                     {**store.read_json(paths.spend_result(config.key)), "snapshots": []})
    final = store.read_tensors(paths.spend_weights(config.key))
    model, _, _ = load_spent_model(config, store, epoch=1)
    got = {k: v for k, v in model.state_dict().items()}
    assert not weights_equal(got, final)
    assert weights_equal(got, store.read_tensors(paths.spend_snapshot(config.key, 1)))


def test_a_checkpoint_without_the_snapshot_is_not_resumed(spent, caplog):
    store, config = spent
    fresh = replace(config, seed=5)
    payloads = []
    lottery.spend(fresh, store, on_epoch=lambda record, payload: payloads.append(payload()))
    store.delete(paths.spend_result(fresh.key))
    store.write_torch(paths.spend_checkpoint(fresh.key), payloads[1])  # epoch 2, no snapshots kept
    epochs = []
    result = lottery.spend(replace(fresh, snapshot_epochs=(1,)), store,
                           on_epoch=lambda record, payload: epochs.append(record.epoch))
    assert epochs == [1, 2] and result["snapshots"] == [1]
    assert "lacks the weights at epoch(s) [1]" in caplog.text


def test_verify_names_a_missing_or_corrupt_snapshot(spent):
    store, config = spent
    spend(replace(config, snapshot_epochs=(1,)), store)
    snapshot = paths.spend_snapshot(config.key, 1)
    assert [f for f in scan(store) if f.path.startswith(paths.spend_dir(config.key))] == []
    data = store.read_bytes(snapshot)
    store.delete(snapshot)
    missing = [f for f in scan(store) if f.path == snapshot]
    assert [(f.kind, f.removes) for f in missing] == [("missing", (paths.spend_result(config.key),))]
    assert lottery.finished_spend(replace(config, snapshot_epochs=(1,)), store) is None
    store.write_bytes(snapshot, data)
    (store.local_path() / snapshot).write_bytes(data[:-4] + b"oops")
    assert [f.kind for f in scan(store) if f.path == snapshot] == ["corrupt"]


def test_analyze_at_an_epoch_and_its_bad_input(drawn, capsys, tmp_path):
    store, _, _ = drawn
    tiny = ["--store", store.uri, "--width", "0.125", "--epochs", "2", "--batch-size", "128", "--device", "cpu",
            "--num-levels", "2", "--keep-epochs", "1", "--level", "1", "--grid", "3", "--batches", "1",
            "--compare-activations", "relu"]
    assert main(["analyze", *tiny, "--epoch", "3", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "error: --epoch 3 is not an epoch of the spend (it trains 2)" in err and not (tmp_path / "bad").exists()
    assert main(["analyze", *tiny, "--epoch", "1", "--out", str(tmp_path / "an")]) == 0
    out, err = capsys.readouterr()
    assert "keeps the weights at epoch(s) 1" in err and "weights after epoch 1" in err
    result = json.loads(out)
    assert result["epoch"] == 1 and len(result["input_landscape"]["gradient_sign_1d"]) == 3
    for name in ("input_landscape.npz", "input_1d.png", "input_surface_2d.png", "surface_2d.png"):
        assert (tmp_path / "an" / name).stat().st_size > 0
