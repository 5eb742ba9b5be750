"""The Wasmtime tier under the conformance suite: WAT guests from tests/guests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from soulbox.core.schemas import FunctionSpec, Limits
from soulbox.runtimes.wasm.runtime import WasmRuntime
from tests.guests import wasm

from .base import CASES, TierUnderTest


async def make(tmp: Path) -> TierUnderTest:
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
            limits=limits,
        )

    return TierUnderTest("wasm", runtime, spec, hello_output=b"hello from wasm\n")
