"""The Wasmtime tier under the conformance suite: WAT guests from tests/guests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from soulbox.core.schemas import FunctionSpec, Limits
from soulbox.runtimes.wasm.runtime import WasmRuntime
from tests.guests import wasm

from .base import CASES, TierUnderTest

# Never exhausted by any case: on the fuel engine every case must end exactly as on the plain one.
UNREACHED_FUEL = 10**15


async def make(tmp: Path) -> TierUnderTest:
    return _make(tmp, fuel=None)


async def make_fuel(tmp: Path) -> TierUnderTest:
    """The same modules on the fuel-metering engine (functions deployed with a ``fuel`` budget)."""
    return _make(tmp, fuel=UNREACHED_FUEL)


def _make(tmp: Path, *, fuel: int | None) -> TierUnderTest:
    artifacts = {hashlib.sha256(wasm(c)).hexdigest(): wasm(c) for c in CASES}

    async def fetch(digest: str) -> bytes:
        return artifacts[digest]

    runtime = WasmRuntime(fetch, cache_dir=tmp / "cache", concurrency=4)

    def spec(case: str, limits: Limits) -> FunctionSpec:
        module = wasm(case)
        return FunctionSpec(
            tenant="t",
            name=case.replace("_", "-"),
            artifact=hashlib.sha256(module).hexdigest(),
            artifact_size=len(module),
            limits=limits.model_copy(update={"fuel": fuel}),
        )

    return TierUnderTest("wasm", runtime, spec, hello_output=b"hello from wasm\n")
