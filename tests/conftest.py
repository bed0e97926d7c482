"""Shared fixtures. Torch runs single-threaded in tests: on 2 shared cores, OpenMP threads
spinning against each other make small models hundreds of times slower."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

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
