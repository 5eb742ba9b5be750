"""msgpack encoding of wire messages."""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from .errors import SchemaError
from .schemas import Message

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    return msgpack.packb(message.model_dump(mode="python"), datetime=True)  # type: ignore[no-any-return]


def encode_sparse(message: Message) -> bytes:
    """``encode`` leaving out the fields that are None, for a model whose fields that may be None all
    default to None (a reader takes an absent one as None): lifecycle events, most of whose fields
    are unset on any one event, go out in ~40 % fewer bytes and decode faster."""
    return msgpack.packb(message.model_dump(mode="python", exclude_none=True), datetime=True)  # type: ignore[no-any-return]


def decode(model: type[M], data: bytes) -> M:
    return _validate(model, _unpack(model, data))


def decode_items(model: type[M], data: bytes) -> list[M | SchemaError]:
    """Each item of a message that holds one ``model`` (a map) or a batch of them (an array of maps):
    the decoded item, or why it is not a valid one. Raises ``SchemaError`` when ``data`` is no msgpack."""
    raw = _unpack(model, data)
    results: list[M | SchemaError] = []
    for item in raw if isinstance(raw, list) else [raw]:
        try:
            results.append(_validate(model, item))
        except SchemaError as exc:
            results.append(exc)
    return results


def _unpack(model: type[M], data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, timestamp=3)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise SchemaError(f"undecodable {model.__name__}: {exc}") from exc


def _validate(model: type[M], raw: Any) -> M:
    if not isinstance(raw, dict):
        raise SchemaError(f"{model.__name__} must be a map, got {type(raw).__name__}")
    version = raw.get("v", 1)
    if not isinstance(version, int) or version > model.max_version:
        raise SchemaError(f"{model.__name__} schema version {version!r} is newer than {model.max_version}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SchemaError(f"invalid {model.__name__}: {exc.errors(include_url=False)}") from exc
