"""The artifact store on S3, against moto's S3 server on 127.0.0.1 started here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer

from lth_core.store import ArtifactStore, CorruptArtifactError, LockTimeout

REPO = Path(__file__).resolve().parents[1]
BUCKET = "lth-artifacts"


def _start(server: ThreadedMotoServer, timeout: float = 15.0) -> None:
    """`start()` waits forever if the server thread dies, so start it from a helper thread
    and fail with the server's own exception when it does not come up."""
    errors: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        starter = threading.Thread(target=server.start, daemon=True)
        starter.start()
        starter.join(timeout)
    finally:
        threading.excepthook = previous
    if errors or starter.is_alive():
        reason = f"{errors[0]!r} (its own message is in the captured stderr)" if errors else f"not ready after {timeout:g}s"
        pytest.fail(f"moto S3 server could not start on 127.0.0.1: {reason}")


@pytest.fixture(scope="module")
def s3() -> boto3.client:
    """A bucket on a fresh moto server, with the AWS environment pointing at it."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
            env.setenv(name, value)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        _start(server)
        try:
            host, port = server.get_host_and_port()
            env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            yield client
        finally:
            server.stop()


@pytest.fixture
def store(s3, request) -> ArtifactStore:
    return ArtifactStore(f"s3://{BUCKET}/{request.node.name}")


def _key(store: ArtifactStore, path: str) -> str:
    return f"{store.uri.split('/', 3)[3]}/{path}"


_READER = """
import json, sys
from lth_core.store import ArtifactStore
store = ArtifactStore(sys.argv[1])
mask = store.read_tensors("tickets/k/level_1/mask.safetensors")
print(json.dumps({"ticket": store.read_json("tickets/k/ticket.json"), "list": store.list("tickets"),
                  "mask": {name: [str(t.dtype), t.int().tolist()] for name, t in mask.items()}}))
"""


def test_draw_written_here_is_read_by_another_process(store: ArtifactStore, s3):
    assert store.local_path() is None
    mask = {"conv1.weight": torch.tensor([[1, 0], [0, 1]], dtype=torch.bool), "fc.weight": torch.ones(3)}
    store.write_tensors("tickets/k/level_1/mask.safetensors", mask, metadata={"level": "1"})
    store.write_json("tickets/k/ticket.json", {"levels": 1, "sparsity": [0.2]})
    assert store.exists("tickets/k/ticket.json")

    reader = subprocess.run([sys.executable, "-c", _READER, store.uri], cwd=REPO, text=True,
                            capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert reader.returncode == 0, reader.stderr
    seen = json.loads(reader.stdout)
    assert seen["ticket"] == {"levels": 1, "sparsity": [0.2]}
    assert seen["list"] == ["tickets/k/level_1/mask.safetensors", "tickets/k/ticket.json"]
    assert seen["mask"] == {"conv1.weight": ["torch.bool", [[1, 0], [0, 1]]], "fc.weight": ["torch.float32", [1, 1, 1]]}

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=_key(store, ""))["Contents"]}
    assert _key(store, "tickets/k/ticket.json.sha256") in keys
    assert not any("/." in key for key in keys)  # no temporary objects left behind


def test_overwritten_object_is_corrupt(store: ArtifactStore, s3):
    store.write_bytes("blob.bin", b"original bytes")
    assert store.verify("blob.bin")
    s3.put_object(Bucket=BUCKET, Key=_key(store, "blob.bin"), Body=b"tampered bytes")
    assert store.exists("blob.bin") and not store.verify("blob.bin")
    with pytest.raises(CorruptArtifactError, match="does not match"):
        store.read_bytes("blob.bin")

    s3.delete_object(Bucket=BUCKET, Key=_key(store, "blob.bin.sha256"))
    assert not store.exists("blob.bin")
    with pytest.raises(CorruptArtifactError, match="incomplete"):
        store.read_bytes("blob.bin")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("never-written.bin")


def test_list_and_delete_prefix(store: ArtifactStore):
    for path in ("a/x.bin", "a/b/y.bin", "c.bin"):
        store.write_bytes(path, b"1")
    assert store.list("") == ["a/b/y.bin", "a/x.bin", "c.bin"]
    store.delete("a")
    store.delete("c.bin")
    assert store.list("") == [] and not store.exists("a/x.bin")


def test_lock_acquire_release_and_takeover(store: ArtifactStore, s3):
    store.lock_settle_seconds = 0.05  # moto answers within milliseconds
    lock_key = _key(store, "locks/tickets/k.lock")
    with store.lock("tickets/k", lease_seconds=5) as lease:
        record = json.loads(s3.get_object(Bucket=BUCKET, Key=lock_key)["Body"].read())
        assert record["token"] == lease.token and record["pid"] == os.getpid()
        with pytest.raises(LockTimeout, match=rf"'tickets/k'.*pid {os.getpid()}"):
            with store.lock("tickets/k", timeout=0.3):
                pass
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=lock_key)

    stale = {"token": "crashed", "host": "elsewhere", "pid": 1, "lease_seconds": 1, "expires": time.time() - 1}
    s3.put_object(Bucket=BUCKET, Key=lock_key, Body=json.dumps(stale).encode())
    start = time.monotonic()
    with store.lock("tickets/k", timeout=5):
        assert time.monotonic() - start < 2


def test_locks_are_exact_through_conditional_writes(store: ArtifactStore, s3):
    """Two writers that read the same state cannot both win: a create needs If-None-Match: *,
    a take-over the ETag the writer read (If-Match)."""
    from lth_core import store as store_module

    key = _key(store, "locks/race.lock")
    first, second = (store_module._ConditionalS3LockFile(s3, BUCKET, key) for _ in range(2))
    record = lambda token: {"token": token, "host": "h", "pid": 1, "lease_seconds": 1, "expires": time.time() + 60}  # noqa: E731
    assert first._put(record("a"), if_none_match="*") and not second._put(record("b"), if_none_match="*")
    stale = {**record("crashed"), "expires": time.time() - 1}
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(stale).encode())
    seen_first, seen_second = first._read(1.0), second._read(1.0)  # both see the same expired holder
    assert seen_first == seen_second and seen_first[0]["token"] == "crashed"
    assert first._put(record("a"), if_match=seen_first[1])
    assert not second._put(record("b"), if_match=seen_second[1])
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["token"] == "a"
    second.release("a")  # a release is conditional too: only the holder's record read just now goes
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key)


def test_a_server_without_conditional_writes_falls_back_with_a_warning(store: ArtifactStore, monkeypatch, caplog):
    from lth_core import store as store_module

    monkeypatch.setattr(store_module._ConditionalS3LockFile, "supports_conditional_writes", lambda self: False)
    store.lock_settle_seconds = 0.05
    with caplog.at_level("WARNING", logger="lth_core.store"):
        with store.lock("job", timeout=5):
            pass
        with store.lock("job", timeout=5):
            pass
    warnings = [r.getMessage() for r in caplog.records if "best effort" in r.getMessage()]
    assert len(warnings) == 1 and "If-None-Match" in warnings[0]
