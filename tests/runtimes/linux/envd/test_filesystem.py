"""filesystem.Filesystem and /files through the official e2b SDK's Filesystem object."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest
from e2b import FileNotFoundException, Sandbox
from e2b.envd.client_sync import create_rpc_client
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.sandbox.filesystem.filesystem import FileType
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType
from protobuf import Oneof

from .conftest import Envd


def test_write_read_and_info(sandbox: Sandbox, envd: Envd) -> None:
    info = sandbox.files.write("notes/a.txt", "hello")  # relative: under the home
    assert info.path == str(envd.home / "notes" / "a.txt")
    assert info.type == FileType.FILE
    assert (envd.home / "notes" / "a.txt").read_text() == "hello"
    assert sandbox.files.read("notes/a.txt") == "hello"
    assert sandbox.files.read(info.path, format="bytes") == bytearray(b"hello")
    entry = sandbox.files.get_info(info.path)
    assert (entry.name, entry.type, entry.size, entry.mode, entry.permissions) == (
        "a.txt",
        FileType.FILE,
        5,
        0o644,
        "-rw-r--r--",
    )
    assert abs(entry.modified_time.timestamp() - os.stat(info.path).st_mtime) < 1
    assert sandbox.files.exists(info.path)
    assert not sandbox.files.exists(str(envd.home / "missing"))


def test_write_files_multipart_and_metadata(sandbox: Sandbox, envd: Envd) -> None:
    written = sandbox.files.write_files(
        [{"path": str(envd.home / "m" / "one"), "data": b"1"}, {"path": str(envd.home / "m" / "two"), "data": "22"}],
    )
    assert [w.name for w in written] == ["one", "two"]
    assert (envd.home / "m" / "two").read_text() == "22"
    gz = sandbox.files.write(str(envd.home / "gz.txt"), b"zipped" * 1000, gzip=True)
    assert gz.path == str(envd.home / "gz.txt")
    assert sandbox.files.read(gz.path, gzip=True) == "zipped" * 1000


def test_list_with_depth(sandbox: Sandbox, envd: Envd) -> None:
    (envd.home / "d" / "e" / "f").mkdir(parents=True)
    (envd.home / "d" / "top.txt").write_text("x")
    (envd.home / "d" / "e" / "mid.txt").write_text("x")
    (envd.home / "d" / "link").symlink_to(envd.home / "d" / "top.txt")
    shallow = {e.name: e for e in sandbox.files.list(str(envd.home / "d"))}
    assert set(shallow) == {"e", "top.txt", "link"}
    assert shallow["e"].type == FileType.DIR
    assert shallow["link"].type == FileType.SYMLINK
    assert shallow["link"].symlink_target == str(envd.home / "d" / "top.txt")
    deep = {e.path for e in sandbox.files.list(str(envd.home / "d"), depth=2)}
    assert str(envd.home / "d" / "e" / "mid.txt") in deep
    assert str(envd.home / "d" / "e" / "f") in deep


def test_make_dir_rename_remove(sandbox: Sandbox, envd: Envd) -> None:
    target = str(envd.home / "x" / "y")
    assert sandbox.files.make_dir(target) is True
    assert sandbox.files.make_dir(target) is False
    moved = sandbox.files.rename(target, str(envd.home / "z" / "y2"))
    assert moved.path == str(envd.home / "z" / "y2")
    assert moved.type == FileType.DIR
    assert not (envd.home / "x" / "y").exists()
    sandbox.files.remove(str(envd.home / "z"))
    assert not (envd.home / "z").exists()


def test_missing_paths_raise_file_not_found(sandbox: Sandbox, envd: Envd) -> None:
    missing = str(envd.home / "nope")
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(missing)
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info(missing)
    with pytest.raises(FileNotFoundException):
        sandbox.files.list(missing)
    with pytest.raises(FileNotFoundException):
        sandbox.files.remove(missing)
    with pytest.raises(FileNotFoundException):
        sandbox.files.rename(missing, missing + "2")


def test_polled_watcher_sees_created_file(sandbox: Sandbox, envd: Envd) -> None:
    (envd.home / "w" / "sub").mkdir(parents=True)
    watcher = sandbox.files.watch_dir(str(envd.home / "w"), recursive=True, include_entry=True)
    sandbox.files.write(str(envd.home / "w" / "sub" / "new.txt"), "data")
    events = []
    for _ in range(100):
        events += watcher.get_new_events()
        if any(e.name == "sub/new.txt" and e.type == FilesystemEventType.CREATE for e in events):
            break
        time.sleep(0.05)
    watcher.stop()
    created = [e for e in events if e.type == FilesystemEventType.CREATE]
    assert [e.name for e in created] == ["sub/new.txt"]


def test_streamed_watch_dir(envd: Envd, sandbox: Sandbox) -> None:
    (envd.home / "s").mkdir()
    rpc = create_rpc_client(filesystem_connect.FilesystemClientSync, envd.url, sandbox.connection_config)
    stream = rpc.watch_dir(filesystem_pb.WatchDirRequest(path=str(envd.home / "s")), timeout_ms=20_000)
    first = next(stream)
    assert first.event == Oneof("start", filesystem_pb.WatchDirResponse.StartEvent())
    (envd.home / "s" / "f.txt").write_text("x")
    event = next(stream).event
    assert event is not None and event.field == "filesystem"
    assert event.value.name == "f.txt"
    assert event.value.type == filesystem_pb.EventType.CREATE
    stream.close()


def test_twenty_megabytes_round_trip(sandbox: Sandbox, envd: Envd) -> None:
    payload = os.urandom(20 * 1024 * 1024)
    path = str(envd.home / "big.bin")
    sandbox.files.write(path, io.BytesIO(payload))  # a file object: streamed as octet-stream
    with sandbox.files.read(path, format="stream") as stream:
        digest = hashlib.sha256()
        size = 0
        for chunk in stream:
            digest.update(chunk)
            size += len(chunk)
    assert size == len(payload)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    sandbox.files.write_files([{"path": path + ".mp", "data": io.BytesIO(payload)}], use_octet_stream=False)
    assert hashlib.sha256((envd.home / "big.bin.mp").read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert _peak_rss_kib(envd.process.pid) < 80 * 1024  # streamed, never held whole


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")
