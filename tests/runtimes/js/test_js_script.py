"""Script mode: top-level code, stdin -> stdout, the exit status; a spare process per function."""

from __future__ import annotations

import asyncio

import pytest

from soulbox.core.schemas import Limits, Outcome, Runtime
from soulbox.runtimes.js.cgroup import find_parent
from soulbox.runtimes.js.config import DENO, FunctionConfig
from soulbox.runtimes.js.http import HttpRequest, HttpResponse

from .conftest import Make

UNCAUGHT = 'setTimeout(() => { throw new TypeError("late failure"); }, 10);\n'
REJECTED = 'Promise.reject(new Error("rejected on purpose"));\nawait new Promise((r) => setTimeout(r, 50));\n'
ENV = """
const read = (name: string): string => {
  try {
    const value = process.env[name];
    return value === undefined ? "unset" : name === "GREETING" ? value : "set";
  } catch (err) {
    return (err as Error).name;
  }
};
console.log(read("GREETING"), read("HOME"), read("PATH"));
"""
TYPED = """
enum Color { Red = "red" }
interface Point { x: number; y: number }
const p: Point = { x: 1, y: 2 };
console.log(`${Color.Red} ${p.x + p.y}`);
"""
IGNORES_STDIN = 'console.log("ignored");\n'
LOADS_FOREVER = "while (true) {}\nexport default { fetch: () => new Response('never') };\n"
GROWS = """
const keep: number[][] = [];
export default {
  fetch(request: Request): Response {
    if (new URL(request.url).pathname === "/grow") while (true) keep.push(new Array(1 << 16).fill(1));
    return new Response("fine");
  },
};
"""


async def test_an_uncaught_error_is_a_function_error_with_its_message(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"uncaught": UNCAUGHT})
    result = await js.run(guests.spec("uncaught"), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR and result.exit_code == 1
    assert result.error is not None and result.error.kind == "uncaught"
    assert result.error.message == "TypeError: late failure"
    assert b"late failure" in result.stderr


async def test_an_unhandled_rejection_is_reported(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"rejected": REJECTED})
    result = await js.run(guests.spec("rejected"), b"")
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None and result.error.kind == "unhandled_rejection"
    assert result.error.message == "Error: rejected on purpose"


async def test_env_bindings_and_nothing_else(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"env": ENV}, configure=lambda spec: FunctionConfig(env={"GREETING": "hi"}))
    result = await js.run(guests.spec("env"), b"")
    # Deno may read only the bindings; Bun sees the process env, which holds none of the host's.
    expected = b"hi NotCapable NotCapable\n" if runtime_name == DENO else b"hi set unset\n"
    assert (result.outcome, result.stdout) == (Outcome.SUCCESS, expected)


async def test_typescript_runs_with_its_types_stripped(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"typed": TYPED})
    assert (await js.run(guests.spec("typed"), b"")).stdout == b"red 3\n"


async def test_a_spare_process_serves_the_next_invocation(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"hello": 'console.log("hello");\n'})
    assert (await js.run(guests.spec("hello"), b"")).stdout == b"hello\n"
    for _ in range(200):  # the spare boots in the background
        if js.pool.idle:
            break
        await asyncio.sleep(0.01)
    assert (await js.run(guests.spec("hello"), b"")).stdout == b"hello\n"
    assert js.reused == 1


async def test_input_the_script_does_not_read_does_not_block_it(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"ignores": IGNORES_STDIN})
    result = await js.run(guests.spec("ignores"), b"z" * (1024 * 1024))
    assert result.outcome is Outcome.SUCCESS and result.stdout == b"ignored\n"


async def test_a_module_that_never_finishes_loading_times_out(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"forever": LOADS_FOREVER})
    result = await js.run(guests.spec("forever", Limits(timeout_ms=500)), b"")
    assert result.outcome is Outcome.TIMEOUT and result.error is not None


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "rss-watchdog"])
async def test_a_fetch_process_over_its_memory_is_replaced(make: Make, runtime_name: Runtime, cgroup: bool) -> None:
    if cgroup and find_parent() is None:
        pytest.skip("no writable memory cgroup on this host")
    js, guests = make(runtime_name, {"grows": GROWS}, cgroup=cgroup)
    limits = Limits(memory_mb=48, timeout_ms=5000)
    result = await js.run(guests.spec("grows", limits), HttpRequest("GET", "http://fn/grow").encode())
    assert result.outcome is Outcome.OUT_OF_MEMORY, result
    after = await js.run(guests.spec("grows", limits), HttpRequest("GET").encode())
    assert after.outcome is Outcome.SUCCESS and HttpResponse.decode(after.stdout).body == b"fine"
