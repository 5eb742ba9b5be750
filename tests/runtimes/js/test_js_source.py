"""Deploy-time validation: the runtime's own parser, syntax errors with line and column."""

from __future__ import annotations

import pytest

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import Runtime
from soulbox.runtimes.js.config import DENO, Mode
from soulbox.runtimes.js.source import SourceError, inspect_source, validate_source

from .guests import engine_or_skip

BROKEN = b"const a = 1;\nfunction f( {\n  return 2;\n}\n"


def test_a_syntax_error_is_reported_with_line_and_column(runtime_name: Runtime) -> None:
    with pytest.raises(SourceError) as caught:
        inspect_source(engine_or_skip(runtime_name), BROKEN)
    assert (caught.value.line, caught.value.column) == (3, 10)
    assert caught.value.message.startswith("syntax error at line 3, column 10: ")
    assert isinstance(caught.value, InvalidRequest) and caught.value.code == "invalid_source"


@pytest.mark.parametrize(
    ("source", "mode"),
    [
        (b'console.log("hi");\n', Mode.SCRIPT),
        (b"export const helper = 1;\nawait Promise.resolve();\n", Mode.SCRIPT),
        (b"export default { fetch: (r: Request): Response => new Response(r.url) };\n", Mode.FETCH),
        (b"const handler = { fetch() { return new Response(); } };\nexport { handler as default };\n", Mode.FETCH),
        (b"type Id = string;\nconst id: Id = `a ${1 + 2}`;\nconsole.log(id as string);\n", Mode.SCRIPT),
    ],
)
def test_the_mode_comes_from_the_default_export(runtime_name: Runtime, source: bytes, mode: Mode) -> None:
    assert inspect_source(engine_or_skip(runtime_name), source) is mode


def test_validate_source_for_the_catalog(runtime_name: Runtime) -> None:
    validate_source(runtime_name, b"export default { fetch: () => new Response('ok') };\n")
    with pytest.raises(SourceError, match="line 3, column 10"):
        validate_source(runtime_name, BROKEN)
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        validate_source(runtime_name, b"\xff\xfe")


def test_validate_source_refuses_an_unknown_runtime() -> None:
    with pytest.raises(InvalidRequest, match="not installed"):
        validate_source("python", b"print(1)")


def test_deno_reports_an_import_it_cannot_resolve() -> None:
    engine = engine_or_skip(DENO)
    message = r"cannot be loaded at line 1, column 15: .*'./missing.ts' from 'function.ts'"
    with pytest.raises(SourceError, match=message):
        inspect_source(engine, b'import x from "./missing.ts";\nconsole.log(x);\n')
