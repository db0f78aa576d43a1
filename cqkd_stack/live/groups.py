"""A live stack's worker groups, and scaling its workers across them.

Rendering splits more workers than the range holds into groups (see
targets/swarm): ``worker``, ``worker-2``..., each with slots 1..size and so
the same ports, each task at an address of its own. Scaling keeps that
shape. The count fills the groups in order (``worker_groups``), so only the
last group's tasks change and every other task keeps its slot and port. A
group the count needs and the stack lacks is created from the first
group's spec, as deploy would have rendered it; a group no longer needed
(its tasks all stopped by the smaller count) is removed, as a stack file
keeps no worker service of 0 replicas: the stack is then the one deploy
renders for that count.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.contract import GROUP_LABEL, group_service, worker_groups
from ..core.process import run
from ..targets.swarm import group_size
from .client import docker_cli
from .inspection import port_rule, service_document, stack_filter

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class GroupResize:
    """What scaling a worker service across its groups changes."""

    stack: str
    # The template's name, which the first group keeps.
    service: str
    # Slots a group holds (its port range).
    size: int
    # Replicas of every group after the scale, by short service name, in
    # group order; 0 for a group removed.
    counts: dict[str, int]
    # Replicas of every group before it (0 for a group not created yet).
    before: dict[str, int]
    # Groups as they will be where that differs from the swarm (created or
    # given their group label), by short name: what the checks read.
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Of those, the ones to create.
    create: tuple[str, ...] = ()
    # The first group was deployed within one range and carries no group label.
    label_first: bool = False

    @property
    def remove(self) -> tuple[str, ...]:
        """Groups the smaller count empties: their services go."""
        return tuple(n for n, c in self.counts.items() if c == 0 and self.before[n])

    @property
    def kept(self) -> dict[str, int]:
        """Replicas of each group left after the scale."""
        return {n: c for n, c in self.counts.items() if c}


def live_groups(
    services: list[dict[str, Any]], stack: str, service: str
) -> dict[int, dict[str, Any]]:
    """Group number -> live service: ``service`` itself is group 1, ``service-k``
    (labelled with k) group k. A service merely named like a group is not one."""
    first = f"{stack}_{service}"
    found: dict[int, dict[str, Any]] = {}
    for live in services:
        name = live["Spec"]["Name"]
        label = (live["Spec"].get("Labels") or {}).get(GROUP_LABEL)
        if name == first:
            found[1] = live
        elif name.startswith(f"{first}-") and label is not None and label.isdigit():
            group = int(label)
            if group >= 2 and name == f"{stack}_{group_service(service, group)}":
                found[group] = live
    return found


def new_group(
    first: dict[str, Any], stack: str, service: str, group: int, replicas: int
) -> dict[str, Any]:
    """Group ``group``'s service, made from the first group's spec as rendering makes it.

    Same image, environment, network and ports (its own slots 1..size); its
    own name, group label, host name and network alias.
    """
    spec = deepcopy(first["Spec"])
    short = group_service(service, group)
    spec["Name"] = f"{stack}_{short}"
    spec["Labels"] = {**(spec.get("Labels") or {}), GROUP_LABEL: str(group)}
    spec["Mode"] = {"Replicated": {"Replicas": replicas}}
    template = spec.setdefault("TaskTemplate", {})
    container = template.setdefault("ContainerSpec", {})
    hostname = container.get("Hostname")
    if isinstance(hostname, str):
        container["Hostname"] = hostname.replace(service, short, 1)
    for network in template.get("Networks") or []:
        if network.get("Aliases"):
            network["Aliases"] = [short if a == service else a for a in network["Aliases"]]
    return {"ID": "", "Spec": spec}


def plan_groups(
    client: docker.DockerClient, stack: str, service: str, replicas: int
) -> GroupResize | None:
    """How ``replicas`` workers spread over the groups; None where a plain scale applies.

    A plain scale: a service that is not a stack's workers with a port
    range (BASE_PORT to PORT_RANGE_END), or one group only and a count its
    range holds.
    """
    groups = live_groups(client.api.services(filters=stack_filter(stack)), stack, service)
    first = groups.get(1)
    if first is None or port_rule(first).role != "worker" or port_rule(first).replicas is None:
        return None
    env = service_document(first)["environment"]
    if not all(env.get(k, "").strip().isdigit() for k in ("BASE_PORT", "PORT_RANGE_END")):
        return None
    size = group_size({"environment": env})
    if size < 1:
        return None
    wanted = worker_groups(replicas, size)
    if len(wanted) == 1 and max(groups) == 1:
        return None
    wanted += [0] * (max(groups) - len(wanted))
    names = [group_service(service, g) for g in range(1, len(wanted) + 1)]
    counts = dict(zip(names, wanted, strict=True))
    before = {
        name: (port_rule(groups[g]).replicas or 0) if g in groups else 0
        for g, name in enumerate(names, 1)
    }
    shapes: dict[str, dict[str, Any]] = {}
    label_first = GROUP_LABEL not in (first["Spec"].get("Labels") or {})
    if label_first:
        labelled = deepcopy(first)
        labelled["Spec"]["Labels"] = {**(labelled["Spec"].get("Labels") or {}), GROUP_LABEL: "1"}
        shapes[service] = labelled
    create = tuple(name for g, name in enumerate(names, 1) if g not in groups)
    for g, name in enumerate(names, 1):
        if name in create:
            shapes[name] = new_group(first, stack, service, g, counts[name])
    return GroupResize(stack, service, size, counts, before, shapes, create, label_first)


def apply_groups(client: docker.DockerClient, resize: GroupResize) -> None:
    """Label, create, scale and remove the groups; returns at once (the caller waits).

    The label goes on the service, not its task template, so no task is
    replaced; creating a service and ``docker service scale`` start only
    the new tasks; removing an emptied group stops only its own.
    """
    first = f"{resize.stack}_{resize.service}"
    if resize.label_first:
        run(
            [
                docker_cli(),
                "service",
                "update",
                "--detach",
                "--label-add",
                f"{GROUP_LABEL}=1",
                first,
            ],
            f"docker service update --label-add {GROUP_LABEL}=1 {first}",
        )
    for name in resize.create:
        spec = resize.shapes[name]["Spec"]
        client.api.create_service(
            task_template=spec["TaskTemplate"],
            name=spec["Name"],
            labels=spec["Labels"],
            mode=spec["Mode"],
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )
    changed = [
        f"{resize.stack}_{name}={count}"
        for name, count in resize.counts.items()
        if count and name not in resize.create and count != resize.before[name]
    ]
    if changed:
        run(
            [docker_cli(), "service", "scale", "--detach", *changed],
            f"docker service scale {' '.join(changed)}",
        )
    for name in resize.remove:
        client.api.remove_service(f"{resize.stack}_{name}")
