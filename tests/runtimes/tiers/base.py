"""What a runtime tier provides to the shared conformance suite.

Each tier adds a module next to this one defining ``async def make(tmp: Path)
-> TierUnderTest`` (or several ``make_<variant>``); the suite runs every case
against every one of them.
A tier builds its own program for each case in ``CASES``:

- ``hello``: writes ``hello_output`` to stdout, exits 0
- ``echo``: copies stdin to stdout
- ``stderr_exit3``: writes "out\\n" to stdout, "err\\n" to stderr, exits with code 3
- ``loop``: never ends (burns CPU)
- ``grow``: allocates memory without bound
- ``trap``: crashes (a trap, an abort, an uncaught error)
- ``big_output``: writes 4 MiB of "x" to stdout, exits 0
- ``slow``: waits about 300 ms, then writes "done\\n"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from soulbox.core.schemas import FunctionSpec, Limits
from soulbox.runtimes.protocol import Runtime

CASES = ("hello", "echo", "stderr_exit3", "loop", "grow", "trap", "big_output", "slow")


@dataclass
class TierUnderTest:
    name: str
    runtime: Runtime
    spec: Callable[[str, Limits], FunctionSpec]
    hello_output: bytes
