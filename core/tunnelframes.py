"""The frames of the HTTP tunnel over core NATS (see :mod:`soulbox.core.tunnel`), versioned like every message."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .schemas import Message


class TunnelFrameKind(StrEnum):
    OPEN = "open"  # client -> server: request head (+ the whole body when it fits one frame)
    HEAD = "head"  # server -> client: response head (+ the whole body when it fits one frame)
    DATA = "data"  # a body chunk; consumes one credit unless it rides on open/head
    END = "end"  # no more body in this direction
    CREDIT = "credit"  # the receiver may take ``credit`` more data frames
    CANCEL = "cancel"  # client -> server: stop the stream, release its resources
    PING = "ping"  # liveness while a direction is idle
    ERROR = "error"  # terminal failure of the stream, with ``fault``


class TunnelRequestHead(BaseModel):
    """An HTTP request as the tunnel carries it; ``target`` is route info for the server."""

    model_config = ConfigDict(frozen=True)
    method: str
    path: str = Field(description="raw (percent-encoded) path")
    query: str = ""
    headers: list[tuple[str, str]] = Field(default_factory=list, description="latin-1 decoded, in order")
    target: dict[str, str] = Field(default_factory=dict)


class TunnelResponseHead(BaseModel):
    model_config = ConfigDict(frozen=True)
    status: int = Field(ge=100, le=999)
    headers: list[tuple[str, str]] = Field(default_factory=list)


class TunnelFault(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: str
    message: str


class TunnelFrame(Message):
    """One frame of a tunnelled HTTP stream (``sid``); ``seq`` counts frames per direction from 0."""

    sid: str
    kind: TunnelFrameKind
    seq: int = Field(ge=0)
    data: bytes = b""
    fin: bool = False
    credit: int = Field(0, ge=0)
    request: TunnelRequestHead | None = None
    response: TunnelResponseHead | None = None
    fault: TunnelFault | None = None
