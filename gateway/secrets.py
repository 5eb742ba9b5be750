"""``/v1/secrets``: store, list, describe and delete the tenant's secrets.

A value goes in (``PUT``) and never comes out: every answer shows names and
metadata only. Functions and sandboxes reference secrets by name; the worker
that runs them opens the values (see :mod:`soulbox.core.secrets_store`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from soulbox.core.secrets_store import MAX_SECRET_BYTES, SecretInfo, SecretStore

from .bodies import json_body
from .principal import principal


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # SecretStr: the value is masked in any repr, so it cannot end up in a log line or an error.
    value: SecretStr = Field(description="the secret's value (text); stored encrypted, never shown again")


class SecretList(BaseModel):
    secrets: list[SecretInfo]


def store(connection: HTTPConnection) -> SecretStore:
    found: SecretStore = connection.app.state.secrets
    return found


async def put_secret(request: Request) -> Response:
    body = await json_body(request, SecretIn, limit=2 * MAX_SECRET_BYTES + 1024, what="secret")
    info, created = await store(request).put(
        principal(request).tenant, request.path_params["name"], body.value.get_secret_value()
    )
    return JSONResponse(info.model_dump(mode="json"), status_code=201 if created else 200)


async def list_secrets(request: Request) -> Response:
    infos = await store(request).list(principal(request).tenant)
    return JSONResponse(SecretList(secrets=infos).model_dump(mode="json"))


async def get_secret(request: Request) -> Response:
    info = await store(request).info(principal(request).tenant, request.path_params["name"])
    return JSONResponse(info.model_dump(mode="json"))


async def delete_secret(request: Request) -> Response:
    await store(request).delete(principal(request).tenant, request.path_params["name"])
    return Response(status_code=204)
