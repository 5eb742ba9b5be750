"""The `process.Process` Connect service as the e2b SDK calls it (JSON codec)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import AsyncIterator

from .connect import Call, ConnectError, Message, Method, Router, b64, get_field, obj
from .entries import resolve_path
from .processes import Config, Exit, InputError, Output, Process
from .state import State

SERVICE = "process.Process"
SIGNALS = {"SIGNAL_SIGTERM": signal.SIGTERM, "SIGNAL_SIGKILL": signal.SIGKILL, 15: signal.SIGTERM, 9: signal.SIGKILL}


def _event(payload: Message) -> Message:
    return {"event": payload}


def _output(item: Output) -> Message:
    return _event({"data": {item.kind: base64.b64encode(item.data).decode()}})


def _end(item: Exit) -> Message:
    end: Message = {"exitCode": item.exit_code, "exited": item.exited, "status": item.status}
    if item.error is not None:
        end["error"] = item.error
    return _event({"end": end})


class ProcessService:
    """Start, attach to, feed, signal and list processes."""

    def __init__(self, state: State) -> None:
        self.state = state

    def register(self, router: Router) -> None:
        """Add the service's methods to `router`."""
        keepalive = _event({"keepalive": {}})
        for name, method in {
            "Start": Method("server", self.start, keepalive),
            "Connect": Method("server", self.connect, keepalive),
            "List": Method("unary", self.list),
            "SendInput": Method("unary", self.send_input),
            "StreamInput": Method("client", self.stream_input),
            "CloseStdin": Method("unary", self.close_stdin),
            "SendSignal": Method("unary", self.send_signal),
            "Update": Method("unary", self.update),
        }.items():
            router.add(SERVICE, name, method)

    def _select(self, message: Message) -> Process:
        selector = obj(message, "process")
        pid, tag = selector.get("pid"), selector.get("tag")
        if isinstance(pid, str) and pid.isdigit():
            pid = int(pid)
        if not isinstance(pid, int) and not isinstance(tag, str):
            raise ConnectError("invalid_argument", "a process selector needs a pid or a tag")
        process = self.state.processes.find(
            pid if isinstance(pid, int) else None, tag if isinstance(tag, str) else None
        )
        if process is None:
            what = f"pid {pid}" if isinstance(pid, int) else f"tag {tag!r}"
            raise ConnectError("not_found", f"process with {what} not found")
        return process

    async def start(self, message: Message, call: Call) -> AsyncIterator[Message]:
        """Spawn a process and stream its events until it ends."""
        spec = obj(message, "process")
        cmd = spec.get("cmd")
        if not isinstance(cmd, str) or not cmd:
            raise ConnectError("invalid_argument", "process.cmd is required")
        args = [str(a) for a in spec.get("args") or []]
        envs = {str(k): str(v) for k, v in (spec.get("envs") or {}).items()}
        user = self.state.user_for(call.headers)
        requested = spec.get("cwd")
        cwd = resolve_path(requested, user.home) if isinstance(requested, str) and requested else user.home
        if not os.path.isdir(cwd):  # noqa: ASYNC240 - a stat, inline like all fs calls
            raise ConnectError("invalid_argument", f"cwd {cwd!r} is not a directory")
        pty_spec = get_field(message, "pty")
        pty_size = None
        if isinstance(pty_spec, dict):
            size = obj(pty_spec, "size")
            pty_size = (int(size.get("rows") or 24), int(size.get("cols") or 80))
        tag = get_field(message, "tag")
        config = Config(
            cmd,
            args,
            envs,
            spec.get("cwd") if isinstance(spec.get("cwd"), str) else None,
            tag if isinstance(tag, str) else None,
            pty_size,
            bool(get_field(message, "stdin")),
            self.state.environment(user, {**envs, "PWD": cwd}),
        )
        try:
            process = self.state.processes.spawn(_at(config, cwd), user)
        except OSError as e:
            raise ConnectError("invalid_argument", f"failed to start {cmd!r}: {e.strerror or e}") from None
        if call.timeout:
            process.kill_after(call.timeout)
        queue = process.subscribe()
        try:
            yield _event({"start": {"pid": process.pid}})
            async for message_out in _follow(queue):
                yield message_out
        finally:
            process.unsubscribe(queue)

    async def connect(self, message: Message, call: Call) -> AsyncIterator[Message]:
        """Attach to a running process and stream its later events."""
        process = self._select(message)
        queue = process.subscribe()
        try:
            yield _event({"start": {"pid": process.pid}})
            async for message_out in _follow(queue):
                yield message_out
        finally:
            process.unsubscribe(queue)

    async def list(self, message: Message, call: Call) -> Message:
        """The processes still running."""
        out = []
        for process in self.state.processes.processes.values():
            if process.exit is not None:
                continue
            config: Message = {"cmd": process.config.cmd, "args": process.config.args, "envs": process.config.envs}
            if process.config.cwd is not None:
                config["cwd"] = process.config.cwd
            info: Message = {"config": config, "pid": process.pid}
            if process.config.tag is not None:
                info["tag"] = process.config.tag
            out.append(info)
        return {"processes": out}

    async def _input(self, process: Process, data: Message) -> None:
        if "pty" in data:
            payload, to_pty = b64(data["pty"]), True
        else:
            payload, to_pty = b64(data.get("stdin")), False
        try:
            await process.write_input(payload, to_pty)
        except InputError as e:
            raise ConnectError("failed_precondition", str(e)) from None

    async def send_input(self, message: Message, call: Call) -> Message:
        """Write to a process's stdin or PTY."""
        await self._input(self._select(message), obj(message, "input"))
        return {}

    async def stream_input(self, messages: AsyncIterator[Message], call: Call) -> Message:
        """A start event naming the process, then data events, until the client ends the stream."""
        process: Process | None = None
        async for message in messages:
            if "start" in message:
                process = self._select(obj(message, "start"))
            elif "data" in message:
                if process is None:
                    raise ConnectError("failed_precondition", "the input stream must start with a start event")
                await self._input(process, obj(obj(message, "data"), "input"))
        return {}

    async def close_stdin(self, message: Message, call: Call) -> Message:
        """Signal EOF on a process's stdin."""
        try:
            self._select(message).close_stdin()
        except InputError as e:
            raise ConnectError("failed_precondition", str(e)) from None
        return {}

    async def send_signal(self, message: Message, call: Call) -> Message:
        """SIGTERM or SIGKILL a process's group."""
        process = self._select(message)
        sig = SIGNALS.get(get_field(message, "signal"))
        if sig is None:
            raise ConnectError("invalid_argument", f"unsupported signal {get_field(message, 'signal')!r}")
        process.signal(sig)
        return {}

    async def update(self, message: Message, call: Call) -> Message:
        """Resize a process's PTY."""
        process = self._select(message)
        size = obj(obj(message, "pty"), "size")
        if size:
            try:
                process.resize(int(size.get("rows") or 0), int(size.get("cols") or 0))
            except InputError as e:
                raise ConnectError("failed_precondition", str(e)) from None
        return {}


def _at(config: Config, cwd: str) -> Config:
    return Config(config.cmd, config.args, config.envs, cwd, config.tag, config.pty_size, config.stdin, config.env)


async def _follow(queue: asyncio.Queue[Output | Exit]) -> AsyncIterator[Message]:
    while True:
        item = await queue.get()
        if isinstance(item, Exit):
            yield _end(item)
            return
        yield _output(item)
