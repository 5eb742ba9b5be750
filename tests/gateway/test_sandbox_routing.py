"""Which requests are for a sandbox: E2B's headers or a ``<port>-<id>.<domain>`` host."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from soulbox.gateway.sandboxes.dataplane import ENVD_PORT, sandbox_target

DOMAIN = "sandbox.localhost"


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def test_e2b_headers_win() -> None:
    assert sandbox_target(headers(e2b_sandbox_id="abc12345", e2b_sandbox_port="49999"), DOMAIN) == ("abc12345", 49999)
    assert sandbox_target(headers(e2b_sandbox_id="abc12345"), DOMAIN) == ("abc12345", ENVD_PORT)
    assert sandbox_target(headers(E2B_SANDBOX_ID="abc12345", host="api.example"), DOMAIN) == ("abc12345", ENVD_PORT)


def test_hosts() -> None:
    assert sandbox_target(headers(host="8000-abc12345.sandbox.localhost"), DOMAIN) == ("abc12345", 8000)
    assert sandbox_target(headers(host="8000-abc12345.sandbox.localhost:8470"), DOMAIN) == ("abc12345", 8000)
    assert sandbox_target(headers(host="8000-ABC12345.Sandbox.Localhost"), DOMAIN) == ("abc12345", 8000)
    for host in ("127.0.0.1:8470", "sandbox.localhost", "8000-abc.evil.example", "x-abc.sandbox.localhost",
                 "8000-abc12345.sandbox.localhost.evil.example"):  # fmt: skip
        assert sandbox_target(headers(host=host), DOMAIN) is None, host


@given(st.text(max_size=80))
def test_any_host_is_either_api_or_a_well_formed_target(host: str) -> None:
    try:
        raw = host.encode("latin-1")
    except UnicodeEncodeError:
        return
    target = sandbox_target([(b"host", raw)], DOMAIN)
    if target is not None:
        sandbox_id, port = target
        assert sandbox_id.isalnum() and sandbox_id == sandbox_id.lower() and 0 <= port <= 99999
