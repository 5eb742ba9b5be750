"""envd's HTTP surface: access control, unix socket, raw Connect framing, keep-alive, /init, port proxy."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import AuthenticationException, Sandbox
from e2b.envd.filesystem import filesystem_connect, filesystem_pb
from e2b.envd.process import process_connect, process_pb
from protobuf import Oneof

from .conftest import Envd, free_port, start_envd, stop

TOKEN = "s3cret-token"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Envd]:
    """envd that requires an access token."""
    port = free_port()
    process = start_envd(
        tmp_path,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--home",
        str(tmp_path / "home"),
        env={"SOULBOX_ENVD_ACCESS_TOKEN": TOKEN},
    )
    try:
        yield Envd(f"http://127.0.0.1:{port}", tmp_path / "home", process, token=TOKEN)
    finally:
        stop(process)


def test_access_token_is_required(secured: Envd) -> None:
    assert httpx.get(secured.url + "/health").status_code == 204
    denied = httpx.post(secured.url + "/process.Process/List", json={})
    assert denied.status_code == 401
    assert denied.json()["code"] == 401
    anonymous = secured.sandbox()
    with pytest.raises(AuthenticationException):
        anonymous.commands.run("true")
    with pytest.raises(AuthenticationException):
        anonymous.files.read("/etc/hostname")
    wrong = secured.sandbox(token="wrong")
    with pytest.raises(AuthenticationException):
        wrong.commands.list()
    good = secured.sandbox(token=TOKEN)
    assert good.commands.run("echo ok").stdout == "ok\n"
    good.files.write("f.txt", "signed")
    assert good.files.read("f.txt") == "signed"


def test_signed_file_urls(secured: Envd) -> None:
    sandbox = secured.sandbox(token=TOKEN)
    path = str(secured.home / "up.txt")
    upload = httpx.post(sandbox.upload_url(path), files={"file": ("up.txt", b"via signed url")})
    assert upload.status_code == 200, upload.text
    assert upload.json()[0]["path"] == path
    assert httpx.get(sandbox.download_url(path)).content == b"via signed url"
    assert httpx.get(sandbox.download_url(path, use_signature_expiration=60)).status_code == 200
    tampered = sandbox.download_url(path).replace("up.txt", "other.txt")
    assert httpx.get(tampered).status_code == 401
    read_url_for_write = sandbox.download_url(path)
    octet = {"Content-Type": "application/octet-stream"}
    assert httpx.post(read_url_for_write, content=b"x", headers=octet).status_code == 401
    expired = sandbox.download_url(path, use_signature_expiration=-10)
    assert httpx.get(expired).status_code == 401


def test_init_sets_envs_and_token(envd: Envd) -> None:
    reply = httpx.post(envd.url + "/init", json={"envVars": {"FROM_INIT": "yes"}, "accessToken": "late"})
    assert reply.status_code == 204
    assert httpx.get(envd.url + "/envs").status_code == 401
    assert httpx.get(envd.url + "/envs", headers={"X-Access-Token": "late"}).json()["FROM_INIT"] == "yes"
    assert envd.sandbox(token="late").commands.run("echo $FROM_INIT").stdout == "yes\n"


def _envelope(message: dict[str, object], flags: int = 0) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


def _envelopes(body: bytes) -> list[tuple[int, dict[str, object]]]:
    out = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + length])))
        body = body[5 + length :]
    return out


def test_unix_socket_and_raw_connect_framing(tmp_path: Path) -> None:
    path = str(tmp_path / "envd.sock")
    process = start_envd(tmp_path, "--socket", path, "--home", str(tmp_path / "home"))
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://envd") as client:
            assert client.get("/health").status_code == 204
            listed = client.post("/process.Process/List", json={})
            assert (listed.status_code, listed.json()) == (200, {"processes": []})
            missing = client.post("/process.Process/SendSignal", json={"process": {"pid": 999999}, "signal": 9})
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/json"
            assert missing.json()["code"] == "not_found"
            started = client.post(
                "/process.Process/Start",
                content=_envelope({"process": {"cmd": "/bin/sh", "args": ["-c", "printf hi; exit 2"]}}),
                headers={"Content-Type": "application/connect+json"},
            )
            assert started.headers["content-type"] == "application/connect+json"
            frames = _envelopes(started.content)
            assert "start" in frames[0][1]["event"]  # type: ignore[operator]
            data = [f[1]["event"]["data"]["stdout"] for f in frames if "data" in f[1].get("event", {})]  # type: ignore[index,union-attr]
            assert base64.b64decode("".join(data)) == b"hi"  # type: ignore[arg-type]
            assert frames[-2][1]["event"]["end"]["exitCode"] == 2  # type: ignore[index]
            assert frames[-1] == (2, {})
            plain = client.post("/process.Process/List", content=b"{}", headers={"Content-Type": "text/plain"})
            assert plain.status_code == 415
            proto = {"Content-Type": "application/proto"}
            garbage = client.post("/process.Process/List", content=b"\x0f", headers=proto)
            assert (garbage.status_code, garbage.json()["code"]) == (400, "invalid_argument")
    finally:
        stop(process)


def _raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_keep_alive_chunked_bodies_and_limits(envd: Envd) -> None:
    chunked = (
        b"POST /process.Process/List HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n"
    )
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    closing = b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = _raw(envd.url, chunked + health + closing)
    assert reply.count(b"HTTP/1.1 200 OK") == 1
    assert b'{"processes":[]}' in reply
    assert b"HTTP/1.1 204 No Content" in reply
    assert b"HTTP/1.1 404 Not Found" in reply
    huge = b"GET /health HTTP/1.1\r\nX: " + b"a" * 300_000 + b"\r\n\r\n"
    assert _raw(envd.url, huge).startswith(b"HTTP/1.1 431")
    bad_chunk = (
        b"POST /process.Process/List HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    assert _raw(envd.url, bad_chunk).startswith(b"HTTP/1.1 400")


def test_port_proxy_reaches_a_server_in_the_sandbox(envd: Envd, sandbox: Sandbox) -> None:
    port = free_port()
    (envd.home / "served.txt").write_text("through the proxy")
    server = sandbox.commands.run(f"exec python3 -m http.server {port} --bind 127.0.0.1", background=True, timeout=0)
    try:
        headers = {"E2b-Sandbox-Id": "test", "E2b-Sandbox-Port": str(port)}
        for _ in range(100):
            try:
                reply = httpx.get(envd.url + "/served.txt", headers=headers)
            except httpx.HTTPError:
                reply = None
            if reply is not None and reply.status_code == 200:
                break
            time.sleep(0.1)
        assert reply is not None and reply.text == "through the proxy"
        posted = httpx.post(envd.url + "/x", headers=headers, content=b"body")
        assert posted.status_code == 501  # http.server answered: the request and its body went through
    finally:
        server.kill()
    closed = httpx.get(envd.url + "/", headers={"E2b-Sandbox-Port": str(free_port())})
    assert closed.status_code == 502
    assert closed.json()["code"] == 502


def test_stream_keepalives_follow_the_requested_interval(envd: Envd) -> None:
    reply = httpx.post(
        envd.url + "/process.Process/Start",
        content=_envelope({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 2.2; echo late"]}}),
        headers={"Content-Type": "application/connect+json", "Keepalive-Ping-Interval": "1"},
        timeout=30,
    )
    kinds = [next(iter(f[1]["event"])) for f in _envelopes(reply.content)[:-1]]  # type: ignore[call-overload]
    assert kinds[0] == "start"
    assert kinds.count("keepalive") >= 2
    assert kinds[-2:] == ["data", "end"]


def test_binary_protobuf_clients_are_served(envd: Envd) -> None:
    """connectrpc's default codec is binary proto (and gzip): the generated stubs work with it too."""
    (envd.home / "bin.txt").write_text("proto")
    files = filesystem_connect.FilesystemClientSync(envd.url)
    entry = files.stat(filesystem_pb.StatRequest(path=str(envd.home / "bin.txt"))).entry
    assert entry is not None
    assert (entry.name, entry.type, entry.size) == ("bin.txt", filesystem_pb.FileType.FILE, 5)
    processes = process_connect.ProcessClientSync(envd.url)
    config = process_pb.ProcessConfig(cmd="/bin/sh", args=["-c", "echo $X; exit 4"], envs={"X": "bin"})
    start = process_pb.StartRequest(process=config)
    events = [e.event.event for e in processes.start(start) if e.event is not None and e.event.event is not None]
    assert events[0].field == "start"
    assert Oneof("stdout", b"bin\n") in [e.value.output for e in events if e.field == "data"]
    assert (events[-1].field, events[-1].value.exit_code) == ("end", 4)
