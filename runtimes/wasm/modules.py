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
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal, Protocol

import wasmtime
import wasmtime.component as wc

from soulbox.core.logging import get_logger

from .components import ComponentPre
from .cpython import CPythonPre
from .engine import WasmEngine

log = get_logger(__name__)

FetchArtifact = Callable[[str], Awaitable[bytes]]
Prepared = wasmtime.InstancePre | ComponentPre | CPythonPre
"""What a call instantiates: a module's InstancePre, or a component with its linker."""
Kind = Literal["module", "component", "cpython"]
"""What an artifact is: a core module, a ``wasi:cli/run`` component, or the CPython component."""


class CompiledStore(Protocol):
    """Where workers share compiled artifacts (the NATS object store in production)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, data: bytes) -> None: ...


class ModuleCache:
    """Maps an artifact digest to a ready ``InstancePre`` or :class:`ComponentPre` (bounded LRU).

    ``kind`` in the loading methods says what the artifact is; components are prepared by
    ``preparers[kind]`` (with the linker of their kind).
    """

    def __init__(
        self,
        engine: WasmEngine,
        linker: wasmtime.Linker,
        cache_dir: Path,
        *,
        size: int,
        preparers: Mapping[Kind, Callable[[wc.Component], Prepared]] | None = None,
    ) -> None:
        self._engine = engine
        self._linker = linker
        self._preparers = dict(preparers or {})
        self._dir = cache_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._size = size
        self._lru: OrderedDict[str, Prepared] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0
        self.deserialized = 0
        self.fetched = 0  # compiled artifacts taken from the shared store
        self.evicted = 0

    def lookup(self, digest: str) -> Prepared | None:
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

    def load_compiled(self, digest: str, *, kind: Kind = "module") -> Prepared | None:
        """Deserialize a compiled artifact from disk, if one exists."""
        path = self._path(digest)
        if not path.exists():
            return None
        try:
            engine = self._engine.engine
            if kind != "module":
                artifact: wasmtime.Module | wc.Component = wc.Component.deserialize_file(engine, str(path))
            else:
                artifact = wasmtime.Module.deserialize_file(engine, str(path))
        except wasmtime.WasmtimeError as exc:
            log.warning("wasm.cache.corrupt", artifact=digest, error=str(exc))
            path.unlink(missing_ok=True)
            return None
        self.deserialized += 1
        return self._insert(digest, artifact, kind)

    def compile(self, digest: str, data: bytes, *, kind: Kind = "module") -> tuple[Prepared, bytes]:
        """Compile, keep on disk; returns the compiled bytes too, for sharing."""
        engine = self._engine.engine
        artifact = wasmtime.Module(engine, data) if kind == "module" else wc.Component(engine, data)
        self.compiled += 1
        compiled = bytes(artifact.serialize())
        self._write(digest, compiled)
        return self._insert(digest, artifact, kind), compiled

    def adopt(self, digest: str, compiled: bytes, *, kind: Kind = "module") -> Prepared | None:
        """Take a compiled artifact another worker shared: to disk, then deserialize."""
        self._write(digest, compiled)
        self.fetched += 1
        return self.load_compiled(digest, kind=kind)

    def _write(self, digest: str, compiled: bytes) -> None:
        path = self._path(digest)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(compiled)
        os.replace(tmp, path)  # atomic: concurrent workers never see half a file

    def _insert(self, digest: str, artifact: wasmtime.Module | wc.Component, kind: Kind) -> Prepared:
        pre: Prepared
        if isinstance(artifact, wc.Component):
            pre = self._preparers[kind](artifact)
        else:
            pre = self._linker.instantiate_pre(artifact)
        with self._lock:
            self._lru[digest] = pre
            self._lru.move_to_end(digest)
            while len(self._lru) > self._size:
                self._lru.popitem(last=False)
                self.evicted += 1
        return pre
