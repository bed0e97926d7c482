"""What a sweep's trial costs on one GPU: the figures `--gpus-per-trial` and the per-epoch overhead
budget are set from.

Through the project's own `fit` (bf16 autocast and channels_last as the recipe resolves them):
  1. epoch seconds of ResNet-18 on CIFAR-100-shaped data, dense and 89% sparse, with peak memory;
  2. the share of each epoch spent on evaluation, checkpointing (building and serialising the
     payload) and reporting (writing the state file and copying it, as `tune.report` does);
  3. aggregate images/s of K = 1, 2, 4, 8 training processes sharing the device, as ratios to K = 1;
  4. torch.compile against eager.
Without `--data-root`, random images are written in the official CIFAR-100 python format, so the
real reader runs. Each part is guarded: one that fails prints its error and the rest still run.
Needs PyTorch, numpy and PyYAML, with the repository root on PYTHONPATH (or run from it).

    python benchmarks/gpu.py                          # one GPU, under 8 minutes
    python benchmarks/gpu.py --device cpu --tiny      # the same steps in seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
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

from benchmarks.synthetic import write_cifar100  # noqa: E402
from lth_core.config import DataConfig, ModelConfig, RecipeConfig  # noqa: E402
from lth_core.data import Dataset, load_dataset  # noqa: E402
from lth_core.hooks import Loop, TrainHook  # noqa: E402
from lth_core.inputs import InputError, Parser, check_data, check_device, refuse  # noqa: E402
from lth_core.masks import Mask  # noqa: E402
from lth_core.models import build_model  # noqa: E402
from lth_core.pruning import prune_to_sparsity  # noqa: E402
from lth_core.training import EpochRecord, Payload, Runtime, fit  # noqa: E402

SPARSITY = 0.89


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run: the full one for a GPU, a tiny one for a CPU smoke test."""

    train: int  # official training images (val is 10% of them)
    test: int
    width: float
    batch_size: int
    epochs: int  # per timed trial; the first is a warm-up
    pack_train: int  # training images per process in the packing measurement
    ks: tuple[int, ...]


FULL = Scale(train=50_000, test=10_000, width=1.0, batch_size=128, epochs=3, pack_train=10_000, ks=(1, 2, 4, 8))
TINY = Scale(train=200, test=50, width=0.125, batch_size=32, epochs=2, pack_train=96, ks=(1, 2))


class Timer(TrainHook):
    """Per epoch: seconds of the training step (first batch to scheduler step) and of evaluation
    (to the `on_epoch` call, which fit makes right after evaluating)."""

    name = "timer"

    def __init__(self) -> None:
        self.step: list[float] = []
        self.evaluation: list[float] = []
        self._mark = 0.0

    def on_epoch_start(self, loop: Loop) -> None:
        loop.runtime.synchronize()
        self._mark = time.perf_counter()

    def on_epoch_end(self, loop: Loop) -> None:
        loop.runtime.synchronize()
        now = time.perf_counter()
        self.step.append(now - self._mark)
        self._mark = now

    def evaluated(self) -> None:
        self.evaluation.append(time.perf_counter() - self._mark)


def guarded(title: str, body: Callable[[], None]) -> None:
    """Run one part; an error is printed under its title and the next part runs."""
    try:
        body()
    except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
        print(f"{title}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        traceback.print_exc(file=sys.stderr)


def peak_memory(runtime: Runtime) -> str:
    """CUDA memory allocated at most on a GPU; the process's largest resident size on the CPU."""
    if runtime.device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(runtime.device) / 2**30:.2f} GiB (CUDA allocated)"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)"


def new_model(scale: Scale, dataset: Dataset, runtime: Runtime, sparsity: float) -> tuple[torch.nn.Module, Mask | None]:
    torch.manual_seed(0)
    model = runtime.prepare(build_model(ModelConfig(width=scale.width), in_channels=dataset.in_channels,
                                        num_classes=dataset.num_classes, image_size=dataset.image_size))
    if not sparsity:
        return model, None
    weights = {n: p.detach() for n, p in model.named_parameters()}
    mask = prune_to_sparsity(weights, Mask.ones_like(model), sparsity)
    return model, mask


def recipe_for(scale: Scale, device: str, epochs: int) -> RecipeConfig:
    return RecipeConfig(epochs=epochs, batch_size=scale.batch_size, device=device, checkpoint_seconds=0)


def epoch_costs(scale: Scale, dataset: Dataset, device: str, sparsity: float, folder: Path) -> None:
    """Part 1 and 2: one trial through `fit`, with every epoch's checkpoint serialised and reported."""
    recipe = recipe_for(scale, device, scale.epochs)
    runtime = Runtime.resolve(recipe)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    model, mask = new_model(scale, dataset, runtime, sparsity)
    timer = Timer()
    costs: dict[str, list[float]] = {"checkpoint": [], "report": [], "epoch": []}
    last = [time.perf_counter()]

    def on_epoch(record: EpochRecord, payload: Payload) -> None:
        timer.evaluated()
        started = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(payload(), buffer)
        saved = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # what report_epoch and Tune do with it
            (Path(tmp) / "state.pt").write_bytes(buffer.getbuffer())
            shutil.copytree(tmp, folder / f"checkpoint_{record.epoch:06d}")
        with (folder / "metrics.jsonl").open("a") as log:
            log.write(json.dumps(dataclasses.asdict(record)) + "\n")
        now = time.perf_counter()
        costs["checkpoint"].append(saved - started)
        costs["report"].append(now - saved)
        costs["epoch"].append(now - last[0])
        last[0] = now

    fit(model, dataset, recipe, seed=0, runtime=runtime, mask=mask, on_epoch=on_epoch, hooks=[timer])
    label = "dense" if not sparsity else f"{sparsity:.0%} sparse"
    timed = slice(1, None) if len(costs["epoch"]) > 1 else slice(None)  # the first epoch warms up
    epoch = _mean(costs["epoch"][timed])
    print(f"epoch seconds {label}: {epoch:.3f} (training step {_mean(timer.step[timed]):.3f}; "
          f"{len(dataset.train_y)} train, {len(dataset.val_y)} val, {len(dataset.test_y)} test images; "
          f"bf16={runtime.bf16}, channels_last={runtime.channels_last})")
    shares = {"evaluation": _mean(timer.evaluation[timed]), "checkpointing": _mean(costs["checkpoint"][timed]),
              "reporting": _mean(costs["report"][timed])}
    print(f"share of epoch {label}: " + ", ".join(f"{k} {v / epoch:.3f}" for k, v in shares.items())
          + f"; outside the training step {1 - _mean(timer.step[timed]) / epoch:.3f} "
          "(checkpointing and reporting every epoch; the default cadence is one per 60 s)")
    print(f"peak memory {label}: {peak_memory(runtime)}")


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def compile_ratio(scale: Scale, dataset: Dataset, device: str, backend: str) -> None:
    """Part 4: training-step seconds of the dense model, compiled against eager (warm-up epoch excluded)."""
    seconds = {}
    for name in ("eager", "compiled"):
        recipe = recipe_for(scale, device, scale.epochs)
        runtime = Runtime.resolve(recipe)
        model, _ = new_model(scale, dataset, runtime, 0.0)
        if name == "compiled":
            model = torch.compile(model, backend=backend)
        timer = Timer()
        started = time.perf_counter()
        fit(model, dataset, recipe, seed=0, runtime=runtime, hooks=[timer])
        seconds[name] = _mean(timer.step[1:] or timer.step)
        print(f"compile {name}: training step {seconds[name]:.3f} s per epoch "
              f"(trial {time.perf_counter() - started:.1f} s, backend {backend if name == 'compiled' else '-'})")
    print(f"compile speed-up (eager / compiled) = {seconds['eager'] / seconds['compiled']:.3f}")


class Barrier(TrainHook):
    """Worker side of the packing measurement: after the warm-up epoch, wait until every worker is
    ready, then time the next epoch's training step in wall-clock time (comparable across processes)."""

    name = "barrier"

    def __init__(self, folder: Path, index: int, k: int):
        self.folder, self.index, self.k = folder, index, k
        self.window = (0.0, 0.0)

    def on_epoch_start(self, loop: Loop) -> None:
        if loop.epoch == 2:
            (self.folder / f"ready-{self.index}").touch()
            deadline = time.time() + 300
            while len(list(self.folder.glob("ready-*"))) < self.k and time.time() < deadline:
                time.sleep(0.01)
            loop.runtime.synchronize()
            self.window = (time.time(), 0.0)

    def on_epoch_end(self, loop: Loop) -> None:
        if loop.epoch == 2:
            loop.runtime.synchronize()
            self.window = (self.window[0], time.time())


def worker(args: argparse.Namespace, scale: Scale) -> None:
    """One packed process: two epochs of a dense trial on a slice of the data; prints a JSON line."""
    dataset = load_dataset(DataConfig(name="cifar100", root=args.data_root))
    n = scale.pack_train
    dataset = dataclasses.replace(dataset, train_x=dataset.train_x[:n], train_y=dataset.train_y[:n],
                                  val_x=dataset.val_x[:n // 10], val_y=dataset.val_y[:n // 10],
                                  test_x=dataset.test_x[:n // 10], test_y=dataset.test_y[:n // 10])
    recipe = recipe_for(scale, args.device, 2)
    runtime = Runtime.resolve(recipe)
    dataset = dataset.to(runtime.device)
    model, _ = new_model(scale, dataset, runtime, 0.0)
    barrier = Barrier(Path(args.worker_dir), args.worker_index, args.worker_k)
    fit(model, dataset, recipe, seed=args.worker_index, runtime=runtime, hooks=[barrier])
    print(json.dumps({"images": n, "start": barrier.window[0], "end": barrier.window[1],
                      "peak": peak_memory(runtime)}))


def packing(args: argparse.Namespace, scale: Scale, folder: Path) -> None:
    """Part 3: K processes at once, each timing one epoch after a shared start; aggregate images/s."""
    base = None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for k in scale.ks:
        run_dir = folder / f"pack-{k}"
        run_dir.mkdir()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--device", args.device,
                                   "--data-root", args.data_root, "--worker-dir", str(run_dir),
                                   "--worker-index", str(i), "--worker-k", str(k)]
                                  + (["--tiny"] if args.tiny else []),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for i in range(k)]
        outs = [p.communicate(timeout=600) for p in procs]
        failed = [err.strip().splitlines()[-1] for p, (_, err) in zip(procs, outs) if p.returncode]
        if failed:
            raise RuntimeError(f"K={k}: {len(failed)} worker(s) failed: {failed[0]}")
        results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
        window = max(r["end"] for r in results) - min(r["start"] for r in results)
        rate = sum(r["images"] for r in results) / window
        base = base or rate
        peak = max(results, key=lambda r: float(r["peak"].split()[0]))["peak"]
        print(f"packing K={k}: {rate:.1f} images/s aggregate, ratio to K=1 = {rate / base:.3f}, "
              f"peak memory per trial {peak}")


def check_args(args: argparse.Namespace) -> None:
    """The device, the data files given with --data-root and the compile backend, before anything
    is written or timed: InputError naming the flag."""
    check_device(RecipeConfig(device=args.device))
    if args.data_root is not None:
        if not Path(args.data_root).expanduser().is_dir():
            raise InputError(f"--data-root {args.data_root} is not a folder; pass the folder holding "
                             "cifar-100-python/, or leave --data-root out for synthetic files")
        check_data(DataConfig(name="cifar100", root=args.data_root))
    if args.compile_backend is not None:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.compile_backend not in backends:
            raise InputError(f"--compile-backend {args.compile_backend!r} is not a torch.compile backend; pass one "
                             f"of {', '.join(backends)}")


def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--data-root", help="a folder holding cifar-100-python/ (default: synthetic files)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default: inductor; eager with --tiny)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-k", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = TINY if args.tiny else FULL
    if args.worker:  # started by `packing` with arguments already checked
        worker(args, scale)
        return 0
    try:
        check_args(args)
    except InputError as e:
        return refuse(e)

    started = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, resnet18 x{scale.width:g}, "
          f"batch {scale.batch_size}, threads={torch.get_num_threads()}")
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
            for sparsity in (0.0, SPARSITY):
                out = folder / f"trial-{sparsity}"
                out.mkdir()
                guarded(f"epoch seconds {sparsity:.0%}",
                        lambda s=sparsity, o=out: epoch_costs(scale, datasets["main"], args.device, s, o))
            backend = args.compile_backend or ("eager" if args.tiny else "inductor")
            guarded("compile", lambda: compile_ratio(scale, datasets["main"], args.device, backend))
        guarded("packing", lambda: packing(args, scale, folder))
    print(f"total seconds: {time.perf_counter() - started:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
