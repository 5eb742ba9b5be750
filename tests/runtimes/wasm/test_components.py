"""WASI preview-2 components (runtime=component): wasi:cli/run with stdin, stdout, limits and the cache."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.errors import InvalidModule
from soulbox.core.schemas import FunctionSpec, Handler, Limits, Outcome, Runtime
from soulbox.runtimes.js.http import HttpResponse
from soulbox.runtimes.wasm.runtime import WasmRuntime
from soulbox.runtimes.wasm.validate import validate_component
from tests.guests import wasm
from tests.guests.components import component

NAMES = ("hello", "echo", "fails", "exits", "loop", "grow", "big_write", "http_created")
ARTIFACTS = {hashlib.sha256(component(n)).hexdigest(): component(n) for n in NAMES}


async def _fetch(digest: str) -> bytes:
    return ARTIFACTS[digest]


def _spec(name: str, **limits: int | None) -> FunctionSpec:
    data = component(name)
    return FunctionSpec(
        tenant="t",
        name=name.replace("_", "-"),
        runtime=Runtime.COMPONENT,
        artifact=hashlib.sha256(data).hexdigest(),
        artifact_size=len(data),
        limits=Limits(**limits),  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[WasmRuntime]:
    wasm_runtime = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=2)
    yield wasm_runtime
    await wasm_runtime.close()


async def test_hello_and_echo(runtime: WasmRuntime) -> None:
    hello = await runtime.run(_spec("hello"), b"")
    assert (hello.outcome, hello.exit_code, hello.stdout) == (Outcome.SUCCESS, 0, b"hello from a component\n")
    payload = bytes(range(256)) * 100  # several 4 KiB reads and writes
    echo = await runtime.run(_spec("echo"), payload)
    assert echo.outcome is Outcome.SUCCESS and echo.stdout == payload


async def test_run_returning_err_and_exit_with_err_are_exit_code_1(runtime: WasmRuntime) -> None:
    failed = await runtime.run(_spec("fails"), b"")
    assert (failed.outcome, failed.exit_code) == (Outcome.FUNCTION_ERROR, 1)
    assert failed.error is not None and failed.error.kind == "exit"
    assert failed.error.message == "wasi:cli/run returned an error: it went wrong"
    assert failed.stderr == b"it went wrong\n"
    exited = await runtime.run(_spec("exits"), b"")
    assert (exited.outcome, exited.exit_code) == (Outcome.FUNCTION_ERROR, 1)
    assert exited.error is not None and exited.error.kind == "exit"


async def test_deadline_fuel_and_memory(runtime: WasmRuntime) -> None:
    looping = await runtime.run(_spec("loop", timeout_ms=200), b"")
    assert looping.outcome is Outcome.TIMEOUT and looping.error is not None and looping.error.kind == "timeout"
    burning = await runtime.run(_spec("loop", fuel=100_000), b"")
    assert burning.outcome is Outcome.FUNCTION_ERROR
    assert burning.error is not None and burning.error.kind == "out_of_fuel"
    growing = await runtime.run(_spec("grow", memory_mb=2), b"")
    # The limit refuses memory.grow; the guest traps (peak memory is not visible through a component).
    assert growing.outcome is Outcome.FUNCTION_ERROR
    assert growing.error is not None and growing.error.message == "wasm trap: wasm `unreachable` instruction executed"


async def test_a_wasi_call_the_host_refuses_fails_the_guest(runtime: WasmRuntime) -> None:
    refused = await runtime.run(_spec("big_write"), b"")
    assert refused.outcome is Outcome.FUNCTION_ERROR and refused.error is not None
    assert refused.error.kind == "trap" and refused.error.message.startswith("Buffer too large")


async def test_output_is_capped(runtime: WasmRuntime) -> None:
    echo = await runtime.run(_spec("echo", max_output_bytes=1000), b"x" * 10_000)
    assert echo.stdout == b"x" * 1000 and echo.stdout_truncated and echo.stdout_bytes == 10_000


async def test_compiled_once_then_deserialized(tmp_path: Path) -> None:
    first = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=1)
    for _ in range(2):
        assert (await first.run(_spec("hello"), b"")).outcome is Outcome.SUCCESS
    assert (first.modules.compiled, first.modules.deserialized) == (1, 0)
    await first.close()
    second = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=1)
    assert (await second.run(_spec("hello"), b"")).stdout == b"hello from a component\n"
    assert (second.modules.compiled, second.modules.deserialized) == (0, 1)
    await second.close()


async def test_http_handler_mode(runtime: WasmRuntime) -> None:
    spec = _spec("http_created").model_copy(update={"handler": Handler.HTTP})
    result = await runtime.run(spec, b"")
    assert result.outcome is Outcome.SUCCESS, result.error
    assert HttpResponse.decode(result.stdout) == HttpResponse(201, (("x-guest", "component"),), b"made by a component")


def test_validate_accepts_a_command_component() -> None:
    validate_component(component("hello"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (wasm("hello"), "core module: deploy it as runtime wasi"),
        (b"\0asm\x0d\x00\x01\x00\xff", "invalid WebAssembly component"),
        (component("bad_import"), "wasi:http/outgoing-handler@0.2.0"),
    ],
)
def test_validate_refuses(data: bytes, message: str) -> None:
    with pytest.raises(InvalidModule, match=message):
        validate_component(data)


def test_validate_requires_wasi_cli_run() -> None:
    import wasmtime

    reactor = bytes(wasmtime.wat2wasm("(component)"))
    with pytest.raises(InvalidModule, match="does not export wasi:cli/run"):
        validate_component(reactor)
