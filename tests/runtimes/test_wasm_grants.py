"""WASI filesystem grants: none by default; a granted directory is preopened read-only, under allowed roots only."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.schemas import FunctionSpec, Outcome, Permissions, Runtime
from soulbox.runtimes.protocol import RunResult
from soulbox.runtimes.wasm.grants import ROOTS_SETTING, GrantRefused, check_read_grants
from soulbox.runtimes.wasm.runtime import WasmRuntime

READ = "print(open('{dir}/in.txt').read(), end='')\n"
LIST = "import os\nprint(sorted(os.listdir('{dir}')))\n"
# Each attempt at changing the granted directory, reported instead of raised.
WRITE = """import os
def attempt(name, action):
    try:
        action()
        print(name, 'ok')
    except OSError as e:
        print(name, 'refused', e.errno)
def create():
    with open('{dir}/new.txt', 'w') as f:
        f.write('x')
def append():
    with open('{dir}/in.txt', 'a') as f:
        f.write('x')
attempt('create', create)
attempt('append', append)
attempt('remove', lambda: os.remove('{dir}/in.txt'))
attempt('mkdir', lambda: os.mkdir('{dir}/sub'))
attempt('rename', lambda: os.rename('{dir}/in.txt', '{dir}/moved.txt'))
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the module's tests: MicroPython compiles once, later runtimes deserialize it."""
    return tmp_path_factory.mktemp("wasm-cache")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    granted = tmp_path / "root" / "data"
    granted.mkdir(parents=True)
    (granted / "in.txt").write_text("hello from a granted dir\n")
    return tmp_path / "root"


@pytest_asyncio.fixture
async def sources(cache_dir: Path, root: Path) -> AsyncIterator[tuple[WasmRuntime, dict[str, bytes]]]:
    store: dict[str, bytes] = {}

    async def fetch(digest: str) -> bytes:
        return store[digest]

    runtime = WasmRuntime(fetch, cache_dir=cache_dir, concurrency=2, read_roots=[root])
    try:
        yield runtime, store
    finally:
        await runtime.close()


async def _run(sources: tuple[WasmRuntime, dict[str, bytes]], source: str, read: list[str] | None = None) -> RunResult:
    runtime, store = sources
    code = source.encode()
    digest = hashlib.sha256(code).hexdigest()
    store[digest] = code
    spec = FunctionSpec(
        tenant="t",
        name="files",
        runtime=Runtime.MICROPYTHON,
        artifact=digest,
        artifact_size=len(code),
        permissions=Permissions(read=read or []),
    )
    return await runtime.run(spec, b"")


async def test_a_granted_directory_is_readable(sources: tuple[WasmRuntime, dict[str, bytes]], root: Path) -> None:
    data = str(root / "data")
    read = await _run(sources, READ.format(dir=data), read=[data])
    assert read.outcome is Outcome.SUCCESS, read.stderr
    assert read.stdout == b"hello from a granted dir\n"
    listed = await _run(sources, LIST.format(dir=data), read=[data])
    assert listed.stdout == b"['in.txt']\n"


async def test_a_granted_directory_is_read_only(sources: tuple[WasmRuntime, dict[str, bytes]], root: Path) -> None:
    data = root / "data"
    result = await _run(sources, WRITE.format(dir=data), read=[str(data)])
    assert result.outcome is Outcome.SUCCESS, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [line.split()[:2] for line in lines] == [
        [action, "refused"] for action in ("create", "append", "remove", "mkdir", "rename")
    ]
    assert sorted(p.name for p in data.iterdir()) == ["in.txt"]
    assert (data / "in.txt").read_text() == "hello from a granted dir\n"


async def test_without_a_grant_the_guest_sees_no_directory(
    sources: tuple[WasmRuntime, dict[str, bytes]], root: Path
) -> None:
    data = str(root / "data")
    for source in (READ.format(dir=data), LIST.format(dir="/"), LIST.format(dir=".")):
        result = await _run(sources, source)
        assert result.outcome is Outcome.FUNCTION_ERROR
        assert b"OSError" in result.stderr and b"hello" not in result.stdout


async def test_a_grant_the_worker_does_not_allow_is_refused_before_running(
    sources: tuple[WasmRuntime, dict[str, bytes]], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "in.txt").write_text("secret\n")
    result = await _run(sources, READ.format(dir=outside), read=[str(outside)])
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.kind == "grant_refused"
    assert ROOTS_SETTING in result.error.message and result.stdout == b""


def test_no_roots_means_no_grants(tmp_path: Path) -> None:
    check_read_grants([], [])
    with pytest.raises(GrantRefused, match=ROOTS_SETTING):
        check_read_grants([str(tmp_path)], [])


def test_grants_must_lie_under_a_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    check_read_grants([str(root), str(root / "a" / "b"), str(root / "not-made-yet")], [root])
    for refused in ("/etc", str(tmp_path / "rootless"), str(root / ".." / "elsewhere"), "relative/dir"):
        with pytest.raises(GrantRefused) as caught:
            check_read_grants([refused], [root])
        assert caught.value.code == "grant_refused"


def test_a_symlink_under_a_root_cannot_point_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    with pytest.raises(GrantRefused, match="outside"):
        check_read_grants([str(root / "escape")], [root])
