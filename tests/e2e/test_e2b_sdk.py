"""The official ``e2b`` SDK, unmodified, against a SoulBox stack: control plane, commands, files, PTY, ports.

The SDK is pointed at the gateway with its own settings (E2B_API_URL,
E2B_SANDBOX_URL, E2B_API_KEY); every request crosses gateway -> NATS ->
scheduler/worker -> envd inside a namespace sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import CommandExitException, NotFoundException, PtySize, Sandbox, SandboxQuery
from e2b.api.client.api.sandboxes import get_v_2_sandboxes_sandbox_id_logs
from e2b.api.client_sync import get_api_client
from e2b.connection_config import ConnectionConfig
from e2b.exceptions import AuthenticationException, SandboxException

from tests.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture
def sbx(e2b_env: Stack) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=120, envs={"GREETING": "hello"}, metadata={"suite": "e2b"})
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_commands_run_with_the_create_env(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo $GREETING world; echo oops >&2; pwd")
    assert result.exit_code == 0
    assert result.stdout == "hello world\n/home/user\n"
    assert result.stderr == "oops\n"
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("exit 3")
    assert failed.value.exit_code == 3


def test_output_streams_while_the_command_runs(sbx: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    sbx.commands.run(
        "for i in 1 2 3; do echo $i; sleep 0.3; done",
        on_stdout=lambda line: seen.append((time.monotonic() - started, line)),
    )
    assert [line.strip() for _, line in seen] == ["1", "2", "3"]
    assert seen[0][0] < seen[-1][0] - 0.4  # arrived one by one, not at the end


def test_background_process_stdin_reconnect_and_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "ping\n")
    assert any(p.pid == handle.pid for p in sbx.commands.list())
    handle.disconnect()
    again = sbx.commands.connect(handle.pid)
    sbx.commands.send_stdin(handle.pid, "pong\n")
    sbx.commands.close_stdin(handle.pid)
    result = again.wait()
    assert "pong" in result.stdout
    sleeper = sbx.commands.run("sleep 1000", background=True)
    assert sbx.commands.kill(sleeper.pid)
    with pytest.raises(CommandExitException):
        sleeper.wait()


def test_files_round_trip(sbx: Sandbox) -> None:
    sbx.files.write("/home/user/notes/a.txt", "alpha")
    assert sbx.files.read("/home/user/notes/a.txt") == "alpha"
    blob = bytes(range(256)) * 40_000  # ~10 MB, binary
    sbx.files.write("/tmp/blob.bin", blob)
    assert sbx.files.read("/tmp/blob.bin", format="bytes") == blob
    assert sbx.files.make_dir("/home/user/notes/sub")
    sbx.files.rename("/home/user/notes/a.txt", "/home/user/notes/sub/b.txt")
    names = sorted(e.name for e in sbx.files.list("/home/user/notes", depth=2))
    assert names == ["b.txt", "sub"]
    assert sbx.files.exists("/home/user/notes/sub/b.txt")
    assert sbx.files.get_info("/home/user/notes/sub/b.txt").size == 5
    sbx.files.remove("/home/user/notes")
    assert not sbx.files.exists("/home/user/notes")
    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/nope.txt")
    # files written through the API are the sandbox's own
    assert sbx.commands.run("wc -c < /tmp/blob.bin").stdout.strip() == str(len(blob))


def test_watch_dir_sees_a_new_file(sbx: Sandbox) -> None:
    sbx.files.make_dir("/home/user/watched")
    watcher = sbx.files.watch_dir("/home/user/watched")
    try:
        sbx.files.write("/home/user/watched/new.txt", "x")
        deadline = time.monotonic() + 5
        names: set[str] = set()
        while time.monotonic() < deadline and "new.txt" not in names:
            names |= {e.name for e in watcher.get_new_events()}
            time.sleep(0.1)
        assert "new.txt" in names
    finally:
        watcher.stop()


def test_pty_runs_an_interactive_shell(sbx: Sandbox) -> None:
    chunks: list[bytes] = []
    terminal = sbx.pty.create(size=PtySize(rows=24, cols=80))
    sbx.pty.resize(terminal.pid, PtySize(rows=40, cols=100))
    sbx.pty.send_stdin(terminal.pid, b"stty size; tty; exit\n")
    terminal.wait(on_pty=chunks.append)
    output = b"".join(chunks)
    assert b"40 100" in output and b"/dev/pts/" in output


def test_lifecycle_info_list_timeout_metrics_pause_kill(e2b_env: Stack) -> None:
    sandbox = Sandbox.create(timeout=60, metadata={"owner": "lifecycle"})
    try:
        info = sandbox.get_info()
        assert info.sandbox_id == sandbox.sandbox_id and info.metadata == {"owner": "lifecycle"}
        listed = Sandbox.list(query=SandboxQuery(metadata={"owner": "lifecycle"})).next_items()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        sandbox.set_timeout(600)
        assert (sandbox.get_info().end_at - info.started_at).total_seconds() > 500
        assert sandbox.get_metrics()  # at least the sample taken on request
        sandbox.commands.run("echo kept > /home/user/state")
        # Logs through E2B's own API client (the CLI's path): lifecycle and daemon lines, timestamped.
        client = get_api_client(ConnectionConfig())
        logs = get_v_2_sandboxes_sandbox_id_logs.sync_detailed(sandbox.sandbox_id, client=client).parsed
        assert any(entry.message == "sandbox.created" for entry in logs.logs)
        sandbox.pause()
        assert Sandbox.get_info(sandbox.sandbox_id).state.value == "paused"
        resumed = Sandbox.connect(sandbox.sandbox_id)
        assert resumed.commands.run("cat /home/user/state").stdout == "kept\n"
    finally:
        assert sandbox.kill()
    assert not sandbox.is_running()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)


def test_a_sandbox_dies_at_its_timeout(e2b_env: Stack) -> None:
    sandbox = Sandbox.create(timeout=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sandbox.is_running():
        time.sleep(0.2)
    assert not sandbox.is_running()


def test_a_server_inside_is_reachable_on_its_port_url(sbx: Sandbox, e2b_env: Stack) -> None:
    sbx.files.write("/home/user/site/index.html", "<h1>inside</h1>")
    sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
    host = sbx.get_host(8000)
    assert host == f"8000-{sbx.sandbox_id}.sandbox.localhost"
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{e2b_env.url}/index.html", headers={"Host": host}, timeout=5)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200 and response.text == "<h1>inside</h1>"


def test_a_wrong_api_key_is_refused(e2b_env: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "sb_wrong")
    with pytest.raises((AuthenticationException, SandboxException)):
        Sandbox.create()


def test_signed_file_urls_work_through_the_gateway(sbx: Sandbox, e2b_env: Stack) -> None:
    host = {"Host": f"49983-{sbx.sandbox_id}.sandbox.localhost"}  # the per-port host name a signed URL is for
    upload = sbx.upload_url("/home/user/shared/upload.txt", use_signature_expiration=60)
    sent = httpx.post(upload, files={"file": ("upload.txt", b"via a signed url")}, headers=host, timeout=10)
    assert sent.status_code == 200, sent.text
    download = sbx.download_url("/home/user/shared/upload.txt", use_signature_expiration=60)
    got = httpx.get(download, headers=host, timeout=10)
    assert got.status_code == 200 and got.content == b"via a signed url"
    tampered = download.replace("upload.txt", "other.txt")
    assert httpx.get(tampered, headers=host, timeout=10).status_code == 401
    unsigned = download.split("&signature=")[0]
    assert httpx.get(unsigned, headers=host, timeout=10).status_code == 401
