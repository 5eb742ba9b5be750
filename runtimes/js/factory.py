"""Building the JS tier from ``Settings.js``, for the worker's ``main()``."""

from __future__ import annotations

from soulbox.core.logging import get_logger
from soulbox.core.schemas import Tier
from soulbox.core.settings import Settings

from ..protocol import Runtime
from .cgroup import find_parent
from .config import BUN, TIER
from .engines import TOOLS_DIRS, default_engines
from .modules import FetchArtifact
from .runtime import JsRuntime
from .sandbox import JsSandbox

log = get_logger(__name__)


def create_js_runtimes(settings: Settings, fetch_artifact: FetchArtifact) -> dict[Tier, Runtime]:
    """``{Tier.JS: JsRuntime}`` with every runtime installed here, or ``{}`` if none is."""
    js = settings.js
    if not js.enabled:
        return {}
    engines = default_engines(bun=js.bun_path, deno=js.deno_path, extra_dirs=TOOLS_DIRS)
    if not engines:
        log.warning("js.no_runtime", hint="install the `deno` PyPI package or the `bun` npm package")
        return {}
    cgroup_parent = find_parent() if js.memory_cgroup else None
    sandbox = JsSandbox.create(settings.linux) if js.sandboxed else None
    if sandbox is None and BUN in engines:
        log.warning("js.bun_unsandboxed", hint="Bun has no permission system: run only trusted code on it here")
    log.info(
        "js.ready",
        runtimes=sorted(engines),
        memory_cgroup=str(cgroup_parent) if cgroup_parent else None,
        sandboxed=sandbox is not None,
    )
    runtime = JsRuntime(
        fetch_artifact,
        engines=engines,
        work_dir=settings.data_dir / "js",
        concurrency=settings.worker.capacity,
        max_idle=js.max_idle,
        idle_ttl_s=js.idle_ttl_s,
        start_timeout_s=js.start_timeout_s,
        spare_scripts=js.spare_scripts,
        poll_ms=js.poll_ms,
        cgroup_parent=cgroup_parent,
        sandbox=sandbox,
    )
    return {TIER: runtime}
