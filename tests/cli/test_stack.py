"""What ``soulbox up`` would start, without starting it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from soulbox.cli.stack import (
    default_nats_config,
    drop_busy_monitor,
    make_plan,
    owned_ports,
    resolve,
    url_host,
)
from soulbox.core.natsserver import free_port, server_binary
from soulbox.core.settings import Settings

NO_ENV_FILE: dict[str, Any] = {"_env_file": None}


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    given: dict[str, Any] = {"data_dir": tmp_path / "data", "_env_file": None, **values}
    return resolve(Settings(**given))


def test_components_start_in_order_with_the_settings_they_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(
        tmp_path,
        gateway={"port": 18001},
        embedded_nats={"port": 15001, "monitor_port": 0},
        events={"metrics_port": 19001},
        worker={"id": "host.example.com"},
    )
    plan = make_plan(settings, workers=2, nats_config=None, python="/py", base_env={"PATH": "/bin", "SOULBOX_X": "1"})
    assert [c.name for c in plan.components] == [
        "events",
        "worker-1",
        "worker-2",
        "scheduler",
        "triggers",
        "gateway",
    ]
    argv = {c.name: c.argv for c in plan.components}
    assert argv["triggers"] == ("/py", "-m", "soulbox.triggers")
    assert argv["gateway"] == ("/py", "-m", "soulbox.gateway")
    assert argv["scheduler"] == ("/py", "-m", "soulbox.scheduler")
    assert argv["worker-2"] == ("/py", "-m", "soulbox.runtimes.worker")
    assert argv["events"] == ("/py", "-m", "soulbox.events", "run")
    assert plan.worker_ids == ("host-example-com-1", "host-example-com-2")  # usable as subject tokens
    envs = {c.name: dict(c.env or {}) for c in plan.components}
    assert envs["worker-2"]["SOULBOX_WORKER__ID"] == "host-example-com-2"
    assert "SOULBOX_WORKER__ID" not in envs["gateway"]
    assert envs["gateway"]["PATH"] == "/bin" and envs["gateway"]["SOULBOX_X"] == "1"  # inherited
    assert json.loads(envs["gateway"]["SOULBOX_NATS__URLS"]) == ["nats://127.0.0.1:15001"]

    # A child builds the same Settings from that environment.
    for key, value in envs["worker-1"].items():
        if key.startswith("SOULBOX_"):
            monkeypatch.setenv(key, value)
    seen = Settings(**NO_ENV_FILE)
    assert seen.data_dir == settings.data_dir and seen.data_dir.is_absolute()
    assert seen.nats.urls == ["nats://127.0.0.1:15001"]
    assert (seen.gateway.port, seen.events.metrics_port) == (18001, 19001)
    assert seen.worker.id == "host-example-com-1"
    # Distinct /metrics ports after the metrics consumer's: scheduler +1, worker n +1+n.
    assert (seen.scheduler.metrics_port, seen.worker.metrics_port) == (19002, 19003)
    assert envs["worker-2"]["SOULBOX_WORKER__METRICS_PORT"] == "19004"
    assert envs["scheduler"]["SOULBOX_SCHEDULER__METRICS_PORT"] == "19002"

    assert plan.nats is not None
    nats = plan.nats.argv
    assert nats[0] == server_binary()
    assert nats[nats.index("-p") + 1] == "15001"
    assert nats[nats.index("-sd") + 1] == str(settings.data_dir / "nats")
    assert "-c" not in nats and "-m" not in nats
    assert plan.endpoints.gateway == "http://127.0.0.1:18001"
    assert plan.endpoints.metrics == "http://127.0.0.1:19001/metrics"


def test_an_external_nats_replaces_the_embedded_one(tmp_path: Path) -> None:
    urls = ["nats://a:4222", "nats://b:4222"]
    settings = make_settings(tmp_path, nats={"urls": urls}, embedded_nats={"enabled": False})
    plan = make_plan(settings, workers=1, nats_config=default_nats_config())
    assert plan.nats is None
    assert plan.endpoints.nats == tuple(urls) and plan.endpoints.nats_monitor is None
    assert json.loads(dict(plan.components[0].env or {})["SOULBOX_NATS__URLS"]) == urls
    assert set(owned_ports(settings, workers=2)) == {
        "gateway", "metrics", "scheduler metrics", "worker-1 metrics", "worker-2 metrics"
    }  # fmt: skip


def test_listen_addresses_become_client_urls() -> None:
    assert url_host("0.0.0.0") == "127.0.0.1"
    assert url_host("::") == "[::1]"
    assert url_host("fe80::1") == "[fe80::1]"
    assert url_host("10.0.0.7") == "10.0.0.7"


def test_the_nats_config_is_valid_for_nats_server() -> None:
    config = default_nats_config()
    assert config is not None
    check = subprocess.run([server_binary(), "-c", str(config), "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_a_busy_monitoring_port_is_left_out(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        settings, note = drop_busy_monitor(make_settings(tmp_path, embedded_nats={"monitor_port": busy}))
        assert settings.embedded_nats.monitor_port == 0 and note is not None and str(busy) in note
    free = free_port()
    settings, note = drop_busy_monitor(make_settings(tmp_path, embedded_nats={"monitor_port": free}))
    assert settings.embedded_nats.monitor_port == free and note is None


def test_up_refuses_ports_that_are_taken(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        up = subprocess.run(
            [
                sys.executable,
                "-m",
                "soulbox.cli",
                "up",
                "--data-dir",
                str(tmp_path / "data"),
                "--port",
                str(taken),
                "--nats-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
    assert up.returncode == 1
    assert f"gateway 127.0.0.1:{taken} (in use)" in up.stdout
    assert not (tmp_path / "data" / "run" / "state.json").exists()
