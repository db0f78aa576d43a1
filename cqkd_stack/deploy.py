"""Changing a live swarm: deploy, scale, wait, tear down.

The Docker SDK has no stack support, so ``docker stack deploy`` and
``docker stack rm`` go through the docker CLI; everything that can be asked
of the API (tasks, containers, networks, scaling) goes through the SDK.
Waits poll real state with a deadline; none sleeps for a guessed duration.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import DEFAULT_NODE_IMAGE
from .core.contract import service_role
from .core.errors import CqkdError
from .core.process import Progress, Say, run
from .swarm import running_counts, stack_filter, stack_leftovers

if TYPE_CHECKING:
    import docker

POLL_SECONDS = 1.0
# Measured: `docker stack rm` of 1003 tasks at once killed containerd, then
# dockerd (the engine had to be restarted, 626 orphaned shims); 203 at once
# was fine. Larger stacks are stepped down this many tasks at a time first.
DRAIN_STEP = 100
# The stack's control volume outlives `docker stack rm`; a dht-check job's
# container being removed may hold it this long (its stop timeout is 1 s,
# a container that ignores SIGTERM takes 10 s).
CONTROL_VOLUME_SECONDS = 15.0


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        raise CqkdError("the docker CLI is not installed; `docker stack` needs it")
    return path


def stack_deploy(
    stack_file: Path, stack: str, resolve_image: str = "never", working_dir: Path | None = None
) -> None:
    """``docker stack deploy``; by default without registry lookups (images are copied).

    ``resolve_image="always"`` pins a registry image to its digest, so every
    node pulls the same bytes. The file goes in on standard input from
    ``working_dir``: Docker resolves env files and relative bind mounts from
    there, as it would from the folder of the file the operator named (which
    is what the linter read; ``stack_file`` is a temporary copy elsewhere).
    """
    run(
        [docker_cli(), "stack", "deploy", "--resolve-image", resolve_image, "-c", "-", stack],
        "docker stack deploy",
        input=stack_file.read_text(),
        cwd=working_dir,
    )


# How long a fresh stack's bootstrap node may take to run before the rest is
# deployed anyway (every node retries its bootstrap for ever, so this only
# costs speed, never correctness).
BOOTSTRAP_FIRST_SECONDS = 120.0


def bootstrap_only(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The stack with every service but its bootstrap nodes at 0 replicas; None if not apt.

    Swarm starts a stack's tasks in no particular order: in a 1003-task deploy
    the bootstrap task ran five minutes after the first workers, which all
    waited for it. Deploying the bootstrap first, alone (a few seconds),
    means every other node finds it at its first try. Stacks without a
    bootstrap service (a batch joining another stack's DHT) are deployed as
    they are.
    """
    services = doc.get("services")
    if not isinstance(services, dict):
        return None
    roles = {name: service_role(s) for name, s in services.items() if isinstance(s, dict)}
    if "bootstrap" not in roles.values() or set(roles.values()) == {"bootstrap"}:
        return None
    first = copy.deepcopy(doc)
    for name, role in roles.items():
        if role != "bootstrap":
            first["services"][name].setdefault("deploy", {})["replicas"] = 0
    return first


def deploy_bootstrap_first(
    client: docker.DockerClient,
    stack_file: Path,
    stack: str,
    say: Say | None = None,
    wait: float = BOOTSTRAP_FIRST_SECONDS,
    resolve_image: str = "never",
    working_dir: Path | None = None,
) -> None:
    """``docker stack deploy``, bootstrap nodes first when the stack is new (see bootstrap_only).

    A stack that already exists is deployed in one step: its bootstrap runs.
    The first phase is made from the file as written (not as interpolated),
    so that Docker interpolates it exactly once, as it does the whole file.
    ``working_dir``: where the stack's relative paths start (see stack_deploy).
    """
    if client.api.services(filters=stack_filter(stack)):
        stack_deploy(stack_file, stack, resolve_image, working_dir)
        return
    import yaml

    first = bootstrap_only(yaml.safe_load(stack_file.read_text()))
    if first is None:
        stack_deploy(stack_file, stack, resolve_image, working_dir)
        return
    phase = stack_file.with_name(f"{stack_file.stem}.bootstrap-first{stack_file.suffix}")
    phase.write_text(yaml.safe_dump(first, sort_keys=False))
    start = time.monotonic()
    stack_deploy(phase, stack, resolve_image, working_dir)
    names = [
        f"{stack}_{name}" for name, s in first["services"].items() if service_role(s) == "bootstrap"
    ]
    while not _all_running(client, names):
        if time.monotonic() - start >= wait:
            if say is not None:
                say(f"the bootstrap node is not running after {wait:.0f} s; deploying the rest")
            break
        time.sleep(POLL_SECONDS / 2)
    else:
        if say is not None:
            say(f"bootstrap running after {time.monotonic() - start:.1f} s; deploying the rest")
    stack_deploy(stack_file, stack, resolve_image, working_dir)


def _all_running(client: docker.DockerClient, services: list[str]) -> bool:
    """Each named service has a running task (one task list call for all of them)."""
    tasks = client.api.tasks(filters={"service": services, "desired-state": "running"})
    running = {t["ServiceID"] for t in tasks if t.get("Status", {}).get("State") == "running"}
    return len(running) >= len(services)


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


def _expected_replicas(client: docker.DockerClient, stack: str) -> dict[str, tuple[str, int]]:
    """Service ID → (name, replicas) as the swarm now wants them."""
    return _replicas_of(client.api.services(filters=stack_filter(stack)))


def _replicas_of(services: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    wanted = {}
    for service in services:
        replicated = service["Spec"].get("Mode", {}).get("Replicated")
        if replicated is not None:
            wanted[service["ID"]] = (service["Spec"]["Name"], int(replicated.get("Replicas", 0)))
    return wanted


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
        wanted = _expected_replicas(client, stack)
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


def wait_until_ready(
    client: docker.DockerClient,
    stack: str,
    timeout: float,
    progress: Progress | None = None,
    *,
    image: str = DEFAULT_NODE_IMAGE,
) -> WaitResult:
    """Wait until every replica runs and every DHT task answers the probe, joined.

    Each round lists services, tasks and nodes (one API call each) and
    probes, in one process, the running tasks not yet seen joined; when all
    are, one more round asks every task, so a task that died meanwhile is
    not reported as ready. Swarm's "running" and the
    DHT's "joined" are reported separately: the first is the engine's work,
    the second ours.
    """
    from .readiness import Prober, ProbeUnavailable, ignores_probe, targets_of
    from .swarm import task_rows

    start = time.monotonic()
    deadline = start + timeout
    joined_ids: set[str] = set()
    running_at: float | None = None
    early = ignores_probe(client, stack)
    with Prober(client, stack, image) as prober:
        while True:
            round_start = time.monotonic()
            services = client.api.services(filters=stack_filter(stack))
            wanted = _replicas_of(services)
            tasks = client.api.tasks(filters=stack_filter(stack))
            nodes = {n["ID"]: n for n in client.api.nodes()}
            total = sum(n for _, n in wanted.values())
            counts = running_counts(tasks)
            running = sum(min(counts[sid], n) for sid, (_, n) in wanted.items())
            if wanted and running == total and running_at is None:
                running_at = time.monotonic() - start
            rows = {r.task_id: r for r in task_rows(stack, services, tasks, nodes)}
            joined_ids &= rows.keys()
            dht_total = sum(n for sid, (_, n) in wanted.items() if _is_dht_service(services, sid))
            pending = [r for tid, r in rows.items() if tid not in joined_ids]
            confirm = running == total and len(joined_ids) >= dht_total
            asked = list(rows.values()) if confirm else pending
            answers: dict[str, Any] = {}
            probe_error = ""
            if running < total and not early:
                probe_error = "waiting for Swarm to run every task (a stock node keeps the probe)"
            else:
                try:
                    # Attaching a probe to the overlay goes through the same
                    # manager and agent that start the tasks: at 1003 tasks
                    # that attach timed out ("context deadline exceeded") and
                    # each failure leaked an attachment. Sharing a local
                    # task's network namespace needs neither, so until every
                    # task runs only that is tried; rounds then overlap the start.
                    answers = prober.round(targets_of(asked), attach=running == total).answers
                except ProbeUnavailable as exc:
                    probe_error = exc.message  # the next round tries again
            if probe_error:
                confirm = False
            for task_id, row in rows.items():
                (target,) = targets_of([row])
                if target.askable and target.ready(answers.get(target.text)):
                    joined_ids.add(task_id)
                elif confirm or task_id not in joined_ids:
                    joined_ids.discard(task_id)
            joined = min(len(joined_ids), dht_total)
            if progress is not None:
                progress(
                    joined,
                    dht_total,
                    f"{running}/{total} running, {joined}/{dht_total} joined",
                )
            if confirm and running == total and len(joined_ids) >= dht_total:
                now = time.monotonic() - start
                return WaitResult(now, joined, dht_total, running_at, now)
            if time.monotonic() >= deadline:
                error = _not_ready(stack, timeout, tasks, wanted, running, total, rows, joined_ids)
                if probe_error:
                    error.message += f"\n  the probe: {probe_error}"
                    error.args = (error.message,)
                raise error
            if not probe_error and running == total and len(joined_ids) >= dht_total:
                continue  # everything answered: confirm at once, no reason to wait
            pause = poll_interval(total, running) - (time.monotonic() - round_start)
            time.sleep(max(0.0, pause))


def _is_dht_service(services: list[dict[str, Any]], service_id: str) -> bool:
    from .swarm import is_dht, port_rule

    return any(s["ID"] == service_id and is_dht(port_rule(s)) for s in services)


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


def scale_service(client: docker.DockerClient, stack: str, service: str, replicas: int) -> None:
    """Scale one service of a stack without touching its running tasks.

    Not the SDK's ``Service.scale``: it resubmits the whole spec with fields
    normalised (an empty DNSConfig appears), Swarm sees a changed task
    template and replaces every task, a rolling restart of the whole DHT.
    ``docker service scale`` changes the replica count and nothing else.
    """
    name = f"{stack}_{service}"
    if not client.api.services(filters={"name": name}):
        raise CqkdError(f"stack '{stack}' has no service '{service}'")
    scale_to(name, replicas)


def scale_to(service: str, replicas: int) -> None:
    """``docker service scale`` of one service by its full name; returns at once."""
    run(
        [docker_cli(), "service", "scale", "--detach", f"{service}={replicas}"],
        f"docker service scale {service}={replicas}",
    )


@dataclass
class Teardown:
    seconds: float
    removed_services: list[str] = field(default_factory=list)
    left: dict[str, list[str]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not any(self.left.values())


def _running_containers(client: docker.DockerClient, service: str) -> int:
    label = f"com.docker.swarm.service.name={service}"
    return len(client.api.containers(filters={"label": label}))


def _drain(
    client: docker.DockerClient,
    stack: str,
    deadline: float,
    progress: Progress | None,
    step: int = DRAIN_STEP,
) -> None:
    """Step a large stack's services down before removal, ``step`` tasks at a time, pipelined.

    Stopping a thousand containers at once overwhelmed containerd on a small
    machine (it and dockerd vanished); two hundred at once did not. Waiting
    for each step to finish before the next left the engine idle between
    steps (each step takes seconds to start moving), so a new step is issued
    whenever no more than one step is still stopping: between ``step`` and
    ``2 * step`` containers are stopping at any time.
    Stacks of up to ``step`` tasks per service go straight to ``docker stack rm``.
    """
    wanted = _expected_replicas(client, stack)
    for name, original in sorted(wanted.values(), key=lambda item: -item[1]):
        target = original
        while time.monotonic() < deadline:
            # Containers on this engine: the storm that matters is per engine.
            running = _running_containers(client, name)
            if progress is not None:
                progress(original - running, original, f"stepping {name} down to {target}")
            if target <= step and running <= target:
                break
            if target > step and running - target <= step:
                target = max(target - step, step)
                scale_to(name, target)
                continue
            time.sleep(POLL_SECONDS / 2)


def _remove_orphans(client: docker.DockerClient, stack: str) -> None:
    """Remove the stack's stopped containers once its services are gone.

    Swarm removes a task's container itself, but one left behind when the
    engine crashed mid-teardown belongs to no task any more and would stay
    for ever. Only stopped containers with the stack's label are touched.
    """
    from docker.errors import APIError

    for status in ("exited", "created", "dead"):
        flt = {**stack_filter(stack), "status": status}
        for container in client.api.containers(all=True, filters=flt):
            # Already being removed by the engine, or gone: either is fine.
            with contextlib.suppress(APIError):
                client.api.remove_container(container["Id"], v=True)


def _network_still_in_use(stderr: str) -> bool:
    """The one failure of ``docker stack rm`` that is expected, not fatal.

    Services are removed, but their tasks still hold the network; the CLI
    then reports failure. Removing the network after the containers is our
    job, so this is progress, not an error.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and all(
        "is in use by task" in line or "failed to remove some resources" in line for line in lines
    )


def stack_rm(
    client: docker.DockerClient,
    stack: str,
    timeout: float,
    progress: Progress | None = None,
    drain_step: int = DRAIN_STEP,
) -> Teardown:
    """Remove a stack and wait until its containers and network are gone.

    ``docker stack rm`` returns while containers still stop, and its network
    removal then fails ("network ... is in use by task"); so wait for the
    containers, then remove what networks remain ourselves.
    """
    from .dhtcheck import remove_jobs
    from .distribute import other_engines
    from .readiness import remove_probes

    start = time.monotonic()
    # A probe an interrupted deploy left on the stack's network would keep
    # the network from being removed; a dht-check job an interrupted check
    # left would keep the control volume.
    remove_probes(client, stack)
    remove_jobs(client, stack)
    with other_engines(client) as others:
        return _remove(client, stack, others, start, timeout, progress, drain_step)


def _remove(
    client: docker.DockerClient,
    stack: str,
    others: list[docker.DockerClient],
    start: float,
    timeout: float,
    progress: Progress | None,
    drain_step: int,
) -> Teardown:
    """stack_rm's work, with the other nodes' engines open once for all of it."""
    from docker.errors import APIError, NotFound

    from .dhtcheck import remove_control_volumes

    before = stack_leftovers(client, stack, others)
    if not any(before.values()):
        raise CqkdError(f"no stack named '{stack}' is deployed; nothing to remove", exit_code=1)
    _drain(client, stack, start + timeout, progress, drain_step)
    done = run([docker_cli(), "stack", "rm", stack], "docker stack rm", check=False)
    if done.returncode != 0 and not _network_still_in_use(done.stderr):
        raise CqkdError(f"docker stack rm failed: {done.stderr.strip()}")
    total = len(before["containers"]) or 1
    deadline = start + timeout
    left = stack_leftovers(client, stack, others)
    while time.monotonic() < deadline:
        left = stack_leftovers(client, stack, others)
        gone = total - len(left["containers"])
        if progress is not None:
            progress(max(gone, 0), total, f"{len(left['containers'])} containers stopping")
        if left["containers"] and not left["services"]:
            _remove_orphans(client, stack)
        if not left["containers"] and not left["services"]:
            for name in left["networks"]:
                try:
                    client.networks.get(name).remove()
                except NotFound:
                    pass
                except APIError:
                    break  # still in use: a task is being cleaned up; look again
            left = stack_leftovers(client, stack, others)
            if not any(left.values()):
                remove_control_volumes(client, stack, others, wait=CONTROL_VOLUME_SECONDS)
                break
        time.sleep(POLL_SECONDS)
    return Teardown(time.monotonic() - start, before["services"], left)
