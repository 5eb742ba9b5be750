"""The worker builds the tier from settings with whatever runtimes are installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from soulbox.core.schemas import Outcome
from soulbox.core.settings import Settings
from soulbox.core.tiersettings import JsSettings
from soulbox.runtimes.js.config import BUN, DENO, TIER
from soulbox.runtimes.js.engines import find_binary
from soulbox.runtimes.js.factory import create_js_runtimes
from soulbox.runtimes.js.runtime import JsRuntime

from .guests import BIN_DIRS, Guests


async def test_the_factory_builds_one_runtime_for_the_tier(tmp_path: Path) -> None:
    bun, deno = find_binary("bun", extra_dirs=BIN_DIRS), find_binary("deno", extra_dirs=BIN_DIRS)
    if bun is None and deno is None:
        pytest.skip("neither bun nor deno is installed")
    settings = Settings(data_dir=tmp_path, js=JsSettings(bun_path=bun, deno_path=deno), _env_file=None)  # type: ignore[call-arg]
    guests = Guests(DENO if deno else BUN, {"hello": 'console.log("hi");\n'})
    runtimes = create_js_runtimes(settings, guests.fetch)
    js = runtimes[TIER]
    try:
        assert isinstance(js, JsRuntime)
        assert set(js.engines) == {r for r, b in ((BUN, bun), (DENO, deno)) if b}
        result = await js.run(guests.spec("hello"), b"")
        assert (result.outcome, result.stdout) == (Outcome.SUCCESS, b"hi\n")
    finally:
        await js.close()


def test_a_disabled_tier_is_left_out(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, js=JsSettings(enabled=False), _env_file=None)  # type: ignore[call-arg]
    assert create_js_runtimes(settings, Guests(DENO, {}).fetch) == {}
