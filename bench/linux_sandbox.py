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
* throughput: ``true`` through the launcher with 2 x cores sandboxes in flight.

Run as root: ``.venv/bin/python bench/linux_sandbox.py [-n 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from soulbox.core.logging import configure_logging
from soulbox.core.schemas import FunctionSpec, Limits, Outcome
from soulbox.core.tiersettings import LinuxSettings
from soulbox.runtimes.linux import names
from soulbox.runtimes.linux.runtime import GUEST_ENV, LinuxRuntime
from soulbox.runtimes.linux.sandbox import Launcher, SandboxLimits

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="samples per row")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the worker does")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.n))
    else:
        asyncio.run(main(args.n))
