"""Function versions: a content hash over everything that defines a run.

Every deploy stores its spec under its version in the versions bucket, once
(``create``: a version never changes); redeploying identical code and
settings yields the same version. Invocations may name a version (or an
alias, see :mod:`soulbox.gateway.aliases`) instead of the latest deploy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from typing import TYPE_CHECKING

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.errors import InvalidRequest, NotFound
from soulbox.core.schemas import NAME_RE, FunctionAlias, FunctionSpec
from soulbox.core.store import get_model

if TYPE_CHECKING:
    from starlette.requests import Request

    from .platform import Platform

from .principal import principal

_IDENTITY = ("runtime", "artifact", "limits", "env", "permissions", "retry", "max_concurrency")


class VersionNotFound(NotFound):
    code = "version_not_found"


class AliasNotFound(NotFound):
    code = "alias_not_found"


def version_of(spec: FunctionSpec) -> str:
    """12 hex digits of sha256 over the spec's defining fields (not its name or timestamps)."""
    identity = spec.model_dump(mode="json", include=set(_IDENTITY))
    if spec.secrets:  # only when set: the versions of functions without secrets stay as they were
        identity["secrets"] = spec.secrets
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


async def remember_version(kv: KeyValue, spec: FunctionSpec) -> None:
    assert spec.version is not None
    # A version deployed before is stored already, unchanged.
    with contextlib.suppress(KeyWrongLastSequenceError):
        await kv.create(names.version_key(spec.tenant, spec.name, spec.version), encode(spec))


async def get_version(kv: KeyValue, tenant: str, function: str, version: str) -> FunctionSpec:
    spec = None
    if len(version) == 12 and all(c in "0123456789abcdef" for c in version):
        spec = await get_model(kv, names.version_key(tenant, function, version), FunctionSpec)
    if spec is None:
        raise VersionNotFound(f"function {function!r} has no version {version!r}")
    return spec


async def resolve(p: Platform, request: Request, name: str) -> FunctionSpec:
    """The spec an invocation of ``name`` runs: ``?version=``, ``?alias=``, or the latest deploy."""
    tenant = principal(request).tenant
    version = request.query_params.get("version")
    alias_name = request.query_params.get("alias")
    if version and alias_name:
        raise InvalidRequest("give ?version= or ?alias=, not both")
    if alias_name:
        if not NAME_RE.match(alias_name):
            raise AliasNotFound(f"function {name!r} has no alias {alias_name!r}")
        alias = await get_model(p.buckets.aliases, names.alias_key(tenant, name, alias_name), FunctionAlias)
        if alias is None:
            raise AliasNotFound(f"function {name!r} has no alias {alias_name!r}")
        (target,) = random.choices(alias.targets, weights=[t.weight for t in alias.targets])
        version = target.version
    if version:
        return await get_version(p.buckets.versions, tenant, name, version)
    return await p.registry.get(tenant, name)
