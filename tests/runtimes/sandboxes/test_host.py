"""The sandbox host: hand-outs from the warm pool are stored and announced before they return, kills free everything."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import decode
from soulbox.core.eventbatch import decode_events
from soulbox.core.sandboxes import SandboxControl, SandboxCreate, SandboxRecord
from soulbox.core.schemas import LifecycleEvent
from soulbox.runtimes.linux.sandbox import Launcher
from soulbox.runtimes.sandboxes.host import SandboxHost
from soulbox.runtimes.sandboxes.hosted import Hosted


def request(**fields: object) -> SandboxCreate:
    return SandboxCreate.model_validate(
        {"sandbox_id": os.urandom(10).hex(), "tenant": "acme", "template": "base", "timeout_s": 60, **fields}
    )


async def last_event(js: JetStreamContext, sandbox_id: str, kind: str) -> LifecycleEvent | None:
    try:
        msg = await js.get_last_msg(names.EVENTS_STREAM, names.event_subject(f"sandbox.{kind}"))
    except NotFoundError:
        return None
    return next((e for e in reversed(decode_events(msg.data)) if e.sandbox_id == sandbox_id), None)


async def envd_get(hosted: Hosted, path: str, token: str | None) -> tuple[int, bytes]:
    headers = [("X-Access-Token", token)] if token else []
    response = await hosted.envd.send("GET", path, "", headers, b"")
    try:
        return response.status_code, b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


async def run(hosted: Hosted, token: str, *argv: str, user: str | None = None) -> tuple[int, str]:
    """``argv`` through envd's process API (Connect, JSON envelopes): (exit code, stdout)."""
    message = json.dumps({"process": {"cmd": argv[0], "args": list(argv[1:])}}).encode()
    headers = [("content-type", "application/connect+json"), ("x-access-token", token)]
    if user is not None:
        headers.append(("authorization", "Basic " + base64.b64encode(f"{user}:".encode()).decode()))
    body = struct.pack(">BI", 0, len(message)) + message
    response = await hosted.envd.send("POST", "/process.Process/Start", "", headers, body)
    try:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    stdout, code = b"", None
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        payload, data = json.loads(data[5 : 5 + size]), data[5 + size :]
        event = payload.get("event", {})
        stdout += base64.b64decode(event.get("data", {}).get("stdout", ""))
        code = event["end"].get("exitCode", 0) if "end" in event else code
        if flags & 0x02 and payload.get("error"):
            raise RuntimeError(payload["error"]["message"])
    assert code is not None
    return code, stdout.decode()


def gone(path: Path) -> bool:
    return not path.exists()


async def eventually(check: object, timeout: float = 10.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_warm_create_is_stored_and_announced_before_it_returns(
    host: SandboxHost, buckets: Buckets, js: JetStreamContext
) -> None:
    pooled = host.pool.boxes()
    assert len(pooled) == 1
    record = await host.create(request(metadata={"k": "v"}))
    hosted = host.get(record.sandbox_id)
    assert hosted is not None and hosted.box is pooled[0]  # the pooled box, not a new one
    assert len(host.pool) == 0  # topped up only by refill (after a worker answered)
    stored = decode(SandboxRecord, (await buckets.sandboxes.get(record.sandbox_id)).value or b"")
    assert stored.access_token == record.access_token and stored.metadata == {"k": "v"}
    created = await last_event(js, record.sandbox_id, "created")
    assert created is not None and created.tenant == "acme"
    # envd demands the token handed out with the record (set while the box was in the pool).
    assert (await envd_get(hosted, "/envs", None))[0] == 401
    assert (await envd_get(hosted, "/envs", "wrong"))[0] == 401
    assert (await envd_get(hosted, "/envs", record.access_token))[0] == 200
    host.refill("base")
    assert await eventually(lambda: len(host.pool) == 1, timeout=30)


async def test_env_vars_reach_a_pooled_sandbox(host: SandboxHost) -> None:
    record = await host.create(request(env_vars={"GREETING": "hi", "N": "2"}))
    hosted = host.get(record.sandbox_id)
    assert hosted is not None
    status, body = await envd_get(hosted, "/envs", record.access_token)
    assert status == 200 and b'"GREETING": "hi"' in body.replace(b'":"', b'": "')


async def test_a_cold_create_carries_env_vars_and_token(host: SandboxHost) -> None:
    await host.create(request())  # the pooled box is taken: the next start on demand
    record = await host.create(request(env_vars={"COLD": "yes"}))
    hosted = host.get(record.sandbox_id)
    assert hosted is not None
    status, body = await envd_get(hosted, "/envs", record.access_token)
    assert status == 200 and b"COLD" in body
    assert (await envd_get(hosted, "/envs", None))[0] == 401


async def test_a_retried_create_gets_the_same_sandbox(host: SandboxHost) -> None:
    req = request()
    first, second = await asyncio.gather(host.create(req), host.create(req))
    assert first == second and host.in_use == 1
    assert await host.create(req) == first


async def test_kill_answers_once_dead_and_stored_then_frees_the_box(
    host: SandboxHost, buckets: Buckets, js: JetStreamContext, box_launcher: Launcher
) -> None:
    record = await host.create(request())
    hosted = host.get(record.sandbox_id)
    assert hosted is not None
    box = hosted.box
    cgroups = [Path(p) / f"box-{box.id}" for p in box_launcher.cgroup_parents]
    assert any(p.exists() for p in cgroups) and box.run_dir.exists()
    await host.control(SandboxControl(sandbox_id=record.sandbox_id, op="kill"))
    # Answered: pid 1 (and with it the pid namespace) is dead, the event stored, the record gone.
    assert box.session.proc.returncode is not None or not _running(box.session.pid)
    killed = await last_event(js, record.sandbox_id, "killed")
    assert killed is not None and killed.seconds is not None
    with pytest.raises(KeyNotFoundError):
        await buckets.sandboxes.get(record.sandbox_id)
    assert host.get(record.sandbox_id) is None
    # Then, off the caller's path: cgroup, run directory and the log's end batch.
    assert await eventually(lambda: all(gone(p) for p in cgroups) and gone(box.run_dir))


async def test_close_waits_for_the_boxes_being_freed(host: SandboxHost) -> None:
    record = await host.create(request())
    hosted = host.get(record.sandbox_id)
    assert hosted is not None
    run_dir = hosted.box.run_dir
    pooled = host.pool.boxes()
    await host.control(SandboxControl(sandbox_id=record.sandbox_id, op="kill"))
    await host.close()
    assert gone(run_dir) and all(gone(b.run_dir) for b in pooled)


async def test_a_pooled_box_that_died_is_not_handed_out(host: SandboxHost) -> None:
    (dead,) = host.pool.boxes()
    dead.kill()
    await dead.ended()
    record = await host.create(request())
    hosted = host.get(record.sandbox_id)
    assert hosted is not None and hosted.box is not dead and hosted.box.alive
    assert await eventually(lambda: gone(dead.run_dir))


async def test_commands_run_in_a_handed_out_sandbox(host: SandboxHost) -> None:
    record = await host.create(request(env_vars={"WHO": "me"}))
    hosted = host.get(record.sandbox_id)
    assert hosted is not None
    token = record.access_token
    # root in the sandbox's user namespace (an unprivileged uid on the host), in its own pid namespace.
    code, out = await run(hosted, token, "/bin/sh", "-c", "id -u; echo $HOME $WHO; ls /proc | grep -c '^[0-9]'")
    uid, env, processes = out.split("\n")[:3]
    assert (code, uid, env) == (0, "0", "/home/user me") and int(processes) < 10
    assert await run(hosted, token, "sh", "-c", "exit 3") == (3, "")
    with pytest.raises(RuntimeError, match="failed to start"):
        await run(hosted, token, "no-such-program")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
