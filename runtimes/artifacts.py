"""Function artifacts and compiled modules in the NATS object store, as the tiers need them."""

from __future__ import annotations

from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

COMPILED_PREFIX = "compiled/"


class Artifacts:
    """Uploaded code by digest (what the gateway stored) and compiled modules shared by workers."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def fetch(self, digest: str) -> bytes:
        result = await self._store.get(digest)
        if result.data is None:
            raise LookupError(f"artifact {digest} is empty")
        return result.data

    async def get(self, key: str) -> bytes | None:
        try:
            result = await self._store.get(COMPILED_PREFIX + key)
        except ObjectNotFoundError:
            return None
        return result.data

    async def put(self, key: str, data: bytes) -> None:
        await self._store.put(COMPILED_PREFIX + key, data)
