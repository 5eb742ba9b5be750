"""The tier's and its runtimes' names (aliases of the shared enums, for brevity)."""

from __future__ import annotations

from typing import Final

from soulbox.core.schemas import Runtime, Tier

LINUX: Final = Tier.LINUX
PYTHON: Final = Runtime.PYTHON  # a Python script, run by the host's python3
SHELL: Final = Runtime.SHELL  # a bash script
NODE: Final = Runtime.NODE  # a JavaScript file, run by node
