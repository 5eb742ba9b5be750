"""`python -m envd` (in a sandbox) or `python -m soulbox.runtimes.linux.envd` (on the host)."""

from .main import main

main()
