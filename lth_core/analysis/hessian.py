"""Top Hessian eigenvalues of the training loss (PyHessian-style power iteration).

Only Hessian-vector products are formed (double backward), never the Hessian. For a
sparse net every vector is multiplied by the mask, so the iteration runs on the
sub-Hessian of the kept weights: a pruned weight is not a free coordinate, and
letting the vector leak into it would measure a net that is not the ticket.

The model is put in eval mode (BatchNorm uses its running statistics, dropout is off)
so the loss is a fixed, deterministic function of the weights; in train mode BN's batch
statistics make the "Hessian" depend on how the data is batched. The loss is the data
loss only: weight decay would shift every eigenvalue by its coefficient.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..hooks import Loop, Observer
from ..masks import Mask

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then every module's own previous mode back
    (a blanket `model.train()` would wake modules the caller had frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def on_device(batches: Sequence[Batch], device: torch.device) -> list[Batch]:
    return [(x.to(device), y.to(device)) for x, y in batches]


@dataclass
class HessianResult:
    """Eigenvalues largest first (by magnitude: power iteration's convention, as PyHessian);
    eigenvectors are unit-norm, masked, on the model's device; iterations per eigenvalue."""

    eigenvalues: list[float]
    eigenvectors: list[dict[str, torch.Tensor]]
    iterations: list[int]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _normalized(v: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = float(_dot(v, v)) ** 0.5
    return [t / (norm + 1e-12) for t in v]


def _orthogonalized(v: list[torch.Tensor], basis: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Gram-Schmidt against the eigenvectors already found: the deflation that yields the next one."""
    for u in basis:
        c = _dot(v, u)
        v = [vi - c * ui for vi, ui in zip(v, u)]
    return v


def _hvp(model: nn.Module, params: list[torch.Tensor], batches: list[Batch], loss_fn: LossFn,
         v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the loss averaged over all samples: per-batch HVPs weighted by batch size,
    so memory stays at one batch's double-backward graph."""
    total = sum(len(y) for _, y in batches)
    out = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # A gradient that is None or constant in the weights has a zero Hessian block.
        live = [(g, vi) for g, vi in zip(grads, v) if g is not None and g.requires_grad]
        if not live:
            continue
        hv = torch.autograd.grad([g for g, _ in live], params, grad_outputs=[vi for _, vi in live],
                                 allow_unused=True)
        for o, h in zip(out, hv):
            if h is not None:
                o.add_(h.detach(), alpha=len(y) / total)
    return out


def top_hessian_eigenvalues(model: nn.Module, batches: Sequence[Batch], *, mask: Mask | None = None,
                            loss_fn: LossFn = F.cross_entropy, k: int = 1, max_iter: int = 100,
                            tol: float = 1e-3, seed: int = 0) -> HessianResult:
    """The k largest-magnitude eigenvalues of the Hessian of the mean loss over `batches`
    w.r.t. every trainable parameter (masked where `mask` has an entry).

    Each eigenvalue stops after `max_iter` HVPs or when its relative change falls below `tol`;
    eigenvalue j is found in the orthogonal complement of the first j-1 eigenvectors.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if mask is not None:
        mask.check_fits(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    factors = [mask[n].to(device=p.device, dtype=p.dtype) if mask is not None and n in mask else None
               for n, p in named]

    def masked(v: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t if f is None else t * f for t, f in zip(v, factors)]

    batches = on_device(batches, model_device(model))
    generator = torch.Generator().manual_seed(seed)
    values: list[float] = []
    vectors: list[list[torch.Tensor]] = []
    iterations: list[int] = []
    # A terminal shows how far the power iterations are (at most max_iter HVPs per eigenvalue).
    progress = tqdm(total=k * max_iter, desc="Hessian", unit="HVP", disable=None, leave=False)
    with eval_mode(model), torch.enable_grad(), progress:
        for _ in range(k):
            v = masked([torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params])
            v = _normalized(_orthogonalized(v, vectors))
            value = None
            for it in range(1, max_iter + 1):
                hv = masked(_hvp(model, params, batches, loss_fn, v))
                new = float(_dot(hv, v))
                v = _normalized(_orthogonalized(hv, vectors))
                converged = value is not None and abs(new - value) <= tol * (abs(value) + 1e-12)
                value = new
                progress.update()
                if converged:
                    break
            progress.update(max_iter - it)
            values.append(value)
            vectors.append(v)
            iterations.append(it)
    return HessianResult(values, [dict(zip(names, v)) for v in vectors], iterations)


@dataclass
class HessianTracker:
    """Top eigenvalue every `every` epochs during training (the paper's Figure A12).

    `maybe_measure(epoch, model)` measures when `epoch % every == 0` and keeps (epoch, value)
    in `history`; the model's train/eval modes are left as they were.
    """

    every: int
    batches: Sequence[Batch] = field(repr=False)
    mask: Mask | None = None
    loss_fn: LossFn = F.cross_entropy
    max_iter: int = 20
    tol: float = 1e-3
    seed: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")

    def maybe_measure(self, epoch: int, model: nn.Module) -> float | None:
        if epoch % self.every:
            return None
        value = top_hessian_eigenvalues(model, self.batches, mask=self.mask, loss_fn=self.loss_fn,
                                        max_iter=self.max_iter, tol=self.tol, seed=self.seed).eigenvalues[0]
        self.history.append((epoch, value))
        return value


class HessianObserver(Observer):
    """The top eigenvalue every `every` epochs of a spend, on its first `batches` training batches
    (unshuffled, so they are the same in every run), under the spend's mask. Recorded in the
    spend's result as `hessian`: {"every": N, "history": [[epoch, value], ...]}."""

    name = "hessian"

    def __init__(self, every: int, batches: int = 2, seed: int = 0):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.batches, self.seed = every, batches, seed
        self.history: list[tuple[int, float]] = []
        self.tracker: HessianTracker | None = None

    def on_train_start(self, loop: Loop) -> None:
        from lth_core.data import iterate_batches

        fixed = list(itertools.islice(iterate_batches(loop.dataset, "train", loop.batch_size), self.batches))
        self.tracker = HessianTracker(self.every, fixed, mask=loop.mask, seed=self.seed, history=self.history)

    def on_epoch_end(self, loop: Loop) -> None:
        self.tracker.maybe_measure(loop.epoch, loop.model)

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history[:] = [(int(e), float(v)) for e, v in state["history"]]

    def covers(self, recorded: dict[str, Any] | None) -> bool:
        return recorded is not None and recorded.get("every") == self.every
