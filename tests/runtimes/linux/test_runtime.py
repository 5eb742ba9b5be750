"""LinuxRuntime: python, shell and node functions, the artifact cache, error classification."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import FunctionSpec, Limits, Outcome, Runtime
from soulbox.core.settings import Settings
from soulbox.runtimes.linux import names
from soulbox.runtimes.linux.errors import SandboxError, SandboxUnavailable, UnsupportedRuntime
from soulbox.runtimes.linux.runtime import LinuxRuntime, create_linux_runtime
from soulbox.runtimes.linux.validate import validate_script

from .conftest import isolated_settings

SOURCES = {
    "py-hello": (names.PYTHON, "import sys\nprint('hi from', sys.implementation.name)\n"),
    "sh-hello": (names.SHELL, 'echo "hi from $BASH_VERSINFO"; cat | tr a-z A-Z\n'),
    "sh-exit": (names.SHELL, "echo oops >&2; exit 7\n"),
    "sh-segv": (names.SHELL, "echo about to crash >&2; kill -SEGV $$\n"),
    "js-hello": (names.NODE, "process.stdin.pipe(process.stdout); console.error('hi from node');\n"),
    "js-throw": (names.NODE, "throw new Error('kaboom');\n"),
    "wasi": (Runtime.WASI, "\0asm"),
}


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


class Store:
    """A stand-in object store: serves the sources above, counts fetches."""

    def __init__(self) -> None:
        self.blobs = {_digest(src): src.encode() for _, src in SOURCES.values()}
        self.fetches = 0

    async def fetch(self, digest: str) -> bytes:
        self.fetches += 1
        await asyncio.sleep(0.01)
        return self.blobs[digest]


def spec(name: str, **limits: int) -> FunctionSpec:
    runtime, source = SOURCES[name]
    return FunctionSpec.model_construct(
        tenant="t", name=name, runtime=runtime, artifact=_digest(source), artifact_size=len(source),
        limits=Limits(**limits),
    )  # fmt: skip


@pytest.fixture
def store() -> Store:
    return Store()


@pytest_asyncio.fixture
async def runtime(kernel_ok: None, store: Store, tmp_path: Path) -> AsyncIterator[LinuxRuntime]:
    rt = LinuxRuntime(store.fetch, cache_dir=tmp_path / "cache", concurrency=4, settings=isolated_settings())
    try:
        yield rt
    finally:
        await rt.close()


async def test_python_function(runtime: LinuxRuntime) -> None:
    result = await runtime.run(spec("py-hello"), b"")
    assert result.outcome is Outcome.SUCCESS and result.stdout == b"hi from cpython\n"
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 1 << 20


async def test_shell_function(runtime: LinuxRuntime) -> None:
    result = await runtime.run(spec("sh-hello"), b"shout\n")
    assert result.outcome is Outcome.SUCCESS
    assert result.stdout.startswith(b"hi from 5") and result.stdout.endswith(b"SHOUT\n")


async def test_exit_code_and_last_stderr_line(runtime: LinuxRuntime) -> None:
    result = await runtime.run(spec("sh-exit"), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR and result.exit_code == 7
    assert result.error is not None and result.error.message == "exited with code 7: oops"


async def test_death_by_signal_is_named(runtime: LinuxRuntime) -> None:
    result = await runtime.run(spec("sh-segv"), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR and result.exit_code == 139
    assert result.error is not None and result.error.message.startswith("killed by SIGSEGV (exit status 139)")


async def test_node_function(runtime: LinuxRuntime) -> None:
    if str(names.NODE) not in runtime.available:
        pytest.skip("node is not installed on this machine")
    result = await runtime.run(spec("js-hello", memory_mb=256), b"piped through node")
    assert result.outcome is Outcome.SUCCESS, result.stderr
    assert result.stdout == b"piped through node" and result.stderr == b"hi from node\n"
    failed = await runtime.run(spec("js-throw", memory_mb=256), b"")
    assert failed.outcome is Outcome.FUNCTION_ERROR and failed.exit_code == 1
    assert b"Error: kaboom" in failed.stderr


async def test_a_missing_interpreter_is_a_platform_failure(kernel_ok: None, store: Store, tmp_path: Path) -> None:
    settings = isolated_settings(node="/nonexistent/node")
    rt = LinuxRuntime(store.fetch, cache_dir=tmp_path, concurrency=1, settings=settings)
    try:
        assert str(names.NODE) not in rt.available
        with pytest.raises(SandboxUnavailable, match="not installed"):
            await rt.run(spec("js-hello"), b"")
    finally:
        await rt.close()


async def test_other_runtimes_are_refused(runtime: LinuxRuntime) -> None:
    with pytest.raises(UnsupportedRuntime):
        await runtime.run(spec("wasi"), b"")


async def test_artifacts_are_fetched_once_and_kept_on_disk(store: Store, runtime: LinuxRuntime, tmp_path: Path) -> None:
    results = await asyncio.gather(*(runtime.run(spec("py-hello"), b"") for _ in range(4)))
    assert all(r.outcome is Outcome.SUCCESS for r in results)
    assert store.fetches == 1
    cached = tmp_path / "cache" / _digest(SOURCES["py-hello"][1])
    assert cached.read_bytes() == SOURCES["py-hello"][1].encode() and cached.stat().st_mode & 0o777 == 0o444
    # A new runtime on the same cache directory (a restarted worker) fetches nothing.
    again = LinuxRuntime(store.fetch, cache_dir=tmp_path / "cache", concurrency=1, settings=isolated_settings())
    try:
        assert (await again.run(spec("py-hello"), b"")).outcome is Outcome.SUCCESS
        assert store.fetches == 1
    finally:
        await again.close()


async def test_an_artifact_that_does_not_match_its_digest_is_refused(store: Store, runtime: LinuxRuntime) -> None:
    store.blobs[_digest(SOURCES["sh-exit"][1])] = b"echo tampered"
    with pytest.raises(SandboxError, match="does not match"):
        await runtime.run(spec("sh-exit"), b"")
    bad = spec("sh-exit").model_copy(update={"artifact": "../../etc/passwd"})
    with pytest.raises(InvalidRequest):
        await runtime.run(bad, b"")


async def test_the_worker_factory(kernel_ok: None, store: Store, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    rt = create_linux_runtime(settings, store.fetch, isolated_settings())
    try:
        assert rt.tier == "linux"
        assert (await rt.run(spec("py-hello"), b"")).outcome is Outcome.SUCCESS
        assert (tmp_path / "cache" / "linux" / _digest(SOURCES["py-hello"][1])).exists()
    finally:
        await rt.close()
        await rt.close()


@pytest.mark.parametrize("data", [b"", b"  \n", b"\0asm\1\0\0\0", b"print('\xff')"])
def test_deploy_time_validation_refuses_what_is_not_a_script(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        validate_script(data)


def test_deploy_time_validation_accepts_scripts() -> None:
    for _, source in SOURCES.values():
        if source != "\0asm":
            validate_script(source.encode())
