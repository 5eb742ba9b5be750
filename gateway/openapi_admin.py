"""OpenAPI operations of function versions and aliases, audit verification, tenant export and erasure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from soulbox.core.ledger import AuditRecord, UsageEntry
from soulbox.core.schemas import AliasTarget, FunctionSpec, InvocationRecord
from soulbox.events import Verdict

from .aliases import AliasIn
from .models import FunctionOut
from .openapi_parts import error, json_body, json_response, path_param, ref


class VersionList(BaseModel):
    """``GET /v1/functions/{name}/versions``: every stored version, oldest first."""

    versions: list[FunctionOut]


class AliasOut(BaseModel):
    """An alias as the API shows it: the stored ``FunctionAlias`` without its tenant."""

    function: str
    name: str
    targets: list[AliasTarget] = Field(description="one is picked per invocation, in proportion to the weights")
    previous: list[AliasTarget] | None = Field(description="what a rollback restores; null before the first change")
    updated_at: datetime


class AliasList(BaseModel):
    """``GET /v1/functions/{name}/aliases``: the function's aliases, by name."""

    aliases: list[AliasOut]


class SequencedAuditRecord(AuditRecord):
    """An audit record with its place in the audit stream: its message's sequence, its index in that
    message (a message holds one record or a block of them) and both as one ``position`` (a cursor)."""

    seq: int
    index: int
    position: int


class TenantExport(BaseModel):
    """Everything recorded about a tenant; the invocation records' stdout and stderr are base64."""

    tenant: str
    exported_at: datetime
    pseudonym: str | None = Field(description="the tenant's name in the audit log; null when it has none")
    functions: list[FunctionSpec]
    invocations: list[InvocationRecord]
    usage: list[UsageEntry]
    audit: list[SequencedAuditRecord]


class ExportWritten(BaseModel):
    """Where ``?to=s3`` wrote the export."""

    bucket: str
    key: str


class ErasedCounts(BaseModel):
    functions: int
    invocations: int
    usage_entries: int


class TenantErasure(BaseModel):
    """What ``DELETE /v1/tenants/{tenant}/data`` removed, and the audit record that says so."""

    tenant: str
    pseudonym: str | None = Field(description="the forgotten pseudonym (its audit records stay, unlinked)")
    deleted: ErasedCounts
    tombstone_seq: int = Field(description="sequence of the `tenant.erased` record on the audit stream")


MODELS: list[type[BaseModel]] = [
    VersionList,
    AliasIn,
    AliasOut,
    AliasList,
    Verdict,
    SequencedAuditRecord,
    TenantExport,
    ExportWritten,
    TenantErasure,
]

_NAME = path_param("name", description="the function")
_ALIAS = path_param("alias")
_TENANT = path_param("tenant")
_BAD_NAME = error("invalid function name", "invalid_request")
_BAD_NAMES = error("invalid function or alias name", "invalid_request")

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/functions/{name}/versions", "get"): {
        "summary": "The function's stored versions, oldest first (invoke one with ?version=)",
        "parameters": [_NAME],
        "responses": {
            "200": json_response(VersionList, "versions"),
            "400": _BAD_NAME,
            "404": error("no such function", "function_not_found"),
        },
    },
    ("/v1/functions/{name}/aliases", "get"): {
        "summary": "The function's aliases, by name (invoke one with ?alias=)",
        "parameters": [_NAME],
        "responses": {"200": json_response(AliasList, "aliases (none for an unknown function)"), "400": _BAD_NAME},
    },
    ("/v1/functions/{name}/aliases/{alias}", "put"): {
        "summary": "Point an alias at one or more versions, with weights; the targets it replaces are kept",
        "parameters": [_NAME, _ALIAS],
        "requestBody": json_body(AliasIn, limit="16 KiB"),
        "responses": {
            "200": json_response(AliasOut, "changed; `previous` holds the replaced targets"),
            "201": json_response(AliasOut, "created"),
            "400": error("invalid name or body, or a version named twice", "invalid_request"),
            "404": error("the function has no such version", "version_not_found"),
            "413": error("body over 16 KiB", "payload_too_large"),
        },
    },
    ("/v1/functions/{name}/aliases/{alias}", "delete"): {
        "summary": "Delete an alias",
        "parameters": [_NAME, _ALIAS],
        "responses": {
            "204": {"description": "deleted"},
            "400": _BAD_NAMES,
            "404": error("no such alias", "alias_not_found"),
        },
    },
    ("/v1/functions/{name}/aliases/{alias}/rollback", "post"): {
        "summary": "Swap the alias's targets with the ones it had before its last change",
        "parameters": [_NAME, _ALIAS],
        "responses": {
            "200": json_response(AliasOut, "rolled back; `previous` holds the targets swapped out"),
            "400": _BAD_NAMES,
            "404": error("no such alias", "alias_not_found"),
            "409": error("the alias has never been changed", "conflict"),
        },
    },
    ("/v1/audit/verify", "get"): {
        "summary": "Verify the audit log's hash chain on the stream, from its first record (or the exported anchor)",
        "responses": {
            "200": json_response(Verdict, "the verdict; `ok` false names the first bad record in `problem`"),
            "503": error("the export store holding the anchor cannot be read", "unavailable"),
        },
    },
    ("/v1/tenants/{tenant}/export", "get"): {
        "summary": "Export everything recorded about a tenant: functions, invocations, usage, audit records",
        "parameters": [
            _TENANT,
            {
                "name": "to",
                "in": "query",
                "schema": {"enum": ["s3"]},
                "description": "write the export to the S3 export store instead of returning it",
            },
        ],
        "responses": {
            "200": {
                "description": "the export, or with ?to=s3 where it was written",
                "content": {"application/json": {"schema": {"oneOf": [ref(TenantExport), ref(ExportWritten)]}}},
            },
            "400": error("invalid tenant name, or ?to=s3 with no export bucket configured", "invalid_request"),
            "503": error("the export could not be written to S3", "unavailable"),
        },
    },
    ("/v1/tenants/{tenant}/data", "delete"): {
        "summary": "Erase a tenant: its functions, invocation records and usage entries, then its pseudonym",
        "description": "A `tenant.erased` record is appended to the audit log first; once it is chained the "
        "tenant's pseudonym secret is deleted, which unlinks its audit records without breaking the chain.",
        "parameters": [_TENANT],
        "responses": {
            "200": json_response(TenantErasure, "erased"),
            "400": error("invalid tenant name", "invalid_request"),
            "503": error(
                "the audit log did not record the erasure in time; the pseudonym was kept, retry", "unavailable"
            ),
        },
    },
}
