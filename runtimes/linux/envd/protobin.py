"""Binary protobuf for envd's messages, without the protobuf package (the sandbox's python3 has none).

Messages are converted to and from their proto3 JSON form, so handlers see one shape whichever codec
the client chose: lowerCamel names, bytes as base64, int64 as strings, enums by name, Timestamps as
RFC 3339. The schema below is envd's process.proto and filesystem.proto.
"""

from __future__ import annotations

import base64
import datetime
import struct
from typing import Any

Message = dict[str, Any]

# type name -> {field number: (json name, kind, target, repeated, explicit presence)}
Field = tuple[str, str, str, bool, bool]
Schema = dict[int, Field]


def _f(name: str, kind: str, target: str = "", repeated: bool = False, explicit: bool = False) -> Field:
    return (name, kind, target, repeated, explicit)


def _oneof(*fields: tuple[int, str, str, str]) -> Schema:
    return {number: _f(name, kind, target, explicit=True) for number, name, kind, target in fields}


SELECTOR = {1: _f("process", "message", "process.ProcessSelector", explicit=True)}
ENTRY = {1: _f("entry", "message", "filesystem.EntryInfo", explicit=True)}
PATH = {1: _f("path", "string")}
WATCHER_ID = {1: _f("watcherId", "string")}
WATCH_REQUEST = {
    1: _f("path", "string"),
    2: _f("recursive", "bool"),
    3: _f("includeEntry", "bool"),
    4: _f("allowNetworkMounts", "bool"),
}
EMPTY: Schema = {}

SCHEMAS: dict[str, Schema] = {
    "process.PTY": {1: _f("size", "message", "process.PTY.Size", explicit=True)},
    "process.PTY.Size": {1: _f("cols", "uint32"), 2: _f("rows", "uint32")},
    "process.ProcessConfig": {
        1: _f("cmd", "string"),
        2: _f("args", "string", repeated=True),
        3: _f("envs", "map"),
        4: _f("cwd", "string", explicit=True),
    },
    "process.ProcessSelector": _oneof((1, "pid", "uint32", ""), (2, "tag", "string", "")),
    "process.ProcessInput": _oneof((1, "stdin", "bytes", ""), (2, "pty", "bytes", "")),
    "process.ProcessInfo": {
        1: _f("config", "message", "process.ProcessConfig", explicit=True),
        2: _f("pid", "uint32"),
        3: _f("tag", "string", explicit=True),
    },
    "process.ProcessEvent": _oneof(
        (1, "start", "message", "process.ProcessEvent.StartEvent"),
        (2, "data", "message", "process.ProcessEvent.DataEvent"),
        (3, "end", "message", "process.ProcessEvent.EndEvent"),
        (4, "keepalive", "message", "empty"),
    ),
    "process.ProcessEvent.StartEvent": {1: _f("pid", "uint32")},
    "process.ProcessEvent.DataEvent": _oneof(
        (1, "stdout", "bytes", ""), (2, "stderr", "bytes", ""), (3, "pty", "bytes", "")
    ),
    "process.ProcessEvent.EndEvent": {
        1: _f("exitCode", "sint32"),
        2: _f("exited", "bool"),
        3: _f("status", "string"),
        4: _f("error", "string", explicit=True),
    },
    "process.ListRequest": EMPTY,
    "process.ListResponse": {1: _f("processes", "message", "process.ProcessInfo", repeated=True)},
    "process.StartRequest": {
        1: _f("process", "message", "process.ProcessConfig", explicit=True),
        2: _f("pty", "message", "process.PTY", explicit=True),
        3: _f("tag", "string", explicit=True),
        4: _f("stdin", "bool", explicit=True),
    },
    "process.StartResponse": {1: _f("event", "message", "process.ProcessEvent", explicit=True)},
    "process.ConnectRequest": SELECTOR,
    "process.ConnectResponse": {1: _f("event", "message", "process.ProcessEvent", explicit=True)},
    "process.UpdateRequest": {**SELECTOR, 2: _f("pty", "message", "process.PTY", explicit=True)},
    "process.UpdateResponse": EMPTY,
    "process.SendInputRequest": {**SELECTOR, 2: _f("input", "message", "process.ProcessInput", explicit=True)},
    "process.SendInputResponse": EMPTY,
    "process.StreamInputRequest": _oneof(
        (1, "start", "message", "process.StreamInputRequest.StartEvent"),
        (2, "data", "message", "process.StreamInputRequest.DataEvent"),
        (3, "keepalive", "message", "empty"),
    ),
    "process.StreamInputRequest.StartEvent": SELECTOR,
    "process.StreamInputRequest.DataEvent": {2: _f("input", "message", "process.ProcessInput", explicit=True)},
    "process.StreamInputResponse": EMPTY,
    "process.SendSignalRequest": {**SELECTOR, 2: _f("signal", "enum", "process.Signal")},
    "process.SendSignalResponse": EMPTY,
    "process.CloseStdinRequest": SELECTOR,
    "process.CloseStdinResponse": EMPTY,
    "filesystem.EntryInfo": {
        1: _f("name", "string"),
        2: _f("type", "enum", "filesystem.FileType"),
        3: _f("path", "string"),
        4: _f("size", "int64"),
        5: _f("mode", "uint32"),
        6: _f("permissions", "string"),
        7: _f("owner", "string"),
        8: _f("group", "string"),
        9: _f("modifiedTime", "timestamp", explicit=True),
        10: _f("symlinkTarget", "string", explicit=True),
        11: _f("metadata", "map"),
        12: _f("isSymlink", "bool"),
    },
    "filesystem.FilesystemEvent": {
        1: _f("name", "string"),
        2: _f("type", "enum", "filesystem.EventType"),
        3: _f("entry", "message", "filesystem.EntryInfo", explicit=True),
    },
    "filesystem.StatRequest": PATH,
    "filesystem.StatResponse": ENTRY,
    "filesystem.MakeDirRequest": PATH,
    "filesystem.MakeDirResponse": ENTRY,
    "filesystem.MoveRequest": {1: _f("source", "string"), 2: _f("destination", "string")},
    "filesystem.MoveResponse": ENTRY,
    "filesystem.ListDirRequest": {1: _f("path", "string"), 2: _f("depth", "uint32")},
    "filesystem.ListDirResponse": {1: _f("entries", "message", "filesystem.EntryInfo", repeated=True)},
    "filesystem.RemoveRequest": PATH,
    "filesystem.RemoveResponse": EMPTY,
    "filesystem.WatchDirRequest": WATCH_REQUEST,
    "filesystem.WatchDirResponse": _oneof(
        (1, "start", "message", "empty"),
        (2, "filesystem", "message", "filesystem.FilesystemEvent"),
        (3, "keepalive", "message", "empty"),
    ),
    "filesystem.CreateWatcherRequest": WATCH_REQUEST,
    "filesystem.CreateWatcherResponse": WATCHER_ID,
    "filesystem.GetWatcherEventsRequest": WATCHER_ID,
    "filesystem.GetWatcherEventsResponse": {1: _f("events", "message", "filesystem.FilesystemEvent", repeated=True)},
    "filesystem.RemoveWatcherRequest": WATCHER_ID,
    "filesystem.RemoveWatcherResponse": EMPTY,
    "empty": EMPTY,
}

ENUMS: dict[str, dict[str, int]] = {
    "process.Signal": {"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9},
    "filesystem.FileType": {
        "FILE_TYPE_UNSPECIFIED": 0,
        "FILE_TYPE_FILE": 1,
        "FILE_TYPE_DIRECTORY": 2,
        "FILE_TYPE_SYMLINK": 3,
    },
    "filesystem.EventType": {
        "EVENT_TYPE_UNSPECIFIED": 0,
        "EVENT_TYPE_CREATE": 1,
        "EVENT_TYPE_WRITE": 2,
        "EVENT_TYPE_REMOVE": 3,
        "EVENT_TYPE_RENAME": 4,
        "EVENT_TYPE_CHMOD": 5,
    },
}
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """Bytes that are not a valid message of the expected type."""


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ProtoError("truncated or overlong varint")
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len(number: int, payload: bytes) -> bytes:
    return _key(number, LEN) + _varint(len(payload)) + payload


def _parse_timestamp(text: str) -> tuple[int, int]:
    main, _, frac = text.rstrip("Z").partition(".")
    moment = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (moment - epoch) // datetime.timedelta(seconds=1), int((frac + "000000000")[:9]) if frac else 0


def format_timestamp(seconds: int, nanos: int) -> str:
    """google.protobuf.Timestamp in proto3 JSON: RFC 3339, UTC, 0, 3, 6 or 9 fractional digits."""
    t = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=seconds)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if nanos:
        digits = f"{nanos:09d}"
        text += "." + (digits[:3] if nanos % 1_000_000 == 0 else digits[:6] if nanos % 1000 == 0 else digits)
    return text + "Z"


def _encode_value(number: int, kind: str, target: str, value: Any) -> bytes:
    if kind == "string":
        return _len(number, str(value).encode())
    if kind == "bytes":
        return _len(number, base64.b64decode(value))
    if kind == "bool":
        return _key(number, VARINT) + _varint(1 if value else 0)
    if kind in ("uint32", "int64"):
        return _key(number, VARINT) + _varint(int(value))
    if kind == "sint32":
        n = int(value)
        return _key(number, VARINT) + _varint((n << 1) ^ (n >> 31))
    if kind == "enum":
        return _key(number, VARINT) + _varint(ENUMS[target].get(value, 0) if isinstance(value, str) else int(value))
    if kind == "timestamp":
        seconds, nanos = _parse_timestamp(value)
        inner = (_key(1, VARINT) + _varint(seconds) if seconds else b"") + (
            _key(2, VARINT) + _varint(nanos) if nanos else b""
        )
        return _len(number, inner)
    return _len(number, encode(target, value))


def _is_default(kind: str, target: str, value: Any) -> bool:
    if kind == "enum" and isinstance(value, str):
        return ENUMS[target].get(value, 0) == 0
    if kind == "int64":
        return int(value) == 0
    return value in (0, "", False)


def encode(type_name: str, message: Message) -> bytes:
    """The binary form of `message` (proto3 JSON shape) as a `type_name`."""
    out = bytearray()
    for number, (name, kind, target, repeated, explicit) in SCHEMAS[type_name].items():
        if name not in message or message[name] is None:
            continue
        value = message[name]
        if kind == "map":
            for key, item in value.items():
                out += _len(number, _len(1, str(key).encode()) + _len(2, str(item).encode()))
        elif repeated:
            for item in value:
                out += _encode_value(number, kind, target, item)
        elif explicit or not _is_default(kind, target, value):
            out += _encode_value(number, kind, target, value)
    return bytes(out)


def _decode_scalar(kind: str, target: str, raw: int) -> Any:
    if kind == "bool":
        return raw != 0
    if kind == "sint32":
        return (raw >> 1) ^ -(raw & 1)
    if kind == "int64":
        return str(raw - (1 << 64) if raw >= 1 << 63 else raw)
    if kind == "enum":
        names = {number: name for name, number in ENUMS[target].items()}
        return names.get(raw, raw)
    return raw & 0xFFFFFFFF


def decode(type_name: str, data: bytes) -> Message:
    """The proto3 JSON shape of binary `data` holding a `type_name`; unknown fields are skipped."""
    schema = SCHEMAS[type_name]
    message: Message = {}
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            raw, at = _read_varint(data, at)
            payload = b""
        elif wire == LEN:
            length, at = _read_varint(data, at)
            if at + length > len(data):
                raise ProtoError("truncated field")
            payload, at = data[at : at + length], at + length
            raw = 0
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if at + size > len(data):
                raise ProtoError("truncated field")
            raw = struct.unpack_from("<Q" if wire == I64 else "<I", data, at)[0]
            at += size
            payload = b""
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        spec = schema.get(number)
        if spec is None:
            continue
        name, kind, target, repeated, _ = spec
        if kind == "map":
            entry = decode("map", payload)
            message.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
            continue
        if kind in ("string", "bytes", "message", "timestamp") and wire != LEN:
            raise ProtoError(f"field {name} has the wrong wire type")
        if kind == "string":
            value: Any = payload.decode("utf-8", "replace")
        elif kind == "bytes":
            value = base64.b64encode(payload).decode()
        elif kind == "message":
            value = decode(target, payload)
        elif kind == "timestamp":
            stamp = decode("google.protobuf.Timestamp", payload)
            try:
                value = format_timestamp(int(stamp.get("seconds", "0")), stamp.get("nanos", 0) % 1_000_000_000)
            except (OverflowError, ValueError):
                raise ProtoError("timestamp out of range") from None
        elif wire == LEN:  # packed repeated scalars
            values, inner = [], 0
            while inner < len(payload):
                item, inner = _read_varint(payload, inner)
                values.append(_decode_scalar(kind, target, item))
            message.setdefault(name, []).extend(values)
            continue
        else:
            value = _decode_scalar(kind, target, raw)
        if repeated:
            message.setdefault(name, []).append(value)
        else:
            message[name] = value
    return message


SCHEMAS["map"] = {1: _f("key", "string"), 2: _f("value", "string")}
SCHEMAS["google.protobuf.Timestamp"] = {1: _f("seconds", "int64"), 2: _f("nanos", "uint32")}
