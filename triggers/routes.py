"""HTTP route templates: ``/orders/{id}`` matched against request paths under ``/run``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from soulbox.core.errors import InvalidRequest

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass(frozen=True, slots=True)
class RoutePattern:
    """A compiled path template; literal segments score higher than parameters."""

    template: str
    regex: re.Pattern[str]
    literal_segments: int

    @classmethod
    def compile(cls, template: str) -> RoutePattern:
        segments = [s for s in template.strip("/").split("/") if s]
        parts: list[str] = []
        literal = 0
        seen: set[str] = set()
        for segment in segments:
            if (m := _PARAM.match(segment)) is not None:
                if m.group(1) in seen:
                    raise InvalidRequest(f"route parameter {m.group(1)!r} appears twice")
                seen.add(m.group(1))
                parts.append(f"(?P<{m.group(1)}>[^/]+)")
            elif "{" in segment or "}" in segment:
                raise InvalidRequest(f"route segment {segment!r}: a parameter is a whole segment, like {{id}}")
            else:
                literal += 1
                parts.append(re.escape(segment))
        return cls(template, re.compile("^/" + "/".join(parts) + "/?$"), literal)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        return None if m is None else m.groupdict()


def normalized(template: str) -> str:
    """The template's canonical spelling (no trailing slash), used to detect clashes."""
    return "/" + "/".join(re.sub(r"\{[^}]*\}", "{}", s) for s in template.strip("/").split("/") if s)
