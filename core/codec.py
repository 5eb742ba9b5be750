"""msgpack encoding of wire messages."""

from __future__ import annotations

from typing import TypeVar

import msgpack
from pydantic import ValidationError

from .errors import SchemaError
from .schemas import Message

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    return msgpack.packb(message.model_dump(mode="python"), datetime=True)  # type: ignore[no-any-return]


def decode(model: type[M], data: bytes) -> M:
    try:
        raw = msgpack.unpackb(data, timestamp=3)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise SchemaError(f"undecodable {model.__name__}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"{model.__name__} must be a map, got {type(raw).__name__}")
    version = raw.get("v", 1)
    if not isinstance(version, int) or version > model.max_version:
        raise SchemaError(f"{model.__name__} schema version {version!r} is newer than {model.max_version}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SchemaError(f"invalid {model.__name__}: {exc.errors(include_url=False)}") from exc
