"""Deno's permissions: nothing beyond the module unless the function's config grants it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from soulbox.core.schemas import FunctionSpec, Outcome
from soulbox.runtimes.js.config import DENO, FunctionConfig, Permissions

from ..linux.netfixtures import Upstream, upstream_network
from .conftest import Make
from .guests import engine_or_skip

PROBE = """
const what = new TextDecoder().decode(await new Response(Deno.stdin.readable).arrayBuffer());
const probes: Record<string, () => Promise<unknown>> = {
  read: () => Deno.readTextFile("/etc/hostname"),
  write: () => Deno.writeTextFile(Deno.env.get("OUT") ?? "/tmp/soulbox-denied", "x"),
  net: async () =>
    (await fetch(`http://${Deno.env.get("HOST") ?? "127.0.0.1"}:${Deno.env.get("PORT") ?? "9"}/`)).text(),
  env: async () => Deno.env.get("PORT") ?? Deno.env.get("HOME"),
  run: () => new Deno.Command("/bin/true").output(),
};
try {
  const value = await probes[what]();
  console.log("allowed", typeof value === "string" ? value.trim() : "");
} catch (err) {
  console.log("denied", (err as Error).name);
}
"""


@pytest.mark.parametrize("probe", ["read", "write", "net", "env", "run"])
async def test_deno_denies_by_default(make: Make, probe: str, local_server: int) -> None:
    engine_or_skip(DENO)
    js, guests = make(DENO, {"probe": PROBE})
    result = await js.run(guests.spec("probe"), probe.encode())
    assert result.outcome is Outcome.SUCCESS, result
    assert result.stdout == b"denied NotCapable\n"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with upstream_network() as net:  # the sandbox's egress: never the host's loopback
        yield net


async def test_deno_allows_what_is_granted(make: Make, upstream: Upstream, tmp_path: object) -> None:
    engine_or_skip(DENO)
    out = f"{tmp_path}/granted.txt"
    up = upstream

    def configure(spec: FunctionSpec) -> FunctionConfig:
        grants = Permissions(net=(f"{up.public}:{up.port}",), read=("/etc/hostname",), write=(out,))
        return FunctionConfig(env={"HOST": str(up.public), "PORT": str(up.port), "OUT": out}, permissions=grants)

    js, guests = make(DENO, {"probe": PROBE}, configure=configure)
    results = {probe: await js.run(guests.spec("probe"), probe.encode()) for probe in ("read", "write", "net", "env")}
    assert results["net"].stdout == b"allowed pong\n"
    assert results["env"].stdout == f"allowed {up.port}\n".encode()  # a binding, nothing else
    assert results["read"].stdout.startswith(b"allowed")
    assert results["write"].stdout == b"allowed \n"
    assert (await js.run(guests.spec("probe"), b"run")).stdout == b"denied NotCapable\n"


def test_permissions_refuse_what_would_widen_the_flags() -> None:
    from soulbox.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        Permissions(net=("a.com,b.com",))
    with pytest.raises(InvalidRequest):
        Permissions(net=("unix:/var/run/docker.sock",))
    with pytest.raises(InvalidRequest):
        FunctionConfig(env={"DENO_DIR": "/"})
