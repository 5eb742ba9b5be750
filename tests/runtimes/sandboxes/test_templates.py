"""Templates: the in-sandbox programs are copied where sandbox uids can read them, with their bytecode."""

from __future__ import annotations

from pathlib import Path

from soulbox.core.settings import Settings
from soulbox.runtimes.sandboxes.templates import GUEST_ROOT, Templates


async def test_the_envd_copy_comes_compiled_and_readable(settings: Settings, tmp_path: Path) -> None:
    guests = tmp_path / "guests"
    guests.mkdir()
    template = await Templates(settings, guests).get("base")
    copy = guests / "envd"
    assert template.ro_binds == {str(copy): f"{GUEST_ROOT}/envd"}
    # Sandboxes see the copy read-only: without bytecode beside it, every envd would compile itself at start.
    compiled = {p.name.split(".")[0] for p in (copy / "__pycache__").glob("*.pyc")}
    assert {p.stem for p in copy.glob("*.py")} <= compiled
    assert all(p.stat().st_mode & 0o004 for p in (copy, *copy.rglob("*")))
    assert template.command[1] == "-S" and template.command[2:4] == ["-m", "envd"]
