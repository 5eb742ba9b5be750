"""The HTTP handler contract of the Wasmtime tier: a JSON request on stdin, a JSON response on stdout.

The same for a raw WASI module or component, a QuickJS, a MicroPython and a
CPython guest (the interpreters get a small prelude that calls the user's ``handler(request)``
and writes what it returns). The worker receives the invocation input as the
JS tier does (an ``http.request`` envelope, or raw bytes: the body of a
``POST /``), hands the guest :func:`request_document`, and turns the guest's
JSON answer into an ``http.response`` envelope (:func:`parse_response`), so
the gateway maps status, headers and body to the HTTP response exactly as for
a Bun or Deno fetch handler.

Request (stdin)::

    {"method": "GET", "url": "http://h/run/orders/42?x=1", "path": "/run/orders/42",
     "query": "x=1", "headers": {"accept": "*/*"}, "body": "..."}

``headers`` has lower-case names (repeated headers joined with ", "); the
body is ``body`` (text) when it is UTF-8, otherwise ``body_base64``.

Response (stdout): an object with ``status`` (100-599, default 200),
``headers`` (an object, or a list of ``[name, value]`` pairs) and ``body``
(text; any other JSON value is sent as JSON with ``content-type:
application/json`` unless set) or ``body_base64``. Any other field, or
anything that is not such an object, is a ``bad_response`` function error.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any
from urllib.parse import urlsplit

from soulbox.core.schemas import InvocationError, Outcome
from soulbox.runtimes.js.http import HttpRequest, HttpResponse

from ..protocol import RunResult

RESPONSE_FIELDS = frozenset({"status", "headers", "body", "body_base64"})
# RFC 9110 token characters: a header name; values must not break the header block.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\0]")
# Room for the envelope around a body of max_output_bytes (base64 grows it by a third).
ENVELOPE_ROOM = 64 * 1024


class BadResponse(ValueError):
    """The guest's stdout is not a response envelope."""


def envelope_limit(max_output_bytes: int) -> int:
    """How much stdout to capture in http mode: the body cap applies after decoding."""
    return 2 * max_output_bytes + ENVELOPE_ROOM


def request_document(input: bytes) -> bytes:
    """The JSON request a guest reads from stdin, from the invocation input."""
    request = HttpRequest.decode(input)
    url = urlsplit(request.url)
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    doc: dict[str, Any] = {
        "method": request.method,
        "url": request.url,
        "path": url.path or "/",
        "query": url.query,
        "headers": headers,
    }
    try:
        doc["body"] = request.body.decode("utf-8")
    except UnicodeDecodeError:
        doc["body_base64"] = base64.b64encode(request.body).decode("ascii")
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def parse_response(stdout: bytes) -> HttpResponse:
    """The guest's response envelope; :class:`BadResponse` says what is wrong with it."""
    try:
        doc = json.loads(stdout)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        shown = stdout[:80].decode("utf-8", errors="replace")
        raise BadResponse(f"stdout is not a JSON response ({exc}): {shown!r}") from None
    if not isinstance(doc, dict):
        raise BadResponse(f"the response must be a JSON object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - RESPONSE_FIELDS)
    if unknown:
        raise BadResponse(f"unknown response field(s) {', '.join(unknown)}: use status, headers, body, body_base64")
    status = doc.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise BadResponse(f"status must be an integer from 100 to 599, not {status!r}")
    headers = _headers(doc.get("headers"))
    if "body" in doc and "body_base64" in doc:
        raise BadResponse("give body or body_base64, not both")
    body = doc.get("body")
    if "body_base64" in doc:
        encoded = doc["body_base64"]
        if not isinstance(encoded, str):
            raise BadResponse("body_base64 must be a string")
        try:
            data = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise BadResponse(f"body_base64 is not base64: {exc}") from None
    elif body is None:
        data = b""
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("content-type", "application/json"))
    return HttpResponse(status=status, headers=tuple(headers), body=data)


def finish(result: RunResult, max_output_bytes: int) -> RunResult:
    """An http handler's result: stdout becomes an ``http.response`` envelope, its body capped.

    A run that failed is left as it is; a run that ended well but wrote no valid
    response is a function error of kind ``bad_response``.
    """
    if result.outcome is not Outcome.SUCCESS:
        return result
    try:
        if result.stdout_truncated:
            raise BadResponse(f"the response is larger than the {len(result.stdout)} bytes an envelope may take")
        response = parse_response(result.stdout)
    except BadResponse as exc:
        error = InvocationError(kind="bad_response", message=str(exc))
        return dataclasses.replace(result, outcome=Outcome.FUNCTION_ERROR, error=error)
    body = response.body
    capped = HttpResponse(status=response.status, headers=response.headers, body=body[:max_output_bytes])
    return dataclasses.replace(
        result, stdout=capped.encode(), stdout_bytes=len(body), stdout_truncated=len(body) > max_output_bytes
    )


def _headers(value: object) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [(p[0], p[1]) for p in value]
    else:
        raise BadResponse("headers must be an object or a list of [name, value] pairs")
    headers = []
    for name, item in pairs:
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise BadResponse(f"bad header name {name!r}")
        if not isinstance(item, str) or _BAD_VALUE.search(item):
            raise BadResponse(f"header {name} must be a string without CR, LF or NUL")
        headers.append((name, item))
    return headers


# QuickJS: the user's script defines `function handler(request)`; its return value is the response.
# console.* and print go to stderr: stdout carries the response. The reactor runs no job loop after
# the script, so a handler that returns a Promise cannot be awaited and is refused.
QJS_HTTP_BOOTSTRAP = """
const __sb_log = (...a) => std.err.puts(a.map(x => typeof x === 'string' ? x : JSON.stringify(x)).join(' ') + '\\n');
globalThis.print = __sb_log;
for (const k of ['log', 'info', 'debug', 'warn', 'error']) console[k] = __sb_log;
try {
  std.evalScript(scriptArgs[0]);
  if (typeof handler !== 'function') throw new TypeError('the http handler mode needs a function handler(request)');
  const response = handler(JSON.parse(std.in.readAsString()));
  if (response && typeof response.then === 'function')
    throw new TypeError('handler returned a Promise: QuickJS handlers must return the response object itself');
  std.out.puts(JSON.stringify(response === undefined ? null : response));
} finally { std.out.flush(); std.err.flush(); }
"""

# MicroPython and CPython: the source runs as function.py (its own line numbers) in a namespace where print
# writes to stderr; then `handler(request)` is called and its return value written as JSON.
_PY_HTTP_RUNNER = """import sys, json, binascii
def __sb_print(*args, **kwargs):
    kwargs["file"] = sys.stderr
    print(*args, **kwargs)
__sb_ns = {"__name__": "__main__", "print": __sb_print}
exec(compile(__SB_SOURCE, "function.py", "exec"), __sb_ns)
__sb_handler = __sb_ns.get("handler")
if not callable(__sb_handler):
    raise TypeError("the http handler mode needs a function handler(request)")
__sb_response = __sb_handler(json.loads(sys.stdin.read()))
if isinstance(__sb_response, dict) and isinstance(__sb_response.get("body"), (bytes, bytearray)):
    __sb_response = dict(__sb_response)
    __sb_response["body_base64"] = binascii.b2a_base64(__sb_response.pop("body"), newline=False).decode()
sys.stdout.write(json.dumps(__sb_response))
"""


def python_runner(source: str) -> str:
    """The program of a MicroPython (``-c``) or CPython http handler, with the source as a string literal.

    JSON string syntax with non-ASCII kept as is is valid Python string syntax.
    """
    return f"__SB_SOURCE = {json.dumps(source, ensure_ascii=False)}\n{_PY_HTTP_RUNNER}"
