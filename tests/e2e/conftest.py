from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.npm_registry import NpmRegistry, Package
from tests.stack import Stack

API_KEY = "sb_test_key_0123456789"


# What the stack's deploys install from (registry.npmjs.org is outside the machine).
NPM_PACKAGES = {
    "tiny-upper": {
        "1.0.0": Package({"index.js": 'export const upper = (s) => s.toUpperCase() + "?";\n'}),
        "1.2.0": Package({"index.js": 'export const upper = (s) => s.toUpperCase() + "!";\n'}),
        "2.0.0": Package({"index.js": 'export const upper = (s) => s.toLowerCase();\n'}),
    },
    "@acme/greet": {
        "0.3.1": Package(
            {"index.js": 'import { upper } from "tiny-upper";\nexport const greet = (n) => `hello ${upper(n)}`;\n'},
            {"dependencies": {"tiny-upper": "~1.2.0"}},
        ),
    },
    "with-postinstall": {
        "1.0.0": Package(
            {"index.js": "export const ok = 1;\n", "install.sh": "touch /tmp/soulbox-postinstall-ran\n"},
            {"scripts": {"postinstall": "sh install.sh"}},
        ),
    },
}


@pytest.fixture(scope="session")
def npm_registry() -> Iterator[NpmRegistry]:
    registry = NpmRegistry(NPM_PACKAGES)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, npm_registry: NpmRegistry) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    (root / "grants").mkdir()  # the one place functions may be granted (read-only) access to
    env = {
        "SOULBOX_GATEWAY__API_KEYS": f'["{API_KEY}"]',
        "SOULBOX_WASM__READ_ROOTS": f'["{root / "grants"}"]',
        "SOULBOX_JS__NPM_REGISTRY": npm_registry.url,
    }
    s = Stack(root, workers=2, env=env)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"X-API-KEY": API_KEY}, timeout=30) as client:
        yield client


def deploy(api: httpx.Client, name: str, module: bytes, **limits: int) -> httpx.Response:
    return api.post(
        "/v1/functions",
        data={"name": name, **{k: str(v) for k, v in limits.items()}},
        files={"module": (f"{name}.wasm", module, "application/wasm")},
    )


@pytest.fixture
def e2b_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The official E2B SDKs pointed at the stack through their own settings."""
    monkeypatch.setenv("E2B_API_URL", stack.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", stack.url)
    monkeypatch.setenv("E2B_API_KEY", API_KEY)
    monkeypatch.setenv("E2B_DOMAIN", "sandbox.localhost")
    return stack
