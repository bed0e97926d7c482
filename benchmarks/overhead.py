"""Share of epoch time spent outside the training step, in a real spend on the CPU.

A narrow ResNet-18 is spent on synthetic CIFAR-100 files (read by the project's reader) with the
official proportions scaled down (train : val : test = 45 : 5 : 10), through `lth_core.lottery`
with checkpoints persisted to a local store, as the CLI does. An observer times each epoch's
training step (first batch to scheduler step); the rest of the epoch is evaluation, the
checkpoint and the per-epoch report. The last line is that share (the issue's goal at the
paper's scale: at most 0.05).

    .venv/bin/python benchmarks/overhead.py
    .venv/bin/python benchmarks/overhead.py --train 450 --epochs 2     # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic import write_cifar100  # noqa: E402
from lth_core.config import (DataConfig, ModelConfig, PruneConfig, RecipeConfig, SpendConfig,  # noqa: E402
                             TicketConfig)
from lth_core.hooks import Loop, Observer  # noqa: E402
from lth_core.inputs import InputError, Parser, refuse, require_at_least, require_positive  # noqa: E402
from lth_core.lottery import prepare_spend, train_spend  # noqa: E402
from lth_core.store import ArtifactStore  # noqa: E402


class EpochTimer(Observer):
    """Wall seconds of each epoch's training step, and of each whole epoch (to the next one's start)."""

    name = "epoch_timer"

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.epoch_seconds: list[float] = []
        self._epoch_started = self._step_started = 0.0

    def on_epoch_start(self, loop: Loop) -> None:
        now = time.perf_counter()
        if self._epoch_started:
            self.epoch_seconds.append(now - self._epoch_started)
        self._epoch_started = self._step_started = now

    def on_epoch_end(self, loop: Loop) -> None:
        loop.runtime.synchronize()
        self.step_seconds.append(time.perf_counter() - self._step_started)

    def on_train_end(self, loop: Loop) -> bool:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        return False


def check_args(args: argparse.Namespace) -> None:
    """Every argument, before any file is written: InputError naming the flag."""
    require_positive("--width", args.width)
    require_at_least("--train", args.train, 100, "one image per CIFAR-100 class")
    require_at_least("--epochs", args.epochs, 1)
    require_at_least("--batch-size", args.batch_size, 2, "train-mode BatchNorm needs two images")


def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--train", type=int, default=2700, help="training images (val and test follow 45:5:10)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--graphs", default="auto", choices=["auto", "on", "off"], help="recipe.graphs of the spend")
    args = parser.parse_args()
    try:
        check_args(args)
    except InputError as e:
        return refuse(e)

    with tempfile.TemporaryDirectory() as tmp:
        n_dev = round(args.train * 50 / 45)
        root = write_cifar100(Path(tmp) / "data", n_train=n_dev, n_test=round(args.train * 10 / 45))
        data = DataConfig(name="cifar100", root=str(root))
        ticket = TicketConfig(data=data, model=ModelConfig(width=args.width),
                              recipe=RecipeConfig(epochs=1, batch_size=args.batch_size, device=args.device),
                              pruning=PruneConfig(method="omp", sparsities=(0.89,)))
        spend_cfg = SpendConfig(ticket=ticket, level=1,
                                recipe=RecipeConfig(epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                                                    graphs=args.graphs))
        store = ArtifactStore(str(Path(tmp) / "store"))
        run = prepare_spend(spend_cfg, store)  # draws the ticket (one dense epoch, one level) first
        timer = EpochTimer()
        log = (Path(tmp) / "epochs.jsonl").open("w")

        def report(stage: str, record) -> None:
            if stage.startswith("spend"):
                log.write(json.dumps({"stage": stage, **vars(record)}) + "\n")
                log.flush()

        train_spend(run, on_stage_epoch=report, observers=[timer])
        log.close()

    step, total = sum(timer.step_seconds), sum(timer.epoch_seconds)
    print(f"{args.device} (graphs {args.graphs}), resnet18 x{args.width:g} at 89% sparsity, "
          f"synthetic CIFAR-100 {args.train}:{n_dev - args.train}:"
          f"{round(args.train * 10 / 45)} images, batch {args.batch_size}, {args.epochs} epochs, "
          f"threads={torch.get_num_threads()}")
    print(f"epoch seconds: {total / len(timer.epoch_seconds):.3f}  (training step {step / len(timer.step_seconds):.3f})")
    print(f"outside the training step (evaluation, checkpoint, report) = {1 - step / total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
