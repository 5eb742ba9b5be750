"""Contexts, timeouts, dead kernels and HTTP errors, through the official SDK."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import httpx
import pytest
from e2b import ConnectionConfig, NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox
from e2b_code_interpreter.models import Execution, OutputMessage, parse_output
from packaging.version import Version

from .conftest import Server


def _post_execute(server: Server, body: dict[str, object]) -> tuple[Execution, list[dict[str, object]]]:
    """POST /execute with httpx; the stream is parsed by the SDK's own parser."""
    execution = Execution()
    raw: list[dict[str, object]] = []
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{server.url}/execute", json=body) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for line in response.iter_lines():
            raw.append(json.loads(line))
            parse_output(execution, line)
    return execution, raw


def test_contexts_create_list_restart_remove(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="python")
    assert context.id in {c.id for c in sbx.list_code_contexts()}
    sbx.run_code("state = 1", context=context)
    assert sbx.run_code("state", context=context).text == "1"
    sbx.restart_code_context(context)
    restarted = sbx.run_code("state", context=context)
    assert restarted.error is not None and restarted.error.name == "NameError"
    assert restarted.execution_count == 1  # a new kernel counts from 1
    sbx.remove_code_context(context.id)
    assert context.id not in {c.id for c in sbx.list_code_contexts()}
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=context)
    with pytest.raises(NotFoundException):
        sbx.restart_code_context(context)


def test_stream_ends_with_end_of_execution(server: Server) -> None:
    execution, raw = _post_execute(server, {"code": "print('hi')\n6 * 7", "language": "python"})
    assert [m["type"] for m in raw] == ["number_of_executions", "stdout", "result", "end_of_execution"]
    assert execution.text == "42" and execution.logs.stdout == ["hi\n"]


def test_sdk_timeout_interrupts_and_the_context_survives(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    sbx.run_code("kept = 'yes'", context=context)
    with pytest.raises(TimeoutException):
        sbx.run_code("while True:\n    pass", context=context, timeout=1.5)
    # The SDK closed the connection; the server interrupted the loop, so this does not queue
    # behind it forever and the kernel's state is intact.
    assert sbx.run_code("kept", context=context, timeout=30).text == "yes"


def test_server_side_timeout_reports_keyboard_interrupt(server: Server, sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    code = "n = 5\nimport time\nwhile True:\n    time.sleep(0.05)"
    execution, _ = _post_execute(server, {"code": code, "context_id": context.id, "timeout": 1})
    assert execution.error is not None
    assert execution.error.name == "KeyboardInterrupt"
    assert execution.error.value == "execution timed out after 1 s"
    assert "line 4" in execution.error.traceback
    assert sbx.run_code("n", context=context).text == "5"


def test_interrupting_a_printing_loop_keeps_the_stream_intact(server: Server, sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    code = "i = 0\nwhile True:\n    i += 1\n    print('line', i)"
    execution, raw = _post_execute(server, {"code": code, "context_id": context.id, "timeout": 1})
    assert execution.error is not None and execution.error.name == "KeyboardInterrupt"
    assert raw[-1] == {"type": "end_of_execution"}
    printed = "".join(execution.logs.stdout).splitlines()
    assert printed[:3] == ["line 1", "line 2", "line 3"]
    assert sbx.run_code("i > 3", context=context).text == "True"


def test_repeated_interrupts_of_printing_cells_never_wedge_the_kernel(server: Server, sbx: Sandbox) -> None:
    # SIGINT lands anywhere in the kernel's output code; it once left a lock held.
    context = sbx.create_code_context()
    for attempt in range(10):
        stream = "sys.stderr" if attempt % 2 else "sys.stdout"
        code = f"import sys\nn = 0\nwhile True:\n    n += 1\n    print('x', n, file={stream})"
        execution, _ = _post_execute(server, {"code": code, "context_id": context.id, "timeout": 0.2 + attempt * 0.05})
        assert execution.error is not None and execution.error.name == "KeyboardInterrupt"
        assert sbx.run_code("n > 0", context=context, timeout=10).text == "True"


def test_kernel_ignoring_the_interrupt_is_killed(server: Server, sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)"
    execution, _ = _post_execute(server, {"code": code, "context_id": context.id, "timeout": 0.5})
    assert execution.error is not None and execution.error.name == "TimeoutError"
    fresh = sbx.run_code("'fresh kernel'", context=context)
    assert fresh.text == "fresh kernel"


def test_a_dead_kernel_is_reported_then_restarted(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    sbx.run_code("lost = 1", context=context)
    died = sbx.run_code("import os\nprint('bye', flush=True)\nos._exit(3)", context=context)
    assert died.logs.stdout == ["bye\n"]
    assert died.error is not None and died.error.name == "UnexpectedEndOfExecution"
    assert "status 3" in died.error.value
    after = sbx.run_code("lost", context=context)
    assert after.error is not None and after.error.name == "NameError"


def test_a_kernel_dying_between_executions_is_announced(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    sbx.run_code("import os, threading\nthreading.Timer(0.2, lambda: os._exit(9)).start()", context=context)
    time.sleep(1)
    execution = sbx.run_code("'ran'", context=context)
    assert execution.text == "ran"
    assert len(execution.logs.stderr) == 1 and "status 9" in execution.logs.stderr[0]
    assert "earlier state is lost" in execution.logs.stderr[0]
    assert sbx.run_code("'quiet'", context=context).logs.stderr == []


def test_one_execution_at_a_time_per_context(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    code = "import time\nt0 = time.time()\ntime.sleep(0.7)\n(t0, time.time())"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: sbx.run_code(code, context=context), range(2)))
    spans = sorted(tuple(float(x) for x in (r.text or "").strip("()").split(", ")) for r in runs)
    assert spans[0][1] <= spans[1][0]  # the second started after the first ended


def test_errors_the_sdk_understands(server: Server, sbx: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sbx.remove_code_context("no-such-context")
    with pytest.raises(SandboxException, match="400"):
        sbx.create_code_context(language="cobol")
    with pytest.raises(SandboxException, match="400"):
        sbx.create_code_context(cwd="/no/such/dir")
    response = httpx.post(f"{server.url}/execute", json={"code": "1", "context_id": "x", "language": "python"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    response = httpx.post(f"{server.url}/execute", content=b"{not json")
    assert response.status_code == 400
    assert httpx.get(f"{server.url}/health").json() == "OK"
    assert httpx.get(f"{server.url}/nope").status_code == 404


async def test_the_async_sdk_streams_too(server: Server) -> None:
    sandbox = AsyncSandbox(
        sandbox_id="sbx-test",
        envd_version=Version("0.5.0"),
        envd_access_token=None,
        sandbox_domain=None,
        connection_config=ConnectionConfig(sandbox_url=server.url, api_key="e2b_test"),
    )
    lines: list[str] = []

    async def on_stdout(message: OutputMessage) -> None:
        lines.append(message.line)

    context = await sandbox.create_code_context(language="python")
    execution = await sandbox.run_code("print('async')\n'done'", context=context, on_stdout=on_stdout)
    assert lines == ["async\n"] and execution.text == "done"
    await sandbox.remove_code_context(context)


def test_keep_alive_serves_requests_on_one_connection(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        stream = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert stream.readline() == b"HTTP/1.1 200 OK\r\n"
            headers = {}
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert headers["connection"] == "keep-alive"
            assert stream.read(int(headers["content-length"])) == b'"OK"'
