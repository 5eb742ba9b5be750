"""Property tests for envd's parsers: multipart, chunked bodies, Connect envelopes, and the JSON it shares
with the SDK's generated protobuf classes."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.process import process_pb
from hypothesis import given, settings
from hypothesis import strategies as st
from protobuf import Message, Oneof
from protobuf.wkt.google.protobuf.descriptor_pb import FieldDescriptorProto

from soulbox.runtimes.linux.envd import protobin
from soulbox.runtimes.linux.envd.connect import END_STREAM, EnvelopeReader, b64, envelope, get_field, obj
from soulbox.runtimes.linux.envd.entries import timestamp
from soulbox.runtimes.linux.envd.http import encode_chunk, read_chunked
from soulbox.runtimes.linux.envd.multipart import MultipartParser, PartData, PartEnd, PartStart, disposition_params
from soulbox.runtimes.linux.envd.process_service import _end, _output
from soulbox.runtimes.linux.envd.processes import Exit, Output


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


filenames = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00%"), min_size=1, max_size=30)
# "%" is left out: httpx writes `"` as %22 without escaping "%", so a literal "%22" is ambiguous.


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(filenames, st.binary(max_size=300)), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
)
def test_multipart_parser_matches_httpx_encoding(parts: list[tuple[str, bytes]], cuts: list[int]) -> None:
    request = httpx.Request("POST", "http://x/files", files=[("file", (name, data)) for name, data in parts])
    body = request.read()
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    parser = MultipartParser(boundary)
    got: list[tuple[str, bytes]] = []
    current: list[bytes] = []
    name = ""
    for piece in _split(body, cuts):
        for event in parser.feed(piece):
            if isinstance(event, PartStart):
                name = disposition_params(event.headers["content-disposition"])["filename"]
                current = []
            elif isinstance(event, PartData):
                current.append(event.data)
            elif isinstance(event, PartEnd):
                got.append((name, b"".join(current)))
    parser.close()
    assert got == parts


async def _dechunk(pieces: list[bytes]) -> bytes:
    reader = asyncio.StreamReader()
    for piece in pieces:
        reader.feed_data(piece)
    reader.feed_eof()
    return b"".join([p async for p in read_chunked(reader)])


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=8),
    cuts=st.lists(st.integers(0, 3000), max_size=10),
)
def test_chunked_decoder_round_trips(chunks: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_chunk(c) for c in chunks) + b"0\r\nX-Trailer: y\r\n\r\n"
    assert asyncio.run(_dechunk(_split(wire, cuts))) == b"".join(chunks)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.binary(max_size=100), max_size=6), cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_envelope_reader_round_trips(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(envelope(m) for m in messages) + envelope(b"{}", END_STREAM)
    reader = EnvelopeReader()
    got = [frame for piece in _split(wire, cuts) for frame in reader.feed(piece)]
    assert got == [(0, m) for m in messages] + [(END_STREAM, b"{}")]
    assert reader.pending == 0


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    cmd=texts.filter(bool),
    args=st.lists(texts, max_size=4),
    envs=st.dictionaries(texts, texts, max_size=3),
    cwd=st.none() | texts,
    rows=st.integers(0, 2**16 - 1),
    cols=st.integers(0, 2**16 - 1),
    stdin=st.booleans(),
    tag=st.none() | texts,
    data=st.binary(max_size=64),
)
def test_requests_from_the_generated_classes_parse(
    cmd: str,
    args: list[str],
    envs: dict[str, str],
    cwd: str | None,
    rows: int,
    cols: int,
    stdin: bool,
    tag: str | None,
    data: bytes,
) -> None:
    request = process_pb.StartRequest(
        process=process_pb.ProcessConfig(cmd=cmd, args=args, envs=envs, cwd=cwd),
        pty=process_pb.PTY(size=process_pb.PTY.Size(rows=rows, cols=cols)),
        stdin=stdin,
        tag=tag,
    )
    message = json.loads(request.to_json())
    spec = obj(message, "process")
    assert (spec["cmd"], spec.get("args", []), spec.get("envs", {}), spec.get("cwd")) == (cmd, args, envs, cwd)
    size = obj(obj(message, "pty"), "size")
    assert (size.get("rows", 0), size.get("cols", 0)) == (rows, cols)
    assert bool(get_field(message, "stdin")) == stdin
    assert get_field(message, "tag") == tag
    send = process_pb.SendInputRequest(
        process=process_pb.ProcessSelector(selector=Oneof("pid", 7)),
        input=process_pb.ProcessInput(input=Oneof("stdin", data)),
    )
    assert b64(obj(json.loads(send.to_json()), "input").get("stdin", "")) == data


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["stdout", "stderr", "pty"]),
    data=st.binary(max_size=64),
    code=st.integers(-(2**31), 2**31 - 1),
    exited=st.booleans(),
    status=texts,
    error=st.none() | texts,
    ns=st.integers(0, 4_000_000_000 * 10**9),
)
def test_responses_decode_with_the_generated_classes(
    kind: str,
    data: bytes,
    code: int,
    exited: bool,
    status: str,
    error: str | None,
    ns: int,
) -> None:
    out = process_pb.StartResponse.from_json(json.dumps(_output(Output(kind, data))))
    assert out.event is not None
    assert out.event.event == Oneof("data", process_pb.ProcessEvent.DataEvent(output=Oneof(kind, data)))
    end = process_pb.ConnectResponse.from_json(json.dumps(_end(Exit(code, exited, status, error))))
    assert end.event is not None and end.event.event is not None
    value = end.event.event.value
    assert (value.exit_code, value.exited, value.status) == (code, exited, status)
    assert (value.error if value.has_field("error") else None) == error
    entry = filesystem_pb.EntryInfo.from_json(json.dumps({"modifiedTime": timestamp(ns)}))
    assert entry.modified_time is not None
    assert (entry.modified_time.seconds, entry.modified_time.nanos) == divmod(ns, 10**9)
    assert base64.b64decode(base64.b64encode(data)) == data


def _message_classes() -> dict[str, type[Message]]:
    found: dict[str, type[Message]] = {}

    def walk(cls: type[Message]) -> None:
        found[cls.desc().type_name] = cls
        for value in vars(cls).values():
            if isinstance(value, type) and issubclass(value, Message):
                walk(value)

    for module in (process_pb, filesystem_pb):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Message) and value.__module__ == module.__name__:
                walk(value)
    return found


CLASSES = _message_classes()
ENUM_NAMES = {f".{name}": list(values) for name, values in protobin.ENUMS.items()}
T = FieldDescriptorProto.Type


def _value(field_desc: Any) -> st.SearchStrategy[Any]:
    kind, type_name = field_desc.proto.type, field_desc.proto.type_name
    if kind == T.MESSAGE and type_name.endswith("Entry"):
        return st.dictionaries(texts, texts, max_size=3)
    if kind == T.MESSAGE and type_name == ".google.protobuf.Timestamp":
        return st.builds(
            lambda s, n: protobin.format_timestamp(s, n),
            st.integers(-62_135_596_800, 253_402_300_799),
            st.integers(0, 999_999_999),
        )
    scalar = {
        T.STRING: texts,
        T.BOOL: st.booleans(),
        T.UINT32: st.integers(0, 2**32 - 1),
        T.SINT32: st.integers(-(2**31), 2**31 - 1),
        T.BYTES: st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        T.INT64: st.integers(-(2**63), 2**63 - 1).map(str),
    }
    if kind in scalar:
        value = scalar[kind]
    elif kind == T.ENUM:
        value = st.sampled_from(ENUM_NAMES[type_name])
    else:
        value = _json_message(CLASSES[type_name.lstrip(".")])
    if field_desc.proto.label == FieldDescriptorProto.Label.REPEATED:
        return st.lists(value, max_size=3)
    return value


def _member(field_desc: Any) -> st.SearchStrategy[tuple[str, Any]]:
    return _value(field_desc).map(lambda v: (field_desc.json_name, v))


def _json_message(cls: type[Message]) -> st.SearchStrategy[dict[str, Any]]:
    desc = cls.desc()
    in_oneof = {f.number for group in desc.oneofs for f in group.fields}
    optional = {f.json_name: st.none() | _value(f) for f in desc.fields if f.number not in in_oneof}
    groups = [st.none() | st.sampled_from(list(group.fields)).flatmap(_member) for group in desc.oneofs]

    def build(plain: dict[str, Any], chosen: list[tuple[str, Any] | None]) -> dict[str, Any]:
        out = {k: v for k, v in plain.items() if v is not None}
        out.update(dict(c for c in chosen if c is not None))
        return out

    return st.builds(build, st.fixed_dictionaries(optional), st.tuples(*groups).map(list))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_binary_codec_matches_the_generated_classes(data: st.DataObject) -> None:
    for type_name in sorted(protobin.SCHEMAS):
        if type_name not in CLASSES:
            continue
        cls = CLASSES[type_name]
        message = cls.from_json(json.dumps(data.draw(_json_message(cls), label=type_name)))
        canonical = json.loads(message.to_json())
        assert protobin.decode(type_name, message.to_binary()) == canonical
        assert cls.from_binary(protobin.encode(type_name, canonical)) == message


@settings(max_examples=300, deadline=None)
@given(type_name=st.sampled_from(sorted(protobin.SCHEMAS)), data=st.binary(max_size=200))
def test_binary_decoder_rejects_garbage_cleanly(type_name: str, data: bytes) -> None:
    try:
        message = protobin.decode(type_name, data)
    except protobin.ProtoError:
        return
    assert isinstance(message, dict)
