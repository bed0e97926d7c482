"""The analyses on tiny nets built here: exact Hessians, hand-counted activations, landscapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from scipy.special import logsumexp

from lth_core.analysis import (HessianTracker, activation_sparsity, format_table, gradient_sign_direction,
                               input_landscape, is_activation, loss_along, loss_surface_1d, loss_surface_2d,
                               plot_activation_sparsity, plot_eigenvalue_history, plot_lines, plot_surface_1d,
                               plot_surface_2d, plot_surfaces_side_by_side, random_direction, random_input_direction,
                               run_all, save_npz, shared_levels, top_hessian_eigenvalues)
from lth_core.masks import Mask


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread start-up costs more than it saves on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyConvNet(nn.Module):
    """Named stages like the real models: stem, layer1 (conv-BN-act), head."""

    def __init__(self, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), act())
        self.layer1 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), act())
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.layer1(self.stem(x)), 1))


def image_batches(sizes=(16, 16, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def conv_net(act=nn.ReLU, seed=0) -> TinyConvNet:
    """A TinyConvNet whose BN running statistics are not the identity (one train-mode pass)."""
    torch.manual_seed(seed)
    model = TinyConvNet(act)
    with torch.no_grad():
        model(torch.cat([x for x, _ in image_batches(seed=seed + 100)]))
    return model


def random_mask(model: nn.Module, seed=0) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters()
                 if n.endswith("weight") and p.dim() == 4})


def mean_loss(model, batches) -> float:
    total = sum(len(y) for _, y in batches)
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) * len(y) for x, y in batches) / total


# ---------------------------------------------------------------- Hessian


@pytest.fixture(scope="module")
def mlp_problem():
    """A 51-parameter MLP in float64, three unequal batches, and its exact Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    batches = [(2 * torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
               for n in (8, 8, 5)]
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    total = sum(len(y) for _, y in batches)

    def loss_of_flat(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, torch.split(flat, [s.numel() for s in shapes])))
        params = {n: t.view(s) for (n, t), s in zip(params.items(), shapes)}
        return sum(F.cross_entropy(functional_call(model, params, (x,)), y) * len(y) / total for x, y in batches)

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    return model, batches, names, shapes, hessian


def top_by_magnitude(matrix: torch.Tensor, k: int) -> list[float]:
    values = torch.linalg.eigvalsh(matrix)
    return values[values.abs().argsort(descending=True)][:k].tolist()


def test_power_iteration_matches_exact_top_two_eigenvalues(mlp_problem):
    model, batches, _, _, hessian = mlp_problem
    exact = top_by_magnitude(hessian, 3)
    assert exact[0] > exact[1] > exact[2] > 0 and exact[1] / exact[0] < 0.8  # a well-separated top pair
    result = top_hessian_eigenvalues(model, batches, k=2, max_iter=500, tol=1e-9)
    assert result.eigenvalues == pytest.approx(exact[:2], rel=1e-2)
    assert len(result.iterations) == 2 and all(it <= 500 for it in result.iterations)
    v1, v2 = result.eigenvectors
    assert set(v1) == {n for n, _ in model.named_parameters()}
    assert float(sum((v1[n] * v2[n]).sum() for n in v1)) == pytest.approx(0.0, abs=1e-6)


def test_masked_power_iteration_matches_the_kept_sub_hessian(mlp_problem):
    model, batches, names, shapes, hessian = mlp_problem
    kept = torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) > 0.5
    mask = Mask({"0.weight": kept})
    keep = torch.cat([kept.flatten() if n == "0.weight" else torch.ones(s.numel(), dtype=torch.bool)
                      for n, s in zip(names, shapes)])
    exact = top_by_magnitude(hessian[keep][:, keep], 2)
    result = top_hessian_eigenvalues(model, batches, mask=mask, k=2, max_iter=500, tol=1e-9)
    assert result.eigenvalues == pytest.approx(exact, rel=1e-2)
    for v in result.eigenvectors:
        assert (v["0.weight"][~kept] == 0).all()


def test_hessian_leaves_the_model_alone_and_tracker_keeps_history():
    model = conv_net()
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    tracker = HessianTracker(every=2, batches=image_batches((8,)), mask=random_mask(model), max_iter=3)
    measured = [tracker.maybe_measure(epoch, model) for epoch in range(5)]
    assert [m is not None for m in measured] == [True, False, True, False, True]
    assert [e for e, _ in tracker.history] == [0, 2, 4]
    assert all(model.training for model in model.modules())
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


# ---------------------------------------------------------------- activation sparsity


def test_activation_sparsity_equals_a_direct_count():
    model = conv_net()
    batches = image_batches()
    threshold = 0.05
    result = activation_sparsity(model, batches, threshold=threshold)

    model.eval()
    counts = {"stem.2": [0, 0], "layer1.2": [0, 0]}
    with torch.no_grad():
        for x, _ in batches:
            a1 = torch.relu(model.stem[1](model.stem[0](x)))
            a2 = torch.relu(model.layer1[1](model.layer1[0](a1)))
            for name, a in (("stem.2", a1), ("layer1.2", a2)):
                counts[name][0] += int((a.abs() <= threshold).sum())
                counts[name][1] += a.numel()
    assert {n: (c.near_zero, c.total) for n, c in result.layers.items()} == {n: tuple(c) for n, c in counts.items()}
    assert list(result.stages) == ["stem", "layer1"]
    assert result.stages["stem"].fraction == pytest.approx(counts["stem.2"][0] / counts["stem.2"][1])
    near, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    assert result.overall == pytest.approx(near / total)
    rows = result.to_rows()
    assert [r["kind"] for r in rows] == ["layer", "layer", "stage", "stage", "overall"]


def test_a_module_called_twice_is_counted_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.act(self.fc(self.act(x)))

    torch.manual_seed(0)
    model = Twice()
    x = torch.randn(10, 5)
    result = activation_sparsity(model, [(x, None)], threshold=0.0)
    with torch.no_grad():
        first = torch.relu(x)
        second = torch.relu(model.fc(first))
    assert result.layers["act"].total == 100
    assert result.layers["act"].near_zero == int((first == 0).sum() + (second == 0).sum())


def test_stage_grouping_and_activation_types_are_overridable():
    class MySwish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    from lth_core.tweaks.activations import PSwish

    # By default: every activation the activation tweak can swap in, and nothing else.
    assert is_activation(PSwish()) and is_activation(nn.SiLU()) and not is_activation(nn.Tanh())
    assert not is_activation(MySwish()) and is_activation(MySwish(), activation_types=[MySwish])
    assert not is_activation(nn.SiLU(), activation_types=[nn.ReLU])
    model, batches = conv_net(), image_batches((4,))
    assert list(activation_sparsity(model, batches, stage_fn=lambda name: "all").stages) == ["all"]
    with pytest.raises(ValueError, match="no activation module"):  # never a silent empty count
        activation_sparsity(model, batches, activation_types=[nn.Tanh])


def test_relu_has_far_more_near_zero_activations_than_silu():
    batches = image_batches()
    relu = activation_sparsity(conv_net(nn.ReLU), batches, threshold=1e-3)
    silu = activation_sparsity(conv_net(nn.SiLU), batches, threshold=1e-3)
    assert relu.overall > 0.2 and silu.overall < 0.05
    table = format_table({"relu": relu, "swish": silu})
    caption, header, _, *rows = table.splitlines()
    assert caption.endswith("<= 0.001") and header.split() == ["stage", "relu", "swish"]
    assert [row.split()[0] for row in rows] == ["stem", "layer1", "overall"]
    assert rows[0].split()[1:] == [f"{100 * r.stages['stem'].fraction:.2f}" for r in (relu, silu)]


# ---------------------------------------------------------------- landscape


def test_random_direction_is_masked_filter_normalized_and_zero_on_1d_params():
    model = conv_net()
    mask = random_mask(model)
    mask.apply_(model)
    direction = random_direction(model, mask, seed=3)
    params = dict(model.named_parameters())
    assert set(direction) == set(params)
    for name, d in direction.items():
        if params[name].dim() <= 1:  # BN weights and biases, the linear bias
            assert (d == 0).all(), name
            continue
        if name in mask:
            assert (d[~mask[name]] == 0).all(), name
        dims = tuple(range(1, d.dim()))
        norm = torch.linalg.vector_norm
        assert torch.allclose(norm(d, dim=dims), norm(params[name].detach(), dim=dims), rtol=1e-5, atol=1e-7)
    again = random_direction(model, mask, seed=3)
    assert all(torch.equal(direction[n], again[n]) for n in direction)
    assert not torch.equal(random_direction(model, mask, seed=4)["stem.0.weight"], direction["stem.0.weight"])


def test_random_direction_is_the_same_for_a_parameter_another_model_shares():
    """Compared spends of one ticket share their directions: an injected skip adds parameters,
    and the shared ones must still get the same draw (filter-normalized to equal weights here)."""
    plain = conv_net()
    grown = conv_net()
    grown.stem.add_module("skip", nn.Conv2d(1, 4, 1, bias=False))  # registered after stem.0 and stem.1
    d_plain, d_grown = random_direction(plain, seed=3), random_direction(grown, seed=3)
    assert set(d_grown) - set(d_plain) == {"stem.skip.weight"}
    assert all(torch.equal(d_plain[n], d_grown[n]) for n in d_plain)


def test_surfaces_start_at_the_model_loss_and_leave_the_model_alone():
    model = conv_net()
    model.train()
    batches = image_batches()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    alphas, betas = [-0.5, 0.0, 0.5], [-0.25, 0.0, 0.25, 0.5]
    line = loss_surface_1d(model, batches, d1, alphas)
    surface = loss_surface_2d(model, batches, d1, d2, alphas, betas)

    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(m.training for m in model.modules())
    model.eval()
    assert line[1] == pytest.approx(mean_loss(model, batches), rel=1e-6)
    assert surface.shape == (3, 4) and surface[1, 1] == pytest.approx(line[1], rel=1e-6)
    np.testing.assert_allclose(surface[:, 1], line, rtol=1e-6)
    assert line[0] != pytest.approx(line[1])
    np.testing.assert_allclose(loss_along(model, batches, d1, alphas), line, rtol=1e-6)


# ---------------------------------------------------------------- input-space landscape


def linear_problem():
    """A linear classifier in float64 and images whose norms differ by a factor of 40."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(5)
    scale = torch.tensor([0.2, 0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64).view(6, 1, 1, 1)
    images = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64) * scale
    return model, images, torch.randint(0, 3, (6,), generator=g)


def closed_form_loss(model, images, labels, *moves) -> float:
    """Mean cross-entropy of the linear model at x + sum(c * d), by hand: the logits move by
    c * W d, and the loss of an image is logsumexp(z) - z_y."""
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    flat = lambda t: t.detach().reshape(len(t), -1).numpy()  # noqa: E731
    z = flat(images) @ w.T + b + sum(c * flat(d) @ w.T for c, d in moves)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels.numpy()]))


def to_image_norms(direction, images):
    """Each image's direction scaled to the image's own norm, by hand."""
    norms = images.reshape(len(images), -1).norm(dim=1) / direction.reshape(len(images), -1).norm(dim=1)
    return direction * norms.view(-1, 1, 1, 1)


def test_input_landscape_matches_the_closed_form_of_a_linear_model():
    """The loss along each input direction, and over two, is the hand-computed one, with every
    direction normalised to its own image's norm (images here differ in norm 40-fold, so a
    missing or batch-wide normalisation gives other numbers)."""
    model, images, labels = linear_problem()
    steps, seed = [-0.5, -0.1, 0.0, 0.2, 0.5], 7
    got = input_landscape(model, images, labels, steps, seed=seed)

    w, b = model[1].weight.detach(), model[1].bias.detach()
    logits = images.reshape(6, -1) @ w.T + b
    grad = (torch.softmax(logits, 1) - F.one_hot(labels, 3)) @ w  # d CE_i / d x_i
    sign = to_image_norms(grad.sign().view_as(images), images)
    gaussians = [torch.randn(images.shape, generator=torch.Generator().manual_seed(s)).double() for s in (seed, seed + 1)]
    d1, d2 = (to_image_norms(g, images) for g in gaussians)

    np.testing.assert_allclose(got["steps"], steps)
    np.testing.assert_allclose(got["gradient_sign_1d"], [closed_form_loss(model, images, labels, (e, sign))
                                                         for e in steps], rtol=1e-6)
    np.testing.assert_allclose(got["random_1d"], [closed_form_loss(model, images, labels, (e, d1)) for e in steps],
                               rtol=1e-5)
    np.testing.assert_allclose(got["surface_2d"], [[closed_form_loss(model, images, labels, (a, d1), (c, d2))
                                                    for c in steps] for a in steps], rtol=1e-5)
    assert got["gradient_sign_1d"][-1] > got["gradient_sign_1d"][2]  # uphill along the gradient's sign
    norms = lambda t: t.reshape(6, -1).norm(dim=1)  # noqa: E731
    for d in (random_input_direction(images, seed), gradient_sign_direction(model, images, labels)):
        torch.testing.assert_close(norms(d), norms(images))


def test_input_landscape_leaves_the_model_alone():
    model = conv_net()
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    images, labels = image_batches((8,))[0]
    got = input_landscape(model, images, labels, [-0.2, 0.0, 0.2], seed=1)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(m.training for m in model.modules()) and all(p.grad is None for p in model.parameters())
    model.eval()
    assert got["random_1d"][1] == pytest.approx(mean_loss(model, [(images, labels)]), rel=1e-6)
    assert got["surface_2d"].shape == (3, 3) and got["surface_2d"][1, 1] == pytest.approx(got["random_1d"][1])


def test_side_by_side_contours_share_levels_and_colour_scale(tmp_path):
    steps = np.linspace(-1, 1, 5)
    flat, steep = np.add.outer(steps ** 2, steps ** 2) + 0.5, 10 * np.add.outer(steps ** 2, steps ** 2) + 0.1
    levels, norm = shared_levels([flat, steep])
    assert levels[0] == pytest.approx(0.1) and levels[-1] == pytest.approx(20.1)
    assert (norm.vmin, norm.vmax) == (levels[0], levels[-1])
    path = plot_surfaces_side_by_side(steps, steps, {"vanilla": flat, "swish": steep}, tmp_path / "side.png", "t")
    lines = plot_lines(steps, {"random": {"vanilla": steps ** 2, "swish": steps}}, tmp_path / "lines.png")
    for p in (path, lines):
        assert p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 1000


def test_plots_and_npz_are_written(tmp_path):
    model, batches = conv_net(), image_batches((8,))
    result = activation_sparsity(model, batches)
    steps = np.linspace(-1, 1, 5)
    surface = np.add.outer(steps ** 2, 2 * steps ** 2)
    paths = [
        plot_surface_1d(steps, steps ** 2, tmp_path / "a.png", "1d"),
        plot_surface_2d(steps, steps, surface, tmp_path / "b.png", "2d"),
        plot_eigenvalue_history([0, 5, 10], [3.0, 2.0, 1.5], tmp_path / "c.png"),
        plot_activation_sparsity({"relu": result, "again": result}, tmp_path / "sub" / "d.png"),
    ]
    for p in paths:
        assert p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 1000
    npz = save_npz(tmp_path / "x.npz", steps=steps, surface=surface)
    with np.load(npz) as data:
        np.testing.assert_array_equal(data["surface"], surface)


def test_run_all_writes_everything(tmp_path):
    model = conv_net()
    mask = random_mask(model)
    mask.apply_(model)
    summary = run_all(model, image_batches((8, 8)), image_batches((8,), seed=1), mask=mask, out_dir=tmp_path,
                      max_iter=5, grid=3, input_images=image_batches((5,), seed=2)[0])
    assert json.loads((tmp_path / "analysis.json").read_text()) == summary
    assert summary["input_landscape"]["images"] == 5 and len(summary["input_landscape"]["gradient_sign_1d"]) == 3
    with np.load(tmp_path / "input_landscape.npz") as data:
        assert data["surface_2d"].shape == (3, 3)
    assert len(summary["hessian"]["eigenvalues"]) == 1
    assert set(summary["activation_sparsity"]["stages"]) == {"stem", "layer1"}
    with np.load(tmp_path / "landscape.npz") as data:
        assert data["surface_2d"].shape == (3, 3) and data["along_top_eigenvector"].shape == (3,)
    for key, path in summary["paths"].items():
        assert (tmp_path / path.rsplit("/", 1)[-1]).stat().st_size > 0, key
