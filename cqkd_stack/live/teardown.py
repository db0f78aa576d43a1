"""Taking a live stack down: stepped, pipelined, until no container, network or volume is left.

``docker stack rm`` goes through the docker CLI (the SDK has no stacks) and
returns while containers still stop; this waits for them on every node's
engine, removes what networks remain, and the stack's control volume.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.errors import CqkdError
from ..core.process import Progress, run
from .client import docker_cli, scale_services
from .controlkey import remove_control_key
from .dhtcheck import remove_control_volumes, remove_jobs
from .distribution import other_engines
from .groups import unplace_groups
from .inspection import expected_replicas, stack_filter, stack_leftovers
from .readiness import remove_probes
from .waits import POLL_SECONDS

if TYPE_CHECKING:
    import docker

# Measured: `docker stack rm` of 1003 tasks at once killed containerd, then
# dockerd (the engine had to be restarted, 626 orphaned shims); 203 at once
# was fine. Larger stacks are stepped down this many tasks at a time first.
DRAIN_STEP = 100


# The stack's control volume outlives `docker stack rm`; a dht-check job's
# container being removed may hold it this long (its stop timeout is 1 s,
# a container that ignores SIGTERM takes 10 s).
CONTROL_VOLUME_SECONDS = 15.0


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
    wanted = expected_replicas(client, stack)
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
                scale_services({name: target})
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
                # docker stack rm removes it too (it has the namespace label);
                # this covers a stack rm that failed half-way.
                remove_control_key(client, stack)
                # Host-network worker groups' node labels (deploy set them).
                unplace_groups(client, stack)
                break
        time.sleep(POLL_SECONDS)
    return Teardown(time.monotonic() - start, before["services"], left)
