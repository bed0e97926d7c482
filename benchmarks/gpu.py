"""What a sweep's trial costs on one GPU, eager against CUDA graphs against fused trials: the
figures `recipe.graphs`, `--gpus-per-trial` and the per-epoch overhead budget are set from.

Every number goes through the project's own `fit` (data pipeline, bf16 autocast, channels_last,
mask re-applied after every step), on ResNet-18 with CIFAR-100-shaped images:
  1. epochs: epoch and training-step seconds, dense and 89% sparse, eager and graphed, with
     peak memory; the masked/plain step ratio under each;
  2. agreement: test accuracy on digits for fixed seeds, eager against graphed, beside an eager
     rerun (the noise floor of nondeterministic GPU kernels);
  3. fused: K = 2, 4, 8 sparse trials fused into one model (`benchmarks/fusion.py`), graphed;
  4. packing: K = 1, 2, 4, 8 processes sharing the GPU, eager and graphed, timed over one
     common window: every process warms up (an epoch, so graphs are captured), waits at a
     barrier, then all count the images they train in the same `--window` seconds;
and a final table: images/s, ratio to one eager trial, share of the FLOP floor, trials per
GPU-hour for the paper preset's spend recipe (180 epochs of 45k images), peak memory per trial.
Without `--data-root`, random images are written in the official CIFAR-100 python format, so
the real reader runs. Each part is guarded: one that fails prints its error and the rest run.
Needs PyTorch, numpy and scikit-learn, with the repository root on PYTHONPATH (or run from it).

    python benchmarks/gpu.py                          # one GPU, about 6 minutes
    python benchmarks/gpu.py --device cpu --tiny      # the same steps in seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fusion import fuse, fuse_masks, fused_cross_entropy  # noqa: E402
from benchmarks.synthetic import write_cifar100  # noqa: E402
from lth_core.config import DataConfig, ModelConfig, RecipeConfig  # noqa: E402
from lth_core.data import Dataset, load_dataset  # noqa: E402
from lth_core.hooks import Loop, TrainHook, cross_entropy_loss  # noqa: E402
from lth_core.inputs import InputError, Parser, check_data, check_device, refuse  # noqa: E402
from lth_core.masks import Mask  # noqa: E402
from lth_core.models import build_model  # noqa: E402
from lth_core.pruning import prune_to_sparsity  # noqa: E402
from lth_core.training import Runtime, fit  # noqa: E402

SPARSITY = 0.89
FLOP_FLOOR = 237_000  # images/s: 3.33 GFLOP per training image at 790 TFLOP/s (docs/benchmarks.md)
PAPER_SPEND_IMAGES = 180 * 45_000  # the paper preset's spend: 180 epochs of 45k training images
MODES = {"eager": "off", "graphs": "on"}
PARTS = ("epochs", "agreement", "fused", "packing")


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run: the full one for a GPU, a tiny one for a CPU smoke test."""

    train: int  # official training images (val is 10% of them)
    test: int
    width: float
    batch_size: int
    epochs: int  # per timed trial; the first is a warm-up
    pack_train: int  # official training images per process when packing and fusing
    ks: tuple[int, ...]
    window: float  # seconds of the common packing window
    agreement_epochs: int
    agreement_width: float
    agreement_seeds: int


FULL = Scale(train=50_000, test=10_000, width=1.0, batch_size=128, epochs=3, pack_train=20_000, ks=(1, 2, 4, 8),
             window=10.0, agreement_epochs=10, agreement_width=0.25, agreement_seeds=3)
TINY = Scale(train=600, test=100, width=0.125, batch_size=32, epochs=2, pack_train=400, ks=(1, 2), window=1.0,
             agreement_epochs=1, agreement_width=0.0625, agreement_seeds=1)


@dataclasses.dataclass
class Row:
    """One line of the final table."""

    layout: str
    trials: int
    images_per_second: float
    peak: str


ROWS: list[Row] = []


class Timer(TrainHook):
    """Per epoch: seconds of the training step (first batch to the epoch's last optimizer step)."""

    name = "timer"

    def __init__(self) -> None:
        self.step: list[float] = []
        self._mark = 0.0

    def on_epoch_start(self, loop: Loop) -> None:
        loop.runtime.synchronize()
        self._mark = time.perf_counter()

    def on_epoch_end(self, loop: Loop) -> None:
        loop.runtime.synchronize()
        self.step.append(time.perf_counter() - self._mark)


def guarded(title: str, body: Callable[[], None]) -> None:
    """Run one part; an error is printed under its title and the next part runs."""
    try:
        body()
    except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
        print(f"{title}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
        traceback.print_exc(file=sys.stderr)


def peak_memory(runtime: Runtime) -> str:
    """CUDA memory allocated at most on a GPU; the process's largest resident size on the CPU."""
    if runtime.device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(runtime.device) / 2**30:.2f} GiB"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def recipe_for(scale: Scale, device: str, epochs: int, mode: str) -> RecipeConfig:
    return RecipeConfig(epochs=epochs, batch_size=scale.batch_size, device=device, graphs=MODES[mode],
                        checkpoint_seconds=0)


def new_model(scale: Scale, dataset: Dataset, runtime: Runtime, sparsity: float, seed: int = 0
              ) -> tuple[torch.nn.Module, Mask | None]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=scale.width), in_channels=dataset.in_channels,
                        num_classes=dataset.num_classes, image_size=dataset.image_size)
    if not sparsity:
        return runtime.prepare(model), None
    weights = {n: p.detach() for n, p in model.named_parameters()}
    return runtime.prepare(model), prune_to_sparsity(weights, Mask.ones_like(model), sparsity)


def fused_model(scale: Scale, dataset: Dataset, runtime: Runtime, k: int) -> tuple[torch.nn.Module, Mask]:
    """K sparse members with their own initialisations and masks, fused."""
    members = [new_model(scale, dataset, Runtime(torch.device("cpu"), False, False), SPARSITY, seed=i)
               for i in range(k)]
    return runtime.prepare(fuse([m for m, _ in members])), fuse_masks([mask for _, mask in members])


def sliced(dataset: Dataset, n: int) -> Dataset:
    return dataclasses.replace(dataset, train_x=dataset.train_x[:n], train_y=dataset.train_y[:n],
                               val_x=dataset.val_x[:n // 10], val_y=dataset.val_y[:n // 10],
                               test_x=dataset.test_x[:n // 5], test_y=dataset.test_y[:n // 5])


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def epochs(scale: Scale, dataset: Dataset, device: str) -> None:
    """Part 1: one trial through `fit`, eager and graphed, dense and sparse."""
    steps: dict[tuple[str, float], float] = {}
    for mode in MODES:
        for sparsity in (0.0, SPARSITY):
            recipe = recipe_for(scale, device, scale.epochs, mode)
            runtime = Runtime.resolve(recipe)
            if runtime.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(runtime.device)
            model, mask = new_model(scale, dataset, runtime, sparsity)
            timer = Timer()
            result = fit(model, dataset, recipe, seed=0, runtime=runtime, mask=mask, hooks=[timer])
            timed = slice(1, None)  # the first epoch warms up (and captures the graphs)
            epoch = _mean([r.seconds for r in result.history[timed]])
            step = steps[mode, sparsity] = _mean(timer.step[timed])
            n = len(dataset.train_y)
            label = "dense" if not sparsity else f"{sparsity:.0%} sparse"
            print(f"{mode} {label}: epoch {epoch:.3f} s ({n / epoch:,.0f} images/s), training step {step:.3f} s "
                  f"({n / step:,.0f} images/s), evaluation share {1 - step / epoch:.3f}, peak memory "
                  f"{peak_memory(runtime)}; bf16={runtime.bf16}, channels_last={runtime.channels_last}",
                  flush=True)
            if sparsity:
                ROWS.append(Row(f"one trial, {mode}", 1, n / epoch, peak_memory(runtime)))
        print(f"{mode}: masked/plain step ratio = {steps[mode, 0.0] / steps[mode, SPARSITY]:.3f}", flush=True)
    if ("graphs", SPARSITY) in steps and ("eager", SPARSITY) in steps:
        print(f"graphs/eager training-step speed-up = {steps['eager', SPARSITY] / steps['graphs', SPARSITY]:.3f}")


def agreement(scale: Scale, device: str) -> None:
    """Part 2: the same seeds eager and graphed on real (digits) data, beside an eager rerun."""
    dataset = load_dataset(DataConfig(name="digits"))
    results: dict[str, list[float]] = {}
    for run in ("eager", "graphs", "eager again"):
        mode = run.split()[0]
        recipe = RecipeConfig(epochs=scale.agreement_epochs, batch_size=32, device=device, graphs=MODES[mode])
        runtime = Runtime.resolve(recipe)
        data = dataset.to(runtime.device)
        results[run] = []
        for seed in range(scale.agreement_seeds):
            narrow = dataclasses.replace(scale, width=scale.agreement_width)
            model, mask = new_model(narrow, data, runtime, SPARSITY, seed=seed)
            history = fit(model, data, recipe, seed=seed, runtime=runtime, mask=mask).history
            results[run].append(history[-1].test_acc)
        print(f"agreement {run}: final test accuracy per seed " + ", ".join(f"{a:.4f}" for a in results[run]),
              flush=True)
    for other in ("graphs", "eager again"):
        gaps = [abs(a - b) for a, b in zip(results["eager"], results[other], strict=True)]
        print(f"agreement |eager - {other}|: max {max(gaps):.4f}, mean {_mean(gaps):.4f}", flush=True)


def fused(scale: Scale, dataset: Dataset, device: str) -> None:
    """Part 3: K sparse trials fused into one graphed model, against one graphed trial."""
    data = sliced(dataset, scale.pack_train)
    n = len(data.train_y)
    base = None
    for k in scale.ks:
        recipe = recipe_for(scale, device, scale.epochs, "graphs")
        runtime = Runtime.resolve(recipe)
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(runtime.device)
        if k == 1:
            model, mask = new_model(scale, data, runtime, SPARSITY)
            loss = cross_entropy_loss
        else:
            model, mask = fused_model(scale, data, runtime, k)
            loss = fused_cross_entropy(k)
        result = fit(model, data, recipe, seed=0, runtime=runtime, mask=mask, loss_fn=loss)
        rate = k * n / _mean([r.seconds for r in result.history[1:]])
        base = base or rate
        print(f"fused K={k}: {rate:,.0f} images/s over all members, ratio to one graphed trial = {rate / base:.3f}, "
              f"peak memory {peak_memory(runtime)}", flush=True)
        if k > 1:
            ROWS.append(Row(f"{k} trials fused, graphs", k, rate, peak_memory(runtime)))


class Window(TrainHook):
    """Worker side of the packing measurement: after the first epoch (warm: graphs captured),
    wait at a barrier for the common start, then count the images trained until its end,
    synchronising every `every` steps so a count is of finished work (the chunk that spans
    the end counts in proportion to its time inside the window)."""

    name = "window"

    def __init__(self, folder: Path, index: int, seconds: float, every: int = 10):
        self.folder, self.index, self.seconds, self.every = folder, index, seconds, every
        self.start = self.end = self._synced = 0.0
        self.counted = 0.0
        self._pending = 0

    def on_epoch_start(self, loop: Loop) -> None:
        if loop.epoch == 2:
            loop.runtime.synchronize()
            (self.folder / f"ready-{self.index}").touch()
            go = self.folder / "go"
            while not go.exists():
                time.sleep(0.005)
            self.start = float(go.read_text())
            self.end = self.start + self.seconds
            while time.time() < self.start:
                time.sleep(0.001)
            self._synced = time.time()

    def on_step_end(self, loop: Loop) -> None:
        if not self.start:
            return
        self._pending += loop.batch_size
        if self._pending >= self.every * loop.batch_size:
            loop.runtime.synchronize()
            now = time.time()
            inside = min(1.0, (self.end - self._synced) / (now - self._synced))
            self.counted += self._pending * inside
            self._pending, self._synced = 0, now
            if now >= self.end:
                raise WindowClosed


class WindowClosed(Exception):
    pass


def worker(args: argparse.Namespace, scale: Scale) -> None:
    """One packed process: a sparse trial on a slice of the data; prints a JSON line."""
    recipe = recipe_for(scale, args.device, 1000, args.worker_mode)
    runtime = Runtime.resolve(recipe)
    dataset = sliced(load_dataset(DataConfig(name="cifar100", root=args.data_root)), scale.pack_train)
    dataset = dataset.to(runtime.device)
    model, mask = new_model(scale, dataset, runtime, SPARSITY, seed=args.worker_index)
    window = Window(Path(args.worker_dir), args.worker_index, scale.window)
    try:
        fit(model, dataset, recipe, seed=args.worker_index, runtime=runtime, mask=mask, hooks=[window])
    except WindowClosed:
        pass
    print(json.dumps({"images": window.counted, "peak": peak_memory(runtime)}))


def packing(args: argparse.Namespace, scale: Scale, folder: Path) -> None:
    """Part 4: K processes at once over one common window; aggregate images/s."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for mode in MODES:
        base = None
        for k in scale.ks:
            run_dir = folder / f"pack-{mode}-{k}"
            run_dir.mkdir()
            procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--device", args.device,
                                       "--data-root", args.data_root, "--worker-dir", str(run_dir),
                                       "--worker-index", str(i), "--worker-mode", mode]
                                      + (["--tiny"] if args.tiny else []),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for i in range(k)]
            deadline = time.time() + 300
            while len(list(run_dir.glob("ready-*"))) < k and time.time() < deadline:
                if any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.05)
            (run_dir / "go").write_text(str(time.time() + 0.5))
            outs = [p.communicate(timeout=600) for p in procs]
            failed = [err.strip().splitlines()[-1] for p, (_, err) in zip(procs, outs) if p.returncode]
            if failed:
                raise RuntimeError(f"{mode} K={k}: {len(failed)} worker(s) failed: {failed[0]}")
            results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
            rate = sum(r["images"] for r in results) / scale.window
            base = base or rate
            peak = max((r["peak"] for r in results), key=lambda p: float(p.split()[0]))
            print(f"packing {mode} K={k}: {rate:,.0f} images/s over a common {scale.window:g} s window, "
                  f"ratio to K=1 = {rate / base:.3f}, peak memory per trial {peak}", flush=True)
            ROWS.append(Row(f"{k} processes, {mode}", k, rate, peak))


def table() -> None:
    """The final table, against one eager trial."""
    eager = next((r.images_per_second for r in ROWS if r.layout == "one trial, eager"), None)
    print("\n| layout | trials | images/s | x one eager trial | share of FLOP floor | trials per GPU-hour "
          "(paper spend) | peak memory per trial |")
    print("|---|---|---|---|---|---|---|")
    for r in ROWS:
        ratio = f"{r.images_per_second / eager:.2f}" if eager else "-"
        print(f"| {r.layout} | {r.trials} | {r.images_per_second:,.0f} | {ratio} | "
              f"{r.images_per_second / FLOP_FLOOR:.1%} | {r.images_per_second * 3600 / PAPER_SPEND_IMAGES:.2f} | "
              f"{r.peak} |")


def check_args(args: argparse.Namespace) -> None:
    """The parts, the device and the data files given with --data-root, before anything is
    written or timed: InputError naming the flag."""
    if unknown := set(args.parts.split(",")) - set(PARTS):
        raise InputError(f"--parts: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    check_device(RecipeConfig(device=args.device))
    if args.data_root is not None:
        if not Path(args.data_root).expanduser().is_dir():
            raise InputError(f"--data-root {args.data_root} is not a folder; pass the folder holding "
                             "cifar-100-python/, or leave --data-root out for synthetic files")
        check_data(DataConfig(name="cifar100", root=args.data_root))


def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--data-root", help="a folder holding cifar-100-python/ (default: synthetic files)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated parts to run (default: all)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-mode", default="eager", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = TINY if args.tiny else FULL
    if args.worker:  # started by `packing` with arguments already checked
        worker(args, scale)
        return 0
    try:
        check_args(args)
    except InputError as e:
        return refuse(e)

    parts = set(args.parts.split(","))
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, resnet18 x{scale.width:g}, "
          f"batch {scale.batch_size}, {SPARSITY:.0%} sparse, threads={torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.data_root is None:
            args.data_root = str(write_cifar100(folder / "data", n_train=scale.train, n_test=scale.test))
            print(f"data: synthetic CIFAR-100 files, {scale.train} train and {scale.test} test images")
        datasets: dict[str, Dataset] = {}

        def load() -> None:
            runtime = Runtime.resolve(RecipeConfig(device=args.device))
            datasets["main"] = load_dataset(DataConfig(name="cifar100", root=args.data_root)).to(runtime.device)

        guarded("data", load)
        if "main" in datasets:
            if "epochs" in parts:
                guarded("epochs", lambda: epochs(scale, datasets["main"], args.device))
            if "fused" in parts:
                guarded("fused", lambda: fused(scale, datasets["main"], args.device))
        if "agreement" in parts:
            guarded("agreement", lambda: agreement(scale, args.device))
        if "packing" in parts:
            guarded("packing", lambda: packing(args, scale, folder))
    table()
    print(f"total seconds: {time.perf_counter() - started:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
