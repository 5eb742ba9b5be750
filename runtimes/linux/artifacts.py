"""Function code on disk, content-addressed by its sha256.

Fetched once per worker (concurrent first calls share one fetch), checked
against its digest, written atomically and read-only. Sandboxes never see
this directory: the launcher copies the file in from an open descriptor.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from soulbox.core.errors import InvalidRequest

from ..singleflight import SingleFlight
from .errors import SandboxError

FetchArtifact = Callable[[str], Awaitable[bytes]]
DIGEST = re.compile(r"[0-9a-f]{64}")


class ArtifactCache:
    def __init__(self, fetch: FetchArtifact, directory: Path) -> None:
        self._fetch = fetch
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._loading: SingleFlight[str, Path] = SingleFlight()
        self.fetched = 0

    async def path(self, digest: str) -> Path:
        """The local file holding artifact ``digest``, fetching it the first time."""
        if not DIGEST.fullmatch(digest):
            raise InvalidRequest(f"artifact {digest!r} is not a sha256 hex digest")
        path = self._dir / digest
        if path.exists():
            return path
        return await self._loading.run(digest, lambda: self._fetch_to(digest, path))

    async def _fetch_to(self, digest: str, path: Path) -> Path:
        data = await self._fetch(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise SandboxError(f"artifact {digest} does not match its digest")
        tmp = path.with_name(f".{digest}.{os.getpid()}.{id(data)}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o444)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        self.fetched += 1
        return path
