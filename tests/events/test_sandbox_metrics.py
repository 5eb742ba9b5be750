"""Per-sandbox gauges follow each worker's batches: set, replaced, dropped when a sandbox or worker is gone."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from soulbox.core.sandboxes import SandboxMetric, SandboxMetricsBatch, SandboxUsage
from soulbox.events.sandbox_metrics import SandboxGauges


def usage(sandbox_id: str, *, cpu_pct: float = 50.0, mem: int = 1000) -> SandboxUsage:
    metric = SandboxMetric(
        cpu_count=1, cpu_used_pct=cpu_pct, mem_used=mem, mem_total=4096, disk_used=7, disk_total=100,
        net_rx_bytes=11, net_tx_bytes=12, disk_read_bytes=13, disk_write_bytes=14,
    )  # fmt: skip
    return SandboxUsage(sandbox_id=sandbox_id, tenant="acme", template="base", metric=metric)


def value(registry: CollectorRegistry, name: str, sandbox_id: str) -> float | None:
    return registry.get_sample_value(name, {"sandbox_id": sandbox_id, "tenant": "acme", "template": "base"})


def test_gauges_follow_the_batches() -> None:
    registry = CollectorRegistry()
    gauges = SandboxGauges(registry, stale_after=10)
    gauges.apply(SandboxMetricsBatch(worker_id="w1", sandboxes=[usage("a"), usage("b", mem=5)]), now=0)
    assert value(registry, "soulbox_sandbox_cpu_used_ratio", "a") == 0.5
    assert value(registry, "soulbox_sandbox_memory_used_bytes", "b") == 5
    assert value(registry, "soulbox_sandbox_disk_used_bytes", "a") == 7
    assert value(registry, "soulbox_sandbox_network_received_bytes", "a") == 11
    assert value(registry, "soulbox_sandbox_network_sent_bytes", "a") == 12
    assert value(registry, "soulbox_sandbox_disk_read_bytes", "b") == 13
    assert value(registry, "soulbox_sandbox_disk_written_bytes", "b") == 14
    assert registry.get_sample_value("soulbox_sandboxes_running", {"worker": "w1"}) == 2
    gauges.apply(SandboxMetricsBatch(worker_id="w1", sandboxes=[usage("a", cpu_pct=10)]), now=1)
    assert value(registry, "soulbox_sandbox_cpu_used_ratio", "a") == 0.1
    assert value(registry, "soulbox_sandbox_memory_used_bytes", "b") is None  # b is gone from its worker
    assert value(registry, "soulbox_sandbox_network_sent_bytes", "b") is None
    gauges.apply(SandboxMetricsBatch(worker_id="w2", sandboxes=[usage("c")]), now=20)
    assert value(registry, "soulbox_sandbox_memory_used_bytes", "a") is None  # w1 silent for 19 s
    assert registry.get_sample_value("soulbox_sandboxes_running", {"worker": "w1"}) is None
    assert value(registry, "soulbox_sandbox_memory_used_bytes", "c") == 1000
