"""OpenAPI operations of invocation logs and the parameters of streamed invocations."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .logs import InvocationLogEntry, InvocationLogsOut
from .openapi_parts import error, json_response, ref
from .platform import INVOCATION_ID_RE

MODELS: list[type[BaseModel]] = [InvocationLogEntry, InvocationLogsOut]

STREAM_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "stream",
        "in": "query",
        "schema": {"enum": ["true", "sse", "false"]},
        "description": "`sse`: server-sent events (`stdout`, `stderr`, then one `end` with the outcome); `true`: "
        "stdout as chunked bytes as it is produced (a failure after the first byte cuts the body short). "
        "`Accept: text/event-stream` also asks for SSE",
    },
    {
        "name": "X-Soulbox-Stream",
        "in": "header",
        "schema": {"enum": ["raw", "sse"]},
        "description": "the same as `stream`; the only way on HTTP routes (`/run/...`)",
    },
]

STREAM_CONTENT: dict[str, Any] = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "events `stdout` / `stderr` (data: a InvocationLogEntry of type output), `restart` (another "
            "attempt), then `end` (data: a InvocationLogEntry of type end with `invocation_id`)",
        }
    }
}

_ID = {
    "name": "invocation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": INVOCATION_ID_RE.pattern},
}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/invocations/{invocation_id}/logs", "get"): {
        "summary": "An invocation's stdout and stderr as produced (kept in JetStream for logs.max_age_s)",
        "parameters": [
            _ID,
            {
                "name": "follow",
                "in": "query",
                "schema": {"type": "boolean"},
                "description": "stream NDJSON entries as they come, until the invocation's final `end` entry",
            },
            {
                "name": "after",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0},
                "description": "a `cursor` already read: only later entries",
            },
        ],
        "responses": {
            "200": {
                **json_response(InvocationLogsOut, "the entries stored now (JSON), or followed live (NDJSON)"),
                "content": {
                    "application/json": {"schema": ref(InvocationLogsOut)},
                    # with follow=true: one InvocationLogEntry per line
                    "application/x-ndjson": {"schema": ref(InvocationLogEntry)},
                },
            },
            "400": error("bad cursor", "invalid_request"),
            "404": error("no such invocation for this tenant", "invocation_not_found"),
        },
    },
}
