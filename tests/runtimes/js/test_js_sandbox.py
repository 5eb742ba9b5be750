"""Every runtime process runs in a bubblewrap sandbox: own host uid, namespaces, private files."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from soulbox.core.schemas import FunctionSpec, Outcome, Runtime
from soulbox.core.tiersettings import LinuxSettings
from soulbox.runtimes.js.config import BUN, FunctionConfig, Permissions
from soulbox.runtimes.js.http import HttpRequest, HttpResponse
from soulbox.runtimes.js.runtime import JsRuntime
from soulbox.runtimes.js.sandbox import JsSandbox

from ..linux.netfixtures import Upstream, upstream_network
from .conftest import Make
from .guests import Guests, engine_or_skip

# Fetch-mode probes: the same source on Bun and Deno (node:fs is in both).
READS = """
import { readFileSync } from "node:fs";
export default {
  async fetch(request: Request): Promise<Response> {
    const out: string[] = [];
    for (const path of JSON.parse(await request.text())) {
      try {
        readFileSync(path);
        out.push("read");
      } catch (err) {
        out.push(String((err as { code?: string }).code ?? (err as Error).name));
      }
    }
    return new Response(JSON.stringify(out));
  },
};
"""
PROCS = """
import { readdirSync } from "node:fs";
export default {
  fetch(): Response {
    return new Response(JSON.stringify(readdirSync("/proc").filter((name) => /^[0-9]+$/.test(name))));
  },
};
"""
CONNECTS = """
export default {
  async fetch(request: Request, env: { HOST: string; PORT: string }): Promise<Response> {
    try {
      return new Response("allowed " + await (await fetch(`http://${env.HOST}:${env.PORT}/`)).text());
    } catch (err) {
      return new Response("denied " + (err as Error).name);
    }
  },
};
"""
ID = "const id = crypto.randomUUID();\nexport default { fetch: () => new Response(id) };\n"


async def call(js: JsRuntime, guests: Guests, name: str, body: bytes = b"") -> bytes:
    result = await js.run(guests.spec(name), HttpRequest("POST", "http://fn/", (), body).encode())
    assert result.outcome is Outcome.SUCCESS, result
    return HttpResponse.decode(result.stdout).body


def grants(
    port: int = 0, host: object = "127.0.0.1", **permissions: tuple[str, ...]
) -> Callable[[FunctionSpec], FunctionConfig]:
    config = FunctionConfig(env={"HOST": str(host), "PORT": str(port)}, permissions=Permissions(**permissions))
    return lambda spec: config


async def test_host_files_outside_the_binds_are_not_there(make: Make, runtime_name: Runtime, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    paths = [str(secret), "/etc/shadow", str(Path(__file__)), "/usr/bin/env"]
    # Deno is granted the reads: the sandbox is what stops them.
    js, guests = make(runtime_name, {"reads": READS}, configure=grants(read=tuple(paths)))
    assert json.loads(await call(js, guests, "reads", json.dumps(paths).encode())) == [
        "ENOENT",
        "ENOENT",
        "ENOENT",
        "read",  # /usr is there, read-only
    ]


async def test_only_its_own_processes_are_visible(make: Make) -> None:
    engine_or_skip(BUN)  # Deno refuses /proc to anything short of --allow-all
    js, guests = make(BUN, {"procs": PROCS})
    assert json.loads(await call(js, guests, "procs")) == ["1"]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with upstream_network() as net:  # pyroute2's sync API runs its own event loop: not inside a test's
        yield net


async def test_bun_reaches_only_the_granted_destinations(make: Make, local_server: int, upstream: Upstream) -> None:
    engine_or_skip(BUN)
    up = upstream
    js, guests = make(BUN, {"connects": CONNECTS}, configure=grants(port=local_server))
    assert (await call(js, guests, "connects")).startswith(b"denied")  # its own loopback: nobody listens
    granted = grants(host=up.public, port=up.port, net=(f"{up.public}:{up.port}",))
    js, guests = make(BUN, {"connects": CONNECTS}, configure=granted)
    assert await call(js, guests, "connects") == b"allowed pong"
    # Granted the host's loopback: the sandbox's namespace has its own, and loopback is never egress.
    loopback = grants(port=local_server, net=(f"127.0.0.1:{local_server}",))
    js, guests = make(BUN, {"connects": CONNECTS}, configure=loopback)
    assert (await call(js, guests, "connects")).startswith(b"denied")
    other = grants(host=up.public, port=up.other_port, net=(f"{up.public}:{up.port}",))
    js, guests = make(BUN, {"connects": CONNECTS}, configure=other)
    assert (await call(js, guests, "connects")).startswith(b"denied")  # another port of the granted host


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _uids(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("Uid:"))
    return {int(uid) for uid in line.split()[1:]}


async def test_each_process_runs_as_its_own_unprivileged_host_uid(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"one": ID, "two": ID + "// another function\n"})
    await asyncio.gather(call(js, guests, "one"), call(js, guests, "two"))
    assert js.pool.idle == 2
    monitors = [pid for pid in _children(os.getpid()) if _comm(pid) == "bwrap"]
    runtimes = [child for pid in monitors for child in _children(pid)]
    assert len(monitors) == len(runtimes) == 2
    uids = [_uids(pid) for pid in runtimes]
    assert all(len(u) == 1 and min(u) >= LinuxSettings().uid_base for u in uids)  # real, effective, saved, fs
    assert uids[0] != uids[1]
    assert [_uids(pid) for pid in monitors] == uids


async def test_a_second_invocation_reuses_the_warm_process(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"id": ID})
    first = await call(js, guests, "id")
    assert await call(js, guests, "id") == first
    assert (js.started, js.reused) == (1, 1)


async def test_without_bwrap_the_sandbox_is_left_out() -> None:
    assert JsSandbox.create(LinuxSettings(bwrap="/nonexistent/bwrap")) is None


async def test_unsandboxed_processes_still_serve(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"id": ID}, sandboxed=False)
    assert js.sandbox is None
    assert len(await call(js, guests, "id")) == 36


async def test_a_failed_sandbox_start_is_a_crash_and_frees_its_uid(runtime_name: Runtime, tmp_path: Path) -> None:
    guests = Guests(runtime_name, {"id": ID})
    sandbox = JsSandbox(LinuxSettings(bwrap="false"))  # "bubblewrap" exits 1 before any sandbox exists
    js = JsRuntime(
        guests.fetch,
        engines={runtime_name: engine_or_skip(runtime_name)},
        work_dir=tmp_path / "js",
        concurrency=2,
        sandbox=sandbox,
    )
    try:
        result = await js.run(guests.spec("id"), HttpRequest("POST", "http://fn/", (), b"").encode())
        assert result.outcome is Outcome.FUNCTION_ERROR and result.error is not None
        assert result.error.kind == "crash"
        await js.pool.close()  # waits for the discarded process to be closed
        assert sandbox.uids_in_use == 0
    finally:
        await js.close()


async def test_idle_processes_keep_their_uid_and_free_it_when_closed(make: Make, runtime_name: Runtime) -> None:
    js, guests = make(runtime_name, {"one": ID, "two": ID + "// another function\n"})
    assert js.sandbox is not None
    await asyncio.gather(call(js, guests, "one"), call(js, guests, "two"))
    assert js.sandbox.uids_in_use == 2
    await js.pool.close()
    assert js.sandbox.uids_in_use == 0
