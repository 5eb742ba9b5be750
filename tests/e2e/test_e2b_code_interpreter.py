"""The official ``e2b-code-interpreter`` SDK against SoulBox: stateful Python and JavaScript, rich results."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from e2b_code_interpreter import Sandbox

from tests.e2e.conftest import API_KEY
from tests.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sbx(stack: Stack) -> Iterator[Sandbox]:
    mp = pytest.MonkeyPatch()
    mp.setenv("E2B_API_URL", stack.url)
    mp.setenv("E2B_SANDBOX_URL", stack.url)
    mp.setenv("E2B_API_KEY", API_KEY)
    sandbox = Sandbox.create(timeout=300, request_timeout=300)  # the first one builds the data-science env
    try:
        yield sandbox
    finally:
        sandbox.kill()
        mp.undo()


def test_state_is_kept_between_cells(sbx: Sandbox) -> None:
    sbx.run_code("x = 40")
    execution = sbx.run_code("print('side'); x + 2")
    assert execution.error is None
    assert execution.logs.stdout == ["side\n"]
    assert execution.text == "42"


def test_a_matplotlib_figure_comes_back_as_png(sbx: Sandbox) -> None:
    execution = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()")
    assert execution.error is None
    pngs = [r.png for r in execution.results if r.png]
    assert pngs and base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_a_dataframe_has_html(sbx: Sandbox) -> None:
    execution = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert execution.results and execution.results[0].html and "<table" in execution.results[0].html


def test_errors_have_name_value_and_traceback(sbx: Sandbox) -> None:
    execution = sbx.run_code("1 / 0")
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert "division by zero" in execution.error.value
    assert "ZeroDivisionError" in execution.error.traceback


def test_javascript_context(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="javascript")
    sbx.run_code("const n = 20", context=context)
    execution = sbx.run_code("console.log('js'); n + 1", context=context)
    assert execution.logs.stdout == ["js\n"]
    assert execution.text == "21"


def test_contexts_are_separate_and_restartable(sbx: Sandbox) -> None:
    first = sbx.create_code_context()
    second = sbx.create_code_context()
    sbx.run_code("y = 'one'", context=first)
    assert sbx.run_code("'y' in globals()", context=second).text == "False"
    assert sbx.run_code("y", context=first).text == "one"  # E2B's server strips a str repr's quotes
    sbx.restart_code_context(first)
    assert sbx.run_code("'y' in globals()", context=first).text == "False"
    ids = {c.id for c in sbx.list_code_contexts()}
    assert {first.id, second.id} <= ids
    sbx.remove_code_context(second)
    assert second.id not in {c.id for c in sbx.list_code_contexts()}
