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

    from ..core.dhtmap import DhtMap
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


class CrawlCollector:
    """A one-shot collector over one crawl (``cqkd-stack crawl --format prometheus``)."""

    def __init__(self, result: DhtMap) -> None:
        self.result = result

    def collect(self) -> Iterator[Metric]:
        r, look = self.result, self.result.lookups
        stack = [r.stack]
        for name, documentation, value in (
            ("cqkd_crawl_tasks_running", "Running DHT tasks the crawl asked", r.running),
            ("cqkd_crawl_tables_read", "Tasks whose routing table was read", r.answered),
            ("cqkd_crawl_tasks_unknown", "Running tasks no other task lists", len(r.unknown)),
            (
                "cqkd_crawl_components",
                "Weakly connected components of A-lists-B",
                len(r.components),
            ),
            (
                "cqkd_crawl_unreachable_from_bootstrap",
                "Tasks not reachable from the bootstrap along A-lists-B",
                len(r.unreachable),
            ),
            ("cqkd_crawl_ids_found", "Distinct node ids in the crawl", r.ids_found),
            (
                "cqkd_crawl_foreign_contacts",
                "Contacts at addresses that are no task of the stack",
                len(r.foreign),
            ),
            ("cqkd_crawl_stale_contacts", "Contacts at a task's address under another id", r.stale),
            ("cqkd_crawl_seconds", "Seconds the crawl took", r.seconds),
            ("cqkd_crawl_lookups", "Lookups replayed over the crawled tables", look.lookups),
            (
                "cqkd_crawl_lookup_success_ratio",
                "Share of lookups that found the true k closest",
                look.success_rate,
            ),
            (
                "cqkd_crawl_lookup_keys_agreeing",
                "Keys whose lookups all ended with the same k closest",
                look.keys_agreeing,
            ),
            (
                "cqkd_crawl_healthy",
                "1 when the graph is one component and every task known",
                int(r.ok),
            ),
        ):
            gauge = _gauge(name, documentation, ["stack"])
            gauge.add_metric(stack, value)
            yield gauge
        sizes = _gauge("cqkd_crawl_table_contacts", "Contacts per routing table", ["stack", "stat"])
        hops = _gauge(
            "cqkd_crawl_lookup_hops", "Rounds of alpha RPCs per lookup", ["stack", "stat"]
        )
        for stat, size, hop in (
            ("min", r.table_min, None),
            ("median", r.table_median, look.hops_median),
            ("max", r.table_max, look.hops_max),
        ):
            sizes.add_metric([r.stack, stat], size)
            if hop is not None:
                hops.add_metric([r.stack, stat], hop)
        yield from (sizes, hops)


def crawl_exposition(result: DhtMap) -> str:
    """The Prometheus text format of one crawl."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CrawlCollector(result))
    return generate_latest(registry).decode()
