"""Source functions on the Wasmtime tier (QuickJS and MicroPython) under the conformance suite."""

from __future__ import annotations

import hashlib
from pathlib import Path

from soulbox.core.schemas import FunctionSpec, Limits, Runtime
from soulbox.runtimes.wasm.runtime import WasmRuntime
from tests.guests.sources import JAVASCRIPT, PYTHON

from .base import TierUnderTest


async def _make(tmp: Path, runtime: Runtime, sources: dict[str, str], hello: bytes) -> TierUnderTest:
    artifacts = {hashlib.sha256(s.encode()).hexdigest(): s.encode() for s in sources.values()}

    async def fetch(digest: str) -> bytes:
        return artifacts[digest]

    wasm = WasmRuntime(fetch, cache_dir=tmp / "cache", concurrency=4)

    def spec(case: str, limits: Limits) -> FunctionSpec:
        code = sources[case].encode()
        return FunctionSpec(
            tenant="t",
            name=case.replace("_", "-"),
            runtime=runtime,
            artifact=hashlib.sha256(code).hexdigest(),
            artifact_size=len(code),
            limits=limits,
        )

    return TierUnderTest(f"wasm-{runtime.value}", wasm, spec, hello_output=hello)


async def make_quickjs(tmp: Path) -> TierUnderTest:
    return await _make(tmp, Runtime.QUICKJS, JAVASCRIPT, b"hello from quickjs\n")


async def make_micropython(tmp: Path) -> TierUnderTest:
    return await _make(tmp, Runtime.MICROPYTHON, PYTHON, b"hello from micropython\n")
