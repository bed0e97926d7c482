"""The checks every entry point runs on what a user passes, before any work starts.

The core CLI (`lth_core.cli`), the sweeps' pre-flight (`sweeps.preflight`), the report and the
benchmarks import them from here, so that no entry point imports another. A problem is an `InputError`
whose message is one line: what is wrong and, after '; ', what to do; an entry point prints it
as `error: <message>` and exits with `EXIT_USER_ERROR`.
"""

from __future__ import annotations

import argparse
import math
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EXIT_USER_ERROR = 2


class InputError(Exception):
    """A problem the user can fix: the message says what is wrong and, after '; ', what to do."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose own errors (a missing argument, a number that does not read, an
    unknown flag) are one `error:` line with what to do, exit status 2, like every other input error;
    its subcommands' parsers are of this class too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"error: {message}; see `{self.prog} --help`\n")


def refuse(e: InputError) -> int:
    """Print the one `error:` line of `e` on stderr; returns the exit status for it."""
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR


def require_positive(flag: str, value: float) -> None:
    if not 0 < value < math.inf:  # NaN fails this too
        raise InputError(f"{flag} must be a finite number > 0, got {value:g}; pass a positive {flag}")


def require_at_least(flag: str, value: int, least: int, why: str = "") -> None:
    if value < least:
        raise InputError(f"{flag} must be >= {least}{f' ({why})' if why else ''}, got {value}; pass {flag} {least} "
                         "or more")


def require_sparsity(flag: str, value: float) -> None:
    if not 0 <= value < 1:
        raise InputError(f"{flag} must be in [0, 1) (the share of weights pruned), got {value:g}; pass e.g. {flag} 0.8")


def first_line(e: BaseException) -> str:
    """An exception's message on one line (at most 300 characters), else its type's name."""
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


def shown_uri(uri: str) -> str:
    """A URI fit to print: any password replaced by ***."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        return uri
    return uri.replace(f":{password}@", ":***@", 1) if password else uri


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_folder(uri: str) -> Path:
    return Path(urlsplit(uri).path if uri.startswith("file://") else uri).expanduser()


def writable_folder(folder: Path) -> None:
    """Raise OSError unless `folder` is, or could be created as, a folder that takes files. Leaves
    nothing behind: a missing folder is not created, its nearest existing parent is probed."""
    target = folder
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(target))
    probe = target / f".lth-probe-{uuid.uuid4().hex}"
    probe.write_bytes(b"probe")
    probe.unlink()


def probe_store(uri: str, flag: str = "--store") -> None:
    """Check that the artifact store at `uri` takes files, leaving nothing behind: a local folder
    (or its nearest existing parent) takes a probe file; any other store gets a probe artifact
    written, read back and deleted. Raises InputError naming the flag."""
    from lth_core.store import ArtifactStore, CorruptArtifactError

    shown = shown_uri(uri)
    how = f"pass {flag} with a writable folder or a pyarrow URI such as s3://bucket/prefix"
    if not uri or not uri.strip():
        raise InputError(f"{flag} is empty; {how}")
    try:
        if _is_local(uri):
            writable_folder(local_folder(uri))
            return
        store = ArtifactStore(uri)
        probe = f"probe-{uuid.uuid4().hex}"
        try:
            store.write_bytes(probe, b"lth probe")
            if store.read_bytes(probe) != b"lth probe":
                raise CorruptArtifactError("the probe file read back differs from what was written")
        finally:
            store.delete(probe)
    except (ValueError, OSError, ImportError, CorruptArtifactError) as e:
        raise InputError(f"cannot write to the artifact store {shown} ({first_line(e).replace(uri, shown)}); "
                         f"{how}") from None


def open_store(uri: str, *, write: bool = True, flag: str = "--store") -> Any:
    """The artifact store at `uri`, checked first: with `write`, it must take files (`probe_store`);
    without, a local store must exist already (nothing is created) and a remote one must answer.
    Raises InputError naming the flag."""
    from lth_core.store import ArtifactStore

    shown = shown_uri(uri)
    if write:
        probe_store(uri, flag)
    elif not uri or not uri.strip():
        raise InputError(f"{flag} is empty; pass {flag} with the store the draw wrote to")
    elif _is_local(uri) and not local_folder(uri).is_dir():
        raise InputError(f"no artifact store at {local_folder(uri)} ({flag} {shown}); pass {flag} with the store "
                         "the draw wrote to (default: $LTH_STORE_URI or ./artifacts)")
    try:
        store = ArtifactStore(uri)
        if not write and not _is_local(uri):
            store.exists(f"probe-{uuid.uuid4().hex}")  # an unreachable endpoint fails here, not halfway through
        return store
    except (ValueError, OSError, ImportError) as e:
        raise InputError(f"cannot open the artifact store {shown} ({first_line(e).replace(uri, shown)}); pass "
                         f"{flag} with a reachable folder or a pyarrow URI such as s3://bucket/prefix (check its "
                         "endpoint and credentials)") from None


def check_device(recipe: Any, flag: str = "--device") -> None:
    """The recipe's device and precision exist on this machine (`Runtime.resolve`)."""
    from lth_core.training import Runtime

    try:
        Runtime.resolve(recipe)
    except RuntimeError as e:
        raise InputError(f"{flag}/--precision: {e}") from None


def check_data(data: Any) -> None:
    """The data set's files are there and readable in their format (read once; cached per process)."""
    from lth_core.data import unreadable

    problem = unreadable(data)
    if problem is not None:
        raise InputError(problem)


def check_ticket(ticket: Any) -> None:
    """Everything a draw needs, before it starts: the device, the data files, and a pruning
    schedule that empties no layer (`lottery.check_schedule`, which raises ConfigError)."""
    from lth_core.data import load_dataset
    from lth_core.lottery import check_schedule

    check_device(ticket.recipe)
    check_data(ticket.data)
    check_schedule(ticket, load_dataset(ticket.data))


def check_spend(spend: Any) -> None:
    """Everything a spend needs, before it starts: its ticket's draw (`check_ticket`), the
    re-training device, and tweaks that work on the data set (`tweaks.check_dataset`)."""
    from lth_core.data import load_dataset
    from lth_core.tweaks import check_dataset

    check_ticket(spend.ticket)
    if spend.recipe is not None:
        check_device(spend.recipe)
    check_dataset(spend.tweaks, load_dataset(spend.ticket.data))
