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

On the host network a port is taken on the whole node, so each group is
rendered held to the nodes whose label ``group_node_label(stack)`` has its
number; ``place_groups`` gives each group a node of its own before the
stack is deployed, and teardown takes the labels off again.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.contract import GROUP_LABEL, group_node_label, group_service, worker_groups
from ..core.errors import CqkdError
from ..core.process import Say, run
from ..lint.rules import node_pin
from ..targets.swarm import group_size
from .client import docker_cli, scale_services
from .inspection import (
    NetworkNames,
    nodes_that_run_tasks,
    port_rule,
    service_document,
    stack_filter,
)

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
    # The workers bind their ports on the nodes (each group held to a node of its own).
    on_host: bool = False

    @property
    def remove(self) -> tuple[str, ...]:
        """Groups the smaller count empties: their services go."""
        return tuple(n for n, c in self.counts.items() if c == 0 and self.before[n])

    @property
    def kept(self) -> dict[str, int]:
        """Replicas of each group left after the scale."""
        return {n: c for n, c in self.counts.items() if c}


def plain_number(label: Any) -> bool:
    """A label or variable that reads as a small number: ASCII digits, six at most.

    Labels and environments are anyone's to set; ``"²".isdigit()`` is true
    and ``int`` of 5000 digits raises, so neither reaches ``int``.
    """
    return isinstance(label, str) and 0 < len(label) <= 6 and label.isascii() and label.isdigit()


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
        elif name.startswith(f"{first}-") and plain_number(label):
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
    range (BASE_PORT to PORT_RANGE_END), a group other than the first, or
    one group only and a count its range holds.
    """
    groups = live_groups(client.api.services(filters=stack_filter(stack)), stack, service)
    first = groups.get(1)
    if first is None or port_rule(first).role != "worker" or port_rule(first).replicas is None:
        return None
    if (first["Spec"].get("Labels") or {}).get(GROUP_LABEL, "1") != "1":
        return None  # one group named alone (worker-2) scales within its range
    env = service_document(first)["environment"]
    offset = env.get("PORT_OFFSET", "").strip() or "0"
    ends = (env.get("BASE_PORT", "").strip(), env.get("PORT_RANGE_END", "").strip(), offset)
    if not all(plain_number(v) for v in ends):
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
    on_host = "host" in NetworkNames(client).of_service(first)
    return GroupResize(stack, service, size, counts, before, shapes, create, label_first, on_host)


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
    scale_services(
        {
            f"{resize.stack}_{name}": count
            for name, count in resize.counts.items()
            if count and name not in resize.create and count != resize.before[name]
        }
    )
    for name in resize.remove:
        client.api.remove_service(f"{resize.stack}_{name}")


@dataclass(frozen=True)
class GroupNode:
    """The node a host-network worker group is held to, and whether it has the label yet."""

    group: str
    node_id: str
    hostname: str
    labelled: bool


def pinned_groups(doc: dict[str, Any], stack: str) -> list[str]:
    """The group numbers a stack file holds to nodes by the stack's group label, in order."""
    attribute = f"node.labels.{group_node_label(stack)}"
    found = set()
    for service in (doc.get("services") or {}).values():
        pin = node_pin((service or {}).get("deploy") or {}) if isinstance(service, dict) else None
        if pin is not None and pin[0] == attribute:
            found.add(pin[1])
    return sorted(found, key=lambda g: (len(g), g))


def group_nodes(client: docker.DockerClient, stack: str, groups: list[str]) -> list[GroupNode]:
    """One node for each group: the node that has its label already, else the next free one.

    A node is free when it has no label for this stack, or one for a group
    the stack no longer has; this engine's node is taken first. Read only.
    The room check refused more groups than nodes before this runs; a node
    lost since then is named.
    """
    label = group_node_label(stack)
    nodes = nodes_that_run_tasks(client)
    specs = {n["ID"]: n["Spec"] for n in client.api.nodes()}
    labels = {n.node_id: specs.get(n.node_id, {}).get("Labels") or {} for n in nodes}
    holder = {labels[n.node_id][label]: n for n in nodes if label in labels[n.node_id]}
    placed = {
        g: GroupNode(g, holder[g].node_id, holder[g].hostname, True) for g in groups if g in holder
    }
    taken = {p.node_id for p in placed.values()}
    free = [n for n in nodes if n.node_id not in taken]
    for group in groups:
        if group in placed:
            continue
        if not free:
            raise CqkdError(
                f"{len(groups)} worker groups on the host network each need a node of "
                f"their own; the swarm has {len(nodes)} that run tasks: add nodes, or "
                "deploy fewer workers"
            )
        node = free.pop(0)
        placed[group] = GroupNode(group, node.node_id, node.hostname, False)
    return [placed[g] for g in groups]


def place_groups(
    client: docker.DockerClient, stack: str, groups: list[str], say: Say
) -> list[GroupNode]:
    """Label one node per group (``group_nodes``); a node's other labels are kept."""
    label = group_node_label(stack)
    chosen = group_nodes(client, stack, groups)
    for placed in chosen:
        if placed.labelled:
            continue
        node = client.api.inspect_node(placed.node_id)
        spec = node["Spec"]
        spec["Labels"] = {**(spec.get("Labels") or {}), label: placed.group}
        client.api.update_node(placed.node_id, node["Version"]["Index"], spec)
        say(f"worker group {placed.group} held to node {placed.hostname}: {label}={placed.group}")
    return chosen


def unplace_groups(client: docker.DockerClient, stack: str) -> list[str]:
    """Take the stack's group label off every node; the nodes it was on."""
    label = group_node_label(stack)
    cleared = []
    for node in client.api.nodes():
        spec = node["Spec"]
        if label not in (spec.get("Labels") or {}):
            continue
        spec["Labels"] = {k: v for k, v in spec["Labels"].items() if k != label}
        client.api.update_node(node["ID"], node["Version"]["Index"], spec)
        cleared.append(node.get("Description", {}).get("Hostname", node["ID"]))
    return cleared
