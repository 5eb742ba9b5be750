"""Compiled modules: content-addressed on disk and in the object store, an LRU of InstancePre in memory.

An artifact's compiled form is keyed by the sha256 of its bytes and the
engine's fingerprint (wasmtime version + configuration), so a worker
deserializes what any earlier run — on this node or, through the object
store, on any other — compiled instead of compiling again. Deserializing is
trusting native code: only SoulBox workers write compiled artifacts, and the
object store checks each object's SHA-256 on read.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import wasmtime

from soulbox.core.logging import get_logger

from .engine import WasmEngine

log = get_logger(__name__)

FetchArtifact = Callable[[str], Awaitable[bytes]]


class CompiledStore(Protocol):
    """Where workers share compiled artifacts (the NATS object store in production)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, data: bytes) -> None: ...


class ModuleCache:
    """Maps an artifact digest to a ready ``InstancePre`` (bounded LRU)."""

    def __init__(self, engine: WasmEngine, linker: wasmtime.Linker, cache_dir: Path, *, size: int) -> None:
        self._engine = engine
        self._linker = linker
        self._dir = cache_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._size = size
        self._lru: OrderedDict[str, wasmtime.InstancePre] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0
        self.deserialized = 0
        self.fetched = 0  # compiled artifacts taken from the shared store
        self.evicted = 0

    def lookup(self, digest: str) -> wasmtime.InstancePre | None:
        with self._lock:
            pre = self._lru.get(digest)
            if pre is not None:
                self._lru.move_to_end(digest)
            return pre

    def key(self, digest: str) -> str:
        """The compiled artifact's name: module hash + engine fingerprint."""
        return f"{digest}-{self._engine.fingerprint}"

    def _path(self, digest: str) -> Path:
        return self._dir / f"{self.key(digest)}.cwasm"

    def load_compiled(self, digest: str) -> wasmtime.InstancePre | None:
        """Deserialize a compiled artifact from disk, if one exists."""
        path = self._path(digest)
        if not path.exists():
            return None
        try:
            module = wasmtime.Module.deserialize_file(self._engine.engine, str(path))
        except wasmtime.WasmtimeError as exc:
            log.warning("wasm.cache.corrupt", artifact=digest, error=str(exc))
            path.unlink(missing_ok=True)
            return None
        self.deserialized += 1
        return self._insert(digest, module)

    def compile(self, digest: str, data: bytes) -> tuple[wasmtime.InstancePre, bytes]:
        """Compile, keep on disk; returns the compiled bytes too, for sharing."""
        module = wasmtime.Module(self._engine.engine, data)
        self.compiled += 1
        compiled = bytes(module.serialize())
        self._write(digest, compiled)
        return self._insert(digest, module), compiled

    def adopt(self, digest: str, compiled: bytes) -> wasmtime.InstancePre | None:
        """Take a compiled artifact another worker shared: to disk, then deserialize."""
        self._write(digest, compiled)
        self.fetched += 1
        return self.load_compiled(digest)

    def _write(self, digest: str, compiled: bytes) -> None:
        path = self._path(digest)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(compiled)
        os.replace(tmp, path)  # atomic: concurrent workers never see half a file

    def _insert(self, digest: str, module: wasmtime.Module) -> wasmtime.InstancePre:
        pre = self._linker.instantiate_pre(module)
        with self._lock:
            self._lru[digest] = pre
            self._lru.move_to_end(digest)
            while len(self._lru) > self._size:
                self._lru.popitem(last=False)
                self.evicted += 1
        return pre
