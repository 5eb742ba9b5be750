"""Function modules on disk, content-addressed, with their parsed :class:`Mode`.

An artifact is one ES module (JavaScript or TypeScript; a bundle if it has
dependencies). It is written once to ``<dir>/<sha256>.ts`` (atomically, so
concurrent workers never see half a file) and parsed once per engine to
learn its mode; both are kept for the worker's lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from soulbox.core.errors import InvalidRequest

from ..singleflight import SingleFlight
from .config import Mode
from .engines import Engine
from .source import inspect_file

FetchArtifact = Callable[[str], Awaitable[bytes]]
DIGEST_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Module:
    path: Path
    mode: Mode


class ModuleStore:
    def __init__(self, fetch_artifact: FetchArtifact, directory: Path) -> None:
        self._fetch = fetch_artifact
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._modules: dict[tuple[str, str], Module] = {}
        self._loading: SingleFlight[tuple[str, str], Module] = SingleFlight()
        self.fetched = 0
        self.inspected = 0

    async def get(self, engine: Engine, digest: str) -> Module:
        """The module for ``digest``; raises InvalidRequest (SourceError) if it does not parse."""
        key = (engine.runtime, digest)
        module = self._modules.get(key)
        if module is not None:
            return module
        module = await self._loading.run(key, lambda: self._load(engine, digest))
        self._modules[key] = module
        return module

    async def _load(self, engine: Engine, digest: str) -> Module:
        path = self._path(digest)
        if not await asyncio.to_thread(path.exists):
            data = await self._fetch(digest)
            self.fetched += 1
            if hashlib.sha256(data).hexdigest() != digest:
                raise InvalidRequest(f"artifact {digest} does not match its digest")
            await asyncio.to_thread(_write_atomically, path, data)
        mode = await asyncio.to_thread(inspect_file, engine, path)
        self.inspected += 1
        return Module(path, mode)

    def _path(self, digest: str) -> Path:
        if not DIGEST_RE.fullmatch(digest):
            raise InvalidRequest(f"bad artifact digest {digest!r}")
        return self._dir / f"{digest}.ts"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.{id(data)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
