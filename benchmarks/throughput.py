"""Images per second of the masked training step against a plain PyTorch loop.

Both loops train the same model on the same batches with the same optimizer,
precision and memory format; the masked one is the project's step (`Runtime`,
`MaskApplier` re-applying an 80%-sparse global magnitude mask after every optimizer step).
Repeats alternate between the two so drift hits both alike; the median counts.
The last line is the ratio masked / plain (target >= 0.97).

    .venv/bin/python benchmarks/throughput.py                       # CPU, narrow ResNet-18, 32x32
    .venv/bin/python benchmarks/throughput.py --device cuda --width 1 --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lth_core.config import ModelConfig, RecipeConfig  # noqa: E402
from lth_core.inputs import (InputError, Parser, check_device, refuse, require_at_least,  # noqa: E402
                             require_positive, require_sparsity)
from lth_core.masks import Mask, MaskApplier  # noqa: E402
from lth_core.models import ARCHS, build_model  # noqa: E402
from lth_core.pruning import prune_to_sparsity  # noqa: E402
from lth_core.training import Runtime  # noqa: E402


def make_step(model, optimizer, runtime: Runtime, applier: MaskApplier | None):
    def step(images, labels):
        with runtime.autocast():
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if applier is not None:
            applier.apply_()
    return step


def images_per_second(step, batches, runtime: Runtime) -> float:
    runtime.synchronize()
    started = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
    runtime.synchronize()
    return sum(len(y) for _, y in batches) / (time.perf_counter() - started)


def check_args(args: argparse.Namespace) -> None:
    """Every argument, before any model is built: InputError naming the flag."""
    if args.arch not in ARCHS:
        raise InputError(f"--arch {args.arch!r} is not an architecture; pass one of {', '.join(ARCHS)}")
    require_positive("--width", args.width)
    require_at_least("--image-size", args.image_size, 1)
    require_at_least("--batch-size", args.batch_size, 2, "train-mode BatchNorm needs two images")
    require_at_least("--steps", args.steps, 1)
    require_at_least("--repeats", args.repeats, 1)
    require_sparsity("--sparsity", args.sparsity)
    check_device(RecipeConfig(device=args.device))


def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()
    try:
        check_args(args)
    except InputError as e:
        return refuse(e)

    runtime = Runtime.resolve(RecipeConfig(device=args.device))
    torch.manual_seed(0)
    models, steps = {}, {}
    for name in ("plain", "masked"):
        torch.manual_seed(0)
        model = runtime.prepare(build_model(ModelConfig(arch=args.arch, width=args.width), in_channels=3,
                                            num_classes=10, image_size=args.image_size))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        applier = None
        if name == "masked":
            weights = {n: p.detach() for n, p in model.named_parameters()}
            mask = prune_to_sparsity(weights, Mask.ones_like(model), args.sparsity)
            applier = MaskApplier(model, mask)
            applier.apply_()
        models[name], steps[name] = model, make_step(model, optimizer, runtime, applier)

    generator = torch.Generator().manual_seed(0)
    batches = [(runtime.images(torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                                           generator=generator).to(runtime.device)),
                torch.randint(0, 10, (args.batch_size,), generator=generator).to(runtime.device))
               for _ in range(args.steps)]
    for name in steps:  # warm-up: kernels, allocator, autocast caches
        images_per_second(steps[name], batches[:3], runtime)

    rates: dict[str, list[float]] = {"plain": [], "masked": []}
    for repeat in range(args.repeats):
        for name in (("plain", "masked") if repeat % 2 == 0 else ("masked", "plain")):
            rates[name].append(images_per_second(steps[name], batches, runtime))
    plain, masked = statistics.median(rates["plain"]), statistics.median(rates["masked"])
    print(f"device {runtime.device} ({torch.cuda.get_device_name() if runtime.device.type == 'cuda' else 'cpu'}), "
          f"{args.arch} x{args.width:g}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"bf16={runtime.bf16}, channels_last={runtime.channels_last}, threads={torch.get_num_threads()}")
    print(f"plain  loop: {plain:10.1f} img/s  (repeats: {', '.join(f'{r:.0f}' for r in rates['plain'])})")
    print(f"masked step: {masked:10.1f} img/s  (repeats: {', '.join(f'{r:.0f}' for r in rates['masked'])})")
    print(f"masked / plain = {masked / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
