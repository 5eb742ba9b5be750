"""Workers-style modules: `export default { fetch(request, env, ctx) }` on warm processes."""

from __future__ import annotations

import asyncio

from soulbox.core.schemas import Limits, Outcome, Runtime
from soulbox.runtimes.js.config import FunctionConfig
from soulbox.runtimes.js.http import HttpRequest, HttpResponse

from .conftest import Make

HANDLER = """
interface Env { GREETING: string }
let served = 0;
export default {
  async fetch(request: Request, env: Env, ctx: { waitUntil(p: Promise<unknown>): void }): Promise<Response> {
    served += 1;
    const url = new URL(request.url);
    console.log("serving", request.method, url.pathname);
    console.error("to stderr");
    const body = await request.text();
    return new Response(`${env.GREETING} ${body} #${served}`, {
      status: 201,
      headers: {
        "content-type": "text/plain",
        "x-path": url.pathname + url.search,
        "x-in": request.headers.get("x-in") ?? "",
      },
    });
  },
};
"""
THROWS = """
export default {
  fetch(request: Request): Response {
    throw new RangeError("bad input: " + request.method);
  },
};
"""
REJECTS = """
export default {
  async fetch(): Promise<Response> {
    Promise.reject(new Error("nobody awaited me"));
    await new Promise((resolve) => setTimeout(resolve, 50));
    return new Response("unreachable");
  },
};
"""
LOOPS = """
export default {
  fetch(request: Request): Response {
    if (new URL(request.url).pathname === "/spin") while (true) {}
    return new Response("ok");
  },
};
"""
EXITS = """
export default {
  fetch(request: Request): Response {
    if (new URL(request.url).pathname === "/exit") (globalThis.Deno ?? process).exit(7);
    return new Response("still here");
  },
};
"""
NOT_A_HANDLER = "export default { hello: 1 };\n"
NOT_A_RESPONSE = "export default { fetch() { return { status: 200 }; } };\n"


def _greeting(spec: object) -> FunctionConfig:
    return FunctionConfig(env={"GREETING": "hello"})


async def test_fetch_handler_returns_status_headers_and_body(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"handler": HANDLER}, configure=_greeting)
    request = HttpRequest("PUT", "http://fn.local/items/7?q=1", (("x-in", "abc"),), b"world")
    result = await js.run(guests.spec("handler"), request.encode())
    assert result.outcome is Outcome.SUCCESS and result.error is None
    response = HttpResponse.decode(result.stdout)
    assert response.status == 201 and response.body == b"hello world #1"
    headers = dict(response.headers)
    assert headers["x-path"] == "/items/7?q=1" and headers["x-in"] == "abc"
    assert headers["content-type"] == "text/plain"
    assert result.stderr == b"serving PUT /items/7\nto stderr\n"
    assert result.stdout_bytes == len(b"hello world #1") and not result.stdout_truncated

    # Warm: the same process serves the next request (module state persists), no new start.
    again = await js.run(guests.spec("handler"), b"raw body")  # raw input: a POST / with that body
    assert HttpResponse.decode(again.stdout).body == b"hello raw body #2"
    assert js.started == 1


async def test_response_body_is_capped(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"big": 'export default { fetch: () => new Response("y".repeat(50000)) };\n'})
    result = await js.run(guests.spec("big", Limits(max_output_bytes=1000)), b"")
    assert HttpResponse.decode(result.stdout).body == b"y" * 1000
    assert result.stdout_truncated and result.stdout_bytes == 50000


async def test_a_throwing_handler_is_a_function_error_and_stays_warm(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"throws": THROWS})
    for _ in range(2):
        result = await js.run(guests.spec("throws"), b"")
        assert result.outcome is Outcome.FUNCTION_ERROR
        assert result.error is not None and result.error.kind == "exception"
        assert result.error.message == "RangeError: bad input: POST"
        assert b"bad input" in result.stderr  # the stack goes to the logs
    assert js.started == 1


async def test_an_unhandled_rejection_is_reported_and_the_process_replaced(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"rejects": REJECTS})
    result = await js.run(guests.spec("rejects"), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.kind == "unhandled_rejection"
    assert "nobody awaited me" in result.error.message
    second = await js.run(guests.spec("rejects"), b"")
    assert second.error is not None and second.error.kind == "unhandled_rejection"
    assert js.started == 2


async def test_an_infinite_loop_is_stopped_at_the_deadline_and_the_pool_recovers(
    make: Make, runtime_name: Runtime
) -> None:
    js, guests = make(runtime_name, {"loops": LOOPS})
    spin = HttpRequest("GET", "http://fn.local/spin").encode()
    result = await js.run(guests.spec("loops", Limits(timeout_ms=400)), spin)
    assert result.outcome is Outcome.TIMEOUT and 400 <= result.duration_ms < 2000
    after = await js.run(guests.spec("loops", Limits(timeout_ms=400)), HttpRequest("GET").encode())
    assert after.outcome is Outcome.SUCCESS and HttpResponse.decode(after.stdout).body == b"ok"
    assert js.started == 2  # the looping process was killed and replaced


async def test_a_process_that_dies_mid_request_is_a_crash_and_is_replaced(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"exits": EXITS})
    result = await js.run(guests.spec("exits"), HttpRequest("GET", "http://fn/exit").encode())
    assert result.outcome is Outcome.FUNCTION_ERROR and result.error is not None
    assert (result.error.kind, result.error.message) == ("crash", "the runtime exited with code 7")
    after = await js.run(guests.spec("exits"), HttpRequest("GET").encode())
    assert HttpResponse.decode(after.stdout).body == b"still here" and js.started == 2


async def test_a_module_without_a_fetch_handler_fails_to_load(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"nothing": NOT_A_HANDLER, "object": NOT_A_RESPONSE})
    result = await js.run(guests.spec("nothing"), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR and result.error is not None
    assert result.error.kind == "load" and "fetch(request, env, ctx)" in result.error.message
    bad = await js.run(guests.spec("object"), b"")
    assert bad.error is not None and bad.error.kind == "bad_response"


async def test_functions_never_share_a_process(make: Make, runtime_name: Runtime) -> None:
    # An id per process (in a sandbox every runtime is pid 1 of its own namespace).
    pid = "const id = crypto.randomUUID();\nexport default { fetch: () => new Response(id) };\n"
    js, guests = make(runtime_name, {"one": pid, "two": pid + "// a different artifact\n"})
    results = await asyncio.gather(*(js.run(guests.spec(name), b"") for name in ("one", "two", "one", "two")))
    pids = [HttpResponse.decode(r.stdout).body for r in results]
    assert len(set(pids)) >= 2 and not set(pids[0::2]) & set(pids[1::2])
