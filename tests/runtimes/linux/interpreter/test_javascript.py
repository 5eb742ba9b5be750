"""The JavaScript kernel through the official SDK."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox

pytestmark = pytest.mark.usefixtures("node")


def test_console_log_state_and_final_value(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="javascript")
    assert context.language == "javascript"
    first = sbx.run_code("console.log('hello', {a: 1}); console.error('oops'); const n = 20; n + 1", context=context)
    assert first.logs.stdout == ["hello { a: 1 }\n"]
    assert first.logs.stderr == ["oops\n"]
    assert first.text == "21"
    assert sbx.run_code("n * 2", context=context).text == "40"
    # a notebook may run a declaring cell again
    assert sbx.run_code("const n = 1; n", context=context).text == "1"
    assert sbx.run_code("let m = await Promise.resolve(5); m + n", context=context).text == "6"
    assert sbx.run_code("m", context=context).text == "5"
    assert sbx.run_code("'str'", context=context).text == "str"
    assert sbx.run_code("function f() { return 3 }", context=context).results == []
    assert sbx.run_code("f()", context=context).text == "3"


def test_default_context_by_language_and_alias(sbx: Sandbox) -> None:
    sbx.run_code("globalThis.marker = 'js default'", language="javascript")
    assert sbx.run_code("marker", language="js").text == "js default"


def test_thrown_error(sbx: Sandbox) -> None:
    execution = sbx.run_code("function boom() { throw new TypeError('bad thing') }\nboom()", language="javascript")
    assert execution.error is not None
    assert execution.error.name == "TypeError"
    assert execution.error.value == "bad thing"
    assert "TypeError: bad thing" in execution.error.traceback
    assert "at boom" in execution.error.traceback
    assert "jskernel" not in execution.error.traceback
    rejected = sbx.run_code("await Promise.reject(new RangeError('nope'))", language="javascript")
    assert rejected.error is not None and rejected.error.name == "RangeError"


def test_env_vars_and_timeout(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="javascript")
    assert sbx.run_code("process.env.SOULBOX_Y", context=context, envs={"SOULBOX_Y": "js"}).text == "js"
    assert sbx.run_code("process.env.SOULBOX_Y", context=context).results == []
    sbx.run_code("var survivor = 'here'", context=context)
    with pytest.raises(TimeoutException):
        sbx.run_code("while (true) {}", context=context, timeout=1.5)
    assert sbx.run_code("survivor", context=context, timeout=30).text == "here"


def test_require_from_the_context_cwd_and_dynamic_import(sbx: Sandbox, tmp_path: Path) -> None:
    module = tmp_path / "node_modules" / "soulbox-local"
    module.mkdir(parents=True)
    (module / "index.js").write_text("module.exports = { answer: () => 42 };\n")
    context = sbx.create_code_context(language="javascript", cwd=str(tmp_path))
    assert sbx.run_code("require('soulbox-local').answer()", context=context).text == "42"
    imported = sbx.run_code("const os = await import('node:os'); typeof os.platform", context=context)
    assert imported.error is None, imported.error
    assert imported.text == "function"
    assert imported.logs.stderr == []


def test_output_streams_during_a_busy_cell_and_floods_are_batched(sbx: Sandbox) -> None:
    seen: list[tuple[str, float]] = []
    code = "console.log('a'); const t0 = Date.now(); while (Date.now() - t0 < 1000) {}; console.log('b')"
    execution = sbx.run_code(code, language="javascript", on_stdout=lambda m: seen.append((m.line, time.monotonic())))
    assert [line for line, _ in seen] == ["a\n", "b\n"]
    assert seen[1][1] - seen[0][1] > 0.8
    flood = sbx.run_code("for (let i = 0; i < 100000; i++) console.log(i)", language="javascript")
    assert "".join(flood.logs.stdout) == "".join(f"{i}\n" for i in range(100_000))
    assert len(flood.logs.stdout) < 1000
    assert execution.error is None and flood.error is None
