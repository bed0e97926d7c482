"""The two batch steps `fit` repeats: training (forward, loss, backward) and evaluation (forward,
loss), each summing its loss and correct predictions on the device.

A trial at batch 128 is launch-bound on a large GPU: ResNet-18's step is hundreds of small
kernels, each launched from Python. With `Runtime.graphs`, a step of the recipe's batch size is
captured once as a CUDA graph (`torch.cuda.graph`) and replayed after that: the batch is copied
into static input tensors and one replay launches every kernel of the step. What a graph cannot
hold stays eager, around it:
  - the first `WARMUP` training steps (`EVAL_WARMUP` evaluation steps), on the stream the
    capture uses (lazy cuBLAS/cuDNN set-up must not happen during capture); they are ordinary
    training steps, so nothing is wasted;
  - a batch of another size (an epoch's last), with the same code as the graph's body;
  - the optimizer step and the mask re-apply (`fit` calls them after the step): a few fused
    `_foreach` kernels, so learning-rate schedules (SWALR too), checkpoints and `MaskApplier`
    work exactly as in eager training.
The backward pass inside the graph writes the gradients into the same tensors on every replay;
`TrainStep` keeps them as the parameters' `.grad` (a hook that replaced one is undone) and zeroes
them in place before an eager step, so the optimizer always reads the step it just ran.

On the CPU, `graphs` runs the same state machine without capture: a "replay" calls the body on
the static tensors. Tests use it to check the machinery without a GPU; results equal eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lth_core.hooks import LossFn

WARMUP = 3  # eager training steps before capture (the PyTorch CUDA-graph notes use 3)
EVAL_WARMUP = 1  # evaluation runs after training has set up every library handle

Body = Callable[[torch.Tensor, torch.Tensor], None]


class Replayable:
    """Runs `body(images, labels)`: on a batch of `batch_size` images eagerly for the first
    `warmup` calls, then captured (on CUDA) and replayed on static copies of each batch; on a batch
    of another size, or without `runtime.graphs`, eagerly."""

    def __init__(self, body: Body, batch_size: int, runtime, warmup: int):
        self.body = body
        self.batch_size = batch_size
        self.graphs = runtime.graphs  # the static-tensor path; with `runtime.capture`, a CUDA graph
        self.warmup = warmup
        self.calls = 0
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream() if runtime.capture else None

    @property
    def recorded(self) -> bool:
        return self.static is not None

    def fits(self, labels: torch.Tensor) -> bool:
        return self.graphs and len(labels) == self.batch_size

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.fits(labels):
            self.body(images, labels)
        elif self.recorded:
            self.replay(images, labels)
        elif self.calls < self.warmup:
            self.warm_up(images, labels)
        else:
            self.record(images, labels)
            self.replay(images, labels)

    def warm_up(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One eager call on the capture stream (plain eager on the CPU)."""
        self.calls += 1
        if self.stream is None:
            self.body(images, labels)
            return
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.body(images, labels)
        torch.cuda.current_stream().wait_stream(self.stream)

    def record(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Capture the body on static copies of this batch (it has not run yet: replay runs it)."""
        self.static = (images.clone(), labels.clone())
        if self.stream is not None:
            self.graph = torch.cuda.CUDAGraph()
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.body(*self.static)
            torch.cuda.current_stream().wait_stream(self.stream)

    def replay(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        static_images, static_labels = self.static
        static_images.copy_(images)
        static_labels.copy_(labels)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.body(static_images, static_labels)


class SummingStep:
    """A step over batches that sums their loss and correct predictions on the device (no sync
    per batch); `reset` starts a new pass."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, runtime):
        self.model = model
        self.loss_fn = loss_fn
        self.runtime = runtime
        self.loss_sum = torch.zeros((), device=runtime.device)
        self.correct = torch.zeros((), device=runtime.device, dtype=torch.long)
        self.seen = 0

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0


class TrainStep(SummingStep):
    """Forward, loss and backward of one training batch (the optimizer step is the caller's)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, runtime, batch_size: int):
        super().__init__(model, loss_fn, runtime)
        self.steps = Replayable(self._forward_backward, batch_size, runtime, WARMUP)
        self.grads: list[tuple[nn.Parameter, torch.Tensor]] = []  # the gradients the graph writes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        steps = self.steps
        if steps.recorded:
            for param, grad in self.grads:  # a hook that replaced one is undone
                if param.grad is not grad:
                    param.grad = grad
            if steps.graph is None or not steps.fits(labels):  # a graph's backward overwrites; eager adds
                self.model.zero_grad(set_to_none=False)
        else:
            self.model.zero_grad(set_to_none=True)  # a graph allocates its own gradients when recorded
        steps.run(images, labels)
        if steps.recorded and not self.grads:
            self.grads = [(p, p.grad) for p in self.model.parameters() if p.grad is not None]
        self.seen += len(labels)

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with self.runtime.autocast():
            logits = self.model(self.runtime.images(images))
            loss = self.loss_fn(logits, images, labels)
        loss.backward()
        self.loss_sum += loss.detach().float() * labels.numel()
        self.correct += (logits.detach().argmax(1) == labels).sum()


class EvalStep(SummingStep):
    """Forward and loss of one evaluation batch, in eval mode (the caller's) without gradients."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, runtime, batch_size: int):
        super().__init__(model, loss_fn, runtime)
        self.steps = Replayable(self._forward, batch_size, runtime, EVAL_WARMUP)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.steps.run(images, labels)
        self.seen += len(labels)

    def _forward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad(), self.runtime.autocast():
            logits = self.model(self.runtime.images(images))
            self.loss_sum += self.loss_fn(logits, images, labels).float() * labels.numel()
        self.correct += (logits.argmax(1) == labels).sum()
