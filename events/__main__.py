"""``python -m soulbox.events billing|audit|metrics``."""

from __future__ import annotations

import sys

from .service import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) == 2 else ""))
