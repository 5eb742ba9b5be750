"""process.Process through the official e2b SDK's Commands object."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from e2b import CommandExitException, InvalidArgumentException, NotFoundException, Sandbox, SandboxException

from .conftest import Envd, free_port, start_envd, stop


def test_run_collects_stdout_stderr_and_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo out; echo err >&2; echo $SOULBOX_DEFAULT $MINE; pwd", envs={"MINE": "req"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "out"
    assert lines[1] == "from-env-file req"
    assert result.stderr == "err\n"


def test_cwd_defaults_to_home_and_can_be_set(sandbox: Sandbox, envd: Envd) -> None:
    assert sandbox.commands.run("pwd").stdout.strip() == str(envd.home)
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout.strip() == "/tmp"


def test_nonzero_exit_raises_with_code_and_output(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo bad >&2; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stderr == "bad\n"
    assert info.value.error == "exit status 3"


def test_output_streams_before_the_process_ends(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("echo first; sleep 30; echo never", background=True)
    started = time.monotonic()
    for stdout, _, _ in handle:
        assert stdout == "first\n"
        break
    assert time.monotonic() - started < 10
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert handle.kill()


def test_stdin_send_and_close(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat; echo done", background=True, stdin=True)
    handle.send_stdin("hello ")
    sandbox.commands.send_stdin(handle.pid, b"world\n")
    handle.close_stdin()
    result = handle.wait()
    assert result.stdout == "hello world\ndone\n"


def test_stream_input(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("head -c 12", background=True, stdin=True)
    sandbox.commands.stream_input(handle.pid, ["abcd", b"efgh", "ijkl"])
    assert handle.wait().stdout == "abcdefghijkl"


def test_kill_ends_the_whole_process_group(sandbox: Sandbox, envd: Envd) -> None:
    pidfile = envd.home / "child.pid"
    handle = sandbox.commands.run(f"sleep 300 & echo $! > {pidfile}; wait", background=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert sandbox.commands.kill(handle.pid)
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == -1
    assert info.value.error == "signal: killed"
    for _ in range(100):
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)
    assert not sandbox.commands.kill(handle.pid)  # gone: not found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_list_reports_cmd_args_envs_and_cwd(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 30", background=True, envs={"K": "v"}, cwd="/tmp")
    other = sandbox.commands.run("sleep 31", background=True)
    listed = {p.pid: p for p in sandbox.commands.list()}
    info = listed[handle.pid]
    assert info.cmd == "/bin/bash"
    assert info.args == ["-l", "-c", "sleep 30"]
    assert info.envs == {"K": "v"}
    assert info.cwd == "/tmp"
    assert other.pid in listed
    handle.kill()
    other.kill()


def test_reconnect_to_a_running_process_keeps_receiving(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("for i in 1 2 3 4 5 6; do echo line$i; sleep 0.3; done", background=True, timeout=0)
    for stdout, _, _ in handle:
        assert stdout == "line1\n"
        break
    handle.disconnect()
    again = sandbox.commands.connect(handle.pid)
    result = again.wait()
    assert "line6\n" in result.stdout
    assert "line1\n" not in result.stdout
    assert result.exit_code == 0


def test_connect_to_an_unknown_pid_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999_999)


def test_processes_run_side_by_side(sandbox: Sandbox) -> None:
    handles = [sandbox.commands.run(f"sleep 0.5; echo {i}", background=True) for i in range(4)]
    started = time.monotonic()
    assert [h.wait().stdout for h in handles] == [f"{i}\n" for i in range(4)]
    assert time.monotonic() - started < 4


def test_command_timeout_kills_the_process(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - the SDK's deadline or the kill, whichever lands first
        sandbox.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    assert all(p.args != ["-l", "-c", "sleep 30"] for p in sandbox.commands.list())


def test_envd_reaps_its_children(sandbox: Sandbox, envd: Envd) -> None:
    for _ in range(5):
        sandbox.commands.run("true")
    children = [pid for pid in os.listdir("/proc") if pid.isdigit() and _ppid(int(pid)) == envd.process.pid]
    assert children == []


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().split(")")[-1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return -1


def test_large_output_is_streamed_with_backpressure(sandbox: Sandbox, envd: Envd) -> None:
    result = sandbox.commands.run("head -c 8000000 /dev/zero | tr '\\0' a; echo", timeout=120)
    assert len(result.stdout) == 8_000_001
    with open(f"/proc/{envd.process.pid}/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    assert peak_kib < 80 * 1024


def test_as_pid_1_envd_reaps_orphans(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a pid namespace")
    port = free_port()
    wrapper = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    process = start_envd(tmp_path, "--port", str(port), "--home", str(tmp_path / "home"), wrapper=wrapper)
    try:
        sandbox = Envd(f"http://127.0.0.1:{port}", tmp_path / "home", process).sandbox()
        assert sandbox.commands.run("echo $PPID").stdout == "1\n"
        for _ in range(3):
            sandbox.commands.run("(sleep 0.2 &); true")  # the sleeps are orphaned to envd
        time.sleep(1)
        states = sandbox.commands.run("ps -e -o stat=,comm=").stdout.splitlines()
        assert not [line for line in states if line.strip().startswith("Z")], states
    finally:
        process.kill()  # unshare ignores SIGTERM while it waits; --kill-child takes envd down with it
        stop(process)


def test_bad_requests_map_to_the_sdk_exceptions(sandbox: Sandbox, envd: Envd) -> None:
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("true", cwd=str(envd.home / "missing"))
    handle = sandbox.commands.run("sleep 30", background=True)  # stdin not requested
    with pytest.raises(SandboxException):
        handle.send_stdin("ignored")
    handle.kill()
    with pytest.raises(NotFoundException):
        sandbox.commands.send_stdin(999_999, "x")
