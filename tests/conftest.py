"""Shared fixtures. Torch runs single-threaded in tests: on 2 shared cores, OpenMP threads
spinning against each other make small models hundreds of times slower."""

import gzip
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from lth_core.config import ModelConfig, PruneConfig, RecipeConfig, TicketConfig  # noqa: E402

RAY_GROUP = "ray"
SCATTERED = pytest.StashKey[bool]()  # a Ray module's test that xdist did not group


def tiny_ticket(**changes) -> TicketConfig:
    """A ticket that draws in seconds: narrow ResNet-18 on digits, 2 epochs, 2 IMP levels."""
    fields = dict(model=ModelConfig(width=0.125), recipe=RecipeConfig(epochs=2, batch_size=128, device="cpu"),
                  pruning=PruneConfig(levels=2), keep_epochs=(1,))
    fields.update(changes)
    return TicketConfig(**fields)


IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TINY_COUNTS = {"train": 40, "test": 10}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: the magic number, each dimension as a big-endian int32, then the bytes."""
    return (magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            + array.astype(np.uint8).tobytes())


def write_idx_set(folder, counts=None, gz=True, seed=0):
    """The four official files (gzipped or raw) with `counts` images per split, every class present."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, (images_stem, labels_stem) in IDX_STEMS.items():
        n = (counts or TINY_COUNTS)[split]
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        for stem, data in ((images_stem, idx_bytes(images, 0x803)), (labels_stem, idx_bytes(labels, 0x801))):
            (folder / (stem + ".gz" * gz)).write_bytes(gzip.compress(data) if gz else data)
        written[split] = images, labels
    return written


@pytest.fixture
def tiny_idx(monkeypatch):
    """The official MNIST counts (60,000 and 10,000 images) lowered to `TINY_COUNTS`."""
    from lth_core import data

    monkeypatch.setattr(data, "IDX_COUNTS", TINY_COUNTS)


def revived_layers(weights, mask) -> list[str]:
    """The masked tensors of `weights` (name -> tensor) with a pruned entry that is not zero."""
    return [name for name in mask if torch.count_nonzero(weights[name].detach().cpu()[~mask[name]])]


def train_checking_the_mask(run) -> list[str]:
    """Train a prepared spend (`lottery.prepare_spend`), checking its pruned weights after every
    epoch (the checkpoint payload's model) and at the end; the layers where any revived."""
    from lth_core.lottery import train_spend

    revived = []
    train_spend(run, persist_checkpoints=False,
                on_epoch=lambda record, payload: revived.extend(revived_layers(payload()["model"], run.mask)))
    revived += revived_layers(dict(run.model.named_parameters()), run.mask)
    return sorted(set(revived))


@pytest.fixture(scope="session")
def drawn(tmp_path_factory):
    """(store, ticket, summary) of one tiny draw shared by the tests that only read it."""
    from lth_core.lottery import draw
    from lth_core.store import ArtifactStore

    store = ArtifactStore(str(tmp_path_factory.mktemp("store")))
    ticket = tiny_ticket()
    return store, ticket, draw(ticket, store)


@pytest.hookimpl(wrapper=True)  # around pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs 2 pytest-xdist workers (`--dist loadgroup`). Every module with a test that
    uses the session's Ray or starts a cluster or server (`slow`) runs whole, in order, on one
    worker: one Ray at a time on 2 cores, and its tests keep sharing it; the rest runs beside it.

    xdist groups a test by appending `@group` to its node id; a pytest on which that no longer
    takes (pytest-xdist#1386, pytest 9.2) would scatter these modules silently: their tests fail."""
    serial = {item.module for item in items
              if "ray_session" in item.fixturenames or item.get_closest_marker("slow")}
    grouped = [item for item in items if item.module in serial]
    for item in grouped:
        item.add_marker(pytest.mark.xdist_group(RAY_GROUP))
    yield
    if getattr(config.option, "loadgroup", False):
        for item in grouped:
            item.stash[SCATTERED] = not item.nodeid.endswith(f"@{RAY_GROUP}")


def pytest_runtest_setup(item):
    """A test that xdist failed to group fails here with the reason, not later as a flaky race."""
    if item.stash.get(SCATTERED, False):
        pytest.fail(f"pytest-xdist did not put {item.nodeid} with Ray's tests: pytest {pytest.__version__} breaks "
                    "--dist loadgroup (pytest-xdist#1386); install the pinned test dependencies (make setup)",
                    pytrace=False)


@pytest.fixture(scope="session")
def ray_session():
    """One in-process Ray for the whole test session (each start costs ~10 s)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()
