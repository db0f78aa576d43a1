"""Waiting on a live stack: until every replica runs, and until every DHT task has joined.

Waits poll real state with a deadline; none sleeps for a guessed duration.
Swarm's "running" (the engine's work) and the DHT's "joined" (ours, asked
over Kademlia by ``readiness``) are reported apart, and a wait that runs out
names every task that did not come up, with the engine's reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import DEFAULT_NODE_IMAGE
from ..core.errors import CqkdError
from ..core.process import Progress
from .inspection import (
    TaskPort,
    expected_replicas,
    port_rule,
    replicas_of,
    running_counts,
    stack_filter,
    task_rows,
)
from .readiness import Prober, ProbeUnavailable, ignores_probe, targets_of

if TYPE_CHECKING:
    import docker

POLL_SECONDS = 1.0


@dataclass
class WaitResult:
    seconds: float
    ready: int
    total: int
    # When every replica was first running, and when every task was in the DHT.
    running_seconds: float | None = None
    joined_seconds: float | None = None


@dataclass
class TaskTrouble:
    """A task that did not come up, and the engine's own words on why."""

    service: str
    slot: int | None
    state: str
    error: str


class NotReady(CqkdError):
    def __init__(self, message: str, troubles: list[TaskTrouble]) -> None:
        super().__init__(message)
        self.troubles = troubles


def _troubles(tasks: list[dict[str, Any]], wanted: dict[str, tuple[str, int]]) -> list[TaskTrouble]:
    troubles = []
    for task in tasks:
        status = task.get("Status", {})
        if task.get("DesiredState") == "running" and status.get("State") == "running":
            continue
        name = wanted.get(task["ServiceID"], (task["ServiceID"], 0))[0]
        error = status.get("Err") or status.get("Message", "")
        troubles.append(TaskTrouble(name, task.get("Slot"), status.get("State", "?"), error))
    troubles.sort(key=lambda t: (t.service, t.slot or 0))
    return troubles


def wait_until_running(
    client: docker.DockerClient,
    stack: str,
    timeout: float,
    progress: Progress | None = None,
) -> WaitResult:
    """Wait until every replica of every service of the stack is running (and healthy).

    On timeout the error names each task that is not running with the
    engine's reason, because "timed out" alone sends the operator digging.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        wanted = expected_replicas(client, stack)
        tasks = client.api.tasks(filters=stack_filter(stack))
        counts = running_counts(tasks)
        total = sum(n for _, n in wanted.values())
        ready = sum(min(counts[sid], n) for sid, (_, n) in wanted.items())
        if progress is not None:
            progress(ready, total, f"{ready}/{total} tasks running")
        if wanted and ready == total:
            return WaitResult(time.monotonic() - start, ready, total)
        if time.monotonic() >= deadline:
            raise _not_ready(stack, timeout, tasks, wanted, ready, total)
        time.sleep(POLL_SECONDS)


# While Swarm is still starting tasks, a round (a listing of every task and
# one probe exec) competes for the CPU the engine needs to start them: on 2
# cores, polling 1003 tasks every 2 s visibly slowed the start. So rounds are
# spaced by the stack's size until every task runs, then come every second.
TASKS_PER_POLL_SECOND = 200
MAX_POLL_SECONDS = 5.0


def poll_interval(total: int, running: int) -> float:
    """Seconds between readiness rounds (see TASKS_PER_POLL_SECOND)."""
    if running >= total:
        return POLL_SECONDS
    return min(MAX_POLL_SECONDS, max(POLL_SECONDS, total / TASKS_PER_POLL_SECOND))


@dataclass
class StackRound:
    """What one round of a wait read of the stack: services, tasks and nodes, one call each."""

    services: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    # Service ID -> (name, replicas) as the swarm wants them now.
    wanted: dict[str, tuple[str, int]]
    # The DHT tasks Swarm wants running, as port map rows, by task ID.
    rows: dict[str, TaskPort]
    total: int  # replicas wanted
    running: int  # of them, running
    dht_total: int  # replicas of the DHT services

    @property
    def all_running(self) -> bool:
        return self.running == self.total


def read_round(client: docker.DockerClient, stack: str) -> StackRound:
    """The stack as it is now; pure counting after three list calls."""
    services = client.api.services(filters=stack_filter(stack))
    wanted = replicas_of(services)
    tasks = client.api.tasks(filters=stack_filter(stack))
    nodes = {n["ID"]: n for n in client.api.nodes()}
    counts = running_counts(tasks)
    return StackRound(
        services=services,
        tasks=tasks,
        wanted=wanted,
        rows={r.task_id: r for r in task_rows(stack, services, tasks, nodes)},
        total=sum(n for _, n in wanted.values()),
        running=sum(min(counts[sid], n) for sid, (_, n) in wanted.items()),
        dht_total=sum(n for sid, (_, n) in wanted.items() if _is_dht_service(services, sid)),
    )


def wait_until_ready(
    client: docker.DockerClient,
    stack: str,
    timeout: float,
    progress: Progress | None = None,
    *,
    image: str = DEFAULT_NODE_IMAGE,
    since: float | None = None,
) -> WaitResult:
    """Wait until every replica runs and every DHT task answers the probe, joined.

    Each round lists services, tasks and nodes (one API call each) and
    probes, in one process, the running tasks not yet seen joined; when all
    are, one more round asks every task, so a task that died meanwhile is
    not reported as ready. Swarm's "running" and the
    DHT's "joined" are reported separately: the first is the engine's work,
    the second ours. The seconds count from ``since`` (a ``time.monotonic``
    moment: a paced deploy's first step) when given, else from now.
    """
    start = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout
    joined: set[str] = set()  # IDs of the tasks seen answering, in the DHT
    running_at: float | None = None
    early = ignores_probe(client, stack)
    with Prober(client, stack, image) as prober:
        while True:
            round_start = time.monotonic()
            seen = read_round(client, stack)
            if seen.wanted and seen.all_running and running_at is None:
                running_at = time.monotonic() - start
            joined &= seen.rows.keys()
            # Every task answered once: this round asks them all again to confirm.
            confirm = seen.all_running and len(joined) >= seen.dht_total
            answers, probe_error = _ask(prober, seen, joined, confirm, early)
            confirm = confirm and not probe_error
            _count_answers(joined, seen, answers, confirm)
            count = min(len(joined), seen.dht_total)
            if progress is not None:
                what = f"{seen.running}/{seen.total} running, {count}/{seen.dht_total} joined"
                progress(count, seen.dht_total, what)
            if confirm and len(joined) >= seen.dht_total:
                now = time.monotonic() - start
                return WaitResult(now, count, seen.dht_total, running_at, now)
            if time.monotonic() >= deadline:
                raise _timed_out(stack, timeout, seen, joined, probe_error)
            if not probe_error and seen.all_running and len(joined) >= seen.dht_total:
                continue  # everything answered: confirm at once, no reason to wait
            pause = poll_interval(seen.total, seen.running) - (time.monotonic() - round_start)
            time.sleep(max(0.0, pause))


def _ask(
    prober: Prober, seen: StackRound, joined: set[str], confirm: bool, early: bool
) -> tuple[dict[str, Any], str]:
    """One probe round (every task to confirm, else those not yet joined); (answers, why none).

    A stock Kademlia node keeps the probe in its routing table, so its stack
    is probed only once Swarm runs every task (``early``: ours ignores it).
    """
    if not seen.all_running and not early:
        return {}, "waiting for Swarm to run every task (a stock node keeps the probe)"
    asked = [r for task_id, r in seen.rows.items() if confirm or task_id not in joined]
    try:
        # Attaching a probe to the overlay goes through the same manager and
        # agent that start the tasks: at 1003 tasks that attach timed out
        # ("context deadline exceeded") and each failure leaked an
        # attachment. Sharing a local task's network namespace needs neither,
        # so until every task runs only that is tried; rounds then overlap the start.
        return prober.round(targets_of(asked), attach=seen.all_running).answers, ""
    except ProbeUnavailable as exc:
        return {}, exc.message  # the next round tries again


def _count_answers(
    joined: set[str], seen: StackRound, answers: dict[str, Any], confirm: bool
) -> None:
    """A task that answered, joined, is in; one that did not leaves when confirming (or was out)."""
    for task_id, row in seen.rows.items():
        (task,) = targets_of([row])
        if task.askable and task.ready(answers.get(task.text)):
            joined.add(task_id)
        elif confirm or task_id not in joined:
            joined.discard(task_id)


def _timed_out(
    stack: str, timeout: float, seen: StackRound, joined: set[str], probe_error: str
) -> NotReady:
    """The wait's error: every task not running or not joined, and why the probe did not ask."""
    error = _not_ready(
        stack, timeout, seen.tasks, seen.wanted, seen.running, seen.total, seen.rows, joined
    )
    if probe_error:
        error.message += f"\n  the probe: {probe_error}"
        error.args = (error.message,)
    return error


def _is_dht_service(services: list[dict[str, Any]], service_id: str) -> bool:
    return any(s["ID"] == service_id and port_rule(s).dht for s in services)


def _not_ready(
    stack: str,
    timeout: float,
    tasks: list[dict[str, Any]],
    wanted: dict[str, tuple[str, int]],
    running: int,
    total: int,
    rows: dict[str, Any] | None = None,
    joined_ids: set[str] | None = None,
) -> NotReady:
    """Name each task that is not running (with the engine's reason) or not in the DHT.

    ``rows`` and ``joined_ids`` come from a readiness wait; without them only
    Swarm's own state is judged.
    """
    current = [t for t in tasks if t.get("DesiredState") == "running"]
    troubles = _troubles(current, wanted)
    joined = "" if joined_ids is None else f", {len(joined_ids)} in the DHT"
    for task_id, row in (rows or {}).items():
        if row.state == "running" and task_id not in (joined_ids or set()):
            where = f"{row.address}:{row.port}"
            troubles.append(
                TaskTrouble(row.service, row.slot, "running", f"not in the DHT at {where}")
            )
    # The latest failed attempt explains a task that keeps restarting.
    failed = [t for t in tasks if t.get("Status", {}).get("Err")]
    failed.sort(key=lambda t: t.get("Status", {}).get("Timestamp", ""), reverse=True)
    lines = [
        f"  {t.service}.{t.slot}: {t.state}" + (f" ({t.error})" if t.error else "")
        for t in troubles[:20]
    ]
    more = f"\n  ... and {len(troubles) - 20} more" if len(troubles) > 20 else ""
    last = failed[0]["Status"]["Err"] if failed else ""
    hint = f"\n  latest task error: {last}" if last else ""
    return NotReady(
        f"stack '{stack}': {running}/{total} tasks running{joined} after {timeout:.0f} s; "
        f"not ready:\n" + "\n".join(lines) + more + hint,
        troubles,
    )
