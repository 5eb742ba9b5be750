"""The function registry: specs in the functions bucket, module bytes in the object store.

Reads are served from a local copy kept current by a watch on the bucket, so
an invoke does not pay a KV round trip; a miss falls back to the bucket.
"""

from __future__ import annotations

import hashlib

from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.errors import FunctionNotFound
from soulbox.core.kvmirror import KvMirror
from soulbox.core.logging import get_logger
from soulbox.core.schemas import FunctionSpec, Limits, Permissions, RetryPolicy, Runtime, utcnow
from soulbox.core.store import get_model, scan

from .versions import remember_version, version_of

log = get_logger(__name__)


class FunctionRegistry:
    def __init__(self, kv: KeyValue, artifacts: ObjectStore, versions: KeyValue | None = None) -> None:
        self._kv = kv
        self._artifacts = artifacts
        self._versions = versions
        self._mirror = KvMirror(kv, FunctionSpec)

    async def start(self) -> None:
        await self._mirror.start()

    async def stop(self) -> None:
        await self._mirror.stop()

    async def get(self, tenant: str, name: str) -> FunctionSpec:
        key = names.function_key(tenant, name)
        spec = self._mirror.values.get(key)
        if spec is None:
            spec = await get_model(self._kv, key, FunctionSpec)
            if spec is None:
                raise FunctionNotFound(name)
        return spec

    async def list(self, tenant: str) -> list[FunctionSpec]:
        specs = [spec async for _, spec in scan(self._kv, f"{tenant}.>", FunctionSpec)]
        return sorted(specs, key=lambda s: s.name)

    async def deploy(
        self,
        tenant: str,
        name: str,
        runtime: Runtime,
        module: bytes,
        limits: Limits,
        *,
        env: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        permissions: Permissions | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
        packages: dict[str, str] | None = None,
    ) -> tuple[FunctionSpec, bool]:
        """Store the module (content-addressed) and the spec; True if the function is new."""
        digest = hashlib.sha256(module).hexdigest()
        key = names.function_key(tenant, name)
        previous = await get_model(self._kv, key, FunctionSpec)
        await self._artifacts.put(digest, module)
        now = utcnow()
        spec = FunctionSpec(
            tenant=tenant,
            name=name,
            runtime=runtime,
            artifact=digest,
            artifact_size=len(module),
            limits=limits,
            env=env or {},
            secrets=secrets or {},
            permissions=permissions or Permissions(),
            retry=retry,
            max_concurrency=max_concurrency,
            packages=packages or {},
            created_at=previous.created_at if previous else now,
            updated_at=now,
        )
        spec = spec.model_copy(update={"version": version_of(spec)})
        if self._versions is not None:
            await remember_version(self._versions, spec)
        await self._kv.put(key, encode(spec))
        self._mirror.put(key, spec)
        return spec, previous is None

    async def delete(self, tenant: str, name: str) -> None:
        key = names.function_key(tenant, name)
        if await get_model(self._kv, key, FunctionSpec) is None:
            raise FunctionNotFound(name)
        await self._kv.delete(key)
        self._mirror.delete(key)
