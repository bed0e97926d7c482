"""Data sets held as uint8 tensors, split once, and served in on-device batches.

Six data sets: scikit-learn's 8x8 digits (embedded, works offline), MNIST and Fashion-MNIST in
the official IDX files (gzipped or not; Debian's dataset-fashion-mnist package installs the
latter), CIFAR-10/100 in the python-pickle batches the CIFAR site distributes, and the
Tiny-ImageNet folder. Each is read once per process into uint8 NCHW tensors (Tiny-ImageNet is
100k images, so no float copy), the official training set is split by a seeded, stratified draw
into train and validation (and, with `DataConfig.train_size`, the train part cut to a seeded,
stratified subset), and the official test set (Tiny-ImageNet: its labelled val set) is kept for
test.

Batches are sliced from tensors already on the training device: crop and flip are done on the
whole batch with index arithmetic, normalisation is one fused multiply-add, and all randomness
comes from a `torch.Generator` the caller owns, so a run can be saved and resumed exactly.
There is no DataLoader and no worker process.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lth_core.config import DEFAULT_ROOTS, ConfigError, DataConfig

try:  # numpy >= 2 (numpy 1.26 has it too); numpy.core is a deprecated alias there
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - older numpy
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

SPLITS = ("train", "val", "test")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"  # Debian and Ubuntu

# Digits has no official test split: this fixed seed holds out the same 20% for every config.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0
# The seed of `DataConfig.test_size`'s subset: fixed, so every config of one size tests on the same images.
TEST_SUBSET_SEED = 0

# Standard per-channel statistics, in [0, 1] pixel units: mean and (population) standard deviation
# over every pixel of the official training set. Fashion-MNIST's were computed from the files of
# dataset-fashion-mnist (0.28604, 0.35302); MNIST's are the values everyone uses, computed the same way.
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's
}

# Training augmentation: (horizontal flip, random-crop zero padding). Digits and MNIST are not
# flipped: a mirrored digit is another symbol or none. Fashion-MNIST is: a mirrored shirt, shoe or
# bag is the same class, so the flip adds views without changing a label, as it does on CIFAR.
# 28x28 images take padding 2, as is common for MNIST (the 32x32 recipe's 4 scaled down).
_AUGMENT = {"digits": (False, 1), "mnist": (False, 2), "fashion-mnist": (True, 2),
            "cifar10": (True, 4), "cifar100": (True, 4), "tinyimagenet": (True, 4)}


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

    Cached per process by (name, resolved root, val_fraction, split_seed, train_size, test_size), so
    repeated spends in one worker read the files once; `cfg.augment` only sets the returned
    `Dataset.augment`.
    """
    _require_seed(cfg.split_seed, "data.split_seed")
    root = data_root(cfg)
    root = None if root is None else str(root.expanduser().resolve())
    key = (cfg.name, root, cfg.val_fraction, cfg.split_seed, cfg.train_size, cfg.test_size)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _build(cfg.name, root, cfg.val_fraction, cfg.split_seed, cfg.train_size, cfg.test_size)
        return dataclasses.replace(_cache[key], augment=cfg.augment)


def data_root(cfg: DataConfig) -> Path | None:
    """The folder a data set is read from: data.root, else its default location (None for digits)."""
    root = cfg.root if cfg.root is not None else DEFAULT_ROOTS.get(cfg.name)
    return None if root is None else Path(root)


def _build(name: str, root: str | None, val_fraction: float, split_seed: int, train_size: int,
           test_size: int) -> Dataset:
    if name == "digits":
        dev_x, dev_y, test_x, test_y, num_classes = _read_digits()
    elif name in _IDX_SETS:
        dev_x, dev_y, test_x, test_y, num_classes = _read_idx_set(name, Path(root))
    elif name in ("cifar10", "cifar100"):
        dev_x, dev_y, test_x, test_y, num_classes = _read_cifar(name, Path(root))
    else:
        dev_x, dev_y, test_x, test_y, num_classes = _read_tinyimagenet(Path(root))
    train_idx, val_idx = (torch.from_numpy(i) for i in _stratified_split(dev_y, val_fraction, split_seed))
    if len(val_idx) == 0:  # validating on nothing would pick epochs blindly and end with exit 0 all the same
        raise ConfigError("data.val_fraction", f"{val_fraction:g} of {len(dev_y)} images holds out no validation "
                                               "image; raise it (default 0.1)")
    if train_size:
        if train_size > len(train_idx):
            raise ConfigError("data.train_size", f"{train_size} is more than the {len(train_idx)} training images "
                                                 f"{name} has after the validation split; use at most that, or 0 "
                                                 "for all")
        _, chosen = _stratified_split(dev_y[train_idx], train_size / len(train_idx), split_seed)
        train_idx = train_idx[torch.from_numpy(chosen)]
    if test_size:
        if test_size > len(test_y):
            raise ConfigError("data.test_size", f"{test_size} is more than the {len(test_y)} test images {name} has; "
                                                "use at most that, or 0 for all")
        _, chosen = (torch.from_numpy(i) for i in _stratified_split(test_y, test_size / len(test_y), TEST_SUBSET_SEED))
        test_x, test_y = test_x[chosen], test_y[chosen]
    if name == "digits":  # no standard statistics: take them from the split-independent 80%
        pixels = dev_x.float().div_(255).transpose(0, 1).reshape(dev_x.shape[1], -1)
        mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    else:
        mean, std = _STATS[name]
    flip, crop_padding = _AUGMENT[name]
    return Dataset(
        name=name, num_classes=num_classes, in_channels=dev_x.shape[1], image_size=dev_x.shape[-1],
        train_x=dev_x[train_idx], train_y=dev_y[train_idx], val_x=dev_x[val_idx], val_y=dev_y[val_idx],
        test_x=test_x, test_y=test_y, mean=mean, std=std, flip=flip, crop_padding=crop_padding, augment=True,
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
    if cfg.name in _IDX_SETS:
        base = _idx_dir(cfg.name, data_root(cfg))
        for stem in (stem for pair in _IDX_FILES.values() for stem in pair):
            _idx_file(cfg.name, base, stem)
        return
    folder, files, url = _LAYOUTS[cfg.name]
    base = _dataset_dir(Path(cfg.root).expanduser(), folder, url)
    for name in files:
        if not (base / name).exists():
            raise _not_found(base / name, url, folder)


# ------------------------------------------------------------ MNIST-like

# The official IDX files of the MNIST-like sets, per split: (images, labels), each read gzipped
# (`<name>.gz`, as distributed) or not; the number of images each must hold; the magic numbers
# (0x08: unsigned bytes, then the number of dimensions).
_IDX_SETS = ("mnist", "fashion-mnist")
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_COUNTS = {"train": 60000, "test": 10000}
IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC = 0x00000803, 0x00000801
IDX_IMAGE_SIZE, IDX_CLASSES = 28, 10


def _idx_not_found(name: str, what: Path) -> DatasetNotFoundError:
    download = (f"download the four IDX files from {FASHION_MNIST_URL if name == 'fashion-mnist' else MNIST_URL} "
                "and set data.root (CLI --data-root) to their folder")
    if name == "fashion-mnist":
        return DatasetNotFoundError(
            f"{what} not found. Install the Debian/Ubuntu package {FASHION_MNIST_PACKAGE} (apt-get install "
            f"{FASHION_MNIST_PACKAGE}: it is read from {DEFAULT_ROOTS[name]} when data.root is not set), or {download}")
    return DatasetNotFoundError(f"{what} not found. {download[0].upper()}{download[1:]}")


def _idx_dir(name: str, root: Path) -> Path:
    """The folder holding the IDX files: root itself, or root/<name>/."""
    root = root.expanduser()
    if not root.is_dir():
        raise _idx_not_found(name, root)
    return root / name if (root / name).is_dir() else root


def _idx_file(name: str, base: Path, stem: str) -> Path:
    for path in (base / stem, base / f"{stem}.gz"):
        if path.is_file():
            return path
    raise _idx_not_found(name, base / f"{stem}[.gz]")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file of unsigned bytes, its header checked against `magic` and its length against
    the header; 28x28 images for an image file."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetFormatError(f"{path}: not a readable gzip file ({e})") from e
    kind = "image" if magic == IDX_IMAGE_MAGIC else "label"
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        got = "the file is shorter than a header" if found is None else f"magic number 0x{found:08x}"
        raise DatasetFormatError(f"{path}: not an IDX {kind} file ({got}, expected 0x{magic:08x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: the IDX header is cut short ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if kind == "image" and dims[1:] != (IDX_IMAGE_SIZE, IDX_IMAGE_SIZE):
        raise DatasetFormatError(f"{path}: images are {dims[1]}x{dims[2]}, expected "
                                 f"{IDX_IMAGE_SIZE}x{IDX_IMAGE_SIZE}")
    size = math.prod(dims)
    if len(raw) - header != size:
        raise DatasetFormatError(f"{path}: {len(raw) - header} bytes of data where its header says {size} "
                                 "(a truncated or damaged file)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _read_idx_split(name: str, base: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_stem, labels_stem = _IDX_FILES[split]
    images_path, labels_path = _idx_file(name, base, images_stem), _idx_file(name, base, labels_stem)
    images, labels = _read_idx(images_path, IDX_IMAGE_MAGIC), _read_idx(labels_path, IDX_LABEL_MAGIC)
    if len(images) != len(labels):
        raise DatasetFormatError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(images) != IDX_COUNTS[split]:
        raise DatasetFormatError(f"{images_path}: {len(images)} images, expected {IDX_COUNTS[split]} (the official "
                                 f"{split} set)")
    if len(labels) and labels.max() >= IDX_CLASSES:
        raise DatasetFormatError(f"{labels_path}: labels must be in [0, {IDX_CLASSES - 1}], got {labels.max()}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _read_idx_set(name: str, root: Path):
    """MNIST or Fashion-MNIST: the official 60,000 training and 10,000 test images, 28x28, 10 classes."""
    base = _idx_dir(name, root)
    train_x, train_y = _read_idx_split(name, base, "train")
    test_x, test_y = _read_idx_split(name, base, "test")
    return train_x, train_y, test_x, test_y, IDX_CLASSES


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
    return _on_device((1 / (255 * std)).view(-1, 1, 1), device), _on_device((mean / std).view(-1, 1, 1), device)


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without waiting for the GPU. A plain copy to CUDA first waits for
    every kernel already queued, so the per-batch random draws (made on the CPU generator, which
    keeps checkpoints portable) would stall the loop once a step; from pinned memory the copy is
    asynchronous, and the caching host allocator keeps the buffer until the copy is done."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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
    offsets = _on_device(torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=generator.device), device)
    cols = torch.arange(w, device=device).expand(n, w)
    if dataset.flip:
        flips = _on_device(torch.randint(0, 2, (n, 1), generator=generator, device=generator.device).bool(), device)
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
        return not_found_text(e)
    except DatasetFormatError as e:
        return (f"data set {data.name!r} cannot be read: {e}; download it again and point --data-root at the "
                "extracted folder")
    return None


def not_found_text(error: DatasetNotFoundError) -> str:
    """A missing data set as one `<what is missing> not found; <what to do>` line."""
    what, found, todo = str(error).partition(" not found. ")
    return f"{what} not found; {todo[:1].lower()}{todo[1:]}" if found else str(error)


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
    order = _on_device(torch.randperm(n, generator=generator, device=generator.device), device) if shuffle else None
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
