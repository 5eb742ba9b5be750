"""The walking skeleton end to end: HTTP -> NATS -> scheduler -> Wasmtime worker -> events."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.e2e.conftest import API_KEY, deploy
from tests.guests import wasm
from tests.stack import Stack


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def test_deploy_then_invoke_hello(api: httpx.Client) -> None:
    created = deploy(api, "hello", wasm("hello"), timeout_ms=2000)
    assert created.status_code in (200, 201), created.text
    body = created.json()
    assert body["name"] == "hello" and body["limits"]["timeout_ms"] == 2000
    assert len(body["artifact"]["sha256"]) == 64

    listed = api.get("/v1/functions").json()["functions"]
    assert "hello" in [f["name"] for f in listed]

    response = api.post("/v1/functions/hello/invoke")
    assert response.status_code == 200, response.text
    assert response.content == b"hello from wasm\n"
    invocation_id = response.headers["x-invocation-id"]
    record = api.get(f"/v1/invocations/{invocation_id}").json()  # readable as soon as the caller has the result
    assert record["status"] == "completed"
    assert record["outcome"] == "success" and record["exit_code"] == 0
    assert record["stdout"]["data"] == "hello from wasm\n"
    assert record["tier"] == "wasm" and record["worker"]
    assert record["duration_ms"] > 0 and record["peak_memory_bytes"] == 65536


def test_stdin_echo(api: httpx.Client) -> None:
    assert deploy(api, "echo", wasm("echo")).status_code in (200, 201)
    payload = bytes(range(256)) * 1000
    response = api.post("/v1/functions/echo/invoke", content=payload)
    assert response.status_code == 200
    assert response.content == payload


def test_async_invoke_then_poll(api: httpx.Client) -> None:
    deploy(api, "echo", wasm("echo"))
    accepted = api.post("/v1/functions/echo/invoke?async=true", content=b"later")
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["status"] == "accepted" and accepted.headers["location"] == body["url"]
    record = wait_for(lambda: (r := api.get(body["url"]).json())["status"] == "completed" and r)
    assert record["stdout"]["data"] == "later"


def test_infinite_loop_stopped_at_deadline(api: httpx.Client) -> None:
    deploy(api, "loop", wasm("loop"), timeout_ms=300)
    started = time.monotonic()
    response = api.post("/v1/functions/loop/invoke")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "invocation_timeout"
    assert 0.3 <= elapsed < 3
    record = api.get(f"/v1/invocations/{error['invocation_id']}").json()
    assert record["status"] == "timed_out" and record["outcome"] == "timeout"


def test_memory_growth_past_limit_refused(api: httpx.Client) -> None:
    deploy(api, "grow", wasm("grow"), memory_mb=2)
    response = api.post("/v1/functions/grow/invoke")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "out_of_memory"
    record = api.get(f"/v1/invocations/{error['invocation_id']}").json()
    assert record["status"] == "failed"
    assert record["peak_memory_bytes"] <= 2 * 1024 * 1024


def test_trap_reported_as_failed_with_message(api: httpx.Client) -> None:
    deploy(api, "trap", wasm("trap"))
    response = api.post("/v1/functions/trap/invoke")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "function_error" and "unreachable" in error["message"]
    record = api.get(f"/v1/invocations/{error['invocation_id']}").json()
    assert record["status"] == "failed" and record["error"]["kind"] == "trap"


def test_nonzero_exit_and_stderr(api: httpx.Client) -> None:
    deploy(api, "exit3", wasm("stderr_exit3"))
    response = api.post("/v1/functions/exit3/invoke")
    assert response.status_code == 502
    record = api.get(f"/v1/invocations/{response.json()['error']['invocation_id']}").json()
    assert record["exit_code"] == 3
    assert record["stdout"]["data"] == "out\n" and record["stderr"]["data"] == "err\n"


def test_large_output_truncated_and_flagged(api: httpx.Client) -> None:
    deploy(api, "big", wasm("big_output"), max_output_bytes=1000)
    response = api.post("/v1/functions/big/invoke")
    assert response.status_code == 200
    assert response.content == b"x" * 1000 and response.headers["x-stdout-truncated"] == "true"
    record = api.get(f"/v1/invocations/{response.headers['x-invocation-id']}").json()
    assert record["stdout"]["size"] == 4 * 1024 * 1024 and record["stdout"]["truncated"] is True


def test_unknown_function_is_404(api: httpx.Client) -> None:
    response = api.post("/v1/functions/nope/invoke")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "function_not_found", "message": "function 'nope' does not exist"}}
    assert api.get("/v1/invocations/0123456789abcdef").status_code == 404


@pytest.mark.parametrize(
    ("module", "needle"),
    [
        (b"not wasm at all", "magic"),
        (b"\0asm\x01\0\0\0\x05garbage", "invalid WebAssembly"),
        (wasm("bad_import"), "env.launch_missiles"),
    ],
)
def test_malformed_upload_is_400_with_compiler_message(api: httpx.Client, module: bytes, needle: str) -> None:
    response = deploy(api, "broken", module)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_module" and needle in error["message"]
    assert api.get("/v1/functions/broken").status_code == 404


def test_body_over_limit_is_413(api: httpx.Client, stack: Stack) -> None:
    deploy(api, "echo", wasm("echo"))
    response = api.post("/v1/functions/echo/invoke", content=b"x" * (6 * 1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_same_invocation_id_runs_once(api: httpx.Client) -> None:
    deploy(api, "echo", wasm("echo"))
    invocation_id = uuid.uuid4().hex
    first = api.post("/v1/functions/echo/invoke", content=b"one", headers={"X-Invocation-Id": invocation_id})
    second = api.post("/v1/functions/echo/invoke", content=b"two", headers={"X-Invocation-Id": invocation_id})
    assert first.status_code == second.status_code == 200
    assert first.content == second.content == b"one"
    record = api.get(f"/v1/invocations/{invocation_id}").json()
    assert record["attempt"] == 1


def test_delete_function(api: httpx.Client) -> None:
    deploy(api, "doomed", wasm("hello"))
    assert api.delete("/v1/functions/doomed").status_code == 204
    assert api.get("/v1/functions/doomed").status_code == 404
    assert api.delete("/v1/functions/doomed").status_code == 404


def test_deleting_a_function_drains_what_was_accepted(api: httpx.Client) -> None:
    """Accepted invocations carry their function's spec: a delete stops new ones, the queued ones still run."""
    deploy(api, "draining", wasm("slow"), timeout_ms=5000)
    urls = [api.post("/v1/functions/draining/invoke?async=true", content=b"").json()["url"] for _ in range(4)]
    assert api.delete("/v1/functions/draining").status_code == 204
    assert api.post("/v1/functions/draining/invoke", content=b"").status_code == 404
    for url in urls:
        assert wait_for(lambda u=url: api.get(u).json()["status"] == "completed", timeout=30)


def test_openapi_lists_the_routes(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/functions", "/v1/functions/{name}/invoke", "/v1/invocations/{invocation_id}"} <= set(doc["paths"])


def test_an_idle_stack_answers_at_once(api: httpx.Client) -> None:
    deploy(api, "hello", wasm("hello"))
    for _ in range(3):
        time.sleep(1.2)  # longer than any fetch or poll interval: every component is idle
        started = time.monotonic()
        response = api.post("/v1/functions/hello/invoke")
        assert response.status_code == 200
        assert time.monotonic() - started < 0.25


@pytest.mark.parametrize(
    ("runtime", "source", "tier"),
    [
        ("quickjs", "const s = std.in.readAsString(); console.log(`hi ${s}`)", "wasm"),
        ("micropython", "import sys\nprint('hi', sys.stdin.read())\n", "wasm"),
        ("python", "import sys\nprint('hi', sys.stdin.read())\n", "linux"),
        ("shell", 'read -r who\necho "hi $who"\n', "linux"),
    ],
)
def test_source_functions_through_the_stack(api: httpx.Client, runtime: str, source: str, tier: str) -> None:
    name = f"src-{runtime}"
    created = api.post(
        "/v1/functions", data={"name": name, "runtime": runtime}, files={"code": ("main", source.encode())}
    )
    assert created.status_code in (200, 201), created.text
    assert created.json()["runtime"] == runtime
    response = api.post(f"/v1/functions/{name}/invoke", content=runtime.encode())
    assert response.status_code == 200, response.text
    assert response.content == f"hi {runtime}\n".encode()
    record = api.get(f"/v1/invocations/{response.headers['x-invocation-id']}").json()
    assert record["tier"] == tier


@pytest.mark.parametrize(
    ("runtime", "source", "needle"),
    [("quickjs", "let x = 1;\nlet y = ;", "line 2, column 9"), ("micropython", "if x\n  y\n", "line 1")],
)
def test_source_syntax_errors_are_400_at_deploy(api: httpx.Client, runtime: str, source: str, needle: str) -> None:
    response = api.post(
        "/v1/functions", data={"name": "broken-src", "runtime": runtime}, files={"code": ("main", source.encode())}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and needle in error["message"] and "SyntaxError" in error["message"]


def test_unknown_runtime_is_400(api: httpx.Client) -> None:
    response = api.post("/v1/functions", data={"name": "x", "runtime": "cobol"}, files={"code": ("m", b"x")})
    assert response.status_code == 400 and "runtime must be one of" in response.json()["error"]["message"]


@pytest.mark.parametrize("runtime", ["bun", "deno"])
def test_js_functions_through_the_stack(api: httpx.Client, runtime: str) -> None:
    source = (
        "const input = await new Response(Deno.stdin.readable).text();\n"
        if runtime == "deno"
        else "const input = await Bun.stdin.text();\n"
    ) + "console.log(`hi ${input} ${(globalThis.Deno ? Deno.env.get('GREETING') : process.env.GREETING)}`);\n"
    name = f"js-{runtime}"
    created = api.post(
        "/v1/functions",
        data={"name": name, "runtime": runtime, "env": '{"GREETING": "there"}'},
        files={"code": ("main.ts", source.encode())},
    )
    assert created.status_code in (200, 201), created.text
    assert created.json()["env"] == ["GREETING"]
    response = api.post(f"/v1/functions/{name}/invoke", content=b"you")
    assert response.status_code == 200, response.text
    assert response.content == b"hi you there\n"


def test_runtime_js_is_detected_stored_concrete_and_invoked(api: httpx.Client) -> None:
    source = (
        "const input = await new Response(Deno.stdin.readable).text();\n"
        "console.log(`${typeof Deno.version.deno} ${input}`);\n"
    )
    created = api.post(
        "/v1/functions", data={"name": "js-detect", "runtime": "js"}, files={"code": ("main.js", source.encode())}
    )
    assert created.status_code in (200, 201), created.text
    assert created.json()["runtime"] == "deno"
    assert created.json()["detected_from"] == "code: `Deno.s` at line 1"
    assert api.get("/v1/functions/js-detect").json()["runtime"] == "deno"  # the spec holds the concrete runtime
    response = api.post("/v1/functions/js-detect/invoke", content=b"you")
    assert response.status_code == 200, response.text
    assert response.content == b"string you\n"


def test_js_detection_from_file_name_manifest_and_conflict(api: httpx.Client) -> None:
    by_name = api.post("/v1/functions", data={"name": "ts-bun"}, files={"code": ("main.ts", b"Bun.version;\n")})
    assert by_name.status_code in (200, 201), by_name.text
    assert by_name.json()["runtime"] == "bun" and by_name.json()["detected_from"] == "code: `Bun.v` at line 1"
    by_manifest = api.post(
        "/v1/functions",
        data={"name": "ts-pkg", "runtime": "ts", "package_json": '{"engines": {"bun": "1"}}'},
        files={"code": ("main.ts", b"console.log(1);\n")},
    )
    assert by_manifest.status_code in (200, 201), by_manifest.text
    assert by_manifest.json()["runtime"] == "bun"
    conflict = api.post(
        "/v1/functions", data={"name": "both", "runtime": "js"}, files={"code": ("m.js", b"Deno.pid; Bun.pid;\n")}
    )
    assert conflict.status_code == 400 and conflict.json()["error"]["code"] == "invalid_request"
    assert "Deno by" in conflict.json()["error"]["message"] and "Bun by" in conflict.json()["error"]["message"]
    assert api.get("/v1/functions/both").status_code == 404


def test_bad_env_and_permissions_are_400(api: httpx.Client) -> None:
    code = ("main.ts", b"console.log(1)\n")
    bad_env = api.post(
        "/v1/functions", data={"name": "e", "runtime": "deno", "env": '{"1x": "y"}'}, files={"code": code}
    )
    assert bad_env.status_code == 400 and "env" in bad_env.json()["error"]["message"]
    not_json = api.post("/v1/functions", data={"name": "e", "runtime": "deno", "env": "{"}, files={"code": code})
    assert not_json.status_code == 400
    wasm_grant = api.post(
        "/v1/functions",
        data={"name": "e", "runtime": "quickjs", "permissions": '{"net": ["example.com"]}'},
        files={"code": code},
    )
    assert wasm_grant.status_code == 400 and "permissions" in wasm_grant.json()["error"]["message"]


def test_a_workers_style_handler_answers_with_its_own_status_and_headers(api: httpx.Client) -> None:
    source = (
        "export default {\n"
        "  async fetch(request, env) {\n"
        "    const body = await request.text();\n"
        "    return new Response(`echo ${body}`, { status: 201, headers: { 'x-made-by': 'deno' } });\n"
        "  },\n"
        "};\n"
    )
    created = api.post(
        "/v1/functions", data={"name": "workers", "runtime": "deno"}, files={"code": ("main.ts", source.encode())}
    )
    assert created.status_code in (200, 201), created.text
    response = api.post("/v1/functions/workers/invoke", content=b"ping")
    assert response.status_code == 201, response.text
    assert response.content == b"echo ping"
    assert response.headers["x-made-by"] == "deno" and response.headers["x-invocation-id"]


def test_a_fuel_budget_stops_a_loop_before_its_deadline(api: httpx.Client) -> None:
    created = deploy(api, "fuel-loop", wasm("loop"), timeout_ms=20_000, fuel=10_000_000)
    assert created.status_code in (200, 201), created.text
    assert created.json()["limits"]["fuel"] == 10_000_000
    started = time.monotonic()
    response = api.post("/v1/functions/fuel-loop/invoke")
    assert time.monotonic() - started < 10
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "function_error" and "fuel budget of 10000000 exhausted" in error["message"]
    record = api.get(f"/v1/invocations/{error['invocation_id']}").json()
    assert record["status"] == "failed" and record["outcome"] == "function_error"
    assert record["error"]["kind"] == "out_of_fuel"

    assert deploy(api, "fuel-hello", wasm("hello"), fuel=1_000).status_code in (200, 201)
    assert api.post("/v1/functions/fuel-hello/invoke").content == b"hello from wasm\n"
    plain = deploy(api, "plain-hello", wasm("hello"))
    assert "fuel" not in plain.json()["limits"]  # no budget: the limits read as before fuel existed


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"fuel": "0"}, "fuel must be between 1 and"),
        ({"fuel": str(10**12 + 1)}, "SOULBOX_WASM__MAX_FUEL"),
        ({"fuel": "lots"}, "fuel must be an integer"),
        ({"fuel": "1000", "runtime": "python"}, "python functions take no fuel"),
    ],
)
def test_bad_fuel_is_400(api: httpx.Client, fields: dict[str, str], needle: str) -> None:
    response = api.post(
        "/v1/functions", data={"name": "bad-fuel", **fields}, files={"module": ("m.wasm", wasm("hello"))}
    )
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_read_grants_through_the_stack(api: httpx.Client, stack: Stack) -> None:
    granted = stack.root / "grants" / "reports"
    granted.mkdir(exist_ok=True)
    (granted / "q3.txt").write_text("revenue: up\n")
    source = f"print(open('{granted}/q3.txt').read(), end='')\nopen('{granted}/x', 'w')\n"
    created = api.post(
        "/v1/functions",
        data={"name": "reader", "runtime": "micropython", "permissions": json.dumps({"read": [str(granted)]})},
        files={"code": ("main.py", source.encode())},
    )
    assert created.status_code in (200, 201), created.text
    response = api.post("/v1/functions/reader/invoke")
    assert response.status_code == 502  # it read the file, then was refused the write
    record = api.get(f"/v1/invocations/{response.json()['error']['invocation_id']}").json()
    assert record["stdout"]["data"] == "revenue: up\n" and "EPERM" in record["stderr"]["data"]
    assert not (granted / "x").exists()

    for path in ("/etc", str(stack.root / "data"), str(granted / ".." / ".." / "data")):
        refused = api.post(
            "/v1/functions",
            data={"name": "snoop", "runtime": "micropython", "permissions": json.dumps({"read": [path]})},
            files={"code": ("main.py", b"print(1)\n")},
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "grant_refused" and "SOULBOX_WASM__READ_ROOTS" in error["message"]


def test_api_keys_guard_every_v1_route(stack: Stack) -> None:
    """With keys configured, every /v1 route wants one (webhooks excepted: they carry a signature)."""
    guarded = [
        ("GET", "/v1/functions"),
        ("POST", "/v1/functions/echo/invoke"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/triggers"),
        ("GET", "/v1/tenants/default/export"),
    ]
    for method, path in guarded:
        anonymous = httpx.request(method, f"{stack.url}{path}", timeout=10)
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "unauthenticated"
        wrong = httpx.request(method, f"{stack.url}{path}", headers={"X-API-KEY": "nope"}, timeout=10)
        assert wrong.status_code == 401, path
    assert httpx.get(f"{stack.url}/v1/functions", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.post(f"{stack.url}/v1/hooks/default/nope", content=b"{}", timeout=10).json()["error"]["code"] != (
        "unauthenticated"
    )
    assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
