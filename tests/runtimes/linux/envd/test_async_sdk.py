"""The SDK's async flavor (AsyncSandbox) against envd: commands, PTY-free streaming, files, metadata."""

from __future__ import annotations

from e2b import AsyncSandbox
from e2b.connection_config import ConnectionConfig

from .conftest import ENVD_VERSION, Envd


def _async_sandbox(envd: Envd) -> AsyncSandbox:
    config = ConnectionConfig(
        sandbox_url=envd.url, extra_sandbox_headers={"E2b-Sandbox-Id": "test", "E2b-Sandbox-Port": "49983"}
    )
    return AsyncSandbox(
        sandbox_id="test",
        sandbox_domain=None,
        envd_version=ENVD_VERSION,
        envd_access_token=None,
        connection_config=config,
    )


async def test_async_commands_and_files(envd: Envd) -> None:
    sandbox = _async_sandbox(envd)
    assert await sandbox.is_running()
    seen: list[str] = []
    result = await sandbox.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=seen.append)
    assert result.stdout == "1\n2\n3\n"
    assert "".join(seen) == "1\n2\n3\n"
    handle = await sandbox.commands.run("cat", background=True, stdin=True)
    await sandbox.commands.send_stdin(handle.pid, "piped")
    await sandbox.commands.close_stdin(handle.pid)
    assert (await handle.wait()).stdout == "piped"
    info = await sandbox.files.write("meta.txt", "m", metadata={"Owner-Team": "infra"})
    assert info.metadata == {"owner-team": "infra"}
    entry = await sandbox.files.get_info("meta.txt")
    assert entry.metadata == {"owner-team": "infra"}
    assert await sandbox.files.read("meta.txt") == "m"
