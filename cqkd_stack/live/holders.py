"""``dht-check --kill-holders``: a value outlives its holders while its publisher lives.

Issue 17 asks that a value be republished to the current closest nodes, so
that losing every node that held it loses nothing while the publisher (or
any holder) still runs. This check proves it on a live stack:

1. Every running DHT task is asked for its node id (``nodectl status``), by
   ``docker exec`` through the engine of the swarm node it runs on: the
   engine we talk to for its own node, a node's ``org.cqkd.engine`` label
   for the others (as teardown finds them). Killing a container needs that
   engine anyway; a task on a node with no reachable engine is refused by
   name before anything is stored or killed.
2. A key is drawn whose k closest nodes do not include Alice: she then keeps
   the value only as its publisher, not in her store (she refuses a copy
   while she knows k nodes closer to it), so nothing she holds answers Bob;
   what brings it back after the kill is her republish (a copy she held
   would survive without it, and the check would prove less). In a stack
   of k + 1 DHT tasks or fewer every node is among the k closest to every
   key: the first republish of any holder gives Alice a copy too, and the
   report says so (``publisher_holds``).
3. Alice stores a random value under it (a Swarm job, as plain dht-check).
4. Every task is asked ``holds KEY`` (answered from its own store, no lookup);
   the holders other than Alice are killed with SIGKILL through their node's
   engine, each container first checked to be that very task of this stack.
   Swarm replaces each with a fresh, empty node. The tasks left are asked
   again, so the report says whether any copy but the publisher's survived.
5. Bob reads (a Swarm job) until the value comes back or the timeout passes.
   Bob may be among the killed: each read finds his current task.

The default timeout follows Alice's ``CQKD_REPUBLISH_INTERVAL`` (3600 s unless
the stack sets it): a republish is what brings the value back, and the
bootstrap's replacement is found again within BOOTSTRAP_CHECK_ROUNDS + 1 health rounds.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import CqkdError
from ..core.process import Progress
from ..node.config import BOOTSTRAP_CHECK_ROUNDS, DEFAULT_HEALTH_INTERVAL, K
from ..node.wire import digest
from .client import engine_client
from .dhtcheck import Control, Nodes, control_of, exec_nodectl, read_value, store_value
from .inspection import ENGINE_LABEL, env_of, nodes_that_run_tasks, port_rule, stack_filter

if TYPE_CHECKING:
    import docker

# What a node does unless its stack says otherwise (node/daemon.py's defaults).
DEFAULT_REPUBLISH_INTERVAL = 3600.0
# Beyond the republish interval: the health rounds in which a replaced
# bootstrap is noticed and joined again, and the republish lookup and store.
TIMEOUT_MARGIN = 30.0
# docker exec's run side by side, each a short nodectl: bounded so 1000
# tasks do not open 1000 connections to one engine at once.
PARALLEL_ASKS = 8
# A key's draw gives up after this many tries (each is one sha1).
DRAWS = 100_000
# Pause between two of Bob's reads that did not find the value.
READ_PAUSE = 1.0
# Kill rounds at most: each kills the holders the previous one's count missed.
KILL_ROUNDS = 3
# The labels Swarm puts on every task container: what makes it that task.
STACK_LABEL = "com.docker.stack.namespace"
SERVICE_LABEL = "com.docker.swarm.service.name"
TASK_LABEL = "com.docker.swarm.task.id"


@dataclass(frozen=True)
class DhtTask:
    """One running DHT task: its name as Docker shows it and where its socket is."""

    name: str  # "worker.3": the service without the stack prefix, and the slot
    service: str  # "<stack>_worker"
    task_id: str
    control: Control


@dataclass
class SurvivalCheck:
    """What ``dht-check --kill-holders`` found; ``ok`` only if Bob read the value again."""

    key: str
    value: str
    stored_by: str
    read_by: str
    stored_on: str
    tasks: int
    holders: list[str]
    killed: list[str]
    publisher_holds: bool
    republish_interval: float
    timeout: float
    # From the last kill to the end of the read that returned the value.
    seconds_to_read: float | None = None
    reads: int = 0
    last_error: str = ""
    ok: bool = False
    # Holders already gone when their turn to be killed came.
    gone: list[str] = field(default_factory=list)
    # Tasks other than the publisher's that held the value right after the
    # kill: empty means nothing alive but the publisher's record could bring it back.
    survivors_holding: list[str] = field(default_factory=list)
    # Tasks that got a copy after the kill (the publisher's republish, every
    # CQKD_REPUBLISH_INTERVAL, can land before the survivors are asked).
    stored_after_kill: list[str] = field(default_factory=list)


def closer_than(key: bytes, node_id: bytes, others: list[bytes]) -> int:
    """How many of ``others`` are closer to ``key`` than ``node_id`` (XOR distance)."""
    goal = int.from_bytes(key, "big")
    own = int.from_bytes(node_id, "big") ^ goal
    return sum(1 for other in others if int.from_bytes(other, "big") ^ goal < own)


def draw_key(publisher: bytes, others: list[bytes], draw: Callable[[], str] | None = None) -> str:
    """A fresh key the publisher is not among the k closest nodes to.

    With k or fewer other nodes, "not among the k closest" means the
    farthest of all: the publisher stores locally only when it is closer
    than the farthest node its lookup returned.
    """
    others = [other for other in others if other != publisher]
    if not others:
        raise CqkdError("the publisher is the only node of the DHT: nobody could hold a value")
    need = min(K, len(others))
    draw = draw or (lambda: f"cqkd-survival-{secrets.token_hex(6)}")
    for _ in range(DRAWS):
        key = draw()
        if closer_than(digest(key), publisher, others) >= need:
            return key
    raise CqkdError(f"no key found in {DRAWS} draws that the publisher would not hold")


def choose_victims(holds: dict[str, dict[str, Any]], publisher: str) -> tuple[list[str], list[str]]:
    """(holders, holders to kill) from each task's ``holds`` reply.

    ``publisher`` is the publisher's service (``alice``): its tasks are never
    killed, whatever they hold, since the check is that the value lives on
    while the publisher does. A reply that is not a clear yes holds nothing.
    """
    holders = sorted(
        (name for name, reply in holds.items() if reply.get("ok") and reply.get("holds") is True),
        key=task_order,
    )
    return holders, [name for name in holders if name.rpartition(".")[0] != publisher]


def stored_after(reply: dict[str, Any], moment: float) -> bool:
    """Whether a ``holds`` reply's copy was certainly stored after ``moment`` (monotonic).

    The node answered after the question left (``asked_at``), so a copy
    younger than ``asked_at - moment`` came after ``moment``. A reply that
    cannot say (an older node) counts as holding it from before: the strict
    reading, reported as a survivor.
    """
    age, asked_at = reply.get("stored_seconds_ago"), reply.get("asked_at")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (age, asked_at)):
        return False
    return age < asked_at - moment


def sort_survivors(
    after: dict[str, dict[str, Any]], publisher: str, killed_at: float
) -> tuple[list[str], list[str]]:
    """(holders from before the kill, holders whose copy came after it) of the tasks left.

    A republish every few seconds can store a copy between the count of
    holders and the kill: that holder was missed, and is killed in another
    round. A copy stored after the kill is the republish the check waits for.
    """
    holding = choose_victims(after, publisher)[0]
    late = [name for name in holding if stored_after(after[name], killed_at)]
    return [name for name in holding if name not in late], late


def task_order(name: str) -> tuple[str, int]:
    """``worker.10`` after ``worker.9``."""
    service, _, slot = name.rpartition(".")
    return (service, int(slot) if slot.isdigit() else 0)


def is_task_container(labels: dict[str, str], stack: str, task: DhtTask) -> bool:
    """Whether a container is ``task`` of ``stack`` by Swarm's own labels (never kill others)."""
    return (
        labels.get(STACK_LABEL) == stack
        and labels.get(SERVICE_LABEL) == task.service
        and labels.get(TASK_LABEL) == task.task_id
    )


def survival_timeout(env: dict[str, str]) -> tuple[float, float]:
    """(republish interval, default timeout) from the publisher's environment."""

    def number(name: str, default: float) -> float:
        try:
            return float(env.get(name) or default)
        except ValueError:
            return default

    interval = number("CQKD_REPUBLISH_INTERVAL", DEFAULT_REPUBLISH_INTERVAL)
    health = number("CQKD_HEALTH_INTERVAL", DEFAULT_HEALTH_INTERVAL)
    return interval, interval + (BOOTSTRAP_CHECK_ROUNDS + 1) * health + TIMEOUT_MARGIN


def dht_tasks(client: docker.DockerClient, stack: str) -> list[DhtTask]:
    """Every running task of the stack's DHT services (two list calls)."""
    services = [s for s in client.api.services(filters=stack_filter(stack)) if port_rule(s).dht]
    if not services:
        raise CqkdError(f"no stack named '{stack}' with DHT services is deployed")
    specs = {s["ID"]: s["Spec"] for s in services}
    tasks = client.api.tasks(filters={**stack_filter(stack), "desired-state": "running"})
    found = []
    for task in tasks:
        spec = specs.get(task.get("ServiceID", ""))
        if spec is None or task.get("Status", {}).get("State") != "running":
            continue
        short = str(spec["Name"]).removeprefix(f"{stack}_")
        found.append(
            DhtTask(
                name=f"{short}.{task.get('Slot')}",
                service=str(spec["Name"]),
                task_id=str(task["ID"]),
                control=control_of(spec, task),
            )
        )
    return sorted(found, key=lambda t: task_order(t.name))


@contextlib.contextmanager
def task_engines(
    client: docker.DockerClient, tasks: list[DhtTask], nodes: Nodes
) -> Iterator[dict[str, docker.DockerClient]]:
    """Node id → a client of that node's engine, for every node running one of ``tasks``.

    Refused, naming the tasks and what to add, when a node's engine cannot be
    reached: the check would neither find nor kill the holders there.
    """
    known = {node.node_id: node for node in nodes_that_run_tasks(client)}
    opened: dict[str, docker.DockerClient] = {}
    engines: dict[str, docker.DockerClient] = {}
    problems = []
    try:
        for node_id in sorted({t.control.node_id for t in tasks}):
            node = known.get(node_id)
            on = [t.name for t in tasks if t.control.node_id == node_id]
            more = " ..." if len(on) > 5 else ""
            where = f"{', '.join(on[:5])}{more} on node {nodes.name(node_id)}"
            if node is not None and node.local:
                engines[node_id] = client
            elif node is None:
                problems.append(f"{where}: the node is not ready and active")
            elif not node.engine:
                problems.append(
                    f"{where}: the node has no {ENGINE_LABEL} label, so its containers can "
                    "neither be asked nor killed from here (docker node update --label-add "
                    f"{ENGINE_LABEL}=tcp://ADDR:2375 {nodes.name(node_id)})"
                )
            else:
                try:
                    opened[node_id] = engines[node_id] = engine_client(node.engine)
                except CqkdError as exc:
                    problems.append(f"{where}: {exc.message}")
        if problems:
            raise CqkdError("--kill-holders cannot reach every task: " + "; ".join(problems))
        yield engines
    finally:
        for engine in opened.values():
            engine.close()


def ask_every(
    engines: dict[str, docker.DockerClient], tasks: list[DhtTask], *args: str
) -> dict[str, dict[str, Any]]:
    """Each task's nodectl reply to ``args``, by docker exec, side by side; errors name tasks."""

    def ask(task: DhtTask) -> dict[str, Any]:
        asked_at = time.monotonic()
        try:
            reply = exec_nodectl(engines[task.control.node_id], task.control, *args)
            # When the question left, on this host's clock: the reply's own
            # ages (``stored_seconds_ago``) then date what it says.
            reply["asked_at"] = asked_at
            return reply
        except CqkdError as exc:
            return {"ok": False, "error": exc.message}
        except Exception as exc:  # the SDK's NotFound, APIError: the task just ended, say
            return {"ok": False, "error": str(exc)}

    with ThreadPoolExecutor(max_workers=PARALLEL_ASKS) as pool:
        replies = dict(zip([t.name for t in tasks], pool.map(ask, tasks), strict=True))
    failed = [f"{name}: {r.get('error', r)}" for name, r in replies.items() if not r.get("ok")]
    if failed:
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise CqkdError(f"nodectl {args[0]} failed in {'; '.join(failed[:5])}{more}")
    return replies


def kill_task(engine: docker.DockerClient, stack: str, task: DhtTask) -> bool:
    """SIGKILL the task's container if it is still that task; False if it is already gone."""
    from docker.errors import NotFound

    try:
        found = engine.api.inspect_container(task.control.container_id)
    except NotFound:
        return False
    labels = (found.get("Config") or {}).get("Labels") or {}
    if not is_task_container(labels, stack, task):
        raise CqkdError(
            f"container {task.control.container_id[:12]} is not {task.name} of stack {stack} "
            "by its labels; not killing it"
        )
    try:
        engine.api.kill(task.control.container_id)
    except NotFound:
        return False
    return True


def check_survival(
    client: docker.DockerClient,
    stack: str,
    alice: str = "alice",
    bob: str = "bob",
    timeout: float = 0.0,
    progress: Progress | None = None,
) -> SurvivalCheck:
    """Store through Alice, kill every other holder, read through Bob until it is back."""
    report: Progress = progress or (lambda done, total, note: None)
    nodes = Nodes(client)
    tasks = dht_tasks(client, stack)
    publishers = [t for t in tasks if t.name.rpartition(".")[0] == alice]
    if not publishers:
        raise CqkdError(f"{stack}_{alice} has no running task; is the stack deployed?")
    spec = client.api.inspect_service(publishers[0].service)["Spec"]
    interval, default_timeout = survival_timeout(env_of(spec))
    timeout = timeout or default_timeout
    with task_engines(client, tasks, nodes) as engines:
        report(0, 0, f"asking {len(tasks)} DHT tasks for their node ids")
        ids = {
            name: bytes.fromhex(str(reply.get("node_id", "")))
            for name, reply in ask_every(engines, tasks, "status").items()
        }
        publisher = ids[publishers[0].name]
        key = draw_key(publisher, [i for n, i in ids.items() if n != publishers[0].name])
        value = secrets.token_hex(16)
        report(0, 0, f"{alice} stores {key}")
        stored_on = store_value(client, stack, alice, key, value)
        report(0, 0, f"asking {len(tasks)} DHT tasks whether they hold {key}")
        holds = ask_every(engines, tasks, "holds", key)
        holders, victims = choose_victims(holds, alice)
        check = SurvivalCheck(
            key=key,
            value=value,
            stored_by=alice,
            read_by=bob,
            stored_on=stored_on,
            tasks=len(tasks),
            holders=holders,
            killed=[],
            publisher_holds=any(holds[t.name].get("holds") is True for t in publishers),
            republish_interval=interval,
            timeout=timeout,
        )
        if not victims:
            check.last_error = f"no node but {alice} holds {key}: nothing to kill"
            return check
        by_name = {t.name: t for t in tasks}
        left = [t for t in tasks if t not in publishers]
        for round_ in range(1, KILL_ROUNDS + 1):
            report(0, 0, f"killing {len(victims)} holders")
            for name in victims:
                task = by_name[name]
                if kill_task(engines[task.control.node_id], stack, task):
                    check.killed.append(name)
                else:
                    check.gone.append(name)
            killed_at = time.monotonic()
            left = [t for t in left if t.name not in victims]
            if not left:
                break
            report(0, 0, f"asking the {len(left)} other tasks whether they hold {key}")
            after = ask_every(engines, left, "holds", key)
            missed, late = sort_survivors(after, alice, killed_at)
            check.survivors_holding, check.stored_after_kill = missed, late
            if not missed or round_ == KILL_ROUNDS:
                break
            # A copy from before the kill that the count did not see: a
            # republish landed between the count and the kill. Its holder is
            # one more to kill, and the wait starts again from that kill.
            check.holders = sorted(check.holders + missed, key=task_order)
            victims = missed
    return read_again(client, stack, check, killed_at, report)


def read_again(
    client: docker.DockerClient,
    stack: str,
    check: SurvivalCheck,
    killed_at: float,
    report: Progress,
) -> SurvivalCheck:
    """Bob reads until the value is back or ``check.timeout`` has passed since the kill."""
    total = int(check.timeout)
    while True:
        elapsed = time.monotonic() - killed_at
        note = f"{check.reads} reads" + (f", last: {check.last_error}" if check.last_error else "")
        report(int(elapsed), total, f"waiting for {check.read_by} to read it again ({note})")
        check.reads += 1
        try:
            got = read_value(client, stack, check.read_by, check.key)
        except CqkdError as exc:  # Bob being replaced, or not joined yet
            check.last_error = exc.message
        else:
            if got == check.value:
                check.seconds_to_read = round(time.monotonic() - killed_at, 2)
                check.ok = True
                check.last_error = ""
                report(total, total, f"{check.read_by} read it again")
                return check
            check.last_error = "not found" if got is None else f"read {got!r}"
        if time.monotonic() - killed_at + READ_PAUSE >= check.timeout:
            return check
        time.sleep(READ_PAUSE)
