"""Contexts: a language, a working directory and a kernel process, one execution at a time.

An execution's stream is written in the E2B code-interpreter wire format (what the SDK's
`parse_output` reads): `number_of_executions`, `stdout`/`stderr`, `result` (MIME bundle as
fields plus `is_main_result`), `error` (name, value, traceback); the HTTP layer adds the
final `end_of_execution`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest, Busy, ContextNotFound
from .kernel import Kernel, Message, node_argv, python_argv

Emit = Callable[[dict[str, Any]], None]

# MIME type → field of the SDK's Result; anything else goes to `extra`.
_RESULT_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}

LANGUAGES = ("python", "javascript", "bash")
_ALIASES = {
    "": "python",
    "python3": "python",
    "py": "python",
    "js": "javascript",
    "node": "javascript",
    "sh": "bash",
    "shell": "bash",
}


def normalize_language(language: str | None) -> str:
    """The canonical language name, or BadRequest for one no kernel runs."""
    name = (language or "").strip().lower()
    name = _ALIASES.get(name, name)
    if name not in LANGUAGES:
        raise BadRequest(f"unsupported language {language!r}: this server runs {', '.join(LANGUAGES)}")
    return name


@dataclass(frozen=True)
class Config:
    """What the server was started with (see `__main__`)."""

    python: str
    node: str
    cwd: str
    package_dir: str
    max_output_bytes: int = 16 * 1024 * 1024
    interrupt_grace: float = 3.0
    start_timeout: float = 30.0
    max_queued: int = 16
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def argv(self, language: str) -> list[str]:
        if language == "javascript":
            return node_argv(self.node, self.package_dir)
        if language == "bash":  # a small Python program drives the bash process
            return python_argv(self.python, self.package_dir, "bashkernel")
        return python_argv(self.python, self.package_dir)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


# What the results (MIME bundles: plots, tables) of one execution may add up to.
MAX_RESULT_BYTES = 128 * 1024 * 1024


class _Translator:
    """Kernel messages → SDK messages, with the output caps applied.

    stdout and stderr share one budget, results another, so that a flood of prints does
    not swallow the cell's result.
    """

    def __init__(self, emit: Emit, max_bytes: int) -> None:
        self._emit = emit
        self._max_output = max_bytes
        self._output_left = max_bytes
        self._results_left = MAX_RESULT_BYTES
        self._truncated = False
        self.timed_out: float | None = None
        self.errored = False

    def notice(self, text: str) -> None:
        """A line on the execution's stderr from the server itself."""
        self._emit({"type": "stderr", "text": text, "timestamp": _now()})

    def _spend_output(self, size: int) -> bool:
        if self._truncated:
            return False
        if size > self._output_left:
            self._truncated = True
            self.notice(f"[output truncated: this execution exceeded {self._max_output} bytes of output]\n")
            return False
        self._output_left -= size
        return True

    def _spend_result(self, size: int) -> bool:
        if size > self._results_left:
            self.notice(f"[result dropped: this execution's results exceeded {MAX_RESULT_BYTES} bytes]\n")
            return False
        self._results_left -= size
        return True

    def __call__(self, msg: Message) -> None:
        kind = msg.get("t")
        if kind == "count":
            self._emit({"type": "number_of_executions", "execution_count": int(msg.get("n", 0))})
        elif kind == "stream":
            text = str(msg.get("text", ""))
            if self._spend_output(len(text)):
                name = "stderr" if msg.get("name") == "stderr" else "stdout"
                self._emit({"type": name, "text": text, "timestamp": _now()})
        elif kind == "result":
            data = msg.get("data")
            if isinstance(data, dict) and self._spend_result(sum(len(str(v)) for v in data.values())):
                self._emit(result_message(data, bool(msg.get("main"))))
        elif kind == "error":
            self.error(str(msg.get("name", "Error")), str(msg.get("value", "")), str(msg.get("traceback", "")))

    def error(self, name: str, value: str, traceback: str) -> None:
        if self.timed_out is not None and name in ("KeyboardInterrupt", "Interrupted"):
            value = f"execution timed out after {self.timed_out:g} s"
        self.errored = True
        self._emit({"type": "error", "name": name, "value": value, "traceback": traceback})


def result_message(data: dict[str, Any], main: bool) -> dict[str, Any]:
    """A MIME bundle as the SDK's `result` message."""
    out: dict[str, Any] = {"type": "result"}
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        key = _RESULT_FIELDS.get(mime)
        if key is None:
            extra[mime] = value
        else:
            out[key] = value
    text = out.get("text")
    # The E2B server strips one pair of quotes from a repr'd string (`'hi'` → `hi`).
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        out["text"] = text[1:-1]
    if extra:
        out["extra"] = extra
    out["is_main_result"] = main
    return out


class Context:
    """One kernel and the queue of executions waiting for it."""

    def __init__(self, config: Config, language: str, cwd: str) -> None:
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self._config = config
        self._kernel: Kernel | None = None
        self._lock = asyncio.Lock()
        self._queued = 0
        self._ending: tuple[str, str] | None = None

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def start(self) -> None:
        """Start the kernel now (creating a context reports a broken language at once)."""
        async with self._lock:
            await self._ensure_kernel()

    async def _ensure_kernel(self) -> Kernel:
        if self._kernel is None or not self._kernel.alive:
            if self._kernel is not None:
                await self._kernel.kill()
            kernel = Kernel(self._config.argv(self.language), cwd=self.cwd, env=self._config.env)
            await kernel.start(self._config.start_timeout)
            self._kernel = kernel
            self._ending = None
        return self._kernel

    def admit(self) -> None:
        """Reserve a place in the queue, or Busy when it is full."""
        if self._queued >= self._config.max_queued:
            raise Busy(f"{self._queued} executions are already waiting on context {self.id}")
        self._queued += 1

    async def execute(
        self, code: str, env: dict[str, str], *, emit: Emit, timeout: float | None, gone: asyncio.Event
    ) -> None:
        """Run `code` after the executions ahead of it (call `admit` first).

        Stops early when `gone` is set (the client went away: the kernel is interrupted)
        or after `timeout` seconds (interrupted too, reported as an error). A kernel that
        ignores the interrupt for `interrupt_grace` seconds is killed; a dead kernel is
        reported and a new one starts with the next execution.
        """
        try:
            if not await _acquire(self._lock, gone):
                return
        finally:
            self._queued -= 1
        try:
            translate = _Translator(emit, self._config.max_output_bytes)
            previous = self._kernel
            if previous is not None and not previous.alive and self._ending is None:
                # it died between executions: say so, since this cell starts from scratch
                translate.notice(f"[{previous.exit_reason}; a new kernel runs this code, earlier state is lost]\n")
            try:
                kernel = await self._ensure_kernel()
            except Exception as exc:
                translate.error("KernelStartFailed", str(exc), "")
                return
            done = await kernel.execute(code, env, translate)
            await self._supervise(kernel, done, translate, timeout, gone)
            if not kernel.alive:
                if not translate.errored:
                    name, value = self._ending or (
                        "UnexpectedEndOfExecution",
                        f"{kernel.exit_reason}; the context's state is lost and a new kernel starts"
                        " with the next execution",
                    )
                    translate.error(name, value, "")
                await kernel.kill()  # reap it; the next execution starts a new one
                self._kernel = None
        finally:
            self._lock.release()

    async def _supervise(
        self,
        kernel: Kernel,
        done: asyncio.Future[None],
        translate: _Translator,
        timeout: float | None,
        gone: asyncio.Event,
    ) -> None:
        gone_wait = asyncio.ensure_future(gone.wait())
        waiters: list[asyncio.Future[Any]] = [done, gone_wait]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                return
            if not gone.is_set() and timeout is not None:
                translate.timed_out = timeout
            kernel.interrupt()
            await asyncio.wait([done], timeout=self._config.interrupt_grace)
            if not done.done():
                what = f"timed out after {timeout:g} s" if translate.timed_out else "was cancelled"
                await kernel.kill()
                translate.error(
                    "TimeoutError" if translate.timed_out else "ExecutionCancelled",
                    f"the execution {what} and the kernel ignored the interrupt, so it was killed;"
                    " the context's state is lost and a new kernel starts with the next execution",
                    "",
                )
        finally:
            gone_wait.cancel()

    async def restart(self) -> None:
        """Replace the kernel with a new process (all state is gone)."""
        if self._kernel is not None:
            self._ending = ("ContextRestarting", "Context was restarted")
            await self._kernel.kill("the context was restarted")
        async with self._lock:
            await self._ensure_kernel()

    async def close(self) -> None:
        """Kill the kernel; a running execution reports that its context was removed."""
        self._ending = ("ContextRemoved", "Context was removed")
        if self._kernel is not None:
            await self._kernel.kill("the context was removed")


async def _acquire(lock: asyncio.Lock, gone: asyncio.Event) -> bool:
    """Take `lock` unless `gone` is set first (then False, lock not held)."""
    acquire = asyncio.ensure_future(lock.acquire())
    gone_wait = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait([acquire, gone_wait], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone_wait.cancel()
    if acquire.done():
        return True
    acquire.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquire
    if acquire.cancelled():
        return False
    lock.release()
    return False


def _directory(path: str) -> str:
    if not os.path.isdir(path):
        raise BadRequest(f"cwd {path!r} is not a directory")
    return path


class Contexts:
    """Every context of the server, plus one default context per language."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}
        self._default_lock = asyncio.Lock()

    async def create(self, language: str | None, cwd: str | None) -> Context:
        name = normalize_language(language)
        directory = _directory(cwd or self._config.cwd)
        context = Context(self._config, name, directory)
        await context.start()
        self._contexts[context.id] = context
        return context

    def get(self, context_id: str) -> Context:
        context = self._contexts.get(context_id)
        if context is None:
            raise ContextNotFound(context_id)
        return context

    async def default(self, language: str | None) -> Context:
        """The language's default context, created on first use."""
        name = normalize_language(language)
        async with self._default_lock:
            context_id = self._defaults.get(name)
            if context_id is not None and context_id in self._contexts:
                return self._contexts[context_id]
            context = await self.create(name, None)
            self._defaults[name] = context.id
            return context

    def list(self) -> list[Context]:
        return list(self._contexts.values())

    async def remove(self, context_id: str) -> None:
        context = self.get(context_id)
        del self._contexts[context_id]
        for language, default_id in list(self._defaults.items()):
            if default_id == context_id:
                del self._defaults[language]
        await context.close()

    async def close(self) -> None:
        for context in list(self._contexts.values()):
            await context.close()
        self._contexts.clear()
        self._defaults.clear()
