"""The Linux namespace tier under the conformance suite: Python scripts in bubblewrap sandboxes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from soulbox.core.schemas import FunctionSpec, Limits
from soulbox.runtimes.linux import names
from soulbox.runtimes.linux.runtime import LinuxRuntime

from .base import CASES, TierUnderTest

SCRIPTS: dict[str, str] = {
    "hello": "print('hello from linux')\n",
    "echo": "import shutil, sys\nshutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)\n",
    "stderr_exit3": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n",
    "loop": "while True:\n    pass\n",
    "grow": "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))\n",
    "trap": "raise RuntimeError('boom')\n",
    "big_output": "import sys\nsys.stdout.write('x' * (4 * 1024 * 1024))\n",
    "slow": "import time\ntime.sleep(0.3)\nprint('done')\n",
}
assert set(SCRIPTS) == set(CASES)


def artifact(source: str) -> tuple[str, bytes]:
    data = source.encode()
    return hashlib.sha256(data).hexdigest(), data


async def make(tmp: Path) -> TierUnderTest:
    artifacts = dict(artifact(s) for s in SCRIPTS.values())

    async def fetch(digest: str) -> bytes:
        return artifacts[digest]

    runtime = LinuxRuntime(fetch, cache_dir=tmp / "cache", concurrency=4)

    def spec(case: str, limits: Limits) -> FunctionSpec:
        digest, data = artifact(SCRIPTS[case])
        # model_construct: Runtime.PYTHON is not in core/schemas.py yet (see soulbox.runtimes.linux.names).
        return FunctionSpec.model_construct(
            tenant="t", name=case.replace("_", "-"), runtime=names.PYTHON, artifact=digest,
            artifact_size=len(data), limits=limits,
        )  # fmt: skip

    return TierUnderTest("linux", runtime, spec, hello_output=b"hello from linux\n")
