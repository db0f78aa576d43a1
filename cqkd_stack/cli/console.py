"""What the live-swarm tasks show people: progress bars, port tables, probe summaries.

Progress and tables go to stderr, so ``--format json`` keeps stdout for the
one JSON document a program reads. rich is imported inside the functions:
``validate`` runs in CI linters where start-up time matters and nothing is
drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.results import compact

if TYPE_CHECKING:
    import rich.progress
    from rich.console import Console

    from ..core.dhtmap import DhtMap
    from ..live.holders import SurvivalCheck
    from ..live.inspection import PortMap
    from ..live.plan import Plan, ServicePlan
    from ..live.readiness import ProbeReport


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, log_path=False)


def _progress_bar(console: Console) -> rich.progress.Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def with_progress(console: Console, label: str, work: Callable[[Any], Any]) -> Any:
    """Run ``work(progress)``, drawing its (done, total, note) reports as a bar."""
    with _progress_bar(console) as bar:
        handle = bar.add_task(label, total=None)

        def report(done: int, total: int, note: str) -> None:
            bar.update(handle, completed=done, total=total or None, description=f"{label}: {note}")

        return work(report)


def print_port_map(console: Console, ports: PortMap) -> None:
    """The task table, the per-role use, then what is wrong (missing slots, duplicates)."""
    from rich.table import Table

    table = Table(title=f"stack {ports.stack}: {len(ports.tasks)} tasks")
    for column in ("slot", "task", "node", "address", "port", "state"):
        table.add_column(column, justify="right" if column in ("slot", "port") else "left")
    for row in ports.tasks:
        state = row.state + (f" ({row.error})" if row.error else "")
        flag = " [red]DUPLICATE[/red]" if row.duplicate else ""
        table.add_row(
            str(row.slot), row.task, row.node, row.address or "-", f"{row.port}{flag}", state
        )
    console.print(table)
    usage = Table(title="port ranges")
    for column in ("role", "range", "used", "total", "free"):
        usage.add_column(column)
    for role in ports.roles:
        usage.add_row(role.role, role.range, str(role.used), str(role.total), str(role.free))
    console.print(usage)
    for service, slots in ports.missing_slots.items():
        console.print(f"[yellow]{service}: missing slots {compact(slots)}[/yellow]")
    if ports.duplicate_ports:
        console.print(f"[red]duplicate ports: {compact(ports.duplicate_ports)}[/red]")


def probe_text(result: ProbeReport) -> str:
    """Answered / joined / total, then the silent and lonely slots by service."""
    lines = [
        f"{result.answered}/{result.total} DHT tasks answered at their address and port, "
        f"{result.joined} in the DHT; probe round {result.round_seconds:.2f} s "
        f"({result.method}), "
        f"{result.seconds:.2f} s in all"
    ]
    for label, rows in (("silent", result.silent), ("answering, no contacts", result.not_joined)):
        by_service: dict[str, list[int]] = {}
        for row in rows:
            by_service.setdefault(row["service"], []).append(row["slot"] or 0)
        for service, slots in sorted(by_service.items()):
            lines.append(f"{label}: {service} slots {compact(slots)}")
    return "\n".join(lines)


def print_crawl(console: Console, result: DhtMap) -> None:
    """The crawl's figures in one table, then every task or contact that is wrong, by name."""
    from rich.table import Table

    look = result.lookups
    table = Table(title=f"stack {result.stack}: crawl of {result.running} running DHT tasks")
    table.add_column("check")
    table.add_column("result")
    table.add_column("", justify="left")

    def mark(good: bool) -> str:
        return "[green]ok[/green]" if good else "[red]FAIL[/red]"

    table.add_row(
        "tables read",
        f"{result.answered}/{result.running} in {result.seconds:.2f} s ({result.method})",
        mark(not result.silent),
    )
    table.add_row("tasks no other task lists", str(len(result.unknown)), mark(not result.unknown))
    table.add_row(
        "components (A lists B)",
        " + ".join(map(str, result.components)) or "0",
        mark(not result.split),
    )
    if result.reachable_from_bootstrap is not None:
        table.add_row(
            "reachable from the bootstrap",
            f"{result.running - len(result.unreachable)}/{result.running}",
            mark(result.reachable_from_bootstrap),
        )
    table.add_row(
        "contacts per table (min/median/max)",
        f"{result.table_min} / {result.table_median:g} / {result.table_max}"
        + (f" ({result.incomplete_tables} read in part)" if result.incomplete_tables else ""),
        "",
    )
    table.add_row("ids found", str(result.ids_found), "")
    table.add_row(
        "contacts at no task's address",
        f"{len(result.foreign)} (never contacted); {result.stale} stale ids at task addresses",
        "",
    )
    if look.lookups:
        table.add_row(
            "lookups found the true k closest",
            f"{look.succeeded}/{look.lookups} ({look.starts} nodes x {look.keys} keys)",
            mark(look.succeeded == look.lookups),
        )
        table.add_row(
            "keys whose lookups agree",
            f"{look.keys_agreeing}/{look.keys}",
            mark(look.keys_agreeing == look.keys),
        )
        table.add_row(
            "hops (median/max), RPCs (median)",
            f"{look.hops_median:g} / {look.hops_max}, {look.queries_median:g}",
            "",
        )
    console.print(table)
    for label, rows in (
        ("unknown (no task lists it)", result.unknown),
        ("silent", result.silent),
        ("not reachable from the bootstrap", result.unreachable),
        *((f"apart (component {n})", rows) for n, rows in enumerate(result.apart, 2)),
    ):
        by_service: dict[str, list[int]] = {}
        for row in rows:
            by_service.setdefault(row["service"], []).append(row["slot"] or 0)
        for service, slots in sorted(by_service.items()):
            console.print(f"[red]{label}: {service} slots {compact(slots)}[/red]")
    for contact in result.foreign[:10]:
        console.print(
            f"[yellow]id {contact['id'][:12]}... at {contact['address']}:{contact['port']}, "
            f"no task of the stack, listed by {contact['listed_by']}[/yellow]"
        )
    if len(result.foreign) > 10:
        console.print(f"[yellow]... and {len(result.foreign) - 10} more (--format json)[/yellow]")


_DONE = {"deploy": "deployed", "scale": "scaled", "teardown": "removed"}
_IMAGE_ACTIONS = {
    "present": "present on",
    "copy": "copied to",
    "pull": "pulled on",
    "cannot": "cannot reach",
    "left to swarm": "left to Swarm's own pull on",
}


def plan_text(plan: Plan) -> str:
    """A dry run's plan: one line per service, then networks, images, tasks; why it would refuse."""
    lines = [
        f"dry run: {plan.operation} of stack '{plan.stack}' (nothing was {_DONE[plan.operation]})"
    ]
    width = max((len(s.service) for s in plan.services), default=0)
    lines += [
        f"  {s.action:<9}  {s.service:<{width}}  {_service_line(s)}".rstrip() for s in plan.services
    ]
    if plan.networks_created:
        lines.append(f"networks to create: {', '.join(plan.networks_created)}")
    if plan.networks_removed:
        lines.append(f"networks to remove: {', '.join(plan.networks_removed)}")
    if plan.volumes_removed:
        lines.append(f"volumes to remove: {', '.join(plan.volumes_removed)}")
    if plan.nodes_labelled:
        lines.append(f"node labels to set: {', '.join(plan.nodes_labelled)}")
    if plan.containers_removed:
        lines.append(f"containers to remove: {plan.containers_removed}")
    if plan.pushed:
        lines.append(f"push to: {plan.pushed} (then deployed pinned by digest)")
    by_image: dict[str, dict[str, list[str]]] = {}
    for entry in plan.images:
        by_image.setdefault(entry.image, {}).setdefault(entry.action, []).append(entry.node)
    for image, actions in by_image.items():
        said = "; ".join(
            f"{_IMAGE_ACTIONS.get(action, action)} {', '.join(nodes)}"
            for action, nodes in actions.items()
        )
        lines.append(f"image {image}: {said}")
    if plan.bootstrap_first:
        lines.append("a new stack: its bootstrap node is deployed first, then the rest")
    totals = plan.totals()
    lines.append(
        f"tasks: {totals['starting']} start, {totals['stopping']} stop, "
        f"{totals['replaced']} replaced"
    )
    lines += [f"would refuse: {problem}" for problem in plan.problems]
    return "\n".join(lines)


def _service_line(service: ServicePlan) -> str:
    if service.action == "kept":
        return "not in the file: docker stack deploy leaves it as it is"
    if service.replicas is None and service.current is not None:
        count = _replicas(service.current)
    elif service.current is not None and service.current != service.replicas:
        count = f"{service.current} -> {_replicas(service.replicas)}"
    else:
        count = _replicas(service.replicas)
    parts = [count]
    ports = service.ports + service.published
    if ports:
        parts.append(
            ("port " if len(ports) == 1 and "-" not in ports[0] else "ports ") + ", ".join(ports)
        )
    if service.changed:
        parts.append(f"{' and '.join(service.changed)} changed:")
    for number, what in (
        (service.starting, "start"),
        (service.stopping, "stop"),
        (service.replaced, "replaced"),
    ):
        if number:
            parts.append(f"{number} task{'s' if number != 1 else ''} {what}")
    if service.stepped:
        from ..live.teardown import DRAIN_STEP

        parts.append(f"stepped down {DRAIN_STEP} tasks at a time first")
    return "  ".join(parts)


def _replicas(count: int | None) -> str:
    if count is None:
        return "global"
    return f"{count} replica{'s' if count != 1 else ''}"


def survival_text(result: SurvivalCheck) -> str:
    """One line: holders found, killed, and when (or whether) Bob read the value again."""
    held = f"{len(result.holders)} of {result.tasks} DHT tasks held it"
    if result.publisher_holds:
        held += f" ({result.stored_by} too: her copy outlives the kill)"
    killed = ", ".join(result.killed) or "none"
    gone = f"; already gone: {', '.join(result.gone)}" if result.gone else ""
    left = ", ".join(result.survivors_holding) or "none"
    head = (
        f"{result.stored_by} stored {result.key} (node {result.stored_on}); {held}; "
        f"killed {killed}{gone}; other tasks holding it after the kill: {left}"
    )
    interval = f"republish interval {result.republish_interval:g} s"
    if result.ok:
        return (
            f"ok: {head}; {result.read_by} read it again {result.seconds_to_read:.1f} s after "
            f"the kill ({result.reads} reads; {interval})"
        )
    why = result.last_error or "not found"
    return (
        f"FAIL: {head}; {result.read_by} did not read it again within {result.timeout:g} s "
        f"({result.reads} reads, last: {why}; {interval})"
    )
