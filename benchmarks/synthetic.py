"""Random CIFAR-100 files in the official python-pickle format, so benchmarks without the real
data set still go through the project's own reader (`lth_core.data`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar100(parent: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """`parent/cifar-100-python/{train,test}` with `n_train` and `n_test` random images; returns
    `parent`, the folder to give as `data.root`."""
    folder = Path(parent) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        batch = {b"batch_label": name.encode(), b"fine_labels": fine.tolist(),
                 b"coarse_labels": (fine // 5).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return Path(parent)
