"""Streamed invocations through the whole stack: output reaches the caller while the function runs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import deploy
from tests.guests import wasm

SSE = {"Accept": "text/event-stream"}


@dataclass
class Event:
    name: str
    data: dict[str, Any]
    at: float  # monotonic arrival time


def events(response: httpx.Response) -> Iterator[Event]:
    """Server-sent events as they arrive."""
    name, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            yield Event(name, json.loads(data), time.monotonic())
            name, data = "message", ""


def source(api: httpx.Client, name: str, runtime: str, code: str, **limits: int) -> None:
    created = api.post(
        "/v1/functions",
        data={"name": name, "runtime": runtime, **{k: str(v) for k, v in limits.items()}},
        files={"code": ("main", code.encode())},
    )
    assert created.status_code in (200, 201), created.text


def sse(api: httpx.Client, name: str, **params: str) -> list[Event]:
    with api.stream("POST", f"/v1/functions/{name}/invoke", headers=SSE, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(events(response))


@pytest.mark.parametrize(
    ("runtime", "code"),
    [
        ("shell", "echo first\nsleep 3\necho oops >&2\necho second\n"),
        ("python", "import sys, time\nprint('first')\ntime.sleep(3)\n"
         "print('oops', file=sys.stderr)\nprint('second')\n"),
        ("deno", "console.log('first');\nawait new Promise((r) => setTimeout(r, 3000));\n"
         "console.error('oops');\nconsole.log('second');\n"),
    ],
)  # fmt: skip
def test_sse_delivers_output_before_the_function_ends(api: httpx.Client, runtime: str, code: str) -> None:
    source(api, f"drip-{runtime}", runtime, code, timeout_ms=10000)
    got = sse(api, f"drip-{runtime}")
    names = [e.name for e in got]
    assert names[-1] == "end" and names.count("end") == 1
    stdout = "".join(e.data["data"] for e in got if e.name == "stdout")
    stderr = "".join(e.data["data"] for e in got if e.name == "stderr")
    assert stdout == "first\nsecond\n" and stderr == "oops\n"
    first, end = got[0], got[-1]
    assert first.name == "stdout" and first.data["data"] == "first\n"
    assert end.at - first.at > 1.5  # the first line came while the function slept (3 s)
    assert end.data["status"] == "completed" and end.data["exit_code"] == 0 and end.data["outcome"] == "success"
    assert "error" not in end.data
    seqs = [e.data["seq"] for e in got]
    assert seqs == sorted(seqs) and seqs[-1] == len(got)


def test_sse_end_reports_a_failure_mid_stream(api: httpx.Client) -> None:
    source(api, "fails-late", "shell", "echo partial\nsleep 0.3\necho 'bad thing' >&2\nexit 3\n")
    got = sse(api, "fails-late")
    assert got[0].name == "stdout" and got[-1].name == "end"
    end = got[-1].data
    assert end["status"] == "failed" and end["exit_code"] == 3
    assert end["error"]["code"] == "function_error" and "exited with code 3" in end["error"]["message"]
    record = api.get(f"/v1/invocations/{end['invocation_id']}").json()
    assert record["status"] == "failed"


def test_sse_end_reports_a_timeout(api: httpx.Client) -> None:
    source(api, "slowpoke", "shell", "echo started\nsleep 30\n", timeout_ms=2000)
    got = sse(api, "slowpoke")
    assert got[0].data["data"] == "started\n"
    assert got[-1].name == "end" and got[-1].data["status"] == "timed_out"
    assert got[-1].data["error"]["code"] == "invocation_timeout"


def test_wasm_output_comes_as_one_piece_at_the_end(api: httpx.Client) -> None:
    deploy(api, "hello", wasm("hello"))
    got = sse(api, "hello", stream="sse")
    assert [e.name for e in got] == ["stdout", "end"]
    assert got[0].data["data"] == "hello from wasm\n" and got[1].data["status"] == "completed"


def test_raw_stream_sends_stdout_chunks_as_they_come(api: httpx.Client) -> None:
    source(api, "drip-raw", "python", "import time\nprint('a')\ntime.sleep(3)\nprint('b')\n", timeout_ms=10000)
    chunks: list[tuple[float, bytes]] = []
    with api.stream("POST", "/v1/functions/drip-raw/invoke", params={"stream": "true"}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked" and response.headers["x-invocation-id"]
        for chunk in response.iter_raw():
            chunks.append((time.monotonic(), chunk))
    assert b"".join(c for _, c in chunks) == b"a\nb\n"
    assert chunks[0][1] == b"a\n" and chunks[-1][0] - chunks[0][0] > 1.5


def test_raw_stream_cut_short_when_the_function_fails_mid_stream(api: httpx.Client) -> None:
    source(api, "dies-raw", "shell", "echo partial\nsleep 0.3\nexit 3\n")
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),  # no final chunk: the body is incomplete
        api.stream("POST", "/v1/functions/dies-raw/invoke", params={"stream": "true"}) as response,
    ):
        invocation_id = response.headers["x-invocation-id"]
        for chunk in response.iter_raw():
            received += chunk
    assert received == b"partial\n"
    assert api.get(f"/v1/invocations/{invocation_id}").json()["status"] == "failed"


def test_raw_stream_failing_before_any_output_answers_like_a_plain_call(api: httpx.Client) -> None:
    source(api, "dies-early", "shell", "echo 'no luck' >&2\nexit 4\n")
    response = api.post("/v1/functions/dies-early/invoke", params={"stream": "true"})
    assert response.status_code == 502 and response.json()["error"]["code"] == "function_error"


def test_streaming_is_refused_for_async_invocations(api: httpx.Client) -> None:
    deploy(api, "hello", wasm("hello"))
    response = api.post("/v1/functions/hello/invoke", params={"stream": "true", "async": "true"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_http_route_streams_with_the_header(api: httpx.Client) -> None:
    source(api, "route-drip", "shell", "echo one\nsleep 3\necho two\n", timeout_ms=10000)
    trigger = {"id": "drip", "function": "route-drip", "kind": "http", "http": {"method": "POST", "path": "/drip"}}
    assert api.post("/v1/triggers", json=trigger).status_code in (200, 201)
    with api.stream("POST", "/run/default/drip", headers={"X-Soulbox-Stream": "sse"}) as response:
        assert response.status_code == 200
        got = list(events(response))
    assert [e.name for e in got] == ["stdout", "stdout", "end"]
    assert got[1].at - got[0].at > 1.5
    plain = api.post("/run/default/drip", headers=SSE)  # Accept is the function's business on a route
    assert plain.status_code == 200 and plain.content == b"one\ntwo\n"


def test_a_slow_reader_holds_back_nothing_and_the_cap_holds(api: httpx.Client) -> None:
    cap = 1024 * 1024
    code = "head -c 3000000 /dev/zero | tr '\\0' x\necho done >&2\n"
    source(api, "firehose", "shell", code, max_output_bytes=cap, timeout_ms=20000)
    with api.stream("POST", "/v1/functions/firehose/invoke", params={"stream": "sse"}) as response:
        invocation_id = response.headers["x-invocation-id"]
        stream = events(response)
        first = next(stream)  # then stop reading for a while
        deadline = time.monotonic() + 20
        # A sync invocation's record is the worker's to write: a 404 until its "running" record exists.
        while (status := api.get(f"/v1/invocations/{invocation_id}").json().get("status")) != "completed":
            assert time.monotonic() < deadline, status  # the function finished without its reader
            time.sleep(0.2)
        rest = list(stream)
    got = [first, *rest]
    stdout = "".join(e.data["data"] for e in got if e.name == "stdout")
    assert stdout == "x" * cap  # exactly what the cap keeps, in order
    end = got[-1].data
    assert end["stdout_bytes"] == 3000000 and end["stdout_truncated"] is True and end["status"] == "completed"
