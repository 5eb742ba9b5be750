"""OpenAPI operations of what invokes functions besides a direct call: triggers, webhooks, dead-letter replays."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from soulbox.triggers.signatures import GITHUB_HEADER, HMAC_SIGNATURE_HEADER, HMAC_TIMESTAMP_HEADER, STRIPE_HEADER

from .deadletters import MAX_LIST, DeadLetterOut
from .models import InvocationAccepted
from .openapi_parts import BINARY, error, json_body, json_response, overloaded, path_param
from .platform import INVOCATION_ID_RE
from .triggers import TriggerIn, TriggerOut


class TriggerList(BaseModel):
    """``GET /v1/triggers``: the tenant's triggers, by id."""

    triggers: list[TriggerOut]


class DeadLetterList(BaseModel):
    """``GET /v1/dead-letters``: the tenant's dead letters, oldest first."""

    dead_letters: list[DeadLetterOut]


MODELS: list[type[BaseModel]] = [TriggerIn, TriggerOut, TriggerList, DeadLetterOut, DeadLetterList]

_TRIGGER_ID = path_param("trigger_id", description="a name; anything else is `trigger_not_found`")
_TRIGGER_BODY = json_body(TriggerIn, limit="64 KiB")


def _accepted(description: str) -> dict[str, Any]:
    return json_response(
        InvocationAccepted,
        description,
        headers={"Location": {"schema": {"type": "string"}, "description": "the invocation record's URL"}},
    )


def _header(name: str, description: str) -> dict[str, Any]:
    # Starlette headers are case-insensitive; the usual capitalisation reads better in the document.
    shown = "-".join(part.capitalize() for part in name.split("-"))
    return {"name": shown, "in": "header", "schema": {"type": "string"}, "description": description}


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/triggers", "post"): {
        "summary": "Create a trigger (webhook, HTTP route, NATS subject or cron schedule) for a function",
        "description": "The configuration object named after `kind` is required and the only one allowed. "
        "A webhook's secret, when not given, is generated and shown in this response only.",
        "requestBody": _TRIGGER_BODY,
        "responses": {
            "201": json_response(TriggerOut, "created; `webhook.secret` is shown here only"),
            "400": error(
                "invalid trigger: body, configuration of its kind, cron expression or time zone, route path",
                "invalid_request",
            ),
            "404": error("no such function", "function_not_found"),
            "409": error("a trigger with this id exists (PUT replaces it), or another serves this route", "conflict"),
            "413": error("body over 64 KiB", "payload_too_large"),
        },
    },
    ("/v1/triggers", "get"): {
        "summary": "List the tenant's triggers (secrets are not shown)",
        "responses": {"200": json_response(TriggerList, "triggers, by id")},
    },
    ("/v1/triggers/{trigger_id}", "get"): {
        "summary": "Get a trigger (its secret is not shown)",
        "parameters": [_TRIGGER_ID],
        "responses": {
            "200": json_response(TriggerOut, "the trigger"),
            "404": error("no such trigger", "trigger_not_found"),
        },
    },
    ("/v1/triggers/{trigger_id}", "put"): {
        "summary": "Create or replace a trigger",
        "description": "The body's `id` must be the path's. A webhook without a `secret` keeps its previous "
        "secret; a new one is generated (and shown in this response) only when the trigger is created.",
        "parameters": [_TRIGGER_ID],
        "requestBody": _TRIGGER_BODY,
        "responses": {
            "200": json_response(TriggerOut, "replaced"),
            "201": json_response(TriggerOut, "created"),
            "400": error("invalid trigger, or the body's id is not the path's", "invalid_request"),
            "404": error("no such function, or the path's id is not a name", "function_not_found", "trigger_not_found"),
            "409": error("another trigger serves this route", "conflict"),
            "413": error("body over 64 KiB", "payload_too_large"),
        },
    },
    ("/v1/triggers/{trigger_id}", "delete"): {
        "summary": "Delete a trigger (a cron trigger made again later starts its schedule afresh)",
        "parameters": [_TRIGGER_ID],
        "responses": {"204": {"description": "deleted"}, "404": error("no such trigger", "trigger_not_found")},
    },
    ("/v1/hooks/{tenant}/{trigger_id}", "post"): {
        "summary": "Invoke a webhook trigger's function: the raw body, once its signature checks, is its input",
        "description": "Signed per the trigger's `webhook.scheme`: `hmac` (X-Soulbox-Timestamp and "
        "X-Soulbox-Signature, hex HMAC-SHA256 of `<timestamp>.<body>`), `github` (X-Hub-Signature-256, "
        "`sha256=<hex HMAC-SHA256 of the body>`) or `stripe` (Stripe-Signature, `t=<timestamp>,v1=<hex "
        "HMAC-SHA256 of <t>.<body>>`); timestamps older than `tolerance_s` are refused. "
        "Asynchronous (202) unless the trigger is `sync`.",
        "parameters": [
            path_param("tenant", description="the trigger's tenant (webhooks carry no API key)"),
            _TRIGGER_ID,
            _header(HMAC_TIMESTAMP_HEADER, "scheme `hmac`: Unix seconds of the signature"),
            _header(HMAC_SIGNATURE_HEADER, "scheme `hmac`: hex HMAC-SHA256 (an optional `sha256=` prefix)"),
            _header(GITHUB_HEADER, "scheme `github`"),
            _header(STRIPE_HEADER, "scheme `stripe`"),
            _header("x-trace-id", "carried to the invocation's events"),
        ],
        "requestBody": {"content": {"*/*": {"schema": BINARY}}},
        "responses": {
            "200": {
                "description": "`sync` triggers: the function's stdout; a Bun or Deno fetch handler answers with "
                "its own status, headers and body",
                "content": {"application/octet-stream": {"schema": BINARY}},
                "headers": {
                    "X-Invocation-Id": {"schema": {"type": "string"}},
                    "X-Duration-Ms": {"schema": {"type": "string"}, "description": "run time, 3 decimals"},
                },
            },
            "202": _accepted("accepted; poll the invocation at `url`"),
            "401": error(
                "the signature is missing, does not match, is too old, or this signed request was already received",
                "signature_missing",
                "signature_invalid",
                "signature_stale",
                "signature_replayed",
            ),
            "404": error(
                "no enabled webhook trigger with this id in this tenant, or its function is gone",
                "trigger_not_found",
                "function_not_found",
                "tenant_not_found",
            ),
            "413": error("body over gateway.max_body_bytes", "payload_too_large"),
            "429": overloaded(),
            "502": error("`sync` triggers: the function failed", "function_error", "out_of_memory", "platform_error"),
            "503": error("the invocation could not be queued", "unavailable"),
            "504": error("`sync` triggers: the function timed out", "invocation_timeout"),
        },
    },
    ("/v1/dead-letters", "get"): {
        "summary": "Asynchronous invocations of the tenant that failed on their last attempt, oldest first",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 100},
            }
        ],
        "responses": {
            "200": json_response(DeadLetterList, "dead letters"),
            "400": error(f"limit is not 1-{MAX_LIST}", "invalid_request"),
        },
    },
    ("/v1/dead-letters/{invocation_id}/replay", "post"): {
        "summary": "Run a dead letter's input again on the function's current version, then remove the letter",
        "description": "The replay's id is derived from the dead letter, so concurrent replays start one invocation.",
        "parameters": [path_param("invocation_id", INVOCATION_ID_RE.pattern, "the dead invocation's id")],
        "responses": {
            "202": _accepted("the replay is queued; poll it at `url`"),
            "404": error("no such dead letter, or its function is gone", "dead_letter_not_found", "function_not_found"),
            "429": overloaded(),
            "503": error("the replay could not be queued", "unavailable"),
        },
    },
}
