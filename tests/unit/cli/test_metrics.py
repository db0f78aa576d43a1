"""``ports --format prometheus``, read back with Prometheus' own text parser."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cqkd_stack.cli.metrics import exposition
from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.inspection import build_port_map

from ..live.test_readiness import WORKER_ENV, service, task

POLICY = load_policy()
NODES = {
    "n1": {"Description": {"Hostname": "node-1"}, "Status": {"Addr": "192.0.2.2"}},
    "n2": {"Description": {"Hostname": "node-2"}, "Status": {"Addr": "192.0.2.3"}},
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def on(node: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "NodeID": node}


def test_a_map_with_a_duplicate_and_gaps_reads_back_per_range_and_per_node() -> None:
    services = [service("w", "s_worker", WORKER_ENV, replicas=5)]
    tasks = [
        on("n1", task("t1", "w", 1, [("s_dht", "10.9.0.3/20")])),
        on("n2", task("t1b", "w", 1, [("s_dht", "10.9.0.4/20")])),  # slot 1 twice: 7000
        on("n2", task("t2", "w", 2, [("s_dht", "10.9.0.5/20")])),
        on("n2", task("t3", "w", 3, [("s_dht", "10.9.0.6/20")], state="starting")),
    ]
    ports = build_port_map("s", services, tasks, NODES, POLICY)
    found = samples(exposition(ports, POLICY))

    worker = {"stack": "s", "role": "worker", "range": "7000-7999"}
    assert value(found, "cqkd_port_range_ports", **worker) == 1000
    assert value(found, "cqkd_port_range_used", **worker) == 3  # 7000, 7001, 7002
    assert value(found, "cqkd_port_range_free", **worker) == 997
    assert value(found, "cqkd_node_ports_used", stack="s", node="node-1", role="worker") == 1
    assert value(found, "cqkd_node_ports_used", stack="s", node="node-2", role="worker") == 3
    assert value(found, "cqkd_node_ports_free", stack="s", node="node-2", role="worker") == 997
    assert value(found, "cqkd_tasks", stack="s", node="node-2", state="running") == 2
    assert value(found, "cqkd_tasks", stack="s", node="node-2", state="starting") == 1
    assert value(found, "cqkd_duplicate_ports", stack="s") == 1
    assert value(found, "cqkd_missing_slots", stack="s", service="s_worker") == 2  # 4 and 5
    assert value(found, "cqkd_port_map_healthy", stack="s") == 0


def test_label_values_are_escaped_by_the_exposition_not_by_us() -> None:
    """A node name with a quote and a backslash still parses to the same name."""
    nodes = {"n1": {"Description": {"Hostname": 'odd"node\\1'}, "Status": {"Addr": "192.0.2.2"}}}
    services = [service("w", "s_worker", WORKER_ENV, replicas=1)]
    ports = build_port_map("s", services, [task("t1", "w", 1, [])], nodes, POLICY)
    found = samples(exposition(ports, POLICY))
    assert value(found, "cqkd_tasks", stack="s", node='odd"node\\1', state="running") == 1
    assert value(found, "cqkd_port_map_healthy", stack="s") == 1
