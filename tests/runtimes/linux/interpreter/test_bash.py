"""The bash kernel through the official SDK."""

from __future__ import annotations

import pytest
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox


def test_state_output_status_env_and_timeout(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="bash", cwd="/tmp")
    assert context.language == "bash"
    first = sbx.run_code("GREETING=hello; cd /; echo out; echo err >&2", context=context)
    assert first.error is None
    assert first.logs.stdout == ["out\n"] and first.logs.stderr == ["err\n"]
    second = sbx.run_code("echo $GREETING $(pwd) $SOULBOX_Z; false", context=context, envs={"SOULBOX_Z": "z"})
    assert second.logs.stdout == ["hello / z\n"]
    assert second.error is not None and (second.error.name, second.error.value) == ("ExitCode", "1")
    assert sbx.run_code("echo ${SOULBOX_Z:-unset}", context=context).logs.stdout == ["unset\n"]
    with pytest.raises(TimeoutException):
        sbx.run_code("while true; do :; done", context=context, timeout=1.5)
    assert sbx.run_code("echo $GREETING", context=context).logs.stdout == ["hello\n"]
    gone = sbx.run_code("exit 4", context=context)
    assert gone.error is not None and "status 4" in gone.error.value
    assert sbx.run_code("echo ${GREETING:-fresh}", context=context).logs.stdout == ["fresh\n"]
