"""E2B-style sandboxes through the whole stack, next to the same daemon called directly, in one run.

Starts a stack (``tests/stack.py``: own nats-server, gateway, scheduler, one
worker with a warm pool) and measures with the official ``e2b`` SDK:

* create: ``Sandbox.create()`` from the warm pool (the pool is refilled
  between samples), and with the pool empty (a sandbox started on demand);
* exec overhead: ``sandbox.commands.run("true")`` through gateway -> NATS
  tunnel -> worker -> envd, next to the same call against an envd process
  started on the host and reached directly over TCP (no sandbox, no control
  plane), and next to bare ``bwrap ... /bin/true`` (a fresh sandbox per call);
* file round trip: write + read of 1 MiB through the stack and directly;
* kill: ``sandbox.kill()``.

Run as root: ``.venv/bin/python bench/sandboxes.py [-n 50]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from e2b import Sandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.stack import Stack

KEY = "sb_bench_key"
BLOB = os.urandom(1 << 20)
BWRAP = ("bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "/bin/true")  # fmt: skip


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object], n: int, *, between: Callable[[], object] | None = None) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(n):
        if between is not None:
            between()
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def round_trip(sbx: Sandbox, path: str) -> None:
    sbx.files.write(path, BLOB)
    assert sbx.files.read(path, format="bytes") == BLOB


def row(name: str, samples: list[float]) -> str:
    return f"| {name} | {pct(samples, 0.5):.2f} | {pct(samples, 0.99):.2f} | {sum(samples) / len(samples):.2f} |"


def direct_envd(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """envd on the host on a free TCP port, as a process of its own (what the sandbox runs, minus the sandbox)."""
    from soulbox.core.natsserver import free_port

    port = free_port()
    link = tmp / "pp"
    link.mkdir()
    (link / "envd").symlink_to(Path(__file__).resolve().parents[1] / "runtimes" / "linux" / "envd")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(link), "HOME": str(tmp)}
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-m", "envd", "--port", str(port), "--host", "127.0.0.1", "--home", str(tmp)],
        stdout=subprocess.PIPE, env=env, cwd=tmp,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"envd ready"
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stack = Stack(tmp / "stack", workers=1, env={"SOULBOX_GATEWAY__API_KEYS": f'["{KEY}"]',
                                                     "SOULBOX_SANDBOXES__POOL_SIZE": "2"})  # fmt: skip
        stack.start()
        envd, envd_url = direct_envd(tmp)
        try:
            os.environ.update(E2B_API_URL=stack.url, E2B_SANDBOX_URL=stack.url, E2B_API_KEY=KEY)
            created: list[Sandbox] = []

            def recycle() -> None:  # kill the last one (capacity), let the pool refill: every create is a warm one
                while created:
                    created.pop().kill()
                time.sleep(0.6)

            time.sleep(2)  # the pool fills
            warm = timed(lambda: created.append(Sandbox.create()), n, between=recycle)
            recycle()
            sbx = Sandbox.create(timeout=600)
            run_stack = timed(lambda: sbx.commands.run("true"), n)
            files_stack = timed(lambda: round_trip(sbx, "/tmp/blob"), n)
            direct = Sandbox(
                sandbox_id="direct",
                sandbox_domain=None,
                envd_version=Version("0.6.4"),
                envd_access_token=None,
                connection_config=ConnectionConfig(sandbox_url=envd_url, api_key="x"),
            )
            run_direct = timed(lambda: direct.commands.run("true"), n)
            files_direct = timed(lambda: round_trip(direct, str(tmp / "blob")), n)
            bare = timed(lambda: subprocess.run(BWRAP, check=True), n)
            kills = []
            for _ in range(min(n, 20)):
                victim = Sandbox.create()
                started = time.perf_counter()
                victim.kill()
                kills.append((time.perf_counter() - started) * 1000)
                time.sleep(0.6)
            sbx.kill()
        finally:
            envd.terminate()
            envd.wait()
            stack.stop()
        cold_stack = Stack(tmp / "cold", workers=1, env={"SOULBOX_SANDBOXES__POOL_SIZE": "0"})
        cold_stack.start()
        try:
            os.environ.update(E2B_API_URL=cold_stack.url, E2B_SANDBOX_URL=cold_stack.url)
            cold_boxes: list[Sandbox] = []

            def kill_all() -> None:
                while cold_boxes:
                    cold_boxes.pop().kill()

            cold = timed(lambda: cold_boxes.append(Sandbox.create()), min(n, 20), between=kill_all)
            kill_all()
        finally:
            cold_stack.stop()
    print(f"sandboxes, e2b SDK (sync), n={n}, {os.cpu_count()} cores\n")
    print("| what | p50 ms | p99 ms | mean ms |\n| --- | ---: | ---: | ---: |")
    print(row("`Sandbox.create()` from the warm pool (through gateway, scheduler, worker)", warm))
    print(row("`Sandbox.create()` with no pool (bubblewrap + envd started on demand)", cold))
    print(row("`sandbox.kill()`", kills))
    print(
        row("`commands.run('true')` through the stack (gateway, NATS tunnel, worker, envd in the sandbox)", run_stack)
    )
    print(row("`commands.run('true')` against envd directly (host process, TCP)", run_direct))
    print(row("bare `bwrap --unshare-all /bin/true` (a new sandbox per call)", bare))
    print(row("write + read 1 MiB through the stack", files_stack))
    print(row("write + read 1 MiB against envd directly", files_direct))


if __name__ == "__main__":
    main()
