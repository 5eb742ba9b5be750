"""The JS tier on Deno under the conformance suite: script-mode guests (stdin -> stdout, exit code)."""

from __future__ import annotations

from pathlib import Path

from tests.runtimes.js.guests import DENO, SCRIPTS, Guests

from .base import CASES, TierUnderTest


async def make(tmp: Path) -> TierUnderTest:
    guests = Guests(DENO, {case: SCRIPTS[DENO][case] for case in CASES})
    return TierUnderTest("js-deno", guests.runtime_for(tmp), guests.spec, hello_output=b"hello from js\n")
