"""JS/TS guests for the JS tier's tests, one source per conformance case and runtime."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from soulbox.core.schemas import FunctionSpec, Limits, Runtime
from soulbox.core.tiersettings import LinuxSettings
from soulbox.runtimes.js.cgroup import find_parent
from soulbox.runtimes.js.config import BUN, DENO, FunctionConfig, no_config
from soulbox.runtimes.js.engines import BunEngine, DenoEngine, Engine, find_binary
from soulbox.runtimes.js.factory import TOOLS_DIRS
from soulbox.runtimes.js.runtime import JsRuntime
from soulbox.runtimes.js.sandbox import JsSandbox

BIN_DIRS = TOOLS_DIRS  # and PATH, and the venv (find_binary looks there first)
INSTALL = {
    BUN: "npm install --prefix .tools/js bun (the package's install script places the binary)",
    DENO: "the `deno` PyPI package in the project venv",
}

COMMON = {
    "hello": 'console.log("hello from js");\n',
    "loop": "while (true) {}\n",
    "grow": "const keep: number[][] = [];\nwhile (true) keep.push(new Array(1 << 16).fill(Math.random()));\n",
    "trap": 'function explode(): never {\n  throw new Error("boom");\n}\nexplode();\n',
    "slow": 'await new Promise((resolve) => setTimeout(resolve, 300));\nconsole.log("done");\n',
}
SCRIPTS: dict[str, dict[str, str]] = {
    BUN: {
        **COMMON,
        "echo": "await Bun.write(Bun.stdout, await Bun.stdin.bytes());\n",
        "stderr_exit3": 'process.stdout.write("out\\n");\nprocess.stderr.write("err\\n");\nprocess.exit(3);\n',
        "big_output": 'await Bun.write(Bun.stdout, "x".repeat(4 * 1024 * 1024));\n',
    },
    DENO: {
        **COMMON,
        "echo": "await Deno.stdin.readable.pipeTo(Deno.stdout.writable);\n",
        "stderr_exit3": (
            'const text = new TextEncoder();\nDeno.stdout.writeSync(text.encode("out\\n"));\n'
            'Deno.stderr.writeSync(text.encode("err\\n"));\nDeno.exit(3);\n'
        ),
        "big_output": 'await new Blob(["x".repeat(4 * 1024 * 1024)]).stream().pipeTo(Deno.stdout.writable);\n',
    },
}


def engine_or_skip(runtime: Runtime) -> Engine:
    binary = find_binary(str(runtime), extra_dirs=BIN_DIRS)
    if binary is None:
        pytest.skip(f"{runtime} binary not installed (install: {INSTALL[runtime]})")
    return BunEngine(binary) if runtime == BUN else DenoEngine(binary)


class Guests:
    """Sources by name, served as artifacts, and specs that point at them."""

    def __init__(self, runtime: Runtime, sources: dict[str, str]) -> None:
        self.runtime = runtime
        self.sources = {name: code.encode() for name, code in sources.items()}
        self.artifacts = {hashlib.sha256(code).hexdigest(): code for code in self.sources.values()}

    def add(self, name: str, code: str) -> None:
        self.sources[name] = code.encode()
        self.artifacts[hashlib.sha256(code.encode()).hexdigest()] = code.encode()

    async def fetch(self, digest: str) -> bytes:
        return self.artifacts[digest]

    def spec(self, name: str, limits: Limits | None = None) -> FunctionSpec:
        # model_construct: FunctionSpec.runtime has no BUN/DENO member until core adds them.
        code = self.sources[name]
        return FunctionSpec.model_construct(
            tenant="t",
            name=name.replace("_", "-"),
            runtime=self.runtime,
            artifact=hashlib.sha256(code).hexdigest(),
            artifact_size=len(code),
            limits=limits or Limits(),
        )

    def runtime_for(
        self,
        tmp: Path,
        *,
        configure: Callable[[FunctionSpec], FunctionConfig] = no_config,
        concurrency: int = 8,
        cgroup: bool = True,
        sandboxed: bool = True,
    ) -> JsRuntime:
        engine = engine_or_skip(self.runtime)
        sandbox = JsSandbox(LinuxSettings()) if sandboxed else None
        return JsRuntime(
            self.fetch,
            engines={self.runtime: engine},
            work_dir=tmp / "js",
            concurrency=concurrency,
            configure=configure,
            cgroup_parent=find_parent() if cgroup else None,
            sandbox=sandbox,
        )


__all__ = ["BUN", "DENO", "SCRIPTS", "Guests", "engine_or_skip"]
