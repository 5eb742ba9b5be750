"""The compiled-module cache: compile once, deserialize after, bounded in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from soulbox.core.bus import Buckets
from soulbox.core.errors import InvalidModule
from soulbox.core.schemas import FunctionSpec, Outcome
from soulbox.runtimes.artifacts import Artifacts
from soulbox.runtimes.wasm.runtime import WasmRuntime
from soulbox.runtimes.wasm.validate import validate_module
from tests.guests import wasm


def _spec(name: str) -> FunctionSpec:
    module = wasm(name)
    return FunctionSpec(
        tenant="t", name=name.replace("_", "-"), artifact=hashlib.sha256(module).hexdigest(), artifact_size=len(module)
    )


async def test_compiled_once_then_deserialized_by_a_new_worker(tmp_path: Path) -> None:
    fetched: list[str] = []

    async def fetch(digest: str) -> bytes:
        fetched.append(digest)
        return wasm("hello")

    first = WasmRuntime(fetch, cache_dir=tmp_path, concurrency=2)
    for _ in range(3):
        assert (await first.run(_spec("hello"), b"")).outcome is Outcome.SUCCESS
    assert (first.modules.compiled, first.modules.deserialized) == (1, 0)
    await first.close()
    assert len(list(tmp_path.glob("*.cwasm"))) == 1  # noqa: ASYNC240 - a test's look at its tmp dir

    second = WasmRuntime(fetch, cache_dir=tmp_path, concurrency=2)  # a restarted worker
    assert (await second.run(_spec("hello"), b"")).stdout == b"hello from wasm\n"
    assert (second.modules.compiled, second.modules.deserialized) == (0, 1)
    assert len(fetched) == 1  # the artifact was not even downloaded again
    await second.close()


async def test_lru_evicts_beyond_its_size(tmp_path: Path) -> None:
    sources = {hashlib.sha256(wasm(n)).hexdigest(): wasm(n) for n in ("hello", "echo", "trap")}

    async def fetch(digest: str) -> bytes:
        return sources[digest]

    runtime = WasmRuntime(fetch, cache_dir=tmp_path, concurrency=2, module_cache_size=2)
    for name in ("hello", "echo", "trap"):
        await runtime.run(_spec(name), b"")
    assert runtime.modules.evicted == 1
    assert runtime.modules.lookup(_spec("hello").artifact) is None
    await runtime.close()


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (b"", "magic"),
        (b"\0asm\x01\0\0\0\x01\xff", "invalid WebAssembly module"),
        (wasm("bad_import"), "env.launch_missiles"),
    ],
)
def test_validate_rejects_with_a_clear_message(module: bytes, message: str) -> None:
    with pytest.raises(InvalidModule, match=message):
        validate_module(module)


def test_validate_requires_start() -> None:
    import wasmtime

    with pytest.raises(InvalidModule, match="_start"):
        validate_module(wasmtime.wat2wasm('(module (memory (export "memory") 1))'))


async def test_a_worker_on_another_node_takes_the_compiled_module_from_the_object_store(
    tmp_path: Path, buckets: Buckets
) -> None:
    artifacts = Artifacts(buckets.artifacts)
    module = wasm("hello")
    digest = hashlib.sha256(module).hexdigest()
    await buckets.artifacts.put(digest, module)

    first = WasmRuntime(artifacts.fetch, cache_dir=tmp_path / "node-a", concurrency=2, shared=artifacts)
    assert (await first.run(_spec("hello"), b"")).stdout == b"hello from wasm\n"
    assert first.modules.compiled == 1
    await first.close()

    second = WasmRuntime(artifacts.fetch, cache_dir=tmp_path / "node-b", concurrency=2, shared=artifacts)
    assert (await second.run(_spec("hello"), b"")).stdout == b"hello from wasm\n"
    assert (second.modules.compiled, second.modules.fetched, second.modules.deserialized) == (0, 1, 1)
    assert await artifacts.get(second.modules.key(digest)) is not None
    await second.close()
