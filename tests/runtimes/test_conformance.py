"""One conformance suite for every runtime tier: same cases, same expectations.

A tier joins by adding a module to ``tests/runtimes/tiers/`` (see its
``base.py``): it builds its own program for each case and the runtime to run them.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.schemas import Limits, Outcome
from tests.runtimes import tiers
from tests.runtimes.tiers.base import TierUnderTest


def _tiers() -> dict[str, Callable[[Path], Awaitable[TierUnderTest]]]:
    """Every ``make`` / ``make_<variant>`` function of the modules in tests/runtimes/tiers/."""
    found: dict[str, Callable[[Path], Awaitable[TierUnderTest]]] = {}
    for info in pkgutil.iter_modules(tiers.__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{tiers.__name__}.{info.name}")
        for attr, value in vars(module).items():
            if attr == "make" or attr.startswith("make_"):
                found[info.name if attr == "make" else f"{info.name}-{attr[5:]}"] = value
    return found


TIERS = _tiers()


@pytest_asyncio.fixture(params=sorted(TIERS))
async def tier(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TierUnderTest]:
    under_test = await TIERS[request.param](tmp_path)
    try:
        yield under_test
    finally:
        await under_test.runtime.close()
        await under_test.runtime.close()  # close is repeat-safe


async def test_hello(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("hello", Limits()), b"")
    assert result.outcome is Outcome.SUCCESS and result.exit_code == 0
    assert result.stdout == tier.hello_output and result.stderr == b""
    assert result.duration_ms > 0


async def test_stdin_to_stdout(tier: TierUnderTest) -> None:
    payload = bytes(range(256)) * 600  # more than one read buffer
    result = await tier.runtime.run(tier.spec("echo", Limits()), payload)
    assert result.stdout == payload and result.stdout_bytes == len(payload)


async def test_stdout_stderr_and_exit_code(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("stderr_exit3", Limits()), b"")
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)
    assert result.outcome is Outcome.FUNCTION_ERROR and result.error is not None


async def test_timeout(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("loop", Limits(timeout_ms=300)), b"")
    assert result.outcome is Outcome.TIMEOUT and result.exit_code is None
    assert 300 <= result.duration_ms < 2000


async def test_memory_limit(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("grow", Limits(memory_mb=32)), b"")
    assert result.outcome is Outcome.OUT_OF_MEMORY
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes <= 32 * 1024 * 1024


async def test_crash(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("trap", Limits()), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.message


async def test_large_output_is_capped_and_flagged(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("big_output", Limits(max_output_bytes=10_000)), b"")
    assert result.outcome is Outcome.SUCCESS
    assert len(result.stdout) == 10_000 and result.stdout_truncated
    assert result.stdout_bytes == 4 * 1024 * 1024


async def test_concurrent_invocations_do_not_interfere(tier: TierUnderTest) -> None:
    payloads = [f"request {i}".encode() * (i + 1) for i in range(16)]
    results = await asyncio.gather(*(tier.runtime.run(tier.spec("echo", Limits()), p) for p in payloads))
    assert [r.stdout for r in results] == payloads


async def test_a_timeout_does_not_hold_up_other_invocations(tier: TierUnderTest) -> None:
    slow = asyncio.ensure_future(tier.runtime.run(tier.spec("loop", Limits(timeout_ms=1500)), b""))
    quick = await tier.runtime.run(tier.spec("hello", Limits()), b"")
    assert quick.outcome is Outcome.SUCCESS and not slow.done()
    assert (await slow).outcome is Outcome.TIMEOUT


async def test_slow_finishes_within_its_deadline(tier: TierUnderTest) -> None:
    result = await tier.runtime.run(tier.spec("slow", Limits(timeout_ms=5000)), b"")
    assert result.outcome is Outcome.SUCCESS and result.stdout == b"done\n"
    assert result.duration_ms >= 250
