from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.stack import Stack

API_KEY = "sb_test_key_0123456789"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    (root / "grants").mkdir()  # the one place functions may be granted (read-only) access to
    env = {"SOULBOX_GATEWAY__API_KEYS": f'["{API_KEY}"]', "SOULBOX_WASM__READ_ROOTS": f'["{root / "grants"}"]'}
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
