"""Bun or Deno from the code and manifests (runtimes/js/detect.py): the rules, and no crash on any text."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import Runtime
from soulbox.runtimes.js.detect import Detection, RuntimeConflict, detect_runtime


@pytest.mark.parametrize(
    "source",
    [
        "console.log(Deno.version.deno);\n",
        "const t = await Deno.readTextFile('/x');\n",
        'import chalk from "npm:chalk@5";\n',
        "import { assert } from 'jsr:@std/assert';\n",
        'import { serve } from "https://deno.land/std/http/server.ts";\n',
        'const m = await import("npm:left-pad");\n',
        'export { x } from "jsr:@x/y";\n',
    ],
)
def test_deno_specifics_choose_deno(source: str) -> None:
    assert detect_runtime(source, default=Runtime.BUN).runtime is Runtime.DENO


@pytest.mark.parametrize(
    "source",
    [
        "const input = await Bun.stdin.text();\n",
        "Bun.serve({ fetch() { return new Response('x'); } });\n",
        'import { Database } from "bun:sqlite";\n',
        "const { expect } = require('bun:test');\n",
    ],
)
def test_bun_specifics_choose_bun(source: str) -> None:
    assert detect_runtime(source, default=Runtime.DENO).runtime is Runtime.BUN


def test_the_reason_names_the_first_signal_and_its_line() -> None:
    found = detect_runtime(b"const a = 1;\n\nconsole.log(Deno.version.deno, Deno.pid);\n")
    assert found == Detection(Runtime.DENO, "code: `Deno.v` at line 3")


@pytest.mark.parametrize("default", [Runtime.BUN, Runtime.DENO])
def test_plain_code_gets_the_default(default: Runtime) -> None:
    found = detect_runtime("export default { fetch: () => new Response('hi') };\n", default=default)
    assert found.runtime is default and found.reason.startswith("default")


def test_both_runtimes_is_a_conflict_naming_both() -> None:
    with pytest.raises(RuntimeConflict) as raised:
        detect_runtime("Deno.version;\nBun.version;\n")
    assert raised.value.code == "invalid_request"
    assert "`Deno.v` at line 1" in raised.value.message and "`Bun.v` at line 2" in raised.value.message


@pytest.mark.parametrize(
    "source",
    [
        "// on Bun: Bun.stdin.text()\nconsole.log(1);\n",
        "/* import x from 'bun:sqlite'\n   Bun.file() */ console.log(1);\n",
        "const s = 'http://x'; // Bun.file\n",
        "const DenoX = 1; myDeno.foo; Bunny.hop(); typeof Bun;\n",
        'import x from "./bun:thing.ts";\n',
        'import x from "./local.ts";\n',
    ],
)
def test_comments_lookalikes_and_feature_checks_do_not_count(source: str) -> None:
    assert detect_runtime(source, default=Runtime.DENO).reason.startswith("default")


def test_a_slash_pair_in_a_string_is_not_a_comment() -> None:
    assert detect_runtime("const u = 'a//b'; Bun.write('x', u);\n").runtime is Runtime.BUN


def test_manifests() -> None:
    assert detect_runtime("1", default=Runtime.BUN, deno_json="{}").reason == "deno.json"
    assert detect_runtime("1", bunfig_toml="[install]\n").reason == "bunfig.toml"
    engines = json.dumps({"name": "f", "engines": {"bun": ">=1.1"}})
    assert detect_runtime("1", package_json=engines) == Detection(Runtime.BUN, "package.json: engines.bun")
    manager = json.dumps({"packageManager": "bun@1.2.3"})
    assert detect_runtime("1", package_json=manager).runtime is Runtime.BUN
    plain = json.dumps({"name": "f", "engines": {"node": ">=20"}})
    assert detect_runtime("1", default=Runtime.DENO, package_json=plain).runtime is Runtime.DENO
    with pytest.raises(RuntimeConflict):
        detect_runtime("Bun.file('x')", deno_json="{}")
    with pytest.raises(RuntimeConflict):
        detect_runtime("Deno.version", package_json=engines)


@pytest.mark.parametrize("bad", ["{", "[1, 2]", '"bun"', "[" * 100_000])
def test_a_bad_package_json_is_invalid_request(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="package_json"):
        detect_runtime("1", package_json=bad)


def test_only_bun_or_deno_can_be_the_default() -> None:
    with pytest.raises(ValueError):
        detect_runtime("1", default=Runtime.NODE)


_JS_BITS = st.sampled_from(
    ["Deno.", "Bun.", "//", "/*", "*/", "'", '"', "`", "\\", "\n", "import ", "from ", "npm:", "bun:", "(", "x"]
)


@settings(max_examples=300, deadline=None)
@given(
    source=st.one_of(st.text(), st.binary(), st.lists(_JS_BITS).map("".join)),
    package_json=st.none() | st.text() | st.lists(_JS_BITS).map("".join),
    deno_json=st.none() | st.text(max_size=5),
    default=st.sampled_from([Runtime.BUN, Runtime.DENO]),
)
def test_any_text_gets_bun_deno_or_a_typed_error(
    source: str | bytes, package_json: str | None, deno_json: str | None, default: Runtime
) -> None:
    try:
        found = detect_runtime(source, default=default, package_json=package_json, deno_json=deno_json)
    except InvalidRequest as err:  # RuntimeConflict or a bad package.json, nothing else
        assert err.code == "invalid_request" and err.message
        return
    assert found.runtime in (Runtime.BUN, Runtime.DENO) and found.reason
    assert detect_runtime(source, default=default, package_json=package_json, deno_json=deno_json) == found


def test_a_large_unterminated_source_is_scanned_in_linear_time() -> None:
    started = time.monotonic()
    detect_runtime("/*`'\"" * 200_000 + "\nDeno.version")
    detect_runtime("`" + "/*" * 500_000)
    assert time.monotonic() - started < 5
