"""Wasmtime HTTP handlers (handler=http) and WASI p2 components through the gateway: routes and invoke."""

from __future__ import annotations

import httpx
import pytest

from tests.guests import wasm
from tests.guests.components import component

HANDLERS = {
    "quickjs": (
        "function handler(request) {\n"
        "  return {status: 201, headers: {'x-path': request.path, 'x-query': request.query,\n"
        "          'x-agent': request.headers['x-agent'] || ''}, body: `${request.method} ${request.body}`};\n"
        "}\n"
    ),
    "micropython": (
        "def handler(request):\n"
        "    return {'status': 201,\n"
        "            'headers': {'x-path': request['path'], 'x-query': request['query'],\n"
        "                        'x-agent': request['headers'].get('x-agent', '')},\n"
        "            'body': request['method'] + ' ' + request['body']}\n"
    ),
}


def _deploy(api: httpx.Client, name: str, runtime: str, code: bytes) -> None:
    created = api.post(
        "/v1/functions",
        data={"name": name, "runtime": runtime, "handler": "http", "timeout_ms": "5000"},
        files={"code": (name, code)},
    )
    assert created.status_code in (200, 201), created.text
    assert created.json()["handler"] == "http"


@pytest.mark.parametrize("runtime", ["quickjs", "micropython"])
def test_route_and_invoke_answer_with_the_handlers_response(api: httpx.Client, runtime: str) -> None:
    name = f"http-{runtime}"
    _deploy(api, name, runtime, HANDLERS[runtime].encode())
    trigger = {"id": name, "function": name, "kind": "http", "http": {"method": "PATCH", "path": f"/{name}/{{id}}"}}
    assert api.post("/v1/triggers", json=trigger).status_code == 201

    routed = api.patch(f"/run/default/{name}/7?q=1", content=b"payload", headers={"x-agent": "tests"})
    assert routed.status_code == 201, routed.text
    assert routed.headers["x-path"] == f"/run/default/{name}/7" and routed.headers["x-query"] == "q=1"
    assert routed.headers["x-agent"] == "tests" and routed.headers["x-invocation-id"]
    assert routed.content == b"PATCH payload"

    invoked = api.post(f"/v1/functions/{name}/invoke", content=b"direct")  # a POST / with the body
    assert invoked.status_code == 201 and invoked.headers["x-path"] == "/"
    assert invoked.content == b"POST direct"


def test_raw_module_handler_and_a_bad_response(api: httpx.Client) -> None:
    _deploy(api, "http-wat", "wasi", wasm("http_created"))
    answered = api.post("/v1/functions/http-wat/invoke")
    assert answered.status_code == 201 and answered.headers["x-guest"] == "wat"
    assert answered.content == b"made by a raw module"

    _deploy(api, "http-hello", "wasi", wasm("hello"))  # prints text, not a response envelope
    failed = api.post("/v1/functions/http-hello/invoke")
    assert failed.status_code == 502
    error = failed.json()["error"]
    assert error["code"] == "function_error" and "not a JSON response" in error["message"]
    record = api.get(f"/v1/invocations/{error['invocation_id']}").json()
    assert record["error"]["kind"] == "bad_response"


def test_handler_mode_is_only_for_the_wasmtime_tier(api: httpx.Client) -> None:
    refused = api.post(
        "/v1/functions",
        data={"name": "http-sh", "runtime": "shell", "handler": "http"},
        files={"code": ("x.sh", b"echo hi")},
    )
    assert refused.status_code == 400 and "Wasmtime tier" in refused.json()["error"]["message"]
    unknown = api.post(
        "/v1/functions",
        data={"name": "http-x", "runtime": "quickjs", "handler": "grpc"},
        files={"code": ("x.js", b"1")},
    )
    assert unknown.status_code == 400 and "handler must be one of stdio, http" in unknown.json()["error"]["message"]


def test_components_deploy_and_run_plain_and_as_http_handlers(api: httpx.Client) -> None:
    plain = api.post(
        "/v1/functions",
        data={"name": "comp-echo", "runtime": "component"},
        files={"code": ("c.wasm", component("echo"))},
    )
    assert plain.status_code in (200, 201), plain.text
    assert api.post("/v1/functions/comp-echo/invoke", content=b"through p2").content == b"through p2"
    _deploy(api, "comp-http", "component", component("http_created"))
    answered = api.post("/v1/functions/comp-http/invoke")
    assert answered.status_code == 201 and answered.headers["x-guest"] == "component"
    refused = api.post(
        "/v1/functions",
        data={"name": "comp-bad", "runtime": "component"},
        files={"code": ("c.wasm", component("bad_import"))},
    )
    assert refused.status_code == 400 and "wasi:http/outgoing-handler" in refused.json()["error"]["message"]
