from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"), workers=2)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def deploy(api: httpx.Client, name: str, module: bytes, **limits: int) -> httpx.Response:
    return api.post(
        "/v1/functions",
        data={"name": name, **{k: str(v) for k, v in limits.items()}},
        files={"module": (f"{name}.wasm", module, "application/wasm")},
    )
