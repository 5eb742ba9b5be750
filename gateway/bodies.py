"""Request bodies: read with a size bound, and JSON bodies validated into a model, for every handler."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from soulbox.core.errors import InvalidRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the request body exceeds the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, model: type[M], *, limit: int, what: str, empty_ok: bool = False) -> M:
    """The body as ``model``; ``InvalidRequest`` naming every problem (``empty_ok``: no body means ``{}``)."""
    raw = await read_body(request, limit)
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid {what}: {problems}") from None
