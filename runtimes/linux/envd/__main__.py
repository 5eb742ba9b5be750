"""`python -m envd` (in a sandbox) or `python -m soulbox.runtimes.linux.envd` (on the host)."""

import sys

# envd speaks plain HTTP only; without this, asyncio loads ssl (and OpenSSL, ~1 MB) into every sandbox.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from .main import main  # noqa: E402

main()
