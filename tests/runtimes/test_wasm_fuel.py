"""Fuel: a per-function CPU budget on a second, fuel-metering engine next to the plain one."""

from __future__ import annotations

import hashlib
from pathlib import Path

from soulbox.core.bus import Buckets
from soulbox.core.schemas import FunctionSpec, Limits, Outcome, Runtime
from soulbox.runtimes.artifacts import Artifacts
from soulbox.runtimes.wasm.runtime import WasmRuntime
from tests.guests import wasm
from tests.guests.sources import PYTHON

BUDGET = 10_000_000  # a few milliseconds of a tight loop


def _spec(name: str, *, fuel: int | None, timeout_ms: int = 30_000) -> FunctionSpec:
    module = wasm(name)
    return FunctionSpec(
        tenant="t",
        name=name.replace("_", "-"),
        artifact=hashlib.sha256(module).hexdigest(),
        artifact_size=len(module),
        limits=Limits(timeout_ms=timeout_ms, fuel=fuel),
    )


async def _fetch(digest: str) -> bytes:
    for name in ("hello", "loop", "echo"):
        if hashlib.sha256(wasm(name)).hexdigest() == digest:
            return wasm(name)
    raise KeyError(digest)


async def test_an_infinite_loop_runs_out_of_fuel_long_before_its_deadline(tmp_path: Path) -> None:
    runtime = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=2)
    try:
        result = await runtime.run(_spec("loop", fuel=BUDGET, timeout_ms=30_000), b"")
    finally:
        await runtime.close()
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.kind == "out_of_fuel"
    assert str(BUDGET) in result.error.message
    assert result.exit_code is None
    assert result.duration_ms < 5_000  # the 30 s deadline never came into it
    assert result.fuel_consumed == BUDGET


async def test_a_short_guest_with_enough_fuel_succeeds_and_reports_what_it_used(tmp_path: Path) -> None:
    runtime = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=2)
    try:
        hello = await runtime.run(_spec("hello", fuel=1_000), b"")
        echo = await runtime.run(_spec("echo", fuel=BUDGET), b"x" * 100_000)
    finally:
        await runtime.close()
    assert hello.outcome is Outcome.SUCCESS and hello.stdout == b"hello from wasm\n"
    assert hello.fuel_consumed is not None and 0 < hello.fuel_consumed < 1_000
    assert echo.outcome is Outcome.SUCCESS and echo.stdout == b"x" * 100_000
    assert echo.fuel_consumed is not None and echo.fuel_consumed > hello.fuel_consumed


async def test_without_a_budget_nothing_is_metered(tmp_path: Path) -> None:
    runtime = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=2)
    try:
        result = await runtime.run(_spec("hello", fuel=None), b"")
        assert result.outcome is Outcome.SUCCESS and result.fuel_consumed is None
        assert runtime.fuel_modules is None  # the fuel engine is made only when a budget needs it
    finally:
        await runtime.close()


async def test_one_module_with_and_without_fuel_on_one_worker(tmp_path: Path) -> None:
    runtime = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=4)
    try:
        plain_loop = await runtime.run(_spec("loop", fuel=None, timeout_ms=200), b"")
        fuel_loop = await runtime.run(_spec("loop", fuel=BUDGET, timeout_ms=30_000), b"")
        plain_hello = await runtime.run(_spec("hello", fuel=None), b"")
        fuel_hello = await runtime.run(_spec("hello", fuel=1_000), b"")
        fuel_modules = runtime.fuel_modules
        assert fuel_modules is not None
        assert (runtime.modules.compiled, fuel_modules.compiled) == (2, 2)  # each engine compiles its own
        digest = _spec("loop", fuel=None).artifact
        assert runtime.modules.key(digest) != fuel_modules.key(digest)
    finally:
        await runtime.close()
    assert plain_loop.outcome is Outcome.TIMEOUT
    assert fuel_loop.error is not None and fuel_loop.error.kind == "out_of_fuel"
    assert plain_hello.stdout == fuel_hello.stdout == b"hello from wasm\n"
    assert len(list(tmp_path.glob("*.cwasm"))) == 4  # noqa: ASYNC240 - a test's look at its tmp dir

    restarted = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=2)
    try:
        assert (await restarted.run(_spec("hello", fuel=1_000), b"")).outcome is Outcome.SUCCESS
        assert (await restarted.run(_spec("hello", fuel=None), b"")).outcome is Outcome.SUCCESS
        fuel_modules = restarted.fuel_modules
        assert fuel_modules is not None
        # Each engine found its own artifact on disk: nothing compiled, nothing rejected as corrupt.
        assert (fuel_modules.compiled, fuel_modules.deserialized) == (0, 1)
        assert (restarted.modules.compiled, restarted.modules.deserialized) == (0, 1)
    finally:
        await restarted.close()


async def test_fuel_and_plain_artifacts_share_the_object_store_under_their_own_keys(
    tmp_path: Path, buckets: Buckets
) -> None:
    artifacts = Artifacts(buckets.artifacts)
    digest = hashlib.sha256(wasm("hello")).hexdigest()
    await buckets.artifacts.put(digest, wasm("hello"))

    first = WasmRuntime(artifacts.fetch, cache_dir=tmp_path / "node-a", concurrency=2, shared=artifacts)
    try:
        assert (await first.run(_spec("hello", fuel=None), b"")).outcome is Outcome.SUCCESS
        assert (await first.run(_spec("hello", fuel=1_000), b"")).outcome is Outcome.SUCCESS
        fuel_modules = first.fuel_modules
        assert fuel_modules is not None
        plain_key, fuel_key = first.modules.key(digest), fuel_modules.key(digest)
    finally:
        await first.close()
    assert plain_key != fuel_key
    plain, fueled = await artifacts.get(plain_key), await artifacts.get(fuel_key)
    assert plain is not None and fueled is not None and plain != fueled

    second = WasmRuntime(artifacts.fetch, cache_dir=tmp_path / "node-b", concurrency=2, shared=artifacts)
    try:
        result = await second.run(_spec("hello", fuel=1_000), b"")
        assert result.outcome is Outcome.SUCCESS and result.fuel_consumed
        fuel_modules = second.fuel_modules
        assert fuel_modules is not None
        assert (fuel_modules.compiled, fuel_modules.fetched, fuel_modules.deserialized) == (0, 1, 1)
        assert second.modules.fetched == 0  # the plain engine was not asked
    finally:
        await second.close()


async def test_an_interpreter_guest_runs_out_of_fuel_too(tmp_path: Path) -> None:
    source = PYTHON["loop"].encode()
    digest = hashlib.sha256(source).hexdigest()

    async def fetch(wanted: str) -> bytes:
        assert wanted == digest
        return source

    runtime = WasmRuntime(fetch, cache_dir=tmp_path, concurrency=2)
    spec = FunctionSpec(
        tenant="t",
        name="py-loop",
        runtime=Runtime.MICROPYTHON,
        artifact=digest,
        artifact_size=len(source),
        limits=Limits(timeout_ms=60_000, fuel=50_000_000),
    )
    try:
        result = await runtime.run(spec, b"")
    finally:
        await runtime.close()
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.kind == "out_of_fuel"


async def test_the_deadline_still_applies_on_the_fuel_engine(tmp_path: Path) -> None:
    runtime = WasmRuntime(_fetch, cache_dir=tmp_path, concurrency=2)
    try:
        result = await runtime.run(_spec("loop", fuel=10**15, timeout_ms=200), b"")
    finally:
        await runtime.close()
    assert result.outcome is Outcome.TIMEOUT
    assert result.error is not None and result.error.kind == "timeout"
    assert result.fuel_consumed is None  # interrupted in a loop: Wasmtime's count is not current
