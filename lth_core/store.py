"""Content-addressed artifact store on a local folder or any pyarrow filesystem.

Draws and spends run as many processes, often on different hosts, writing into one
store. Three rules keep that safe:

* Writes are atomic: data goes to a temporary name in the same folder and is then
  moved into place, so a crash never leaves a half-written file at the final path.
* Every file has a sidecar ``<path>.sha256`` holding its sha256, written *after* the
  data. A data file without its sidecar is an incomplete write; a checksum mismatch is
  corruption. Either one raises `CorruptArtifactError` on read, and callers treat such
  an artifact as missing and recompute it.
* Expensive keys are computed once (single flight) under a leased lock, so a crashed
  holder never blocks the others for longer than its lease.

Paths inside the store are relative POSIX strings such as
``tickets/<key>/level_3/mask.safetensors``. Names starting with ``.`` and names ending
in ``.sha256`` are reserved for temporary files and sidecars; the top-level ``locks/``
folder holds the lock files. On a local folder every path must stay inside the root once
symlinks are followed (`OutsideStoreError`), so a link in a shared store cannot make a
worker read, overwrite or delete files elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs
import safetensors.torch
import torch

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
LOCKS_DIR = "locks"
_TMP_MARK = ".tmp-"
_GUARD_SUFFIX = ".guard"
# Object stores do not need folders to exist; creating them there costs a request per write.
_OBJECT_STORES = ("s3", "gcs")


class CorruptArtifactError(RuntimeError):
    """A stored file is incomplete (no checksum sidecar) or does not match its checksum."""


class OutsideStoreError(ValueError):
    """A path of a local store leads out of its root through a symlink."""


class LockTimeout(TimeoutError):
    """A lock was not acquired within the timeout; the message names the lock and its holder."""


class ArtifactStore:
    """Artifacts under one root: a local folder (plain path or ``file://``) or a pyarrow
    filesystem URI such as ``s3://bucket/prefix``.

    For ``s3://`` URIs without query options, the endpoint in ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` is honoured (MinIO, moto), with the region from
    ``AWS_DEFAULT_REGION`` (default us-east-1). The bucket must already exist.

    One store may be shared by several threads: it keeps no mutable state of its own.
    """

    #: Object stores only: how long a lock writer waits before reading its lock back.
    lock_settle_seconds: float = 0.5

    def __init__(self, uri: str):
        self.uri = uri
        self._fs, self._root, local_root = _open_filesystem(uri)
        self._local_root = local_root
        self._makes_dirs = self._fs.type_name not in _OBJECT_STORES
        if self._makes_dirs:
            self._fs.create_dir(self._root, recursive=True)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.uri!r})"

    def local_path(self) -> Path | None:
        """The root folder when the store is local, else None."""
        return self._local_root

    # ----------------------------------------------------------------- bytes

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically write `data`, then its checksum sidecar.

        An old sidecar is removed first, so while a file is being replaced it reads as
        missing (`exists` is False) rather than as a stale checksum over new data.
        """
        full = self._full(_data_path(path))
        sidecar = full + SIDECAR_SUFFIX
        digest = hashlib.sha256(data).hexdigest()
        if self._makes_dirs:
            self._fs.create_dir(_parent(full), recursive=True)
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(sidecar)
        self._put_atomic(full, data)
        self._put_atomic(sidecar, f"{digest}\n".encode())

    def read_bytes(self, path: str) -> bytes:
        """The file's bytes after checking them against the sidecar.

        Raises FileNotFoundError when there is no data file and CorruptArtifactError when
        the sidecar is missing (an unfinished write) or does not match.
        """
        full = self._full(_data_path(path))
        data = self._get(full)
        try:
            expected = self._get(full + SIDECAR_SUFFIX).decode("ascii", "replace").strip()
        except FileNotFoundError:
            raise CorruptArtifactError(f"{path}: no checksum sidecar (incomplete write)") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise CorruptArtifactError(
                f"{path}: sha256 {actual} does not match the recorded {expected[:64]!r} ({len(data)} bytes)")
        return data

    def exists(self, path: str) -> bool:
        """True when the data file and its sidecar are both there (presence only; `verify` hashes)."""
        full = self._full(_data_path(path))
        infos = self._fs.get_file_info([full, full + SIDECAR_SUFFIX])
        return all(info.type == pafs.FileType.File for info in infos)

    def verify(self, path: str) -> bool:
        """True when the file is there and matches its checksum."""
        try:
            self.read_bytes(path)
        except (FileNotFoundError, CorruptArtifactError):
            return False
        return True

    def delete(self, path: str) -> None:
        """Delete a file with its sidecar, or a whole folder prefix. Missing paths are fine.

        The sidecar goes first, so an interrupted delete leaves an incomplete artifact
        rather than a complete-looking one.
        """
        full = self._full(_prefix_path(path, allow_root=False))
        kind = self._fs.get_file_info(full).type
        if kind == pafs.FileType.Directory:
            self._fs.delete_dir(full)
            return
        for target in (full + SIDECAR_SUFFIX, full):
            with contextlib.suppress(FileNotFoundError):
                self._fs.delete_file(target)

    def list(self, prefix: str = "") -> list[str]:
        """Sorted relative paths of the complete artifacts under the folder `prefix`.

        Only data files with a sidecar count, which leaves out sidecars, unfinished writes,
        temporary files (``.<name>.tmp-<uuid>``, never given a sidecar) and lock files.
        """
        base = self._full(_prefix_path(prefix, allow_root=True))
        if self._fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self._fs.get_file_info(pafs.FileSelector(base, recursive=True))
        start = len(self._root) + 1
        if self._local_root is not None:  # the listing follows symlinked folders: none may lead out
            for info in infos:
                if os.path.islink(info.path):
                    self._check_inside(info.path, info.path[start:])
        files = {info.path for info in infos if info.type == pafs.FileType.File}
        return sorted(
            p[start:] for p in files
            if not p.endswith(SIDECAR_SUFFIX) and p + SIDECAR_SUFFIX in files
        )

    def leftovers(self, prefix: str = "") -> dict[str, str]:
        """The files under the folder `prefix` that are not complete artifacts, sorted, each with the
        artifact path it belongs to: a data file without its sidecar (an unfinished write: itself),
        a sidecar without its data (the data path), a temporary file of an atomic write (the path
        it was written for, `temp_file_target`). Lock files are left out. Whether the store wrote
        the artifact path is the layout's to say: any file lies here, a user's too."""
        base = self._full(_prefix_path(prefix, allow_root=True))
        if self._fs.get_file_info(base).type != pafs.FileType.Directory:
            return {}
        start = len(self._root) + 1
        files = {info.path[start:] for info in self._fs.get_file_info(pafs.FileSelector(base, recursive=True))
                 if info.type == pafs.FileType.File}
        complete = set(self.list(prefix))
        found = {}
        for path in sorted(files):
            if path.split("/", 1)[0] == LOCKS_DIR or path in complete:
                continue
            folder, _, name = path.rpartition("/")
            target = f"{folder}/{temp_file_target(name)}".lstrip("/") if temp_file_target(name) else path
            artifact = target.removesuffix(SIDECAR_SUFFIX)
            if artifact in complete and target != artifact and target == path:
                continue  # the sidecar of a complete artifact
            found[path] = artifact
        return found

    def children(self, prefix: str = "") -> list[str]:
        """The sorted names of the files and folders directly inside the folder `prefix` (not
        recursive: a quick look at what a folder holds)."""
        base = self._full(_prefix_path(prefix, allow_root=True))
        if self._fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        return sorted(info.base_name for info in self._fs.get_file_info(pafs.FileSelector(base)))

    def delete_leftover(self, path: str) -> None:
        """Delete one file `leftovers` names (only while nothing writes to the store: a temporary
        file may be a write in flight)."""
        if path not in self.leftovers(path.rsplit("/", 1)[0] if "/" in path else ""):
            raise ValueError(f"{path!r} is not a leftover of store {self.uri}")
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(self._full(path))

    # ------------------------------------------------------------ typed views

    def write_json(self, path: str, obj: Any) -> None:
        """Canonical JSON (sorted keys, no spaces), the same form as `config.canonical_json`. JSON
        has no NaN or infinity: a number that is not finite (the loss of a diverged run) is
        written as null."""
        text = json.dumps(_finite_or_null(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
        self.write_bytes(path, text.encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def write_tensors(self, path: str, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
        """A safetensors file; tensors are detached, moved to the CPU and made contiguous."""
        cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        self.write_bytes(path, safetensors.torch.save(cpu, metadata=metadata))

    def read_tensors(self, path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """A safetensors file, verified; one whose checksum matches but that does not parse (cut short
        before its sidecar was recomputed) raises CorruptArtifactError naming it, as a bad checksum does."""
        try:
            tensors = safetensors.torch.load(self.read_bytes(path))
        except safetensors.SafetensorError as e:
            raise CorruptArtifactError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
        if torch.device(device).type == "cpu":
            return tensors
        return {name: t.to(device) for name, t in tensors.items()}

    def write_torch(self, path: str, obj: Any) -> None:
        """A `torch.save` blob, for checkpoints: dicts of tensors, numbers, lists, RNG states."""
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self.write_bytes(path, buffer.getvalue())

    def read_torch(self, path: str) -> Any:
        """Load with ``weights_only=True``: a store may be shared, so never unpickle arbitrary objects."""
        return torch.load(io.BytesIO(self.read_bytes(path)), weights_only=True, map_location="cpu")

    # ------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def lock(self, name: str, lease_seconds: float = 60.0, timeout: float | None = None,
             poll_seconds: float = 0.2) -> Iterator[Lease]:
        """Hold the leased lock ``locks/<name>.lock`` for the body of a ``with`` block.

        Single flight: check, lock, check again, compute::

            if not store.exists(done):
                with store.lock(key):
                    if not store.exists(done):  # another process may have finished meanwhile
                        compute_and_write(done)

        A daemon thread renews the lease every `lease_seconds`/3 while the block runs, so
        a live holder keeps the lock for as long as it needs; a crashed holder stops
        renewing and waiters take over once its lease has run out. `timeout=None` waits
        forever, otherwise `LockTimeout` is raised. The lock is not re-entrant.

        On a local filesystem acquisition is exclusive (``O_CREAT|O_EXCL``) and the
        take-over of an expired lock is serialised by an ``flock`` on a guard file next
        to it. On S3 it is exact through conditional writes: ``If-None-Match: *`` creates
        the lock only where there is none, ``If-Match: <etag>`` takes over, renews and
        deletes only the record last read (AWS, MinIO). A server without conditional
        writes, and other object stores, get best effort with a warning: the lock is
        written, read back after `lock_settle_seconds` and held only if it still carries
        our token; two writers racing within the settle delay could both proceed.
        Expiry times are wall-clock seconds, so hosts sharing a store need synced clocks.
        """
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        lock_path = self._full(f"{LOCKS_DIR}/{_check_relative(name)}.lock")
        if self._local_root is not None:
            self._check_inside(lock_path + _GUARD_SUFFIX, f"{LOCKS_DIR}/{name}.lock{_GUARD_SUFFIX}")
            backend: _LockBackend = _LocalLockFile(Path(lock_path))
        else:
            backend = _object_store_lock(self.uri, self._fs, lock_path, self.lock_settle_seconds)
        owner = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        deadline = None if timeout is None else time.monotonic() + timeout
        while not backend.try_acquire(_stamped(owner, lease_seconds), lease_seconds):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                holder = _describe(backend.holder(lease_seconds))
                raise LockTimeout(f"lock {name!r} in {self.uri} not acquired within {timeout:g}s; held by {holder}")
            pause = poll_seconds * random.uniform(0.5, 1.5)  # jitter spreads out many waiters
            time.sleep(pause if left is None else min(pause, left))
        lease = Lease(name, backend, owner, lease_seconds)
        try:
            yield lease
        finally:
            lease.release()

    # -------------------------------------------------------------- internals

    def _full(self, relative: str) -> str:
        """The path in the filesystem; on a local store it and its sidecar must resolve inside the root."""
        if not relative:
            return self._root
        full = f"{self._root}/{relative}"
        self._check_inside(full, relative)
        self._check_inside(full + SIDECAR_SUFFIX, relative + SIDECAR_SUFFIX)
        return full

    def _check_inside(self, full: str, relative: str) -> None:
        """Raise OutsideStoreError when `full` (a symlink, or a folder on the way that is one) resolves
        outside a local store's root. Object stores have no symlinks."""
        if self._local_root is None:
            return
        real = os.path.realpath(full)
        if real != self._root and not real.startswith(self._root + "/"):
            raise OutsideStoreError(f"store path {relative!r} leads out of the store {self._root} to {real} "
                                    "(a symlink); remove the link, or store the files inside the store's folder")

    def _put_atomic(self, full: str, data: bytes) -> None:
        tmp = f"{_parent(full)}/{_temp_name(full.rsplit('/', 1)[-1])}"
        try:
            with self._fs.open_output_stream(tmp) as stream:
                stream.write(data)
            self._fs.move(tmp, full)
        except BaseException:
            with contextlib.suppress(OSError):
                self._fs.delete_file(tmp)
            raise

    def _get(self, full: str) -> bytes:
        with self._fs.open_input_stream(full) as stream:
            return stream.read()


class Lease:
    """A held lock. `lost` turns true when a renewal finds someone else's token in the
    lock file (this process stalled past its lease and was taken over); a careful caller
    can check it before publishing results."""

    def __init__(self, name: str, backend: _LockBackend, owner: dict[str, Any], lease_seconds: float):
        self.name = name
        self.token: str = owner["token"]
        self._backend = backend
        self._owner = owner
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{name}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def release(self) -> None:
        """Stop renewing and delete the lock file if it is still ours."""
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        try:
            self._backend.release(self.token)
        except OSError as e:  # the lease will simply run out
            log.warning("could not release lock %r: %s", self.name, e)

    def _renew_loop(self) -> None:
        renewed = time.time()
        while not self._stop.wait(self._lease_seconds / 3):
            try:
                still_ours = self._backend.renew(_stamped(self._owner, self._lease_seconds), self._lease_seconds)
            except Exception as e:  # e.g. a network error: keep the thread alive, the next round retries
                log.warning("could not renew lock %r: %s", self.name, e)
                if time.time() - renewed > self._lease_seconds:  # others may hold it by now
                    self._lost.set()
                    log.warning("lock %r: no renewal for a whole lease; treating it as lost", self.name)
                    return
                continue
            renewed = time.time()
            if not still_ours:
                self._lost.set()
                log.warning("lock %r was taken over by another process; this holder outlived its lease", self.name)
                return


class _LockBackend(Protocol):
    def try_acquire(self, record: dict[str, Any], lease_seconds: float) -> bool: ...
    def holder(self, lease_seconds: float) -> dict[str, Any] | None: ...
    def renew(self, record: dict[str, Any], lease_seconds: float) -> bool: ...
    def release(self, token: str) -> None: ...


class _LocalLockFile:
    """Exclusive create for acquisition; every other change to the lock file (take-over of
    an expired lock, renewal, release) happens under an ``flock`` on ``<lock>.guard``, so a
    waiter can never remove a lock that another waiter has just taken over. The guard
    file is never deleted, and the kernel drops its flock when a process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.guard_path = path.with_name(path.name + _GUARD_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)

    def try_acquire(self, record: dict[str, Any], lease_seconds: float) -> bool:
        if self._create(record):
            return True
        with self._guard():
            holder = self.holder(lease_seconds)
            if holder is None or _held(holder):
                return False  # live holder, or released just now: the next poll tries again
            # Still present and expired while we hold the guard: nobody can touch it meanwhile.
            self.path.unlink()
        log.info("took over expired lock %s held by %s", self.path, _describe(holder))
        return self._create(record)

    def holder(self, lease_seconds: float) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _parse_lock(raw) or _unreadable_lock(mtime, lease_seconds)

    def renew(self, record: dict[str, Any], lease_seconds: float) -> bool:
        with self._guard():
            holder = self.holder(lease_seconds)
            if holder is None or holder.get("token") != record["token"]:
                return False
            tmp = self.path.with_name(_temp_name(self.path.name))
            tmp.write_bytes(_encode(record))
            os.replace(tmp, self.path)
        return True

    def release(self, token: str) -> None:
        with self._guard():
            holder = self.holder(0.0)
            if holder is not None and holder.get("token") == token:
                self.path.unlink()

    def _create(self, record: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(_encode(record))
        return True

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        # flock belongs to the open file description, so threads of one process exclude each other too.
        with open(self.guard_path, "ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield


class _ObjectStoreLockFile:
    """Best effort for stores without exclusive create: write, wait, read back, compare tokens."""

    def __init__(self, fs: pafs.FileSystem, path: str, settle_seconds: float):
        self.fs = fs
        self.path = path
        self.settle_seconds = settle_seconds

    def try_acquire(self, record: dict[str, Any], lease_seconds: float) -> bool:
        holder = self.holder(lease_seconds)
        if holder is not None and _held(holder):
            return False
        self._put(record)
        time.sleep(self.settle_seconds)  # a racing writer's PUT lands within this delay
        now = self.holder(lease_seconds)
        acquired = now is not None and now.get("token") == record["token"]
        if acquired and holder is not None:
            log.info("took over expired lock %s held by %s", self.path, _describe(holder))
        return acquired

    def holder(self, lease_seconds: float) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                raw = stream.read()
        except FileNotFoundError:
            return None
        record = _parse_lock(raw)
        if record is None:
            mtime = self.fs.get_file_info(self.path).mtime
            record = _unreadable_lock(mtime.timestamp() if mtime else 0.0, lease_seconds)
        return record

    def renew(self, record: dict[str, Any], lease_seconds: float) -> bool:
        holder = self.holder(lease_seconds)
        if holder is None or holder.get("token") != record["token"]:
            return False
        self._put(record)
        return True

    def release(self, token: str) -> None:
        holder = self.holder(0.0)
        if holder is not None and holder.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.path)

    def _put(self, record: dict[str, Any]) -> None:
        with self.fs.open_output_stream(self.path) as stream:  # one PUT: readers see all or nothing
            stream.write(_encode(record))


class _ConditionalS3LockFile:
    """Exact locks on S3 through conditional writes: create with If-None-Match, take over, renew
    and delete with If-Match on the ETag last read, so two writers can never both succeed."""

    def __init__(self, client: Any, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key

    def try_acquire(self, record: dict[str, Any], lease_seconds: float) -> bool:
        holder, etag = self._read(lease_seconds)
        if holder is not None and _held(holder):
            return False
        acquired = self._put(record, if_none_match="*") if holder is None else self._put(record, if_match=etag)
        if acquired and holder is not None:
            log.info("took over expired lock s3://%s/%s held by %s", self.bucket, self.key, _describe(holder))
        return acquired

    def holder(self, lease_seconds: float) -> dict[str, Any] | None:
        return self._read(lease_seconds)[0]

    def renew(self, record: dict[str, Any], lease_seconds: float) -> bool:
        holder, etag = self._read(lease_seconds)
        return holder is not None and holder.get("token") == record["token"] and self._put(record, if_match=etag)

    def release(self, token: str) -> None:
        holder, etag = self._read(0.0)
        if holder is not None and holder.get("token") == token:
            with contextlib.suppress(self.client.exceptions.ClientError):  # taken over meanwhile: theirs now
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)

    def supports_conditional_writes(self) -> bool:
        """Probe once: a conditional create of a scratch object, then its removal."""
        probe = f"{self.key}.probe-{uuid.uuid4().hex}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
        except self.client.exceptions.ClientError as e:
            if _error_code(e) in ("NotImplemented", "501", "InvalidArgument"):
                return False
            raise
        self.client.delete_object(Bucket=self.bucket, Key=probe)
        return True

    def _read(self, lease_seconds: float) -> tuple[dict[str, Any] | None, str | None]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None, None
        raw = response["Body"].read()
        record = _parse_lock(raw)
        if record is None:
            record = _unreadable_lock(response["LastModified"].timestamp(), lease_seconds)
        return record, response["ETag"]

    def _put(self, record: dict[str, Any], **condition: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=_encode(record),
                                   **{"IfNoneMatch" if k == "if_none_match" else "IfMatch": v
                                      for k, v in condition.items()})
        except self.client.exceptions.ClientError as e:
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return False  # another writer got there first
            raise
        return True


_WARNED_BEST_EFFORT: set[str] = set()  # stores warned about best-effort locks
_SUPPORTS_CONDITIONAL: set[str] = set()  # stores whose server took the conditional-write probe


def _object_store_lock(uri: str, fs: pafs.FileSystem, lock_path: str, settle_seconds: float) -> _LockBackend:
    """Exact conditional-write locks on S3 where the server supports them, else best effort
    (with one warning per store)."""
    parts = urlsplit(uri)
    reason = f"{parts.scheme}:// has no conditional writes"
    if parts.scheme == "s3":
        try:
            import boto3

            endpoint = (dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("endpoint_override")
                        or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
            if endpoint and "://" not in endpoint:
                endpoint = f"https://{endpoint}"
            bucket, key = lock_path.split("/", 1)
            backend = _ConditionalS3LockFile(boto3.client("s3", endpoint_url=endpoint), bucket, key)
            if uri in _SUPPORTS_CONDITIONAL or backend.supports_conditional_writes():
                _SUPPORTS_CONDITIONAL.add(uri)
                return backend
            reason = "the S3 server refused a conditional write (If-None-Match)"
        except ImportError:
            reason = "boto3 is not installed"
    if uri not in _WARNED_BEST_EFFORT:
        _WARNED_BEST_EFFORT.add(uri)
        log.warning("warning: locks in %s are best effort (%s): two workers starting the same draw within %.1fs "
                    "could both compute it", uri, reason, settle_seconds)
    return _ObjectStoreLockFile(fs, lock_path, settle_seconds)


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", {}) or {}
    return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


# ------------------------------------------------------------------ helpers

def _held(holder: dict[str, Any]) -> bool:
    """Whether a lock still binds: its lease runs and, when the holder is a process on this
    host, that process can still work (a crashed, zombie or stopped local holder is taken over
    at once, not after its lease; a stopped one that resumes finds its lease lost)."""
    if holder["expires"] <= time.time():
        return False
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _process_state(pid) not in GONE_STATES


GONE_STATES = ("Z", "X", "T", "t")  # zombie, dead, stopped, stopped by a tracer (proc(5))


def _process_state(pid: int) -> str | None:
    """The one-letter state of a local process from /proc (None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0]  # the name in parentheses may hold spaces


def _stamped(owner: dict[str, Any], lease_seconds: float) -> dict[str, Any]:
    return {**owner, "lease_seconds": lease_seconds, "expires": time.time() + lease_seconds}


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def _parse_lock(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("expires"), (int, float)):
        return record
    return None


def _unreadable_lock(mtime: float, lease_seconds: float) -> dict[str, Any]:
    """An empty or garbled lock file (its creator died before writing it) counts as a
    lease of `lease_seconds` from the file's modification time."""
    return {"token": None, "expires": mtime + lease_seconds}


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "nobody (released just now)"
    if holder.get("token") is None:
        return "an unreadable lock file"
    left = holder["expires"] - time.time()
    state = f"lease expires in {left:.1f}s" if left > 0 else f"lease expired {-left:.1f}s ago"
    return f"host {holder.get('host')} pid {holder.get('pid')} ({state})"


def _open_filesystem(uri: str) -> tuple[pafs.FileSystem, str, Path | None]:
    """(filesystem, root path inside it, local root folder or None)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        root = Path(unquote(parts.path) if parts.scheme else uri).expanduser().resolve()
        return pafs.LocalFileSystem(), root.as_posix(), root
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if parts.scheme == "s3" and endpoint and not parts.query:
        ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        fs = pafs.S3FileSystem(endpoint_override=ep.netloc, scheme=ep.scheme,
                               region=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                               allow_bucket_creation=False)
        return fs, f"{parts.netloc}{parts.path}".rstrip("/"), None
    fs, root = pafs.FileSystem.from_uri(uri)
    return fs, root.rstrip("/"), None


def _temp_name(name: str) -> str:
    """The temporary name a file `name` is written under before it is moved into place."""
    return f".{name}{_TMP_MARK}{uuid.uuid4().hex}"


_TEMP_NAME = re.compile(rf"\.(.+){re.escape(_TMP_MARK)}[0-9a-f]{{32}}")


def temp_file_target(name: str) -> str | None:
    """The file name a temporary file (`_temp_name`) was written for; None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    return match.group(1) if match else None


def _check_relative(path: str) -> str:
    """A relative POSIX path without empty, '.', '..' or hidden (temporary) components."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"store path must be a non-empty string, got {path!r}")
    if path.startswith("/") or "\\" in path:
        raise ValueError(f"store path must be relative and use '/', got {path!r}")
    for part in path.split("/"):
        if part in ("", ".", "..") or part.startswith("."):
            raise ValueError(f"store path {path!r} has an empty, '.', '..' or hidden component")
    return path


def _data_path(path: str) -> str:
    _check_relative(path)
    if path.endswith(SIDECAR_SUFFIX):
        raise ValueError(f"store path {path!r} ends in {SIDECAR_SUFFIX!r}, which is reserved for checksums")
    if path.split("/", 1)[0] == LOCKS_DIR:
        raise ValueError(f"store path {path!r} is inside {LOCKS_DIR}/, which is reserved for lock files")
    return path


def _prefix_path(prefix: str, allow_root: bool) -> str:
    prefix = prefix.rstrip("/")
    if not prefix and allow_root:
        return ""
    return _check_relative(prefix)


def _parent(full: str) -> str:
    return full.rsplit("/", 1)[0]


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj
