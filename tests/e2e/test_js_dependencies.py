"""Deploys with npm dependencies: resolved and bundled once at deploy, nothing fetched at invoke."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.npm_registry import NpmRegistry

FETCH = b"""import { upper } from "tiny-upper";
export default { async fetch(request: Request) { return new Response(upper(await request.text())); } };
"""
SCRIPT = b"""import { greet } from "@acme/greet";
console.log(greet("deno"));
"""


def _deploy(api: httpx.Client, name: str, code: bytes, deps: dict[str, str], runtime: str) -> httpx.Response:
    return api.post(
        "/v1/functions",
        data={"name": name, "runtime": runtime, "package_json": json.dumps({"dependencies": deps})},
        files={"code": (f"{name}.ts", code)},
    )


def test_bun_function_runs_with_a_dependency_resolved_at_deploy(api: httpx.Client, npm_registry: NpmRegistry) -> None:
    deployed = _deploy(api, "dep-bun", FETCH, {"tiny-upper": "^1.0.0"}, "bun")
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["packages"] == {"tiny-upper": "1.2.0"}  # the newest 1.x, not 2.0.0
    assert api.get("/v1/functions/dep-bun").json()["packages"] == {"tiny-upper": "1.2.0"}
    fetched = npm_registry.requests
    for _ in range(3):
        run = api.post("/v1/functions/dep-bun/invoke", content=b"soulbox")
        assert run.status_code == 200, run.text
        assert run.content == b"SOULBOX!"
    assert npm_registry.requests == fetched  # invokes fetch nothing


def test_deno_script_gets_transitive_dependencies(api: httpx.Client) -> None:
    deployed = _deploy(api, "dep-deno", SCRIPT, {"@acme/greet": "0.3.1"}, "deno")
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["packages"] == {"@acme/greet": "0.3.1", "tiny-upper": "1.2.0"}
    run = api.post("/v1/functions/dep-deno/invoke")
    assert run.status_code == 200, run.text
    assert run.content == b"hello DENO!\n"


def test_lifecycle_scripts_of_packages_do_not_run(api: httpx.Client) -> None:
    marker = Path("/tmp/soulbox-postinstall-ran")
    marker.unlink(missing_ok=True)
    code = b'import { ok } from "with-postinstall";\nconsole.log(ok);\n'
    deployed = _deploy(api, "dep-scripts", code, {"with-postinstall": "1.0.0"}, "bun")
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["packages"] == {"with-postinstall": "1.0.0"}
    assert not marker.exists()


@pytest.mark.parametrize(
    ("deps", "code", "message"),
    [
        ({"x": "file:/etc"}, "invalid_request", "file:, link:, git and URL dependencies are not installed"),
        ({"x": "https://example.com/x.tgz"}, "invalid_request", "registry version"),
        ({"../up": "1.0.0"}, "invalid_request", "bad package name"),
        ({"no-such-package": "1.0.0"}, "build_failed", "no-such-package"),
        ({"tiny-upper": "9.9.9"}, "build_failed", "tiny-upper"),
    ],
)
def test_bad_dependencies_are_refused_at_deploy(
    api: httpx.Client, deps: dict[str, str], code: str, message: str
) -> None:
    refused = _deploy(api, "dep-bad", FETCH, deps, "bun")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == code
    assert message in refused.json()["error"]["message"]


def test_host_files_cannot_be_bundled_in(api: httpx.Client) -> None:
    code = b'import { upper } from "tiny-upper";\nimport text from "/etc/hostname.txt";\nconsole.log(upper(text));\n'
    refused = _deploy(api, "dep-host", code, {"tiny-upper": "1.2.0"}, "bun")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_source"
    assert "line 2, column 18" in error["message"] and "Could not resolve" in error["message"]


def test_syntax_errors_in_a_function_with_dependencies_name_line_and_column(api: httpx.Client) -> None:
    code = b'import { upper } from "tiny-upper";\nconst x = ;\n'
    refused = _deploy(api, "dep-syntax", code, {"tiny-upper": "1.2.0"}, "deno")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_source"
    assert "line 2, column 11" in refused.json()["error"]["message"]
