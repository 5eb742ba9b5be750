"""Reading a function's source with the runtime's own parser, without running it.

Deno parses with ``deno doc --json`` (swc), Bun with ``Bun.Transpiler.scan``.
Either gives the module's exports (a default export makes it a fetch
handler, see :class:`~.config.Mode`) or the first syntax error with its line
and column (both 1-based), raised as :class:`SourceError`.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, cast

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import Runtime

from .config import BUN, Mode
from .engines import TOOLS_DIRS, Engine, default_engines

MAX_SOURCE = 16 * 1024 * 1024

_BUN_SCAN = """
const [path] = process.argv.slice(-1);
try {
  const scan = new Bun.Transpiler({ loader: "ts" }).scan(await Bun.file(path).text());
  console.log(JSON.stringify({ exports: scan.exports }));
} catch (err) {
  const first = err?.errors?.[0] ?? err;
  const p = first?.position ?? {};
  console.log(JSON.stringify({ error: String(first?.message ?? err), line: p.line, column: p.column }));
}
"""
_DENO_LOCATION = re.compile(r"at file://\S+?:(\d+):(\d+)")


class SourceError(InvalidRequest):
    """The source does not parse; ``line`` and ``column`` are 1-based."""

    code = "invalid_source"

    def __init__(
        self, message: str, *, line: int | None = None, column: int | None = None, problem: str = "syntax error"
    ) -> None:
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{problem}{where}: {message}")
        self.line = line
        self.column = column


def inspect_file(engine: Engine, path: Path, *, timeout_s: float = 30.0) -> Mode:
    """The module's :class:`Mode`; raises :class:`SourceError` if it does not parse."""
    if engine.runtime == BUN:
        argv = [str(engine.binary), "--no-install", "--no-env-file", "-e", _BUN_SCAN, str(path)]
    else:
        argv = [str(engine.binary), "doc", "--json", "--no-remote", "--no-npm", "--no-config", "--no-lock", str(path)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, cwd=path.parent, env={"NO_COLOR": "1"})
    except subprocess.TimeoutExpired as exc:
        raise InvalidRequest(f"parsing the source took over {timeout_s:.0f} s") from exc
    if engine.runtime == BUN:
        return _bun_mode(done)
    return _deno_mode(done, path)


def _bun_mode(done: subprocess.CompletedProcess[bytes]) -> Mode:
    try:
        report = json.loads(done.stdout)
    except ValueError as exc:
        raise InvalidRequest(f"bun could not parse the source: {done.stderr.decode(errors='replace')[-500:]}") from exc
    if "error" in report:
        raise SourceError(report["error"], line=report.get("line"), column=report.get("column"))
    return Mode.FETCH if "default" in report["exports"] else Mode.SCRIPT


def _deno_mode(done: subprocess.CompletedProcess[bytes], path: Path) -> Mode:
    if done.returncode != 0:
        text = done.stderr.decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip().startswith("error:")]
        message = lines[0].removeprefix("error:").strip() if lines else text.strip()[-500:]
        message = message.replace(path.as_uri(), path.name)
        problem = "syntax error" if message.startswith("SyntaxError:") else "the module cannot be loaded"
        message = message.removeprefix("SyntaxError:").strip()
        where = _DENO_LOCATION.search(text)
        if where is None:
            raise InvalidRequest(f"{problem}: {message}")
        raise SourceError(message, line=int(where[1]), column=int(where[2]), problem=problem)
    doc: dict[str, Any] = json.loads(done.stdout)
    nodes: dict[str, dict[str, Any]] = doc.get("nodes", {})  # one node: the module
    symbols: list[dict[str, Any]] = [s for node in nodes.values() for s in node.get("symbols", [])]
    has_default = any(s.get("isDefault") or s.get("name") == "default" for s in symbols)
    return Mode.FETCH if has_default else Mode.SCRIPT


def inspect_source(engine: Engine, code: bytes, *, timeout_s: float = 30.0) -> Mode:
    if len(code) > MAX_SOURCE:
        raise InvalidRequest(f"source of {len(code)} bytes is over the {MAX_SOURCE} byte limit")
    try:
        code.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"source is not UTF-8 (byte {exc.start})") from exc
    with tempfile.TemporaryDirectory(prefix="soulbox-js-") as tmp:
        path = Path(tmp) / "function.ts"
        path.write_bytes(code)
        return inspect_file(engine, path, timeout_s=timeout_s)


@functools.cache
def _engines() -> dict[Runtime, Engine]:
    return dict(default_engines(extra_dirs=TOOLS_DIRS))


def validate_source(runtime: str, code: bytes) -> None:
    """Deploy-time check for the catalog: raises InvalidRequest (SourceError with line:column).

    Uses the runtime binary found on PATH, in the venv or in .tools/js; ``catalog.py`` binds
    ``runtime`` with ``functools.partial(validate_source, "deno")``.
    """
    engine = _engines().get(cast(Runtime, runtime))
    if engine is None:
        raise InvalidRequest(f"runtime {runtime!r} is not installed on this host")
    inspect_source(engine, code)
