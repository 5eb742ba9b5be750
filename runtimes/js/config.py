"""Names and per-function configuration of the JS tier.

A function's :class:`FunctionConfig` (env bindings and Deno permissions)
comes from its spec (:func:`config_from_spec`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from soulbox.core.errors import InvalidRequest
from soulbox.core.schemas import FunctionSpec, Runtime, Tier
from soulbox.core.schemas import Permissions as SpecPermissions

TIER = Tier.JS
BUN = Runtime.BUN
DENO = Runtime.DENO
RUNTIMES = (BUN, DENO)

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV = frozenset({"DENO_DIR", "HOME", "NO_COLOR", "TMPDIR", "BUN_RUNTIME_TRANSPILER_CACHE_PATH"})


class Mode(StrEnum):
    """How a module is served, told apart by whether it has a default export."""

    FETCH = "fetch"  # `export default { fetch(request, env, ctx) }`: warm, many invocations per process
    SCRIPT = "script"  # top-level code: stdin -> stdout, exit code; one invocation per process


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a Deno function may reach besides its own module; nothing by default.

    ``net`` lists hosts (``api.example.com``, ``10.0.0.1:8080``) for ``fetch``
    and sockets; ``read``/``write`` list paths; ``run`` lists program names.
    Env access is exactly the function's bindings. Bun has no permission
    system: only ``net`` matters to it, deciding whether its sandbox shares
    the host's network namespace (:mod:`.sandbox`). Paths are as the
    sandboxed process sees them (its private ``/tmp`` and ``/work``, ``/usr``).
    """

    net: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    run: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind in ("net", "read", "write", "run"):
            for item in getattr(self, kind):
                if not item or "," in item or item.startswith("unix:"):
                    raise InvalidRequest(f"bad {kind} permission {item!r}")


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    env: Mapping[str, str] = field(default_factory=dict)
    permissions: Permissions = Permissions()
    fingerprint: str = field(init=False, repr=False, compare=False)
    """Identifies the configuration: processes are never shared across different ones."""

    def __post_init__(self) -> None:
        for name, value in self.env.items():
            if not ENV_NAME_RE.match(name) or name in RESERVED_ENV or name.startswith("SOULBOX_"):
                raise InvalidRequest(f"bad env binding name {name!r}")
            if "\0" in value:
                raise InvalidRequest(f"env binding {name!r} contains a NUL byte")
        p = self.permissions
        doc = {"env": sorted(self.env.items()), "permissions": [p.net, p.read, p.write, p.run]}
        object.__setattr__(self, "fingerprint", hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16])


NO_CONFIG = FunctionConfig()
NO_PERMISSIONS = SpecPermissions()


def no_config(spec: FunctionSpec) -> FunctionConfig:
    """A resolver that grants nothing: no env bindings, no permissions."""
    return NO_CONFIG


def config_from_spec(spec: FunctionSpec) -> FunctionConfig:
    """The function's env bindings and permissions, as deployed."""
    if not spec.env and spec.permissions == NO_PERMISSIONS:
        return NO_CONFIG
    p = spec.permissions
    return FunctionConfig(
        env=dict(spec.env),
        permissions=Permissions(tuple(p.net), tuple(p.read), tuple(p.write), tuple(p.run)),
    )
