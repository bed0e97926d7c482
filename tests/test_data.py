"""Data readers (on tiny files written in the official formats), splits and on-device batches."""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle

import numpy as np
import pytest
import torch

from lth_core import data
from lth_core.config import ConfigError, DataConfig
from conftest import idx_bytes, write_idx_set
from lth_core.data import (CIFAR_URL, FASHION_MNIST_URL, MNIST_URL, TINYIMAGENET_URL, Dataset, DatasetFormatError,
                           DatasetNotFoundError, RestrictedUnpickler, iterate_batches, load_dataset, normalize,
                           num_batches)


def _rows(*images: torch.Tensor) -> collections.Counter:
    """Multiset of images as bytes: equal multisets of equal size mean the splits partition the data."""
    return collections.Counter(bytes(img.numpy()) for x in images for img in x)


def _fresh(cfg: DataConfig) -> Dataset:
    """Load bypassing the per-process cache, so determinism is tested on real re-reads."""
    data._cache.clear()
    return load_dataset(cfg)


# ----------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(name="digits"))


def test_digits_sizes_shapes_and_partition(digits):
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert (len(digits.train_y), len(digits.val_y), len(digits.test_y)) == (1294, 144, 359)
    assert round(0.2 * 1797) == 359 and round(0.1 * (1797 - 359)) == 144
    for x, y in (digits.split(s) for s in data.SPLITS):
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
        assert 0 <= y.min() and y.max() < 10
    assert (digits.flip, digits.crop_padding, digits.augment) == (False, 1, True)

    from sklearn.datasets import load_digits
    raw = load_digits()
    full = torch.from_numpy(np.rint(raw.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    assert _rows(digits.train_x, digits.val_x, digits.test_x) == _rows(full)
    # Stratified: each class gives 20% of its images (+-1) to test.
    full_counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(digits.test_y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * full_counts) <= 1)


def test_digits_split_is_seeded_and_test_set_fixed(digits):
    again = _fresh(DataConfig(name="digits"))
    assert again is not digits
    for a, b in zip((digits.train_x, digits.val_y, digits.test_x), (again.train_x, again.val_y, again.test_x)):
        assert torch.equal(a, b)
    other = _fresh(DataConfig(name="digits", split_seed=1))
    assert torch.equal(other.test_x, digits.test_x)
    assert not torch.equal(other.val_x, digits.val_x)
    assert _rows(other.train_x, other.val_x) == _rows(digits.train_x, digits.val_x)


def test_cache_shares_tensors_and_sets_augment_flag():
    a = load_dataset(DataConfig(name="digits"))
    b = load_dataset(DataConfig(name="digits", augment=False))
    assert b.train_x is a.train_x and (a.augment, b.augment) == (True, False)


def test_split_seed_range_is_checked():
    with pytest.raises(ConfigError, match="split_seed"):
        load_dataset(DataConfig(name="digits", split_seed=-1))


# ------------------------------------------------------------------ CIFAR

def _dump(path, obj, protocol=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _cifar_batch(n: int, num_classes: int, seed: int, label_key=b"labels") -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing", label_key: rng.integers(0, num_classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}


def _write_cifar10(parent, n=20):
    folder = parent / "cifar-10-batches-py"
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _cifar_batch(n, 10, i))
    _dump(folder / "test_batch", _cifar_batch(n, 10, 0))
    return folder


def _write_cifar100(parent, n_train=100, n_test=20):
    folder = parent / "cifar-100-python"
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 0)):
        batch = _cifar_batch(n, 100, seed, b"fine_labels")
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        _dump(folder / name, batch)
    return folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("at_folder", [False, True])
def test_cifar_reader(tmp_path, name, at_folder):
    folder = _write_cifar10(tmp_path) if name == "cifar10" else _write_cifar100(tmp_path)
    ds = _fresh(DataConfig(name=name, root=str(folder if at_folder else tmp_path)))
    classes = 10 if name == "cifar10" else 100
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.flip, ds.crop_padding) == (classes, 3, 32, True, 4)
    assert (len(ds.train_y), len(ds.val_y), len(ds.test_y)) == (90, 10, 20)
    assert ds.train_x.shape == (90, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    # The test set keeps the official order; rows are 1024 R, 1024 G, 1024 B bytes.
    test = _cifar_batch(20, classes, 0, b"labels" if name == "cifar10" else b"fine_labels")
    assert torch.equal(ds.test_x[3, 1], torch.from_numpy(test[b"data"][3, 1024:2048].reshape(32, 32)))
    assert ds.test_y.tolist() == list(test[b"labels" if name == "cifar10" else b"fine_labels"])


def test_cifar_reads_files_written_by_old_numpy(tmp_path):
    """Files written by numpy < 2 name numpy.core.multiarray; protocol 3 stores that name as plain text."""
    folder = _write_cifar10(tmp_path)
    buf = io.BytesIO()
    pickle.dump(_cifar_batch(20, 10, 0), buf, protocol=3)
    legacy = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n" in legacy
    (folder / "test_batch").write_bytes(legacy)
    assert len(_fresh(DataConfig(name="cifar10", root=str(tmp_path))).test_y) == 20


def test_cifar_missing_file_error_names_file_url_and_flag(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        _fresh(DataConfig(name="cifar10", root=str(tmp_path)))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "data_batch_3" in message and CIFAR_URL in message and "--data-root" in message and "data.root" in message
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        _fresh(DataConfig(name="cifar100", root=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("change, match", [
    (lambda b: b.update({b"data": b[b"data"][:, :3071]}), r"shape \(N, 3072\)"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.int64)}), "must be uint8"),
    (lambda b: b[b"labels"].__setitem__(0, 10), r"labels must be in \[0, 9\]"),
    (lambda b: b[b"labels"].pop(), "must hold 20 labels"),
    (lambda b: b.pop(b"labels"), "expected a dict"),
])
def test_cifar_format_errors(tmp_path, change, match):
    folder = _write_cifar10(tmp_path)
    batch = _cifar_batch(20, 10, 2)
    change(batch)
    _dump(folder / "data_batch_2", batch)
    with pytest.raises(DatasetFormatError, match=match):
        _fresh(DataConfig(name="cifar10", root=str(folder)))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": []})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()

    folder = _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DatasetFormatError, match="refusing to load global"):
        _fresh(DataConfig(name="cifar10", root=str(folder)))
    assert not marker.exists()


# ------------------------------------------------------------ MNIST-like

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_gzipped_and_raw(tmp_path, tiny_idx, name, gz):
    written = write_idx_set(tmp_path / name, gz=gz)
    ds = _fresh(DataConfig(name=name, root=str(tmp_path)))  # the parent of <name>/ works too
    flip = name == "fashion-mnist"
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.flip, ds.crop_padding) == (10, 1, 28, flip, 2)
    assert (len(ds.train_y), len(ds.val_y), len(ds.test_y)) == (36, 4, 10)
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 28, 28)
    images, labels = written["test"]
    assert torch.equal(ds.test_x[:, 0], torch.from_numpy(images)) and ds.test_y.tolist() == labels.tolist()
    assert _rows(ds.train_x, ds.val_x) == _rows(torch.from_numpy(written["train"][0]).unsqueeze(1))
    assert (ds.mean, ds.std) == (((0.2860,), (0.3530,)) if flip else ((0.1307,), (0.3081,)))


def test_fashion_mnist_default_root(tmp_path, tiny_idx, monkeypatch):
    from lth_core import config

    write_idx_set(tmp_path)
    monkeypatch.setitem(config.DEFAULT_ROOTS, "fashion-mnist", str(tmp_path))
    assert len(_fresh(DataConfig(name="fashion-mnist")).test_y) == 10
    monkeypatch.setitem(config.DEFAULT_ROOTS, "fashion-mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        _fresh(DataConfig(name="fashion-mnist"))
    assert "dataset-fashion-mnist" in str(info.value) and FASHION_MNIST_URL in str(info.value)
    with pytest.raises(ConfigError, match="data.root"):
        DataConfig(name="mnist")  # no default location: the folder must be named


def _break(folder, stem, change):
    path = folder / stem
    path.write_bytes(change(path.read_bytes()))


BROKEN_IDX = {
    # id: (file, change to its raw bytes, words the error holds)
    "image-magic": ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:],
                    ["train-images-idx3-ubyte", "not an IDX image file", "0x00000801"]),
    "label-magic": ("t10k-labels-idx1-ubyte", lambda b: b"\x00\x00\x08\x03" + b[4:],
                    ["t10k-labels-idx1-ubyte", "not an IDX label file"]),
    "empty": ("train-labels-idx1-ubyte", lambda b: b"", ["train-labels-idx1-ubyte", "shorter than a header"]),
    "truncated": ("train-images-idx3-ubyte", lambda b: b[:-100], ["train-images-idx3-ubyte", "truncated"]),
    "too-long": ("t10k-images-idx3-ubyte", lambda b: b + b"\x00", ["t10k-images-idx3-ubyte", "header says"]),
    "not-28x28": ("t10k-images-idx3-ubyte", lambda b: idx_bytes(np.zeros((10, 32, 32)), 0x803),
                  ["t10k-images-idx3-ubyte", "32x32, expected 28x28"]),
    "label-10": ("train-labels-idx1-ubyte", lambda b: b[:-1] + b"\x0a",
                 ["train-labels-idx1-ubyte", r"labels must be in [0, 9], got 10"]),
    "counts-disagree": ("t10k-labels-idx1-ubyte", lambda b: idx_bytes(np.zeros(9), 0x801),
                        ["t10k-images-idx3-ubyte", "10 images", "t10k-labels-idx1-ubyte", "9 labels"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_IDX))
def test_idx_format_errors_name_the_file(tmp_path, tiny_idx, case):
    write_idx_set(tmp_path, gz=False)
    stem, change, words = BROKEN_IDX[case]
    _break(tmp_path, stem, change)
    with pytest.raises(DatasetFormatError) as info:
        _fresh(DataConfig(name="mnist", root=str(tmp_path)))
    assert all(w in str(info.value) for w in words), (words, str(info.value))


def test_idx_official_counts_and_gzip_are_checked(tmp_path):
    write_idx_set(tmp_path)  # 40 training images: not the official 60,000
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte.gz: 40 images, expected 60000"):
        _fresh(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.gz: not a readable gzip file"):
        data._read_idx(tmp_path / "t10k-images-idx3-ubyte.gz", data.IDX_IMAGE_MAGIC)


def test_idx_missing_file_says_where_to_get_it(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    for name, url in (("mnist", MNIST_URL), ("fashion-mnist", FASHION_MNIST_URL)):
        with pytest.raises(DatasetNotFoundError) as info:
            data.check_files(DataConfig(name=name, root=str(tmp_path)))
        message = str(info.value)
        assert "t10k-labels-idx1-ubyte" in message and url in message and "--data-root" in message
        assert ("dataset-fashion-mnist" in message) == (name == "fashion-mnist")


def test_train_size_is_a_stratified_subset(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "IDX_COUNTS", {"train": 200, "test": 10})
    write_idx_set(tmp_path, counts=data.IDX_COUNTS)
    full = _fresh(DataConfig(name="mnist", root=str(tmp_path)))
    part = _fresh(DataConfig(name="mnist", root=str(tmp_path), train_size=50))
    assert len(part.train_y) == 50 and part.train_y.bincount().tolist() == [5] * 10
    assert torch.equal(part.val_x, full.val_x) and torch.equal(part.test_x, full.test_x)
    assert not _rows(part.train_x) - _rows(full.train_x)  # drawn from the same train part
    again = _fresh(DataConfig(name="mnist", root=str(tmp_path), train_size=50))
    assert torch.equal(again.train_x, part.train_x)
    with pytest.raises(ConfigError, match="data.train_size"):
        _fresh(DataConfig(name="mnist", root=str(tmp_path), train_size=181))


def test_test_size_is_one_fixed_stratified_subset(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "IDX_COUNTS", {"train": 40, "test": 100})
    write_idx_set(tmp_path, counts=data.IDX_COUNTS)
    full = _fresh(DataConfig(name="mnist", root=str(tmp_path)))
    part = _fresh(DataConfig(name="mnist", root=str(tmp_path), test_size=30))
    assert len(part.test_y) == 30 and part.test_y.bincount().tolist() == [3] * 10
    assert not _rows(part.test_x) - _rows(full.test_x) and torch.equal(part.train_x, full.train_x)
    other_split = _fresh(DataConfig(name="mnist", root=str(tmp_path), test_size=30, split_seed=5))
    assert torch.equal(other_split.test_x, part.test_x)  # every config of one size tests on the same images
    with pytest.raises(ConfigError, match="data.test_size"):
        _fresh(DataConfig(name="mnist", root=str(tmp_path), test_size=101))


REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(REAL_FASHION_MNIST), reason="the Debian package dataset-fashion-mnist is "
                                                                  "not installed")
def test_real_fashion_mnist_files():
    ds = _fresh(DataConfig(name="fashion-mnist"))
    assert (len(ds.train_y) + len(ds.val_y), len(ds.val_y), len(ds.test_y)) == (60000, 6000, 10000)
    assert ds.test_y.bincount().tolist() == [1000] * 10
    pixels = torch.cat([ds.train_x, ds.val_x]).double() / 255  # the statistics stated in lth_core/data.py
    assert pixels.mean().item() == pytest.approx(ds.mean[0], abs=5e-5)
    assert pixels.std().item() == pytest.approx(ds.std[0], abs=5e-5)


# ---------------------------------------------------------- Tiny-ImageNet

WNIDS = ["n01443537", "n01629819", "n01641577"]


def _write_tinyimagenet(parent, per_class=4):
    from PIL import Image

    base = parent / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        (base / "train" / wnid / "images").mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG")
    # One grayscale image, as in the real data.
    Image.fromarray(np.full((64, 64), 77, np.uint8), mode="L").save(base / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_0.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(WNIDS * 2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tinyimagenet_reader(tmp_path):
    _write_tinyimagenet(tmp_path)
    ds = _fresh(DataConfig(name="tinyimagenet", root=str(tmp_path)))
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.flip, ds.crop_padding) == (3, 3, 64, True, 4)
    assert (len(ds.train_y) + len(ds.val_y), len(ds.val_y), len(ds.test_y)) == (12, 1, 6)
    assert ds.train_x.shape[1:] == (3, 64, 64) and ds.train_x.dtype == torch.uint8
    assert ds.test_y.tolist() == [0, 1, 2, 0, 1, 2]
    pool = torch.cat([ds.train_x, ds.val_x])
    assert ((pool.int() - 77).abs().amax((1, 2, 3)) <= 2).sum() == 1  # the grayscale image, as 3 channels


def test_tinyimagenet_errors(tmp_path):
    base = _write_tinyimagenet(tmp_path)
    annotations = base / "val" / "val_annotations.txt"
    text = annotations.read_text()
    annotations.write_text(text.replace(WNIDS[2], "n99999999", 1))
    with pytest.raises(DatasetFormatError, match="val_annotations.txt:3"):
        _fresh(DataConfig(name="tinyimagenet", root=str(base)))
    annotations.unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        _fresh(DataConfig(name="tinyimagenet", root=str(base)))
    assert "val_annotations.txt" in str(info.value) and TINYIMAGENET_URL in str(info.value)


def test_tinyimagenet_wrong_image_size(tmp_path):
    from PIL import Image

    base = _write_tinyimagenet(tmp_path)
    Image.new("RGB", (32, 32)).save(base / "val" / "images" / "val_0.JPEG")
    with pytest.raises(DatasetFormatError, match="expected a 64x64 image, got 32x32"):
        _fresh(DataConfig(name="tinyimagenet", root=str(tmp_path)))


# ---------------------------------------------------------------- batches

def _synthetic(n=10, channels=3, size=6, padding=2, flip=True, augment=True) -> Dataset:
    """Distinct pixel values 1..; mean 0, std 1/255 make normalised batches equal the raw values;
    labels are sample ids."""
    x = (torch.arange(n * channels * size * size) % 250 + 1).to(torch.uint8).view(n, channels, size, size)
    y = torch.arange(n)
    return Dataset(name="synthetic", num_classes=n, in_channels=channels, image_size=size,
                   train_x=x, train_y=y, val_x=x[:2], val_y=y[:2], test_x=x[:3], test_y=y[:3],
                   mean=(0.0,) * channels, std=(1 / 255,) * channels, flip=flip, crop_padding=padding,
                   augment=augment)


def _generator(seed=0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _matching(out: torch.Tensor, src: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) whose window of the zero-padded `src` equals `out`."""
    h, w = src.shape[-2:]
    padded = torch.nn.functional.pad(src, (padding,) * 4)
    found = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy:dy + h, dx:dx + w]
            found += [(dy, dx, f) for f in (False, True) if torch.equal(out, window.flip(-1) if f else window)]
    return found


def test_batches_shapes_normalisation_and_counts(digits):
    batches = list(iterate_batches(digits, "val", 64))
    assert [len(y) for _, y in batches] == [64, 64, 16] and num_batches(digits, "val", 64) == 3
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (64, 1, 8, 8) and y.dtype == torch.int64
    expected = (digits.val_x[:64].float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, expected, atol=1e-5) and torch.allclose(normalize(digits.val_x[:64], digits), expected, atol=1e-5)
    assert torch.equal(y, digits.val_y[:64])
    dropped = list(iterate_batches(digits, "val", 64, drop_last=True))
    assert [len(y) for _, y in dropped] == [64, 64] and num_batches(digits, "val", 64, drop_last=True) == 2
    train = torch.cat([x for x, _ in iterate_batches(digits, "train", 500)])
    assert abs(train.mean().item()) < 0.1 and abs(train.std().item() - 1) < 0.1


def test_crop_and_flip_are_shifted_windows():
    ds = _synthetic(n=64)
    x, y = next(iterate_batches(ds, "train", 64, generator=_generator(), shuffle=True, augment=True))
    assert x.shape == (64, 3, 6, 6)
    seen = set()
    for out, label in zip(x, y):
        found = _matching(out.round().to(torch.uint8), ds.train_x[label], padding=2)
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) > 10 and {f for _, _, f in seen} == {False, True}


def test_no_flip_when_not_allowed(digits):
    ds = _synthetic(n=64, flip=False)
    x, y = next(iterate_batches(ds, "train", 64, generator=_generator(), shuffle=True, augment=True))
    found = [_matching(out.round().to(torch.uint8), ds.train_x[label], padding=2) for out, label in zip(x, y)]
    assert all(len(f) == 1 and not f[0][2] for f in found)
    # Digits: padding 1, no flip; every output is an unflipped window of its source.
    raw = dataclasses.replace(digits, mean=(0.0,), std=(1 / 255,))
    x, _ = next(iterate_batches(raw, "train", 100, generator=_generator(), augment=True))
    for out, src in zip(x.round().to(torch.uint8), digits.train_x):
        assert any(not f for *_, f in _matching(out, src, padding=1))


def test_no_augmentation_unless_asked_and_enabled():
    plain = torch.cat([x for x, _ in iterate_batches(_synthetic(), "train", 4)])
    for ds, augment in ((_synthetic(), False), (_synthetic(augment=False), True)):
        got = torch.cat([x for x, _ in iterate_batches(ds, "train", 4, generator=_generator(), augment=augment)])
        assert torch.equal(got, plain)


def test_shuffle_covers_every_sample_once_and_is_reproducible():
    ds = _synthetic(n=23)

    def epoch(g):
        return [(x, y) for x, y in iterate_batches(ds, "train", 5, generator=g, shuffle=True, augment=True)]

    g = _generator(7)
    first = epoch(g)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(23))
    state = g.get_state()
    second = epoch(g)
    assert [y.tolist() for _, y in first] != [y.tolist() for _, y in second]
    g.set_state(state)  # resuming from a saved generator state replays the same epoch
    for (xa, ya), (xb, yb) in zip(second, epoch(g)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(first, epoch(_generator(7))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    dropped = list(iterate_batches(ds, "train", 5, generator=_generator(), shuffle=True, drop_last=True))
    assert len(dropped) == num_batches(ds, "train", 5, drop_last=True) == 4
    assert len(set(torch.cat([y for _, y in dropped]).tolist())) == 20


def test_argument_errors():
    ds = _synthetic()
    with pytest.raises(ValueError, match="Generator"):
        iterate_batches(ds, "train", 4, shuffle=True)
    with pytest.raises(ValueError, match="unknown split"):
        iterate_batches(ds, "dev", 4)
    with pytest.raises(TypeError):
        normalize(ds.train_x.float(), ds)


def test_to_moves_every_split():
    moved = _synthetic().to("meta")
    assert all(t.device.type == "meta" for s in data.SPLITS for t in moved.split(s))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_batches_on_gpu(generator_device):
    ds = _synthetic(n=64).to("cuda")
    g = torch.Generator(device=generator_device)
    g.manual_seed(0)
    x, y = next(iterate_batches(ds, "train", 64, generator=g, shuffle=True, augment=True))
    assert x.device.type == y.device.type == "cuda"
    for out, label in zip(x.cpu(), y.cpu()):
        assert len(_matching(out.round().to(torch.uint8), ds.train_x[label].cpu(), padding=2)) == 1


def test_check_files_fails_fast_without_reading_images(tmp_path):
    from lth_core.data import check_files

    check_files(DataConfig())  # digits ships with scikit-learn
    folder = _write_cifar10(tmp_path)
    check_files(DataConfig(name="cifar10", root=str(tmp_path)))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3 not found.*--data-root"):
        check_files(DataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(DatasetNotFoundError, match="tiny-imagenet-200"):
        check_files(DataConfig(name="tinyimagenet", root=str(tmp_path)))
