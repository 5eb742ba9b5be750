"""The Python kernel through the official SDK: output, results, rich display, errors."""

from __future__ import annotations

import base64
import time

from e2b_code_interpreter import Sandbox

from .conftest import MAX_OUTPUT_BYTES, Server


def test_stdout_and_stderr_are_streamed_in_order(sbx: Sandbox) -> None:
    seen: list[tuple[str, str, float]] = []
    code = (
        "import sys, os, time\n"
        "print('a')\n"
        "sys.stderr.write('b\\n')\n"
        "print('c')\n"
        "time.sleep(1)\n"
        "print('d')\n"
        "os.system('echo from-a-subprocess')\n"
    )
    execution = sbx.run_code(
        code,
        on_stdout=lambda m: seen.append(("out", m.line, time.monotonic())),
        on_stderr=lambda m: seen.append(("err", m.line, time.monotonic())),
    )
    assert execution.error is None
    assert [(kind, text) for kind, text, _ in seen] == [
        ("out", "a\n"),
        ("err", "b\n"),
        ("out", "c\n"),
        ("out", "d\n"),
        ("out", "from-a-subprocess\n"),
    ]
    assert seen[3][2] - seen[2][2] > 0.8  # 'c' arrived while the cell was still sleeping
    assert execution.logs.stdout == ["a\n", "c\n", "d\n", "from-a-subprocess\n"]
    assert execution.logs.stderr == ["b\n"]


def test_a_print_flood_is_batched_without_loss(sbx: Sandbox) -> None:
    execution = sbx.run_code("for i in range(100_000):\n    print(i)")
    assert "".join(execution.logs.stdout) == "".join(f"{i}\n" for i in range(100_000))
    assert len(execution.logs.stdout) < 1000


def test_final_expression_is_the_main_result(sbx: Sandbox) -> None:
    first = sbx.run_code("x = 20\nx + 22")
    assert first.text == "42"
    assert [r.is_main_result for r in first.results] == [True]
    assert first.execution_count is not None
    second = sbx.run_code("'hi'")
    assert second.text == "hi"  # the E2B server's quote stripping
    assert second.execution_count == first.execution_count + 1
    assert sbx.run_code("x + 1;").results == []  # a trailing ';' silences it, as in IPython
    assert sbx.run_code("y = 1").results == []
    assert sbx.run_code("async def f():\n    return 7\nawait f()").text == "7"


def test_state_is_kept_per_context(sbx: Sandbox) -> None:
    sbx.run_code("shared = 'default context'")
    assert sbx.run_code("shared").text == "default context"
    other = sbx.create_code_context()
    execution = sbx.run_code("shared", context=other)
    assert execution.error is not None and execution.error.name == "NameError"
    sbx.run_code("shared = 'other'", context=other)
    assert sbx.run_code("shared").text == "default context"
    assert sbx.run_code("shared", context=other).text == "other"


def test_matplotlib_figures_come_back_as_png(sbx: Sandbox) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.show()\n"
        "fig, ax = plt.subplots()\n"
        "ax.bar(['a', 'b'], [3, 5])\n"
    )
    execution = sbx.run_code(code)
    assert execution.error is None, execution.error
    pngs = [r for r in execution.results if r.png]
    assert len(pngs) == 2  # one shown, one left open at the end of the cell
    for result in pngs:
        assert not result.is_main_result
        assert base64.b64decode(result.png or "").startswith(b"\x89PNG\r\n\x1a\n")
        assert (result.text or "").startswith("<Figure size")
    assert sbx.run_code("plt.get_fignums()").text == "[]"  # closed after publishing
    main = sbx.run_code("fig, ax = plt.subplots()\nfig")
    assert [(r.is_main_result, bool(r.png)) for r in main.results] == [(True, True)]


def test_each_show_is_its_own_figure_and_subprocesses_still_plot(sbx: Sandbox) -> None:
    code = (
        "import matplotlib.pyplot as plt, subprocess, sys\n"
        "for i in range(3):\n"
        "    plt.plot([0, i])\n"
        "    plt.show()\n"
        "child = 'import matplotlib.pyplot as plt; plt.plot([1]); plt.show(); print(plt.get_backend())'\n"
        "subprocess.run([sys.executable, '-c', child], check=True, capture_output=True, text=True).stdout"
    )
    execution = sbx.run_code(code)
    assert execution.error is None, execution.error
    assert len([r for r in execution.results if r.png]) == 3
    assert execution.text == "Agg\\n"  # the repr of "Agg\n", quotes stripped


def test_pandas_dataframe_has_html_and_text(sbx: Sandbox) -> None:
    execution = sbx.run_code("import pandas as pd\npd.DataFrame({'name': ['ada', 'bob'], 'age': [36, 41]})")
    assert execution.error is None, execution.error
    [result] = execution.results
    assert result.is_main_result
    assert result.html is not None and "<table" in result.html and "ada" in result.html
    assert result.text is not None and "name" in result.text and "bob" in result.text


def test_repr_methods_and_display(sbx: Sandbox) -> None:
    code = (
        "class Rich:\n"
        "    def _repr_html_(self): return '<b>rich</b>'\n"
        "    def _repr_markdown_(self): return '**rich**'\n"
        "    def _repr_svg_(self): return '<svg></svg>'\n"
        "    def _repr_latex_(self): return r'$\\alpha$'\n"
        "    def _repr_json_(self): return {'rich': True}\n"
        "    def __repr__(self): return 'Rich()'\n"
        "class Bundle:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/plain': 'B', 'application/vnd.custom+json': {'k': 1}}\n"
        "display(Rich())\n"
        "display(Bundle())\n"
        "Rich()\n"
    )
    execution = sbx.run_code(code)
    assert execution.error is None, execution.error
    shown, bundle, main = execution.results
    assert not shown.is_main_result and not bundle.is_main_result and main.is_main_result
    for result in (shown, main):
        assert result.html == "<b>rich</b>"
        assert result.markdown == "**rich**"
        assert result.svg == "<svg></svg>"
        assert result.latex == "$\\alpha$"
        assert result.json == {"rich": True}
        assert result.text == "Rich()"
    assert bundle.text == "B"
    assert bundle.extra == {"application/vnd.custom+json": {"k": 1}}


def test_exception_gives_name_value_traceback(sbx: Sandbox) -> None:
    errors = []
    execution = sbx.run_code(
        "print('before')\ndef fail():\n    raise ValueError('boom')\nfail()", on_error=errors.append
    )
    assert execution.logs.stdout == ["before\n"]
    assert execution.error is not None
    assert errors == [execution.error]
    assert execution.error.name == "ValueError"
    assert execution.error.value == "boom"
    tb = execution.error.traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert "line 4" in tb and "line 3, in fail" in tb and "raise ValueError('boom')" in tb
    assert "pykernel" not in tb
    syntax = sbx.run_code("def (:")
    assert syntax.error is not None and syntax.error.name == "SyntaxError"


def test_env_vars_apply_to_one_execution(sbx: Sandbox) -> None:
    code = (
        "import os, subprocess\n(os.environ.get('SOULBOX_X'), subprocess.check_output('echo $SOULBOX_X', shell=True))"
    )
    assert sbx.run_code(code, envs={"SOULBOX_X": "yes"}).text == "('yes', b'yes\\n')"
    assert sbx.run_code(code).text == "(None, b'\\n')"


def test_binary_stdout(sbx: Sandbox) -> None:
    execution = sbx.run_code("import sys\nsys.stdout.buffer.write('é\\n'.encode())\nsys.stdout.flush()")
    assert execution.error is None, execution.error
    assert execution.logs.stdout == ["é\n"]


def test_output_is_capped(sbx: Sandbox) -> None:
    execution = sbx.run_code("for _ in range(40_000):\n    print('x' * 99)\n'still here'")
    assert execution.text == "still here"
    assert sum(map(len, execution.logs.stdout)) <= MAX_OUTPUT_BYTES
    notice = f"[output truncated: this execution exceeded {MAX_OUTPUT_BYTES} bytes of output]\n"
    assert execution.logs.stderr == [notice]


def test_cwd_of_contexts(server: Server, sbx: Sandbox) -> None:
    assert sbx.run_code("import os\nos.getcwd()").text == str(server.cwd)
    context = sbx.create_code_context(cwd="/tmp")
    assert context.cwd == "/tmp" and context.language == "python"
    assert sbx.run_code("import os\nos.getcwd()", context=context).text == "/tmp"
