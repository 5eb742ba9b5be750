"""The OpenAPI operations of secrets, signed URLs and sandbox files."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from soulbox.core.secrets_store import SECRET_NAME_PATTERN, SecretInfo

from .models import ErrorResponse
from .secrets import SecretIn, SecretList
from .signed import SignedUrlIn, SignedUrlOut, SigningKeyRotated

MODELS: list[type[BaseModel]] = [SecretIn, SecretInfo, SecretList, SignedUrlIn, SignedUrlOut, SigningKeyRotated]


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ErrorResponse, description)


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": SECRET_NAME_PATTERN}}
_SANDBOX = {"name": "sandbox_id", "in": "path", "required": True, "schema": {"type": "string"}}
_FILE_PATH = {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}
_SIGNED = [
    {"name": p, "in": "query", "schema": {"type": "string"}, "description": "signed URLs only"}
    for p in ("sb_kid", "sb_exp", "sb_nonce", "sb_sig")
]
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/secrets", "get"): {
        "summary": "List the tenant's secrets (names and metadata; values are never shown)",
        "responses": {"200": _json(SecretList, "secrets")},
    },
    ("/v1/secrets/{name}", "put"): {
        "summary": "Store or replace a secret (encrypted at rest; the value is never returned)",
        "parameters": [_NAME],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(SecretIn)}}},
        "responses": {
            "201": _json(SecretInfo, "created"),
            "200": _json(SecretInfo, "replaced"),
            "400": _error("invalid name or value"),
        },
    },
    ("/v1/secrets/{name}", "get"): {
        "summary": "A secret's metadata (never its value)",
        "parameters": [_NAME],
        "responses": {"200": _json(SecretInfo, "the secret's metadata"), "404": _error("no such secret")},
    },
    ("/v1/secrets/{name}", "delete"): {
        "summary": "Delete a secret",
        "parameters": [_NAME],
        "responses": {"204": {"description": "deleted"}, "404": _error("no such secret")},
    },
    ("/v1/signed-urls", "post"): {
        "summary": "Sign one request (function invoke, sandbox file download or upload): usable once, until it expires",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(SignedUrlIn)}}},
        "responses": {"201": _json(SignedUrlOut, "the signed URL"), "400": _error("not signable, or bad expiry")},
    },
    ("/v1/signed-urls/rotate", "post"): {
        "summary": "Rotate the tenant's URL-signing key; URLs signed before stay valid for the grace period",
        "responses": {"200": _json(SigningKeyRotated, "the new key")},
    },
    ("/v1/sandboxes/{sandbox_id}/files", "get"): {
        "summary": "Download a file of the sandbox",
        "parameters": [
            _SANDBOX,
            _FILE_PATH,
            {"name": "username", "in": "query", "schema": {"type": "string"}},
            *_SIGNED,
        ],
        "responses": {
            "200": {"description": "the file's bytes", "content": _BINARY},
            "401": _error("no API key, or a bad signed URL"),
            "404": _error("no such sandbox or file"),
        },
    },
    ("/v1/sandboxes/{sandbox_id}/files", "post"): {
        "summary": "Upload a file into the sandbox (multipart/form-data or octet-stream)",
        "parameters": [
            _SANDBOX,
            _FILE_PATH,
            {"name": "username", "in": "query", "schema": {"type": "string"}},
            *_SIGNED,
        ],
        "requestBody": {"content": {**_BINARY, "multipart/form-data": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "the written entries", "content": {"application/json": {"schema": {}}}},
            "401": _error("no API key, or a bad signed URL"),
            "404": _error("no such sandbox"),
        },
    },
}
