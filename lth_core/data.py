"""Data sets held as uint8 tensors, split once, and served in on-device batches.

Four data sets: scikit-learn's 8x8 digits (embedded, works offline), CIFAR-10/100 in the
python-pickle batches the CIFAR site distributes, and the Tiny-ImageNet folder. Each is read
once per process into uint8 NCHW tensors (Tiny-ImageNet is 100k images, so no float copy),
the official training set is split by a seeded, stratified draw into train and validation, and
the official test set (Tiny-ImageNet: its labelled val set) is kept for test.

Batches are sliced from tensors already on the training device: crop and flip are done on the
whole batch with index arithmetic, normalisation is one fused multiply-add, and all randomness
comes from a `torch.Generator` the caller owns, so a run can be saved and resumed exactly.
There is no DataLoader and no worker process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lth_core.config import ConfigError, DataConfig

try:  # numpy >= 2 (numpy 1.26 has it too); numpy.core is a deprecated alias there
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - older numpy
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

SPLITS = ("train", "val", "test")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

# Digits has no official test split: this fixed seed holds out the same 20% for every config.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0

# Standard per-channel statistics, in [0, 1] pixel units.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
}


class DatasetNotFoundError(FileNotFoundError):
    """A data set file or folder is missing; the message says where to get it and what to set."""


class DatasetFormatError(ValueError):
    """A data set file is present but not in the expected format (shape, dtype, labels)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One data set, split three ways; images uint8 [N, C, H, W], labels int64 [N].

    The tensors may be shared with the per-process cache: treat them as read-only.
    `augment` records `DataConfig.augment`; batches are augmented only when it is true.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int
    augment: bool

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with every tensor on `device` (no copy where it is already there)."""
        moved = {f"{s}_{t}": getattr(self, f"{s}_{t}").to(device) for s in SPLITS for t in "xy"}
        return dataclasses.replace(self, **moved)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of "train", "val" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


# ---------------------------------------------------------------- loading

_cache: dict[tuple, Dataset] = {}
_cache_lock = threading.Lock()


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read and split the data set `cfg` names, on CPU.

    Cached per process by (name, resolved root, val_fraction, split_seed), so repeated spends in
    one worker read the files once; `cfg.augment` only sets the returned `Dataset.augment`.
    """
    _require_seed(cfg.split_seed, "data.split_seed")
    root = None if cfg.name == "digits" else str(Path(cfg.root).expanduser().resolve())
    key = (cfg.name, root, cfg.val_fraction, cfg.split_seed)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _build(cfg.name, root, cfg.val_fraction, cfg.split_seed)
        return dataclasses.replace(_cache[key], augment=cfg.augment)


def _build(name: str, root: str | None, val_fraction: float, split_seed: int) -> Dataset:
    if name == "digits":
        dev_x, dev_y, test_x, test_y, num_classes = _read_digits()
    elif name in ("cifar10", "cifar100"):
        dev_x, dev_y, test_x, test_y, num_classes = _read_cifar(name, Path(root))
    else:
        dev_x, dev_y, test_x, test_y, num_classes = _read_tinyimagenet(Path(root))
    train_idx, val_idx = (torch.from_numpy(i) for i in _stratified_split(dev_y, val_fraction, split_seed))
    if len(val_idx) == 0:  # validating on nothing would pick epochs blindly and end with exit 0 all the same
        raise ConfigError("data.val_fraction", f"{val_fraction:g} of {len(dev_y)} images holds out no validation "
                                               "image; raise it (default 0.1)")
    if name == "digits":  # no standard statistics: take them from the split-independent 80%
        pixels = dev_x.float().div_(255).transpose(0, 1).reshape(dev_x.shape[1], -1)
        mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    else:
        mean, std = _STATS[name]
    image_size = dev_x.shape[-1]
    return Dataset(
        name=name, num_classes=num_classes, in_channels=dev_x.shape[1], image_size=image_size,
        train_x=dev_x[train_idx], train_y=dev_y[train_idx], val_x=dev_x[val_idx], val_y=dev_y[val_idx],
        test_x=test_x, test_y=test_y, mean=mean, std=std,
        flip=name != "digits", crop_padding=1 if image_size <= 8 else 4, augment=True,
    )


def _require_seed(seed: int, field_path: str) -> None:
    # numpy's legacy RandomState is used for its frozen stream, and it takes 32-bit seeds.
    if not 0 <= seed < 2**32:
        raise ConfigError(field_path, f"must be in [0, 2**32), got {seed}")


def _stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified hold-out: (kept, held-out) sorted indices, exactly round(fraction * N) held out.

    Each class gives floor(fraction * its size); the remainder goes to the classes with the
    largest fractional parts. numpy's RandomState is used because its stream never changes,
    so a split seed names the same split in every version.
    """
    y = labels.numpy()
    classes, counts = np.unique(y, return_counts=True)
    exact = fraction * counts
    quota = np.floor(exact).astype(np.int64)
    extra = int(round(fraction * len(y))) - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:extra]] += 1
    rng = np.random.RandomState(seed)
    held = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    held_idx = np.sort(np.concatenate(held))
    kept_idx = np.setdiff1d(np.arange(len(y)), held_idx, assume_unique=True)
    return kept_idx, held_idx


def _read_digits():
    """sklearn's digits, rescaled from 0..16 to 0..255 so every data set normalises alike."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    dev_idx, test_idx = _stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    dev_idx, test_idx = torch.from_numpy(dev_idx), torch.from_numpy(test_idx)
    return images[dev_idx], labels[dev_idx], images[test_idx], labels[test_idx], 10


def _not_found(what: Path, url: str, folder: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{what} not found. Download the data set from {url}, extract it, and set data.root "
        f"(CLI --data-root) to the folder that holds {folder}/ or to {folder}/ itself.")


def _dataset_dir(root: Path, folder: str, url: str) -> Path:
    """Accept root pointing at the extracted folder or at its parent."""
    if not root.is_dir():
        raise _not_found(root, url, folder)
    return root / folder if (root / folder).is_dir() else root


# Where each folder-based data set lives: (folder, files it must hold, where it is published).
# The last CIFAR file is the test split.
_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], CIFAR_URL),
    "cifar100": ("cifar-100-python", ["train", "test"], CIFAR_URL),
    "tinyimagenet": ("tiny-imagenet-200", ["wnids.txt", "train", "val/val_annotations.txt"], TINYIMAGENET_URL),
}


def check_files(cfg: DataConfig) -> None:
    """Fail fast, without reading any image, when a data set's files are missing: a sweep calls
    this before it starts any worker."""
    if cfg.name == "digits":
        return
    folder, files, url = _LAYOUTS[cfg.name]
    base = _dataset_dir(Path(cfg.root).expanduser(), folder, url)
    for name in files:
        if not (base / name).exists():
            raise _not_found(base / name, url, folder)


# ------------------------------------------------------------------ CIFAR

class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: a CIFAR batch needs nothing else, and refusing
    every other global keeps a tampered file from running code while it is read."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,  # files written by numpy < 2
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch only holds numpy arrays, "
                f"lists and dicts") from None


def _read_cifar_batch(path: Path, label_key: bytes, num_classes: int, url: str, folder: str):
    if not path.is_file():
        raise _not_found(path, url, folder)
    try:
        with path.open("rb") as f:
            batch = RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetFormatError(f"{path}: not a CIFAR python batch: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DatasetFormatError(f"{path}: expected a dict with keys b'data' and {label_key!r}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {got}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{path}: {label_key!r} is not a list of integers: {e}") from e
    if labels.shape != (len(data),):
        raise DatasetFormatError(f"{path}: {label_key!r} must hold {len(data)} labels, got shape {labels.shape}")
    if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
        raise DatasetFormatError(f"{path}: labels must be in [0, {num_classes - 1}], "
                                 f"got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(name: str, root: Path):
    """The official python batches: images are rows of 1024 R, 1024 G, 1024 B bytes."""
    label_key, num_classes = (b"labels", 10) if name == "cifar10" else (b"fine_labels", 100)
    folder, files, _ = _LAYOUTS[name]
    train_files, test_files = files[:-1], files[-1:]
    base = _dataset_dir(root, folder, CIFAR_URL)

    def read(files):
        parts = [_read_cifar_batch(base / f, label_key, num_classes, CIFAR_URL, folder) for f in files]
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts])))

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    return train_x, train_y, test_x, test_y, num_classes


# ---------------------------------------------------------- Tiny-ImageNet

def _read_tinyimagenet(root: Path):
    """tiny-imagenet-200/: label = line number in wnids.txt; the labelled val set is the test set."""
    folder = _LAYOUTS["tinyimagenet"][0]
    base = _dataset_dir(root, folder, TINYIMAGENET_URL)
    wnids_path = base / "wnids.txt"
    if not wnids_path.is_file():
        raise _not_found(wnids_path, TINYIMAGENET_URL, folder)
    wnids = wnids_path.read_text().split()
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetFormatError(f"{wnids_path}: expected distinct class ids, one a line")
    label_of = {w: i for i, w in enumerate(wnids)}

    train_files, train_labels = [], []
    for wnid, label in label_of.items():
        images_dir = base / "train" / wnid / "images"
        files = sorted(images_dir.glob("*.JPEG")) if images_dir.is_dir() else []
        if not files:
            raise _not_found(images_dir / "*.JPEG", TINYIMAGENET_URL, folder)
        train_files += files
        train_labels += [label] * len(files)

    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _not_found(annotations, TINYIMAGENET_URL, folder)
    test_files, test_labels = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DatasetFormatError(f"{annotations}:{line_no}: expected '<file>\\t<wnid from wnids.txt>\\t...', "
                                     f"got {line!r}")
        test_files.append(base / "val" / "images" / fields[0])
        test_labels.append(label_of[fields[1]])

    return (_read_jpegs(train_files), torch.tensor(train_labels, dtype=torch.int64),
            _read_jpegs(test_files), torch.tensor(test_labels, dtype=torch.int64), len(wnids))


def _read_jpegs(files: list[Path]) -> torch.Tensor:
    """Decode 64x64 images as RGB (some are grayscale) straight into one uint8 NCHW tensor.

    Threads, not processes: PIL releases the GIL while decoding.
    """
    from PIL import Image

    out = np.empty((len(files), 3, 64, 64), dtype=np.uint8)

    def decode(i: int) -> None:
        path = files[i]
        try:
            with Image.open(path) as img:
                if img.size != (64, 64):
                    raise DatasetFormatError(f"{path}: expected a 64x64 image, got {img.size[0]}x{img.size[1]}")
                out[i] = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        except FileNotFoundError:
            raise _not_found(path, TINYIMAGENET_URL, "tiny-imagenet-200") from None
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files
            raise DatasetFormatError(f"{path}: cannot decode image: {e}") from e

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(files))))
    return torch.from_numpy(out)


# ---------------------------------------------------------------- batches

def _affine(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with (x / 255 - mean) / std == x * scale - shift."""
    mean = torch.tensor(dataset.mean, dtype=torch.float32)
    std = torch.tensor(dataset.std, dtype=torch.float32)
    return (1 / (255 * std)).view(-1, 1, 1).to(device), (mean / std).view(-1, 1, 1).to(device)


def normalize(images_uint8: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 standardised with the data set's mean/std, on the images' device."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    scale, shift = _affine(dataset, images_uint8.device)
    return images_uint8.float().mul_(scale).sub_(shift)


def _augment(images: torch.Tensor, dataset: Dataset, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding `crop_padding`) and, if allowed, horizontal flip of a whole batch.

    The batch is zero-padded once; each output pixel then reads its source pixel through one flat
    index (row * padded width + column), and a flip is the same window with its columns reversed.
    """
    n, c, h, w = images.shape
    p = dataset.crop_padding
    device = images.device
    offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=generator.device).to(device)
    cols = torch.arange(w, device=device).expand(n, w)
    if dataset.flip:
        flips = torch.randint(0, 2, (n, 1), generator=generator, device=generator.device).bool().to(device)
        cols = torch.where(flips, w - 1 - cols, cols)
    rows = offsets[0, :, None] + torch.arange(h, device=device)
    cols = offsets[1, :, None] + cols
    padded = images.new_zeros(n, c, h + 2 * p, w + 2 * p)  # faster than F.pad for uint8 on CPU
    padded[:, :, p:p + h, p:p + w] = images
    pixel = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, pixel).view(n, c, h, w)


def unreadable(data: DataConfig) -> str | None:
    """Why the data set cannot be used, as `<what is wrong>; <what to do>`, or None when its files
    are there and read in their format (the data set is cached for this process)."""
    try:
        check_files(data)
        load_dataset(data)
    except DatasetNotFoundError as e:
        return str(e).replace(" not found. Download", " not found; download", 1)
    except DatasetFormatError as e:
        return (f"data set {data.name!r} cannot be read: {e}; download it again and point --data-root at the "
                "extracted folder")
    return None


def lone_last_image(dataset: Dataset, split: str, batch_size: int) -> bool:
    """True when the split's last batch would hold a single image: train-mode BatchNorm cannot
    normalise a batch of one, so training passes drop that batch (`drop_last`)."""
    return len(dataset.split(split)[1]) % batch_size == 1 and batch_size > 1


def num_batches(dataset: Dataset, split: str, batch_size: int, drop_last: bool = False) -> int:
    n = len(dataset.split(split)[1])
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(dataset: Dataset, split: str, batch_size: int, *, generator: torch.Generator | None = None,
                    shuffle: bool = False, augment: bool = False, drop_last: bool = False,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised float32 images, int64 labels) batches on the data set's device.

    `augment` takes effect only when the data set was built with `DataConfig.augment`.
    `shuffle` and `augment` draw from `generator` (on its own device), so saving and restoring
    the generator state resumes the exact batch sequence.
    """
    images, labels = dataset.split(split)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    augment = augment and dataset.augment
    if (shuffle or augment) and generator is None:
        raise ValueError("shuffle and augment draw random numbers: pass a torch.Generator")
    return _batches(dataset, images, labels, batch_size, generator, shuffle, augment, drop_last)


def _batches(dataset: Dataset, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             generator: torch.Generator | None, shuffle: bool, augment: bool, drop_last: bool,
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # Separate from iterate_batches so its argument errors raise at the call, not at the first batch.
    n = len(labels)
    device = images.device
    order = torch.randperm(n, generator=generator, device=generator.device).to(device) if shuffle else None
    scale, shift = _affine(dataset, device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            x, y = images[idx], labels[idx]
        if augment:
            x = _augment(x, dataset, generator)
        yield x.float().mul_(scale).sub_(shift), y
