"""The artifact store on a local folder: round trips, atomic writes, checksums, leased locks."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lth_core.store import ArtifactStore, CorruptArtifactError, LockTimeout, OutsideStoreError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"))


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# ----------------------------------------------------------------- round trips

def test_round_trips(store: ArtifactStore):
    store.write_bytes("a/blob.bin", b"\x00\x01payload")
    assert store.read_bytes("a/blob.bin") == b"\x00\x01payload"

    store.write_json("a/meta.json", {"b": [1, 2.5], "a": "x"})
    assert store.read_json("a/meta.json") == {"a": "x", "b": [1, 2.5]}
    assert (store.local_path() / "a/meta.json").read_bytes() == b'{"a":"x","b":[1,2.5]}'
    store.write_json("a/nan.json", {"x": float("nan"), "y": [float("inf"), 1.0]})  # JSON has no NaN
    assert (store.local_path() / "a/nan.json").read_bytes() == b'{"x":null,"y":[null,1.0]}'

    weight = torch.randn(4, 6)
    tensors = {"mask": torch.rand(4, 6) > 0.5, "w": weight.t(), "step": torch.tensor(3)}  # w.t() is not contiguous
    store.write_tensors("t/mask.safetensors", tensors, metadata={"level": "3"})
    back = store.read_tensors("t/mask.safetensors")
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 3])  # its state holds a Counter
    checkpoint = {"epoch": 7, "lrs": [0.1, 0.01], "model": {"w": weight}, "rng": torch.get_rng_state(),
                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    store.write_torch("c/ckpt.pt", checkpoint)
    loaded = store.read_torch("c/ckpt.pt")
    assert loaded["epoch"] == 7 and loaded["lrs"] == [0.1, 0.01]
    assert torch.equal(loaded["model"]["w"], weight) and torch.equal(loaded["rng"], checkpoint["rng"])
    assert loaded["scheduler"] == scheduler.state_dict()
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])


def test_file_uri_and_local_path(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}/s")
    assert store.local_path() == tmp_path / "s"
    store.write_bytes("x", b"1")
    assert ArtifactStore(str(tmp_path / "s")).read_bytes("x") == b"1"


_UNPICKLED = []


def _record_unpickle() -> str:
    _UNPICKLED.append(True)
    return "ran"


class Payload:
    """Unpickling this calls a function: exactly what weights_only must refuse."""

    def __reduce__(self):
        return (_record_unpickle, ())


def test_read_torch_refuses_arbitrary_objects(store: ArtifactStore):
    store.write_torch("evil.pt", {"w": torch.zeros(2), "payload": Payload()})
    with pytest.raises(pickle.UnpicklingError):
        store.read_torch("evil.pt")
    assert not _UNPICKLED


@pytest.mark.parametrize("bad", ["", "/abs", "../up", "a//b", "a/./b", ".hidden", "a/.tmp", "x.sha256",
                                 "locks/mine", "a\\b"])
def test_rejects_bad_paths(store: ArtifactStore, bad: str):
    with pytest.raises(ValueError):
        store.write_bytes(bad, b"")



# ---------------------------------------------------------- symlinks out of the root

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the store with a file a link could expose, overwrite or delete."""
    folder = tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "secret.bin").write_bytes(b"not the store's")
    (folder / "sub" / "secret.bin.sha256").write_text("0" * 64 + "\n")
    return folder


def test_a_symlinked_folder_out_of_the_root_is_refused(store: ArtifactStore, outside: Path):
    root = store.local_path()
    (root / "tickets").mkdir()
    (root / "tickets" / "k").symlink_to(outside)  # a folder on the way leads out
    with pytest.raises(OutsideStoreError, match="'tickets/k/sub/secret.bin' leads out of the store"):
        store.read_bytes("tickets/k/sub/secret.bin")
    for attempt in (lambda: store.write_bytes("tickets/k/sub/new.bin", b"x"),
                    lambda: store.exists("tickets/k/sub/secret.bin"),
                    lambda: store.delete("tickets/k/sub"),
                    lambda: store.delete("tickets/k/sub/secret.bin"),
                    lambda: store.list("tickets/k"),
                    lambda: store.list("tickets"),  # found while listing, not only named
                    lambda: store.list("")):
        with pytest.raises(OutsideStoreError):
            attempt()
    assert sorted(p.name for p in (outside / "sub").iterdir()) == ["secret.bin", "secret.bin.sha256"]


def test_a_symlinked_file_or_sidecar_out_of_the_root_is_refused(store: ArtifactStore, outside: Path):
    root = store.local_path()
    store.write_bytes("a/x.bin", b"mine")
    (root / "a" / "leak.bin").symlink_to(outside / "sub" / "secret.bin")
    (root / "a" / "leak.bin.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(OutsideStoreError, match="a/leak.bin"):
        store.read_bytes("a/leak.bin")
    with pytest.raises(OutsideStoreError):
        store.write_bytes("a/leak.bin", b"overwrite")
    (root / "a" / "x.bin.sha256").unlink()
    (root / "a" / "x.bin.sha256").symlink_to(outside / "sub" / "secret.bin.sha256")
    with pytest.raises(OutsideStoreError, match=r"a/x.bin.sha256"):
        store.read_bytes("a/x.bin")
    assert (outside / "sub" / "secret.bin").read_bytes() == b"not the store's"


def test_a_lock_through_a_symlink_out_of_the_root_is_refused(store: ArtifactStore, outside: Path):
    locks = store.local_path() / "locks"
    locks.mkdir()
    (locks / "job.lock.guard").symlink_to(outside / "created-by-the-lock")  # opening it would create that
    with pytest.raises(OutsideStoreError, match="locks/job.lock.guard"):
        with store.lock("job", timeout=0):
            pass
    locks.rename(locks.with_name("old-locks"))
    locks.symlink_to(outside)  # the whole lock folder
    with pytest.raises(OutsideStoreError, match="locks/other.lock"):
        with store.lock("other", timeout=0):
            pass
    assert sorted(p.name for p in outside.iterdir()) == ["sub"]


def test_symlinks_inside_the_root_still_work(store: ArtifactStore):
    root = store.local_path()
    store.write_bytes("real/x.bin", b"data")
    (root / "alias").symlink_to(root / "real")  # absolute target, inside the root
    (root / "real" / "y.bin").symlink_to("x.bin")  # relative target, same folder
    (root / "real" / "y.bin.sha256").symlink_to("x.bin.sha256")
    assert store.read_bytes("alias/x.bin") == store.read_bytes("real/y.bin") == b"data"
    store.write_bytes("alias/z.bin", b"more")
    assert store.read_bytes("real/z.bin") == b"more"
    assert store.list("alias") == ["alias/x.bin", "alias/y.bin", "alias/z.bin"]
    with store.lock("job", timeout=0):
        pass
    (root.parent / "linked-root").symlink_to(root)  # the root itself may be a link
    assert ArtifactStore(str(root.parent / "linked-root")).read_bytes("real/x.bin") == b"data"


# ---------------------------------------------------------- atomicity, checksums

class _CrashingFS:
    """Delegates to a real pyarrow filesystem, except that output stream number `crash_on`
    writes half its data and then raises, as a process dying mid-write would."""

    def __init__(self, real, crash_on: int):
        self._real = real
        self._crash_on = crash_on
        self._opened = 0

    def __getattr__(self, name):
        return getattr(self._real, name)

    def open_output_stream(self, path, *args, **kwargs):
        self._opened += 1
        stream = self._real.open_output_stream(path, *args, **kwargs)
        return _HalfWriter(stream) if self._opened == self._crash_on else stream


class _HalfWriter:
    def __init__(self, stream):
        self._stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()

    def write(self, data: bytes) -> None:
        self._stream.write(data[: len(data) // 2])
        raise OSError("simulated crash mid-write")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_crash_while_writing_data_leaves_nothing(store: ArtifactStore, monkeypatch):
    monkeypatch.setattr(store, "_fs", _CrashingFS(store._fs, crash_on=1))
    with pytest.raises(OSError, match="simulated"):
        store.write_bytes("d/blob.bin", b"0123456789" * 100)
    assert _files(store.local_path()) == []  # no final file, no sidecar, temp file cleaned up
    assert not store.exists("d/blob.bin")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("d/blob.bin")


def test_crash_before_sidecar_reads_as_incomplete(store: ArtifactStore, monkeypatch):
    store.write_bytes("d/blob.bin", b"old")
    monkeypatch.setattr(store, "_fs", _CrashingFS(store._fs, crash_on=2))  # the data lands, its sidecar does not
    with pytest.raises(OSError, match="simulated"):
        store.write_bytes("d/blob.bin", b"new")
    assert _files(store.local_path()) == ["d/blob.bin"]  # the old sidecar went before the new data
    assert not store.exists("d/blob.bin")
    assert not store.verify("d/blob.bin")
    assert store.list("") == []
    with pytest.raises(CorruptArtifactError, match="incomplete"):
        store.read_bytes("d/blob.bin")


def test_data_without_sidecar_is_not_an_artifact(store: ArtifactStore):
    (store.local_path() / "orphan.bin").write_bytes(b"data")
    assert not store.exists("orphan.bin")
    with pytest.raises(CorruptArtifactError):
        store.read_bytes("orphan.bin")


def test_flipped_byte_is_corrupt(store: ArtifactStore):
    store.write_tensors("t.safetensors", {"w": torch.arange(100.0)})
    assert store.verify("t.safetensors")
    path = store.local_path() / "t.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01
    path.write_bytes(bytes(raw))
    assert store.exists("t.safetensors")  # presence only
    assert not store.verify("t.safetensors")
    with pytest.raises(CorruptArtifactError, match="does not match"):
        store.read_tensors("t.safetensors")


def test_list_and_delete(store: ArtifactStore):
    for path in ("a/b/x.bin", "a/y.json", "c/z.bin"):
        store.write_bytes(path, path.encode())
    root = store.local_path()
    (root / "a/b/.x.bin.tmp-0123abcd").write_bytes(b"partial")  # left by a killed writer
    (root / "a/b/orphan.bin").write_bytes(b"no sidecar")
    with store.lock("a"):
        assert store.list("") == ["a/b/x.bin", "a/y.json", "c/z.bin"]  # no lock files either
    assert store.list("a") == store.list("a/") == ["a/b/x.bin", "a/y.json"]
    assert store.list("a/b/x.bin") == [] and store.list("nothing") == []

    store.delete("a/b/x.bin")
    assert not (root / "a/b/x.bin").exists() and not (root / "a/b/x.bin.sha256").exists()
    store.delete("a")
    assert not (root / "a").exists()
    assert store.list("") == ["c/z.bin"]
    store.delete("a/never/there")  # missing is fine
    with pytest.raises(ValueError):
        store.delete("")


def test_leftovers_name_the_artifact_they_belong_to(store: ArtifactStore):
    """What `verify` needs to tell the store's own leftovers from anyone's files: each file that is
    no complete artifact, with the path it was written for."""
    from lth_core.store import temp_file_target

    store.write_bytes("a/done.bin", b"done")
    temp = ".x.bin.tmp-" + "0" * 32
    temp_sidecar = ".done.bin.sha256.tmp-" + "f" * 32
    root = store.local_path()
    for name, data in ((f"a/{temp}", b"partial"), (f"a/{temp_sidecar}", b"0"), ("a/orphan.bin", b"no sidecar"),
                       ("a/lone.bin.sha256", b"0" * 64), ("a/.x.bin.tmp-123", b"not our naming"), ("notes.txt", b"")):
        (root / name).write_bytes(data)
    with store.lock("a"):
        assert store.leftovers() == {f"a/{temp}": "a/x.bin", f"a/{temp_sidecar}": "a/done.bin",
                                     "a/.x.bin.tmp-123": "a/.x.bin.tmp-123", "a/lone.bin.sha256": "a/lone.bin",
                                     "a/orphan.bin": "a/orphan.bin", "notes.txt": "notes.txt"}
    assert temp_file_target(temp) == "x.bin" and temp_file_target("x.bin") is None
    assert store.children() == ["a", "locks", "notes.txt"] and store.children("nothing") == []
    store.delete_leftover(f"a/{temp}")
    with pytest.raises(ValueError, match="not a leftover"):
        store.delete_leftover("a/done.bin")
    assert store.verify("a/done.bin") and f"a/{temp}" not in store.leftovers("a")


def test_threads_share_one_store(store: ArtifactStore):
    errors = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                store.write_bytes(f"t{i}/f{j}", f"{i}-{j}".encode())
                store.write_bytes("shared", b"same content")  # content-addressed: identical rewrites
                assert store.read_bytes(f"t{i}/f{j}") == f"{i}-{j}".encode()
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list("")) == 61 and store.read_bytes("shared") == b"same content"


# ----------------------------------------------------------------------- locks

_SINGLE_FLIGHT = """
import os, sys, time
from pathlib import Path
from lth_core.store import ArtifactStore
store = ArtifactStore(sys.argv[1])
root = store.local_path()
(root / f"ready-{os.getpid()}").touch()
while not (root / "go").exists():
    time.sleep(0.01)
if not store.exists("result.json"):
    with store.lock("result", lease_seconds=5, poll_seconds=0.05):
        if not store.exists("result.json"):
            with open(root / "computed.txt", "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(0.5)
            store.write_json("result.json", {"by": os.getpid()})
print(store.read_json("result.json")["by"])
"""


def test_single_flight_across_processes(store: ArtifactStore):
    root = store.local_path()
    procs = [_python(_SINGLE_FLIGHT, str(root)) for _ in range(2)]
    deadline = time.monotonic() + 30
    while len(list(root.glob("ready-*"))) < 2:  # both imported and waiting: start them together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.02)
    (root / "go").touch()
    outputs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len((root / "computed.txt").read_text().split()) == 1
    winners = {out.strip() for out, _ in outputs}
    assert len(winners) == 1 and winners.pop() in {str(p.pid) for p in procs}


def _write_lock(store: ArtifactStore, name: str, expires_in: float, token: str = "someone-else") -> Path:
    path = store.local_path() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": token, "host": "elsewhere", "pid": 4242,
                                "lease_seconds": 60, "expires": time.time() + expires_in}))
    return path


def test_expired_lock_file_is_taken_over(store: ArtifactStore):
    path = _write_lock(store, "job", expires_in=-1.0)
    start = time.monotonic()
    with store.lock("job", timeout=5) as lease:
        assert json.loads(path.read_text())["token"] == lease.token
    assert time.monotonic() - start < 1.0
    assert not path.exists()  # released


def test_empty_lock_file_counts_from_its_mtime(store: ArtifactStore):
    """A holder that died between creating the lock file and writing it."""
    path = store.local_path() / "locks" / "job.lock"
    path.parent.mkdir(parents=True)
    path.touch()
    with pytest.raises(LockTimeout, match="unreadable"):
        with store.lock("job", lease_seconds=30, timeout=0.3):
            pass
    os.utime(path, (time.time() - 60, time.time() - 60))
    with store.lock("job", lease_seconds=30, timeout=2):
        pass


_HOLD_FOREVER = """
import sys, time
from lth_core.store import ArtifactStore
with ArtifactStore(sys.argv[1]).lock("job", lease_seconds=1.0):
    print("held", flush=True)
    time.sleep(600)
"""


def test_killed_holder_is_taken_over_after_its_lease(store: ArtifactStore):
    holder = _python(_HOLD_FOREVER, str(store.local_path()))
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        time.sleep(1.0)  # beyond the 1 s lease: only renewals keep it
        with pytest.raises(LockTimeout, match=rf"'job'.*pid {holder.pid}"):
            with store.lock("job", timeout=0.3):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        start = time.monotonic()
        with store.lock("job", timeout=10, poll_seconds=0.05):
            waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.communicate()
    assert waited < 2.5


def test_dead_holder_on_this_host_is_taken_over_before_its_lease_ends(store: ArtifactStore):
    """A crashed local worker must not block the next one for a whole lease."""
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    path = store.local_path() / "locks" / "job.lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"token": "t", "host": socket.gethostname(), "pid": int(dead.stdout),
                                "lease_seconds": 600, "expires": time.time() + 600}))
    with store.lock("job", timeout=2):
        pass
    alive = _write_lock(store, "other", expires_in=600.0)  # a holder on another host: its lease binds
    with pytest.raises(LockTimeout):
        with store.lock("other", timeout=0.3):
            pass
    assert alive.exists()


@pytest.mark.parametrize("state", ["zombie", "stopped"])
def test_a_zombie_or_stopped_holder_on_this_host_counts_as_gone(store: ArtifactStore, state: str):
    """A holder that exited unreaped (a zombie answers kill(pid, 0)) or was stopped (SIGSTOP)
    does no work: the next worker takes the lock at once, not after the whole lease."""
    import signal

    code = ("import os, sys, time; from lth_core.store import ArtifactStore\n"
            "held = ArtifactStore(sys.argv[1]).lock('job', lease_seconds=600)\n"
            "held.__enter__()\n"
            "print('held', flush=True)\n"
            + ("os._exit(0)\n" if state == "zombie" else "time.sleep(60)\n"))  # no release on the way out
    holder = subprocess.Popen([sys.executable, "-c", code, str(store.local_path())], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        if state == "stopped":
            os.kill(holder.pid, signal.SIGSTOP)
        else:  # exited but not reaped: a zombie until wait()
            deadline = time.monotonic() + 10
            while Path(f"/proc/{holder.pid}/stat").read_text().split(") ")[1][0] != "Z":
                assert time.monotonic() < deadline, "the holder did not exit"
                time.sleep(0.05)
        with store.lock("job", timeout=3, poll_seconds=0.05):
            pass
    finally:
        if state == "stopped":
            holder.kill()
            os.kill(holder.pid, signal.SIGCONT)
        holder.wait()


def test_live_holder_keeps_lock_beyond_its_lease(store: ArtifactStore):
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("job", lease_seconds=0.6):
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        start = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            with store.lock("job", timeout=1.5, poll_seconds=0.05):
                pass
        assert time.monotonic() - start >= 1.5
        message = str(info.value)
        assert "'job'" in message and f"pid {os.getpid()}" in message and "expires in" in message
    finally:
        done.set()
        holder.join()
    with store.lock("job", timeout=0):  # released: free at once
        pass


def test_taken_over_lease_is_lost_and_not_released(store: ArtifactStore):
    with store.lock("job", lease_seconds=0.3) as lease:
        path = _write_lock(store, "job", expires_in=60)  # another process took over
        deadline = time.monotonic() + 5
        while not lease.lost and time.monotonic() < deadline:  # the next renewal notices
            time.sleep(0.02)
        assert lease.lost
    assert json.loads(path.read_text())["token"] == "someone-else"  # release left theirs alone


def test_takeover_is_exclusive_under_contention(store: ArtifactStore):
    """Many waiters find the same expired lock at once; still one holder at a time."""
    active, overlaps, entered = [0], [], []
    guard = threading.Lock()

    def worker(barrier: threading.Barrier) -> None:
        barrier.wait()
        with store.lock("hot", lease_seconds=5, timeout=20, poll_seconds=0.01):
            with guard:
                active[0] += 1
                overlaps.append(active[0])
            time.sleep(0.01)
            with guard:
                active[0] -= 1
                entered.append(1)

    for _ in range(5):
        _write_lock(store, "hot", expires_in=-1.0)
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=worker, args=(barrier,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(entered) == 30 and max(overlaps) == 1
