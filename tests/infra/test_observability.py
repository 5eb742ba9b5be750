"""infra/ stays honest: every metric the alert rules and the dashboard name is one the code registers,
with labels it has, and Prometheus scrapes the ports ``soulbox up`` gives each process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from soulbox.cli.stack import owned_ports, resolve
from soulbox.core.settings import Settings
from soulbox.events.metrics import MetricsRecorder
from soulbox.events.sandbox_metrics import SandboxGauges
from soulbox.gateway.instruments import GatewayInstruments
from soulbox.runtimes.instruments import WorkerInstruments
from soulbox.scheduler.instruments import SchedulerInstruments

INFRA = Path(__file__).resolve().parents[2] / "infra"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
NAME = re.compile(r"\bsoulbox_[a-zA-Z0-9_]+")
SELECTOR = re.compile(r"\b(soulbox_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def registries() -> list[CollectorRegistry]:
    sandboxes = CollectorRegistry()
    SandboxGauges(sandboxes)
    return [
        GatewayInstruments().registry,
        SchedulerInstruments(lambda: 0).registry,
        WorkerInstruments().registry,
        MetricsRecorder().registry,
        sandboxes,
    ]


def known_series() -> dict[str, set[str]]:
    """Every series name the code can expose -> the labels it carries."""
    series: dict[str, set[str]] = {}
    for registry in registries():
        for collector in list(registry._collector_to_names):  # private, but the registry's own inventory
            assert isinstance(collector, MetricWrapperBase)
            labels = set(collector._labelnames)
            for family in collector.describe():
                for suffix in SUFFIXES[family.type]:
                    series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((INFRA / "prometheus" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((INFRA / "grafana" / "soulbox.json").read_text())
    return loaded


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def expressions() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in alert_rules()] + list(dashboard_exprs())


def test_the_code_registers_the_documented_metrics() -> None:
    series = known_series()
    for name in (
        "soulbox_gateway_requests_total",
        "soulbox_gateway_request_duration_seconds_bucket",
        "soulbox_gateway_inflight_requests",
        "soulbox_scheduler_dispatch_seconds_bucket",
        "soulbox_scheduler_dispatches_total",
        "soulbox_scheduler_live_workers",
        "soulbox_worker_invocations_total",
        "soulbox_worker_run_seconds_bucket",
        "soulbox_worker_in_flight",
        "soulbox_worker_sandboxes",
        "soulbox_worker_sandbox_starts_total",
        "soulbox_worker_sandbox_start_seconds_bucket",
    ):
        assert name in series, name
    assert series["soulbox_gateway_requests_total"] == {"method", "route", "status"}
    assert series["soulbox_worker_sandbox_starts_total"] == {"template", "kind"}


@pytest.mark.parametrize(("where", "expr"), expressions())
def test_every_referenced_metric_and_label_exists(where: str, expr: str) -> None:
    series = known_series()
    names = NAME.findall(expr)
    assert names, f"{where}: no SoulBox metric in {expr!r}"
    unknown = sorted(set(names) - set(series))
    assert not unknown, f"{where}: {unknown} are not registered by any SoulBox process"
    for name, matchers in SELECTOR.findall(expr):
        used = set(LABEL_MATCHER.findall(matchers))
        assert used <= series[name] | TARGET_LABELS, f"{where}: {name} has no label {used - series[name]}"
    allowed = set.union(*(series[name] for name in names)) | TARGET_LABELS
    for grouping in GROUPING.findall(expr):
        used = {label.strip() for label in grouping.split(",") if label.strip()}
        assert used <= allowed, f"{where}: grouping by unknown labels {used - allowed}"
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules) >= 6
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
        assert panel["targets"] and all(t["refId"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_prometheus_scrapes_the_ports_soulbox_up_uses() -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    scraped = {
        target for job in config["scrape_configs"] for static in job["static_configs"] for target in static["targets"]
    }
    settings = resolve(Settings(_env_file=None))  # type: ignore[call-arg]
    served = {f"127.0.0.1:{port}" for _, port in owned_ports(settings, workers=1).values()}
    assert scraped == served - {
        f"127.0.0.1:{settings.embedded_nats.port}",
        f"127.0.0.1:{settings.embedded_nats.monitor_port}",
    }
