"""A new stack's workers asked of Swarm a window at a time (``deploy --pace``), not all at once.

Swarm hands a node every task it schedules there at once, and the node's
engine starts them all together. Measured on this 2-core machine: 1100
workers asked of a 3-node cluster at once left about 300 tasks "Starting"
on each node; after five minutes 404 ran, the host's load average was past
3000 and the manager's API answered "context deadline exceeded". With
``--pace N``, deploy asks for the workers at a window of N tasks per node
and raises their counts as tasks come up: at most that many tasks a node
between scheduled and running at any time. Each raise is ``docker service
scale``: running tasks are never touched, slots are handed out in order (so
every worker still gets its slot's port), and the last step deploys the
file as written, so the stack ends exactly as it says.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from docker import errors as docker_errors

from ..core.contract import service_role
from ..core.process import Say
from .client import scale_services
from .inspection import stack_filter

if TYPE_CHECKING:
    import docker

# Every state a task passes through between Swarm's scheduling and its
# container running (swarmkit's order; a loaded manager keeps tasks at
# "allocated", so leaving it out let twice the window through).
ON_THE_WAY = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
# One task list a poll: at 1000 tasks that is the manager's largest answer, so
# not every second.
POLL_SECONDS = 2.0


def worker_counts(doc: dict[str, Any]) -> dict[str, int]:
    """Each worker service's replicas as the file gives them, in file order.

    A count that is not a plain number (left to interpolation) is not paced.
    """
    counts = {}
    for name, service in (doc.get("services") or {}).items():
        if not isinstance(service, dict) or service_role(service) != "worker":
            continue
        replicas = (service.get("deploy") or {}).get("replicas", 1)
        if isinstance(replicas, int) and not isinstance(replicas, bool):
            counts[name] = replicas
    return counts


def next_step(asked: Mapping[str, int], wanted: Mapping[str, int], room: int) -> dict[str, int]:
    """The counts raised by at most ``room`` tasks in all, each service filled in order.

    Filling in order keeps the worker groups' shape (the first full before
    the next starts), so no slot is asked for and later given up.
    """
    step = {name: asked.get(name, 0) for name in wanted}
    for name, goal in wanted.items():
        if room <= 0:
            break
        more = min(goal - step[name], room)
        if more > 0:
            step[name] += more
            room -= more
    return step


def on_the_way(client: docker.DockerClient, stack: str) -> int:
    """Tasks of the stack Swarm wants running that are not running yet (one task list)."""
    tasks = client.api.tasks(filters={**stack_filter(stack), "desired-state": "running"})
    return sum(1 for t in tasks if (t.get("Status") or {}).get("State") in ON_THE_WAY)


def feed(
    client: docker.DockerClient,
    stack: str,
    asked: Mapping[str, int],
    wanted: Mapping[str, int],
    window: int,
    deadline: float,
    say: Say | None = None,
) -> dict[str, int]:
    """Raise the workers' counts from ``asked`` to ``wanted``, ``window`` on the way at most.

    Returns the counts asked for last; at ``deadline`` it stops raising them
    (the caller's deploy of the whole file then asks for the rest at once).
    A manager too busy to list the tasks ("context deadline exceeded") is
    asked again at the next poll: raising nothing is the safe answer.
    """
    current = dict(asked)
    total = sum(wanted.values())
    while current != dict(wanted) and time.monotonic() < deadline:
        try:
            room = window - on_the_way(client, stack)
        except docker_errors.APIError:
            room = 0
        if room > 0:
            step = next_step(current, wanted, room)
            changed = {f"{stack}_{n}": c for n, c in step.items() if c != current.get(n)}
            if changed:
                scale_services(changed)
                current = step
                if say is not None and sum(current.values()) == total:
                    say(f"all {total} workers asked for, at most {window} starting at once")
        time.sleep(POLL_SECONDS)
    return current
