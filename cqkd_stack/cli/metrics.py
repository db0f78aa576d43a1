"""The live port map as Prometheus metrics (``cqkd-stack ports --format prometheus``).

For node_exporter's textfile collector or any scraper of the text format:
how full each role's port range is, stack-wide and per node (with host
networking a port is taken per node), plus the two faults the port map
exists to catch, duplicate ports and missing slots. The text is written by
the official client library's exposition, so escaping and format follow
Prometheus, not this project.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric

    from ..core.policy import Policy
    from ..live.inspection import PortMap


class PortMapCollector:
    """A one-shot collector over one port map; registered in a registry of its own."""

    def __init__(self, ports: PortMap, policy: Policy) -> None:
        self.ports = ports
        self.policy = policy

    def collect(self) -> Iterator[Metric]:
        stack = self.ports.stack
        ranges = ["stack", "role", "range"]
        total = _gauge("cqkd_port_range_ports", "Ports in the role's range of the policy", ranges)
        used = _gauge(
            "cqkd_port_range_used", "Ports of the range held by the stack's tasks", ranges
        )
        free = _gauge(
            "cqkd_port_range_free", "Ports of the range no task of the stack holds", ranges
        )
        for role in self.ports.roles:
            labels = [stack, role.role, role.range]
            total.add_metric(labels, role.total)
            used.add_metric(labels, role.used)
            free.add_metric(labels, role.free)
        yield from (total, used, free)

        per_node = ["stack", "node", "role"]
        node_used = _gauge("cqkd_node_ports_used", "Ports of the range held on the node", per_node)
        node_free = _gauge("cqkd_node_ports_free", "Ports of the range free on the node", per_node)
        held: dict[tuple[str, str], set[int]] = {}
        for row in self.ports.tasks:
            if row.port is not None and row.role:
                held.setdefault((row.node, row.role), set()).add(row.port)
        for (node, role), taken in sorted(held.items()):
            rng = self.policy.roles.get(role)
            inside = {p for p in taken if rng is None or p in rng}
            node_used.add_metric([stack, node, role], len(inside))
            if rng is not None:
                node_free.add_metric([stack, node, role], len(rng) - len(inside))
        yield from (node_used, node_free)

        tasks = _gauge("cqkd_tasks", "DHT tasks of the stack", ["stack", "node", "state"])
        states = Counter((r.node, r.state) for r in self.ports.tasks)
        for (node, state), count in sorted(states.items()):
            tasks.add_metric([stack, node, state], count)
        duplicates = _gauge("cqkd_duplicate_ports", "Ports held by more than one task", ["stack"])
        duplicates.add_metric([stack], len(self.ports.duplicate_ports))
        missing = _gauge(
            "cqkd_missing_slots", "Slots with no task Swarm wants running", ["stack", "service"]
        )
        for service, slots in sorted(self.ports.missing_slots.items()):
            missing.add_metric([stack, service], len(slots))
        healthy = _gauge(
            "cqkd_port_map_healthy", "1 when no port is duplicated and no slot missing", ["stack"]
        )
        healthy.add_metric([stack], int(self.ports.healthy))
        yield from (tasks, duplicates, missing, healthy)


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, labels=labels)


def exposition(ports: PortMap, policy: Policy) -> str:
    """The Prometheus text format (version 0.0.4) of one port map."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortMapCollector(ports, policy))
    return generate_latest(registry).decode()
