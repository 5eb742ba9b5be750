"""Deploy-time checks of a Linux-tier function's code: a UTF-8 text script.

Deliberately shallow: the script is run by the worker's interpreter, whose
version the gateway does not know, so no syntax check here — a script that
does not parse fails at its first invocation as a function error.
"""

from __future__ import annotations

from soulbox.core.errors import InvalidRequest


def validate_script(data: bytes) -> None:
    """Raise :class:`InvalidRequest` unless ``data`` is a non-empty UTF-8 text file."""
    if not data.strip():
        raise InvalidRequest("the script is empty")
    if b"\0" in data:
        raise InvalidRequest("the script contains NUL bytes (upload the source, not a binary)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the script is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
