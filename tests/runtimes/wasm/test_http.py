"""The HTTP handler contract (handler=http) on the Wasmtime tier: raw module, QuickJS, MicroPython."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from soulbox.core.schemas import FunctionSpec, Handler, Limits, Outcome, Runtime
from soulbox.runtimes.js.http import HttpRequest, HttpResponse
from soulbox.runtimes.wasm.handler import BadResponse, parse_response, request_document
from soulbox.runtimes.wasm.runtime import WasmRuntime
from tests.guests import wasm

# One handler, written for each interpreter: it reflects the request into the response.
REFLECT = {
    Runtime.QUICKJS: """
function handler(request) {
  console.log('seen', request.method, request.path);
  return {
    status: 202,
    headers: {'x-method': request.method, 'x-path': request.path, 'x-query': request.query,
              'x-type': request.headers['content-type'] || ''},
    body: request.body.toUpperCase(),
  };
}
""",
    Runtime.MICROPYTHON: """
def handler(request):
    print('seen', request['method'], request['path'])
    return {
        'status': 202,
        'headers': {'x-method': request['method'], 'x-path': request['path'], 'x-query': request['query'],
                    'x-type': request['headers'].get('content-type', '')},
        'body': request['body'].upper(),
    }
""",
}
JSON_BODY = {
    Runtime.QUICKJS: "function handler(request) { return {body: {ok: true, n: request.body.length}}; }",
    Runtime.MICROPYTHON: "def handler(request):\n    return {'body': {'ok': True, 'n': len(request['body'])}}\n",
}
NO_HANDLER = {Runtime.QUICKJS: "const x = 1;", Runtime.MICROPYTHON: "x = 1\n"}
LOOP = {
    Runtime.QUICKJS: "function handler(r) { for (;;) {} }",
    Runtime.MICROPYTHON: "def handler(r):\n    while True:\n        pass\n",
}
BIG = {
    Runtime.QUICKJS: "function handler(r) { return {body: 'x'.repeat(10000)}; }",
    Runtime.MICROPYTHON: "def handler(r):\n    return {'body': 'x' * 10000}\n",
}
INTERPRETERS = [Runtime.QUICKJS, Runtime.MICROPYTHON]


class Functions:
    """Deploys code (source or module) as specs a WasmRuntime can fetch."""

    def __init__(self) -> None:
        self.artifacts: dict[str, bytes] = {}

    async def fetch(self, digest: str) -> bytes:
        return self.artifacts[digest]

    def spec(self, runtime: Runtime, code: bytes, **limits: int) -> FunctionSpec:
        digest = hashlib.sha256(code).hexdigest()
        self.artifacts[digest] = code
        return FunctionSpec(
            tenant="t",
            name="f",
            runtime=runtime,
            artifact=digest,
            artifact_size=len(code),
            handler=Handler.HTTP,
            limits=Limits(**limits),
        )


@pytest.fixture
def functions() -> Functions:
    return Functions()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiled interpreters, shared by the tests of this module (compiling them takes seconds)."""
    return tmp_path_factory.mktemp("wasm-cache")


@pytest_asyncio.fixture
async def runtime(functions: Functions, cache_dir: Path) -> AsyncIterator[WasmRuntime]:
    wasm_runtime = WasmRuntime(functions.fetch, cache_dir=cache_dir, concurrency=2)
    yield wasm_runtime
    await wasm_runtime.close()


REQUEST = HttpRequest(
    method="PUT",
    url="http://localhost/run/orders/42?x=1",
    headers=(("Content-Type", "text/plain"), ("X-Seen", "a"), ("x-seen", "b")),
    body=b"order 42",
)


@pytest.mark.parametrize("language", INTERPRETERS)
async def test_the_same_handler_in_each_interpreter_answers_the_same(
    runtime: WasmRuntime, functions: Functions, language: Runtime
) -> None:
    result = await runtime.run(functions.spec(language, REFLECT[language].encode()), REQUEST.encode())
    assert result.outcome is Outcome.SUCCESS, result.error
    response = HttpResponse.decode(result.stdout)
    assert response.status == 202
    assert dict(response.headers) == {
        "x-method": "PUT",
        "x-path": "/run/orders/42",
        "x-query": "x=1",
        "x-type": "text/plain",
    }
    assert response.body == b"ORDER 42"
    assert result.stderr == b"seen PUT /run/orders/42\n"  # console output is not the response


async def test_a_raw_module_answers_with_its_envelope(runtime: WasmRuntime, functions: Functions) -> None:
    result = await runtime.run(functions.spec(Runtime.WASI, wasm("http_created")), REQUEST.encode())
    assert result.outcome is Outcome.SUCCESS, result.error
    assert HttpResponse.decode(result.stdout) == HttpResponse(201, (("x-guest", "wat"),), b"made by a raw module")


async def test_a_raw_module_reads_the_request_document(runtime: WasmRuntime, functions: Functions) -> None:
    # The echo module writes the request back: not a response (unknown fields), so a bad_response.
    result = await runtime.run(functions.spec(Runtime.WASI, wasm("echo")), REQUEST.encode())
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.kind == "bad_response"
    assert "unknown response field(s) method, path, query, url" in result.error.message


async def test_a_plain_invoke_body_is_a_post_to_root(runtime: WasmRuntime, functions: Functions) -> None:
    spec = functions.spec(Runtime.MICROPYTHON, REFLECT[Runtime.MICROPYTHON].encode())
    result = await runtime.run(spec, b"just a body")
    response = HttpResponse.decode(result.stdout)
    assert dict(response.headers)["x-method"] == "POST" and dict(response.headers)["x-path"] == "/"
    assert response.body == b"JUST A BODY"


@pytest.mark.parametrize("language", INTERPRETERS)
async def test_a_json_body_is_sent_as_json(runtime: WasmRuntime, functions: Functions, language: Runtime) -> None:
    result = await runtime.run(functions.spec(language, JSON_BODY[language].encode()), b"abc")
    response = HttpResponse.decode(result.stdout)
    assert response.status == 200
    assert dict(response.headers) == {"content-type": "application/json"}
    assert json.loads(response.body) == {"ok": True, "n": 3}


@pytest.mark.parametrize("language", INTERPRETERS)
async def test_a_source_without_handler_is_a_function_error(
    runtime: WasmRuntime, functions: Functions, language: Runtime
) -> None:
    result = await runtime.run(functions.spec(language, NO_HANDLER[language].encode()), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and "needs a function handler(request)" in result.error.message


@pytest.mark.parametrize("language", INTERPRETERS)
async def test_limits_hold_in_http_mode(runtime: WasmRuntime, functions: Functions, language: Runtime) -> None:
    looping = await runtime.run(functions.spec(language, LOOP[language].encode(), timeout_ms=300), b"")
    assert looping.outcome is Outcome.TIMEOUT
    big = await runtime.run(functions.spec(language, BIG[language].encode(), max_output_bytes=1000), b"")
    assert big.outcome is Outcome.SUCCESS and big.stdout_truncated and big.stdout_bytes == 10000
    assert HttpResponse.decode(big.stdout).body == b"x" * 1000  # the body is capped, the envelope decodes


async def test_binary_bodies_travel_as_base64(runtime: WasmRuntime, functions: Functions) -> None:
    source = (
        "import binascii\n"
        "def handler(request):\n"
        "    data = binascii.a2b_base64(request['body_base64'])\n"
        "    return {'body': bytes(reversed(data))}\n"
    )
    result = await runtime.run(
        functions.spec(Runtime.MICROPYTHON, source.encode()), HttpRequest(body=b"\xff\x00\xfe").encode()
    )
    assert result.outcome is Outcome.SUCCESS, result.error
    assert HttpResponse.decode(result.stdout).body == b"\xfe\x00\xff"


async def test_a_promise_from_a_quickjs_handler_is_refused(runtime: WasmRuntime, functions: Functions) -> None:
    spec = functions.spec(Runtime.QUICKJS, b"async function handler(r) { return {body: 'late'}; }")
    result = await runtime.run(spec, b"")
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and "returned a Promise" in result.error.message


def test_request_document() -> None:
    doc = json.loads(request_document(REQUEST.encode()))
    assert doc == {
        "method": "PUT",
        "url": "http://localhost/run/orders/42?x=1",
        "path": "/run/orders/42",
        "query": "x=1",
        "headers": {"content-type": "text/plain", "x-seen": "a, b"},
        "body": "order 42",
    }
    binary = json.loads(request_document(HttpRequest(body=b"\xff").encode()))
    assert "body" not in binary and base64.b64decode(binary["body_base64"]) == b"\xff"


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"hello", "not a JSON response"),
        (b"[1]", "must be a JSON object"),
        (b'{"stauts": 200}', "unknown response field(s) stauts"),
        (b'{"status": 99}', "status must be an integer from 100 to 599"),
        (b'{"status": true}', "status must be an integer"),
        (b'{"headers": {"x": "a\\r\\nset-cookie: evil"}}', "without CR, LF or NUL"),
        (b'{"headers": {"bad name": "v"}}', "bad header name"),
        (b'{"headers": "x"}', "headers must be an object or a list"),
        (b'{"body": "a", "body_base64": "YQ=="}', "not both"),
        (b'{"body_base64": "%%%"}', "not base64"),
    ],
)
def test_bad_responses_are_named(stdout: bytes, message: str) -> None:
    with pytest.raises(BadResponse, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_response(stdout)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_value = st.text(max_size=20).filter(lambda v: not any(c in v for c in "\r\n\0"))


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(_token, _value), max_size=4),
    body=st.binary(max_size=64),
)
def test_any_valid_envelope_parses_to_what_it_says(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    doc = {"status": status, "headers": [list(h) for h in headers], "body_base64": base64.b64encode(body).decode()}
    response = parse_response(json.dumps(doc).encode())
    assert response == HttpResponse(status, tuple(headers), body)
