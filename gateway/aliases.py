"""Versions and aliases over HTTP, and which version an invocation runs.

``GET /v1/functions/{name}/versions`` lists the stored versions.
``PUT /v1/functions/{name}/aliases/{alias}`` points an alias at one or more
versions with weights (``{"targets": [{"version": "…", "weight": 90}, …]}``);
the targets it replaces are kept, and ``POST …/aliases/{alias}/rollback``
swaps them back. ``POST /v1/functions/{name}/invoke?version=…`` or
``?alias=…`` runs that version (an alias picks one target per invocation,
in proportion to the weights); without either, the latest deploy runs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core import names
from soulbox.core.codec import encode
from soulbox.core.errors import Conflict, InvalidRequest
from soulbox.core.schemas import NAME_RE, AliasTarget, FunctionAlias, FunctionSpec, utcnow
from soulbox.core.store import get_model, scan

from .bodies import json_body
from .functions import function_name
from .models import FunctionOut
from .platform import platform
from .principal import principal
from .versions import AliasNotFound, get_version


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: list[AliasTarget] = Field(min_length=1, max_length=10)


def _alias_name(request: Request) -> str:
    alias: str = request.path_params["alias"]
    if not NAME_RE.match(alias):
        raise InvalidRequest(f"invalid alias name {alias!r}")
    return alias


def _out(alias: FunctionAlias) -> dict[str, object]:
    return alias.model_dump(mode="json", exclude={"v", "tenant"})


async def list_versions(request: Request) -> Response:
    p = platform(request)
    name = function_name(request)
    await p.registry.get(principal(request).tenant, name)  # 404 for an unknown function
    specs = [s async for _, s in scan(p.buckets.versions, f"{principal(request).tenant}.{name}.*", FunctionSpec)]
    specs.sort(key=lambda s: s.updated_at)
    return JSONResponse(
        {"versions": [{"version": s.version, **FunctionOut.of(s).model_dump(mode="json")} for s in specs]}
    )


async def put_alias(request: Request) -> Response:
    p = platform(request)
    name, alias_name = function_name(request), _alias_name(request)
    tenant = principal(request).tenant
    given = await json_body(request, AliasIn, limit=16 * 1024, what="alias")
    if len({t.version for t in given.targets}) != len(given.targets):
        raise InvalidRequest("each version may appear once in an alias")
    for target in given.targets:
        await get_version(p.buckets.versions, tenant, name, target.version)
    key = names.alias_key(tenant, name, alias_name)
    current = await get_model(p.buckets.aliases, key, FunctionAlias)
    alias = FunctionAlias(
        tenant=tenant,
        function=name,
        name=alias_name,
        targets=given.targets,
        previous=current.targets if current else None,
        updated_at=utcnow(),
    )
    await p.buckets.aliases.put(key, encode(alias))
    return JSONResponse(_out(alias), status_code=200 if current else 201)


async def list_aliases(request: Request) -> Response:
    p = platform(request)
    name = function_name(request)
    aliases = [a async for _, a in scan(p.buckets.aliases, f"{principal(request).tenant}.{name}.*", FunctionAlias)]
    return JSONResponse({"aliases": [_out(a) for a in sorted(aliases, key=lambda a: a.name)]})


async def rollback_alias(request: Request) -> Response:
    """Swap the alias's targets with the ones it had before its last change."""
    p = platform(request)
    name, alias_name = function_name(request), _alias_name(request)
    key = names.alias_key(principal(request).tenant, name, alias_name)
    current = await get_model(p.buckets.aliases, key, FunctionAlias)
    if current is None:
        raise AliasNotFound(f"function {name!r} has no alias {alias_name!r}")
    if current.previous is None:
        raise Conflict(f"alias {alias_name!r} has never been changed: nothing to roll back to")
    rolled = current.model_copy(
        update={"targets": current.previous, "previous": current.targets, "updated_at": utcnow()}
    )
    await p.buckets.aliases.put(key, encode(rolled))
    return JSONResponse(_out(rolled))


async def delete_alias(request: Request) -> Response:
    p = platform(request)
    key = names.alias_key(principal(request).tenant, function_name(request), _alias_name(request))
    if await get_model(p.buckets.aliases, key, FunctionAlias) is None:
        raise AliasNotFound(f"no alias {request.path_params['alias']!r}")
    await p.buckets.aliases.delete(key)
    return Response(status_code=204)
