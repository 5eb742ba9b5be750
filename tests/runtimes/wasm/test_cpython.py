"""Full CPython (runtime=cpython): the hyperlight CPython component with no network, limits, grants, http mode."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from soulbox.core.schemas import FunctionSpec, Handler, Limits, Outcome, Permissions, Runtime
from soulbox.runtimes.js.http import HttpRequest, HttpResponse
from soulbox.runtimes.wasm.runtime import WasmRuntime


class Sources:
    def __init__(self) -> None:
        self.artifacts: dict[str, bytes] = {}

    async def fetch(self, digest: str) -> bytes:
        return self.artifacts[digest]

    def spec(self, source: str, **fields: object) -> FunctionSpec:
        code = source.encode()
        digest = hashlib.sha256(code).hexdigest()
        self.artifacts[digest] = code
        return FunctionSpec(
            tenant="t", name="py", runtime=Runtime.CPYTHON, artifact=digest, artifact_size=len(code), **fields
        )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled CPython component, shared by this module's tests (its compile takes ~15 s)."""
    return tmp_path_factory.mktemp("cpython-cache")


@pytest.fixture
def sources() -> Sources:
    return Sources()


@pytest_asyncio.fixture
async def runtime(sources: Sources, cache_dir: Path, tmp_path: Path) -> AsyncIterator[WasmRuntime]:
    (tmp_path / "grants").mkdir()
    wasm = WasmRuntime(sources.fetch, cache_dir=cache_dir, concurrency=2, read_roots=[tmp_path / "grants"])
    yield wasm
    await wasm.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP port nothing in a guest may reach."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


async def test_python_314_with_stdin_env_and_stdout(runtime: WasmRuntime, sources: Sources) -> None:
    source = "import sys, os, json\nprint(json.dumps([sys.stdin.read(), os.environ['NAME'], sys.version_info[:2]]))\n"
    result = await runtime.run(sources.spec(source, env={"NAME": "soulbox"}), b"from stdin")
    assert result.outcome is Outcome.SUCCESS, result.error
    assert result.stdout == b'["from stdin", "soulbox", [3, 14]]\n'


async def test_exceptions_and_exit_codes(runtime: WasmRuntime, sources: Sources) -> None:
    raised = await runtime.run(sources.spec("raise ValueError('boom')\n"), b"")
    assert raised.outcome is Outcome.FUNCTION_ERROR and raised.exit_code == 1
    assert raised.error is not None and raised.error.kind == "exception" and "ValueError: boom" in raised.error.message
    exited = await runtime.run(sources.spec("import sys\nsys.exit(3)\n"), b"")
    assert (exited.outcome, exited.exit_code) == (Outcome.FUNCTION_ERROR, 3)


async def test_deadline_memory_and_output_cap(runtime: WasmRuntime, sources: Sources) -> None:
    looping = await runtime.run(sources.spec("while True:\n    pass\n", limits=Limits(timeout_ms=300)), b"")
    assert looping.outcome is Outcome.TIMEOUT
    hungry = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n"
    growing = await runtime.run(sources.spec(hungry, limits=Limits(memory_mb=64)), b"")
    assert growing.outcome is Outcome.OUT_OF_MEMORY, growing.error
    big = await runtime.run(sources.spec("print('x' * 10000)\n", limits=Limits(max_output_bytes=100)), b"")
    assert big.stdout == b"x" * 100 and big.stdout_truncated


async def test_no_network_by_http_or_sockets(runtime: WasmRuntime, sources: Sources, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    source = f"""
from wit_world.imports import outgoing_handler, wasi_http_types as t
request = t.OutgoingRequest(t.Fields())
request.set_scheme(t.Scheme_Http())
request.set_authority('127.0.0.1:{port}')
try:
    outgoing_handler.handle(request, None)
    print('sent')
except Exception as e:
    print('http refused:', type(e.value).__name__)
import _socket
try:
    _socket.socket().connect(('127.0.0.1', {port}))
    print('connected')
except OSError as e:
    print('socket refused')
"""
    result = await runtime.run(sources.spec(source), b"")
    assert result.outcome is Outcome.SUCCESS, result.error
    assert result.stdout == b"http refused: ErrorCode_HttpRequestDenied\nsocket refused\n"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever connected


async def test_read_grants_are_read_only(runtime: WasmRuntime, sources: Sources, tmp_path: Path) -> None:
    granted = tmp_path / "grants" / "data"
    granted.mkdir()
    (granted / "f.txt").write_text("granted text")
    source = f"""
print(open('{granted}/f.txt').read())
try:
    open('{granted}/new.txt', 'w')
except OSError as e:
    print('write refused')
"""
    result = await runtime.run(sources.spec(source, permissions=Permissions(read=[str(granted)])), b"")
    assert result.stdout == b"granted text\nwrite refused\n", result
    assert sorted(p.name for p in granted.iterdir()) == ["f.txt"]


async def test_http_handler_mode(runtime: WasmRuntime, sources: Sources) -> None:
    source = (
        "def handler(request):\n"
        "    print('seen', request['path'])\n"
        "    return {'status': 202, 'headers': {'x-query': request['query']}, 'body': request['body'][::-1]}\n"
    )
    request = HttpRequest(method="GET", url="http://h/run/x?a=1", body=b"abc")
    result = await runtime.run(sources.spec(source, handler=Handler.HTTP), request.encode())
    assert result.outcome is Outcome.SUCCESS, result.error
    assert HttpResponse.decode(result.stdout) == HttpResponse(202, (("x-query", "a=1"),), b"cba")
    assert result.stderr == b"seen /run/x\n"
