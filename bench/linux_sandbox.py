"""Linux sandbox tier: create + exec + destroy, next to bare bubblewrap and unshare, in one run.

Every row spawns from the same asyncio loop and waits for the process to end:

* bare ``unshare`` (util-linux) and bare ``bwrap --unshare-all`` running ``true``
  as root: namespaces only, no root filesystem of our own, no uid drop, no
  cgroup, no seccomp;
* the SoulBox launcher running ``true``: setpriv to the sandbox uid, bwrap with
  the minimal read-only root, fresh /proc and /dev, tmpfs /tmp and /work,
  seccomp, a cgroup made, joined and removed, pid 1 reaped;
* ``python3 -c 'print(1)'`` on the host, and the same script as a ``python``
  function through LinuxRuntime (artifact cache warm);
* throughput: ``true`` through the launcher with 2 x cores sandboxes in flight;
* the sandbox host (``--host``, what the E2B-style API runs on, with a private
  nats-server): a warm claim (``SandboxHost.create`` from the pool: record put,
  ``sandbox.created`` stored) and the first command (``true`` through envd's
  process API on the box's socket) after it, a cold one (pool empty), a kill,
  ``true`` and ``python3 -c 'print(1)'`` in a live sandbox next to the host, and
  the idle memory (PSS and USS from ``smaps_rollup``) of a pooled sandbox.

Run as root: ``.venv/bin/python bench/linux_sandbox.py [-n 200] [--host]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from soulbox.core.bus import connect, ensure_topology
from soulbox.core.logging import configure_logging
from soulbox.core.natsserver import NatsServer
from soulbox.core.sandboxes import SandboxControl, SandboxCreate
from soulbox.core.schemas import FunctionSpec, Limits, Outcome
from soulbox.core.settings import Settings
from soulbox.core.tiersettings import LinuxSettings
from soulbox.runtimes.linux import names
from soulbox.runtimes.linux.runtime import GUEST_ENV, LinuxRuntime
from soulbox.runtimes.linux.sandbox import Launcher, SandboxLimits
from soulbox.runtimes.sandboxes.envd import EnvdClient
from soulbox.runtimes.sandboxes.host import SandboxHost
from soulbox.runtimes.sandboxes.templates import Templates

TRUE_LIMITS = SandboxLimits(memory_bytes=64 << 20, timeout_s=10, max_output_bytes=1 << 20)
SCRIPT = b"print(1)\n"
# fmt: off
BARE_BWRAP = (
    "bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
)
# fmt: on


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(fn: Callable[[], Awaitable[None]], n: int) -> list[float]:
    await fn()  # warm-up
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def exec_true(*argv: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
        if await proc.wait() != 0:
            raise RuntimeError(f"{argv[0]} failed")

    return run


async def main(n: int) -> None:
    configure_logging("warning", "console", component="bench")
    true = shutil.which("true") or "/bin/true"
    launcher = Launcher(LinuxSettings(), concurrency=2 * (os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        digest = hashlib.sha256(SCRIPT).hexdigest()

        async def fetch(_: str) -> bytes:
            return SCRIPT

        runtime = LinuxRuntime(fetch, cache_dir=Path(tmp), concurrency=2, settings=LinuxSettings())
        spec = FunctionSpec.model_construct(
            tenant="bench", name="print-1", runtime=names.PYTHON, artifact=digest,
            artifact_size=len(SCRIPT), limits=Limits(),
        )  # fmt: skip

        async def sandbox_true() -> None:
            result = await launcher.run([true], stdin=b"", limits=TRUE_LIMITS, env=GUEST_ENV)
            assert result.exit_code == 0

        async def function_print() -> None:
            result = await runtime.run(spec, b"")
            assert result.outcome is Outcome.SUCCESS and result.stdout == b"1\n", result

        rows = {
            "bare `unshare -U -r -p -f -m -u -i -n true`": exec_true(
                "unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", true
            ),
            "bare `bwrap --unshare-all` `true` (host /usr bound)": exec_true(*BARE_BWRAP, true),
            "SoulBox launcher `true` (create + exec + destroy)": sandbox_true,
            "host `python3 -c 'print(1)'` (no sandbox)": exec_true("/usr/bin/python3", "-c", "print(1)"),
            "LinuxRuntime python function `print(1)`": function_print,
        }
        print(f"cgroup v{launcher.cgroup_version}, {os.cpu_count()} cores, n={n}\n")
        print("| what | p50 ms | p99 ms | mean ms |")
        print("| --- | ---: | ---: | ---: |")
        for label, fn in rows.items():
            samples = await timed(fn, n)
            mean = sum(samples) / len(samples)
            print(f"| {label} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {mean:.2f} |")

        in_flight = 2 * (os.cpu_count() or 1)
        total = max(n, in_flight * 10)
        started = time.perf_counter()
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                await sandbox_true()

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        rate = total / (time.perf_counter() - started)
        print(f"\nthroughput: {rate:.0f} sandboxes/s (`true`, {in_flight} in flight, {total} in all)")
        await runtime.close()
    await launcher.close()


def row(label: str, samples: list[float]) -> str:
    mean = sum(samples) / len(samples)
    return f"| {label} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {mean:.2f} |"


async def envd_run(envd: EnvdClient, token: str, *argv: str) -> bytes:
    """Run ``argv`` through envd's process API (Connect, JSON envelopes) and return its stdout; exit 0 checked."""
    message = json.dumps({"process": {"cmd": argv[0], "args": list(argv[1:])}}).encode()
    headers = [("content-type", "application/connect+json"), ("x-access-token", token)]
    response = await envd.send(
        "POST", "/process.Process/Start", "", headers, struct.pack(">BI", 0, len(message)) + message
    )
    try:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    stdout, end = b"", None
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        body, data = json.loads(data[5 : 5 + size]), data[5 + size :]
        event = body.get("event", {})
        if "data" in event and "stdout" in event["data"]:
            stdout += base64.b64decode(event["data"]["stdout"])
        end = event.get("end", end)
        if flags & 0x02 and body.get("error"):
            raise RuntimeError(body["error"])
    assert end is not None and end.get("exitCode", 0) == 0, end
    return stdout


def memory_of(pids: list[int]) -> list[tuple[str, int, int, int, int]]:
    """(command, Rss, Pss, USS = private clean + dirty, private dirty) in KiB of each of ``pids`` (smaps_rollup)."""
    out = []
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:]}
        name = " ".join(a.decode() for a in argv[:3] if a)
        dirty = fields["Private_Dirty"]
        out.append((name, fields["Rss"], fields["Pss"], fields["Private_Clean"] + dirty, dirty))
    return out


def session_pids(sid: int) -> list[int]:
    """Every process of the session ``sid`` (a box's bwrap was started as a session leader)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(entry.name))
    return pids


async def host_rows(n: int) -> None:
    """The sandbox host in-process, against a private nats-server."""
    configure_logging("warning", "console", component="bench")
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            await _host_rows(n, Path(tmp), server.url)
        finally:
            server.stop()


async def _host_rows(n: int, tmp: Path, url: str) -> None:
    settings = Settings(
        data_dir=tmp / "data",
        nats={"urls": [url]},  # type: ignore[arg-type]
        embedded_nats={"enabled": False},  # type: ignore[arg-type]
        sandboxes={"pool_size": 1, "capacity": 4, "templates_dir": "/var/tmp/soulbox-test-templates"},  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    nc = await connect(settings, name="bench")
    buckets = await ensure_topology(nc.jetstream(), settings)
    launcher = Launcher(settings.linux, concurrency=1, box_capacity=settings.sandboxes.capacity)
    host = SandboxHost(settings, nc, buckets.sandboxes, launcher, Templates(settings, launcher.guest_dir()))
    await host.start()
    warm, first, both, cold, kills, in_true, in_print = [], [], [], [], [], [], []
    memory: list[tuple[str, int, int, int, int]] = []

    async def pool_full() -> None:
        await host.pool.fill("base")
        await asyncio.sleep(0.2)  # the new box's envd settles (its start's CPU is not on the next sample)

    def request() -> SandboxCreate:
        return SandboxCreate(sandbox_id=os.urandom(10).hex(), tenant="bench", template="base", timeout_s=600)

    async def kill(sandbox_id: str) -> None:
        started = time.perf_counter()
        await host.control(SandboxControl(sandbox_id=sandbox_id, op="kill"))
        kills.append((time.perf_counter() - started) * 1000)

    for i in range(n + 1):
        await pool_full()
        if i == 1:
            box = host.pool.boxes()[0]
            memory = memory_of(sorted({*session_pids(box.session.proc.pid), *box.session.cgroup.pids()}))
        started = time.perf_counter()
        record = await host.create(request())
        claimed = time.perf_counter()
        hosted = host.get(record.sandbox_id)
        assert hosted is not None
        await envd_run(hosted.envd, record.access_token, "/bin/true")
        ran = time.perf_counter()
        if i:
            warm.append((claimed - started) * 1000)
            first.append((ran - claimed) * 1000)
            both.append((ran - started) * 1000)
        if i <= min(n, 50):
            for samples, argv in ((in_true, ("/bin/true",)), (in_print, ("python3", "-c", "print(1)"))):
                started = time.perf_counter()
                await envd_run(hosted.envd, record.access_token, *argv)
                samples.append((time.perf_counter() - started) * 1000)
        await kill(record.sandbox_id)
    await pool_full()
    await host.close()  # the pool's box too: from now on every create is cold
    host = SandboxHost(
        settings.model_copy(update={"sandboxes": settings.sandboxes.model_copy(update={"pool_size": 0})}),
        nc, buckets.sandboxes, launcher, Templates(settings, launcher.guest_dir()),
    )  # fmt: skip
    await host.start()
    for _ in range(min(n, 30)):
        started = time.perf_counter()
        record = await host.create(request())
        cold.append((time.perf_counter() - started) * 1000)
        await host.control(SandboxControl(sandbox_id=record.sandbox_id, op="kill"))
    await host.close()
    bare = await timed(exec_true(*BARE_BWRAP, shutil.which("true") or "/bin/true"), n)
    host_true = await timed(exec_true(shutil.which("true") or "/bin/true"), n)
    host_print = await timed(exec_true("/usr/bin/python3", "-c", "print(1)"), min(n, 50))
    await launcher.close()
    await nc.close()
    print(f"sandbox host, n={n}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}\n")
    print("| what | p50 ms | p99 ms | mean ms |\n| --- | ---: | ---: | ---: |")
    print(row("bare `bwrap --unshare-all` `true` (host /usr bound)", bare))
    print(row("warm claim: `SandboxHost.create` from the pool (record put + created event stored)", warm))
    print(row("first command after the claim: `true` through envd", first))
    print(row("**claim + first command**", both))
    print(row("cold: `SandboxHost.create` with the pool empty (bwrap + envd started)", cold))
    print(row("kill (dead, killed event stored, record deleted)", kills))
    print(row("`true` in a live sandbox through envd", in_true[1:]))
    print(row("`true` on the host (asyncio subprocess)", host_true))
    print(row("`python3 -c 'print(1)'` in a live sandbox through envd", in_print[1:]))
    print(row("`python3 -c 'print(1)'` on the host", host_print))
    print("\nidle pooled sandbox, every process of its session and cgroup (KiB):\n")
    print("| process | Rss | Pss | USS | private dirty |\n| --- | ---: | ---: | ---: | ---: |")
    for name, *kib in memory:
        print(f"| `{name}` | " + " | ".join(str(k) for k in kib) + " |")
    print("| **all** | " + " | ".join(str(sum(m[i] for m in memory)) for i in range(1, 5)) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="samples per row")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the worker does")
    parser.add_argument("--host", action="store_true", help="the sandbox host's rows instead (warm pool, kill, idle)")
    args = parser.parse_args()
    run = host_rows(args.n) if args.host else main(args.n)
    if args.uvloop:
        import uvloop

        uvloop.run(run)
    else:
        asyncio.run(run)
