"""Choosing Bun or Deno for a JS/TS function from its code and manifests.

A deploy may name the abstract runtime ``js`` (or ``ts``), or give no runtime
and a ``.js``/``.ts``/``.mjs``/``.tsx``/... file; :func:`detect_runtime` then
picks ``bun`` or ``deno`` so that a stored spec only ever holds a concrete
runtime. The rules (documented in README.md) are textual, deterministic and
cheap: no parser, comments ignored, string contents counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import Runtime

ABSTRACT = frozenset({"js", "ts"})
"""Runtime names a deploy may give to have the JS runtime detected."""
SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".mts", ".cts", ".jsx", ".tsx")
"""File names that, with no runtime given, mean a JS/TS function."""


class RuntimeConflict(InvalidRequest):
    """The code (or its manifests) asks for both Bun and Deno."""


@dataclass(frozen=True, slots=True)
class Detection:
    runtime: Runtime
    reason: str
    """Why: the first signal seen, e.g. "code: `Deno.` at line 3", or the default."""


# Comments are blanked (a comment saying "Bun: use Bun.file" must not count); string
# literals are matched only so a `//` inside one is not taken for a comment. Every
# alternative ends at the end of input when unterminated, so the scan stays linear.
_SKIP = re.compile(
    r"""//[^\n]*|/\*(?:.*?\*/|.*)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?|`(?:\\.|[^`\\])*`?""",
    re.S,
)
_IMPORT = r"""\b(?:from|import|require)\s*(?:\(\s*)?["'`]"""
_SIGNALS: tuple[tuple[Runtime, re.Pattern[str]], ...] = (
    (Runtime.DENO, re.compile(r"(?<![\w$])Deno\s*\.\s*[A-Za-z_$]")),
    (Runtime.DENO, re.compile(_IMPORT + r"(?:npm:|jsr:|https?://)")),
    (Runtime.BUN, re.compile(r"(?<![\w$])Bun\s*\.\s*[A-Za-z_$]")),
    (Runtime.BUN, re.compile(_IMPORT + r"bun:")),
)


def _blank_comments(source: str) -> str:
    def blank(match: re.Match[str]) -> str:
        text = match.group()
        if text.startswith(("//", "/*")):
            return re.sub(r"[^\n]", " ", text)  # keep newlines: line numbers stay right
        return text

    return _SKIP.sub(blank, source)


def _code_signal(code: str, runtime: Runtime) -> str | None:
    found: list[tuple[int, str]] = []
    for target, pattern in _SIGNALS:
        if target is runtime and (match := pattern.search(code)):
            found.append((match.start(), match.group()))
    if not found:
        return None
    start, text = min(found)
    line = code.count("\n", 0, start) + 1
    return f"code: `{' '.join(text.split())}` at line {line}"


def _package_json_signal(text: str) -> str | None:
    try:
        manifest: Any = json.loads(text)
    except (ValueError, RecursionError):  # deep nesting overflows the stdlib parser
        raise InvalidRequest("package_json is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise InvalidRequest("package_json must be a JSON object")
    engines = manifest.get("engines")
    if isinstance(engines, dict) and "bun" in engines:
        return "package.json: engines.bun"
    manager = manifest.get("packageManager")
    if isinstance(manager, str) and manager.startswith("bun@"):
        return "package.json: packageManager bun"
    return None


def detect_runtime(
    source: bytes | str,
    *,
    default: Runtime = Runtime.DENO,
    package_json: str | None = None,
    deno_json: str | None = None,
    bunfig_toml: str | None = None,
) -> Detection:
    """Bun or Deno for this source, deterministically.

    Deno: ``Deno.`` API use, an ``npm:``/``jsr:``/``http(s)://`` import, a
    ``deno.json``. Bun: ``Bun.`` API use, a ``bun:`` import, a ``bunfig.toml``,
    a ``package.json`` with ``engines.bun`` or ``packageManager: bun@...``.
    Signals for both raise :class:`RuntimeConflict`; none gives ``default``.
    A ``package_json`` that is not a JSON object raises :class:`InvalidRequest`.
    """
    if default not in (Runtime.BUN, Runtime.DENO):
        raise ValueError(f"the default JS runtime must be bun or deno, not {default.value}")
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    code = _blank_comments(text)
    package = _package_json_signal(package_json) if package_json else None  # checked even when unneeded
    deno = "deno.json" if deno_json else _code_signal(code, Runtime.DENO)
    bun = ("bunfig.toml" if bunfig_toml else package) or _code_signal(code, Runtime.BUN)
    if deno and bun:
        raise RuntimeConflict(
            f"cannot tell Bun from Deno: Deno by {deno}, Bun by {bun}; deploy with runtime=deno or runtime=bun"
        )
    if deno:
        return Detection(Runtime.DENO, deno)
    if bun:
        return Detection(Runtime.BUN, bun)
    return Detection(default, f"default: no Bun or Deno specifics found, {default.value} is the configured default")
