"""The training recipe: masks hold under momentum and weight decay; resume is exact."""

import dataclasses

import pytest
import torch

from lth_core.config import DataConfig, ModelConfig, RecipeConfig
from lth_core.data import load_dataset
from lth_core.masks import Mask
from lth_core.models import build_model
from lth_core.pruning import prune_to_sparsity
from lth_core.training import Runtime, fit

RECIPE = RecipeConfig(epochs=3, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, device="cpu")


def setup():
    data = load_dataset(DataConfig())
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=0.125), in_channels=1, num_classes=10, image_size=8)
    return data, model


def test_pruned_weights_stay_exactly_zero_under_momentum_and_weight_decay():
    data, model = setup()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    mask = prune_to_sparsity(weights, Mask.ones_like(model), 0.8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = fit(model, data, RECIPE, seed=0, runtime=Runtime.resolve(RECIPE), mask=mask)
    params = dict(model.named_parameters())
    for name in mask:
        assert (params[name][~mask[name]] == 0).all(), name
        assert not torch.equal(params[name][mask[name]], before[name][mask[name]]), f"{name} did not train"
    assert len(result.history) == 3 and 0 < result.best.val_acc <= 1


@pytest.mark.parametrize("graphs", ["off", "on"])  # on: the graph code path, without capture on the CPU
def test_resume_from_a_checkpoint_gives_identical_weights(graphs):
    recipe = dataclasses.replace(RECIPE, graphs=graphs)
    data, model = setup()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    runtime = Runtime.resolve(recipe)
    payloads = {}
    fit(model, data, recipe, seed=3, runtime=runtime, keep_epochs=(0, 1),
        on_epoch=lambda record, payload: payloads.setdefault(record.epoch, payload()))
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    # "Kill" after epoch 1: a fresh model resumes from that epoch's checkpoint.
    _, fresh = setup()
    fresh.load_state_dict(start)
    ran = []
    resumed = fit(fresh, data, recipe, seed=3, runtime=runtime, keep_epochs=(0, 1), resume=payloads[1],
                  on_epoch=lambda record, payload: ran.append(record.epoch))
    assert ran == [2, 3], "a resumed fit trains only the epochs after its checkpoint"
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, uninterrupted[k]), k
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    assert set(resumed.snapshots) == {0, 1}
    assert all(torch.equal(resumed.snapshots[0][k], start[k]) for k in start)


def test_checkpoint_payload_loads_with_weights_only(tmp_path):
    data, model = setup()
    payloads = []
    fit(model, data, RecipeConfig(epochs=1, device="cpu"), seed=0, runtime=Runtime.resolve(RECIPE),
        on_epoch=lambda record, payload: payloads.append(payload()))
    torch.save(payloads[0], tmp_path / "ckpt.pt")
    back = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert back["epoch"] == 1 and set(back["model"]) == set(model.state_dict())


def test_lr_drops_at_the_milestones():
    data, model = setup()
    recipe = RecipeConfig(epochs=4, lr=0.1, device="cpu")
    result = fit(model, data, recipe, seed=0, runtime=Runtime.resolve(recipe))
    assert [round(r.lr, 6) for r in result.history] == [0.1, 0.1, 0.01, 0.001]


def test_the_test_split_is_evaluated_when_validation_improves_and_after_the_last_epoch(monkeypatch):
    """Skipping it elsewhere changes no reported number: each record's test accuracy is the
    best-validation epoch's so far, measured on that epoch's weights, and the last epoch's is its own
    (a hook zeroes the weights after the last epoch, so it is not a best one)."""
    import lth_core.training as training
    from lth_core.hooks import TrainHook

    class ZeroAtTheEnd(TrainHook):
        name = "zero"

        def on_epoch_end(self, loop):
            if loop.epoch == loop.epochs:
                with torch.no_grad():
                    for p in loop.model.parameters():
                        p.zero_()

    data, model = setup()
    recipe = RecipeConfig(epochs=6, batch_size=128, lr=0.1, device="cpu")
    runtime = Runtime.resolve(recipe)
    measured, evaluated = {}, []
    real = training.evaluate

    def counting(model, dataset, split, *args, **kwargs):
        if split == "test":
            evaluated.append(len(measured) + 1)  # the epoch being evaluated
        return real(model, dataset, split, *args, **kwargs)

    monkeypatch.setattr(training, "evaluate", counting)
    result = fit(model, data, recipe, seed=1, runtime=runtime, hooks=[ZeroAtTheEnd()],
                 on_epoch=lambda record, _: measured.setdefault(record.epoch, real(model, data, "test", runtime)[1]))
    history = result.history
    own = []
    for record in history:
        best = max(history[:record.epoch], key=lambda r: (r.val_acc, -r.epoch)).epoch
        if record.epoch in (best, recipe.epochs):
            own.append(record.epoch)
        assert record.test_acc == measured[record.epoch if record.epoch in own else best], record
    assert evaluated == own and len(own) < recipe.epochs, (evaluated, own)  # some epoch was skipped
    summary = result.summary()
    assert summary["test_acc"] == measured[summary["best_epoch"]]
    assert summary["final_test_acc"] == measured[recipe.epochs]


def test_checkpoints_are_due_after_the_first_and_last_epochs_and_by_the_cadence():
    data, model = setup()
    for seconds, due in ((1e9, [1, 4]), (0.0, [1, 2, 3, 4])):
        recipe = RecipeConfig(epochs=4, device="cpu", checkpoint_seconds=seconds)
        seen, payloads = [], {}

        def on_epoch(record, payload):
            seen.append((record.epoch, payload.due))
            payloads[record.epoch] = payload()
            assert payload() is payloads[record.epoch], "a payload is built once, however many writers read it"

        fit(model, data, recipe, seed=0, runtime=Runtime.resolve(recipe), on_epoch=on_epoch)
        assert [e for e, d in seen if d] == due, seconds
    resumed = []
    recipe = RecipeConfig(epochs=4, device="cpu", checkpoint_seconds=1e9)
    fit(model, data, recipe, seed=0, runtime=Runtime.resolve(recipe), resume=payloads[2],
        on_epoch=lambda record, payload: resumed.append((record.epoch, payload.due)))
    assert resumed == [(3, True), (4, True)], "a resumed run checkpoints its first epoch"


def test_a_last_batch_of_one_image_is_dropped_for_batchnorm():
    """Train-mode BatchNorm cannot normalise one image: that lone last batch is left out."""
    data, model = setup()
    batch_size = 431  # the 1294 training images leave one over
    assert len(data.train_y) % batch_size == 1
    recipe = RecipeConfig(epochs=1, batch_size=batch_size, device="cpu")
    result = fit(model, data, recipe, seed=0, runtime=Runtime.resolve(recipe))
    assert len(result.history) == 1 and result.history[0].train_loss > 0


def test_a_run_that_diverges_keeps_its_mask_exactly_and_says_so(caplog):
    """NaN weights survive the per-step multiply by zero: the end of `fit` zeroes pruned weights
    exactly, so a diverged spend is a result (chance accuracy), not a broken mask."""
    data, model = setup()
    mask = prune_to_sparsity({n: p.detach() for n, p in model.named_parameters()}, Mask.ones_like(model), 0.8)
    recipe = RecipeConfig(epochs=1, batch_size=128, lr=1e6, momentum=0.9, device="cpu")  # blows up at once
    with caplog.at_level("WARNING", logger="lth_core.training"):
        result = fit(model, data, recipe, seed=0, runtime=Runtime.resolve(recipe), mask=mask)
    params = dict(model.named_parameters())
    assert not all(torch.isfinite(params[n]).all() for n in mask), "the run did not diverge"
    for name in mask:
        assert torch.equal(params[name].detach()[~mask[name]], torch.zeros(int((~mask[name]).sum()))), name
    assert "diverged at epoch 1" in caplog.text and len(result.history) == 1
