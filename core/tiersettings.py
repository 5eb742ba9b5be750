"""The runtime tiers' settings: Wasmtime, Bun/Deno, Linux sandboxes and their network.

Parts of :class:`~soulbox.core.settings.Settings` (``wasm``, ``js``,
``linux``, ``sandboxes``), set the same way: ``SOULBOX_LINUX__NET__POOL_SIZE=8``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WasmSettings(BaseModel):
    """Limits and grants of the Wasmtime tier, checked at deploy and again by the worker."""

    max_fuel: int = Field(10**12, ge=1, description="largest per-function fuel budget a deploy may ask for")
    read_roots: list[Path] = Field(
        default_factory=list,
        description="directories under which functions may be granted read-only access (empty: no grants)",
    )
    warm_up_cpython: bool = Field(
        False, description="compile the cpython guest as a worker starts (~15 s of CPU unless cached or shared)"
    )


class JsSettings(BaseModel):
    enabled: bool = True
    bun_path: Path | None = Field(None, description="default: PATH, the venv, then .tools/js/node_modules")
    deno_path: Path | None = Field(None, description="default: PATH, then the venv (PyPI package `deno`)")
    default_runtime: Literal["bun", "deno"] = Field(
        "deno", description="runtime of a `js`/`ts` deploy whose code shows no Bun or Deno specifics"
    )
    max_idle: int = Field(64, ge=0, description="warm processes kept over all functions")
    idle_ttl_s: float = Field(300.0, gt=0)
    start_timeout_s: float = Field(10.0, gt=0, description="longest boot + module load of a spare process")
    spare_scripts: bool = Field(True, description="boot the next script-mode process after each invocation")
    memory_cgroup: bool = Field(True, description="a memory cgroup per process when the host allows one")
    poll_ms: float = Field(5.0, gt=0, description="RSS watchdog interval")
    sandboxed: bool = Field(
        True,
        description="run every Bun/Deno process in a bubblewrap sandbox built from `linux` settings (needs user "
        "namespaces, bwrap, setpriv, libseccomp; without them the tier warns and runs processes bare)",
    )
    npm_registry: str = Field(
        "https://registry.npmjs.org/", description="where deploys with package.json dependencies install from"
    )
    build_timeout_s: float = Field(120.0, gt=0, description="longest install or bundle step of a deploy")
    build_dir: Path = Field(
        Path("/var/tmp/soulbox-js-builds"),
        description="builds and the package cache; every directory above it must be traversable by `nobody`",
    )
    max_concurrent_builds: int = Field(2, ge=1, description="dependency builds at once per gateway")


# Above every range a distribution hands out by default: /etc/subuid ranges start at
# 100000, systemd's container range ends at 1879048191, its foreign range starts at 2^31.
DEFAULT_UID_BASE = 1_950_000_000


class NetSettings(BaseModel):
    """Sandbox network egress: a pool of network namespaces wired to the host by veth pairs, under nftables."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="offer egress (needs nftables' libnftables); off: sandboxes never get one")
    pool_size: int = Field(2, ge=0, description="idle namespaces + veths kept ready (setup costs tens of ms)")
    max_slots: int = Field(256, ge=1, le=16384, description="namespaces one worker wires at most")
    subnet: str = Field(
        "10.231.0.0/16",
        description="IPv4 range of the veths (a /30 each); each worker of a host claims a block of it",
    )
    deny: tuple[str, ...] = Field(
        (), description="CIDRs refused to every sandbox, on top of the private, loopback and link-local ranges"
    )
    dns_servers: tuple[str, ...] = Field(
        ("1.1.1.1", "8.8.8.8"),
        description="resolvers a sandbox with egress may ask (port 53, even in a denied range) and finds in its "
        "/etc/resolv.conf; empty: names only from /etc/hosts",
    )


class LinuxSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bwrap: str = Field("bwrap", description="bubblewrap executable (a path or a name on PATH)")
    setpriv: str = Field("setpriv", description="util-linux setpriv, drops to the sandbox's host uid")
    uid_base: int = Field(
        DEFAULT_UID_BASE,
        ge=1000,
        le=4_000_000_000,
        description="first host uid/gid of the sandboxes; one per concurrent sandbox, owned by nobody on the host",
    )
    uid_block: int = Field(
        4096, ge=16, description="uids each worker claims (the workers of one host take consecutive blocks)"
    )
    cgroup_parent: str | None = Field(
        None,
        description="cgroup under which sandbox cgroups are made: absolute from the hierarchy's root, "
        "relative from the worker's own cgroup; default: soulbox-sandboxes (relative)",
    )
    cpu_quota: float = Field(1.0, ge=0, description="CPU time per sandbox in cores (0: unlimited)")
    pids_max: int = Field(256, ge=8, description="tasks (processes + threads) per sandbox")
    tmpfs_mb: int | None = Field(
        None, ge=1, description="size cap of /tmp and /work each; default: half the function's memory limit"
    )
    runtime_dir: str | None = Field(
        None,
        description="where the shared read-only /etc skeleton is made (every directory on the way must be "
        "traversable by other users); default: /dev/shm, else /run, else the temp directory",
    )
    hostname: str = "sandbox"
    python: str = Field("/usr/bin/python3", description="interpreter of `python` functions (inside the sandbox)")
    shell: str = Field("/bin/bash", description="interpreter of `shell` functions")
    node: str = Field("/usr/bin/node", description="interpreter of `node` functions")
    system_paths: tuple[str, ...] = Field(
        ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"),
        description="host paths bound read-only at the same place (symlinks are recreated as symlinks)",
    )
    # fmt: off
    etc_files: tuple[str, ...] = Field(
        (
            "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "ssl",
            "ca-certificates", "ca-certificates.conf", "mime.types", "protocols", "services",
            "python3", "python3.11", "python3.12", "python3.13",
        ),
        description="entries of the host's /etc bound read-only when they exist",
    )
    # fmt: on
    net: NetSettings = Field(default_factory=NetSettings, description="network egress of sandboxes")


class SandboxSettings(BaseModel):
    """Long-lived sandboxes (the E2B-style API) on the Linux tier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    capacity: int = Field(16, ge=0, description="sandboxes one worker hosts at most (0: none)")
    pool_size: int = Field(1, ge=0, description="pre-started sandboxes kept per template")
    default_timeout_s: int = Field(300, ge=1)
    max_timeout_s: int = Field(24 * 3600, ge=1)
    memory_mb: int = Field(512, ge=32)
    cpu_count: int = Field(1, ge=1)
    disk_mb: int = Field(1024, ge=16, description="size cap of each writable tmpfs (home, /tmp, /usr/local...)")
    pids_max: int = Field(1024, ge=16)
    ready_timeout_s: float = Field(15.0, gt=0, description="longest start of a sandbox's daemons")
    templates_dir: Path | None = Field(
        None,
        description="where template environments are built (bound read-only into sandboxes, so every directory "
        "on the way must be traversable by other users); default: <data_dir>/templates",
    )
    domain: str = Field(
        "sandbox.localhost", description="sandbox host names are <port>-<id>.<domain>, served by the gateway"
    )
