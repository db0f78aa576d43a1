"""Read-only questions to a live swarm: which tasks a stack has, where, on which port.

One API call per kind of object (services, tasks, nodes), never one per task:
the port map must stay fast at 1000 tasks. Ports are derived from each
service's own environment with the policy's formula, the same inputs the
in-container resolver uses.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.contract import (
    DEFAULT_SUBNET_BASE,
    DHT_NETWORK,
    STACK_LABEL,
    SUBNET_POOL_PREFIX,
    TakenSubnet,
    is_dht,
    key_values,
    resolve_slot,
    role_of,
    subnet_for,
)
from ..core.errors import CqkdError
from ..core.policy import Policy, PortRange
from ..core.results import Problem, Results, json_path
from ..lint.rules import ServicePorts, check_service, collision_problems
from ..node.resolver import ResolverError
from ..targets.swarm import capacity_problems, room_problems

if TYPE_CHECKING:
    import docker


# A node's engine, for what the manager's API cannot do there (load an image,
# list its containers, remove its local volumes): docs/operations.md.
ENGINE_LABEL = "org.cqkd.engine"


@dataclass(frozen=True)
class SwarmNode:
    """A node that may run tasks: where it is, and how to reach its engine."""

    node_id: str
    hostname: str
    address: str
    # The node's org.cqkd.engine label; "" when it has none.
    engine: str
    # The node of the engine we talk to (it needs no label).
    local: bool


def nodes_that_run_tasks(client: docker.DockerClient) -> list[SwarmNode]:
    """Ready nodes whose availability is ``active`` (drained and down ones get no tasks).

    This engine's node first, then by host name.
    """
    own = client.info().get("Swarm") or {}
    found = []
    for node in client.api.nodes():
        spec, status = node.get("Spec") or {}, node.get("Status") or {}
        if status.get("State") != "ready" or spec.get("Availability") != "active":
            continue
        local = node["ID"] == own.get("NodeID")
        found.append(
            SwarmNode(
                node_id=node["ID"],
                hostname=(node.get("Description") or {}).get("Hostname", node["ID"]),
                address=(own.get("NodeAddr") if local else status.get("Addr")) or "",
                engine=(spec.get("Labels") or {}).get(ENGINE_LABEL, ""),
                local=local,
            )
        )
    return sorted(found, key=lambda n: (not n.local, n.hostname))


def bootstrap_node(client: docker.DockerClient) -> tuple[str | None, str]:
    """(node id, address) for a host-network bootstrap: this manager, if it takes tasks.

    A drained manager runs nothing, so then the first active, ready node
    (by host name) hosts it. A swarm without such a node says 127.0.0.1.
    """
    nodes = nodes_that_run_tasks(client)
    if not nodes:
        return None, (client.info().get("Swarm") or {}).get("NodeAddr") or "127.0.0.1"
    return nodes[0].node_id, nodes[0].address or "127.0.0.1"


def bootstrap_address(client: docker.DockerClient, stack: str) -> str | None:
    """The address of the node running the stack's bootstrap task, if one runs."""
    for service in client.api.services(filters=stack_filter(stack)):
        if port_rule(service).role != "bootstrap":
            continue
        tasks = client.api.tasks(filters={"service": service["ID"], "desired-state": "running"})
        for task in tasks:
            if task.get("NodeID"):
                node = client.api.inspect_node(task["NodeID"])
                return (node.get("Status") or {}).get("Addr") or None
    return None


def stack_filter(stack: str) -> dict[str, str]:
    return {"label": f"{STACK_LABEL}={stack}"}


def stack_exists(client: docker.DockerClient, stack: str) -> bool:
    """Has the stack a service on the swarm (what ``docker stack ls`` would list)?"""
    return bool(client.api.services(filters=stack_filter(stack)))


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    """A service spec's container environment as a mapping."""
    container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    return key_values(container.get("Env"))


@dataclass(frozen=True)
class ServicePortRule:
    """How one live service turns a slot into a port: its tasks' own resolver, asked here."""

    service: str
    role: str | None
    env: dict[str, str]
    replicas: int | None
    protocol: str
    dht: bool

    def port(self, slot: int | None) -> int | None:
        """The port task ``slot`` resolves to; None if it cannot (its task fails too)."""
        try:
            return resolve_slot(self.env, slot or 1).port
        except ResolverError:
            return None

    def ports(self) -> PortRange | None:
        first, last = self.port(1), self.port(self.replicas or 1)
        return PortRange(first, last) if first is not None and last is not None else None


def port_rule(service: dict[str, Any]) -> ServicePortRule:
    spec = service["Spec"]
    env = env_of(spec)
    labels = spec.get("Labels") or {}
    replicated = spec.get("Mode", {}).get("Replicated")
    return ServicePortRule(
        service=spec["Name"],
        role=role_of(env, labels),
        env=env,
        replicas=replicated.get("Replicas") if replicated else None,
        protocol=(env.get("PORT_PROTOCOL") or "udp").strip().lower(),
        dht=is_dht(env, labels),
    )


def service_document(service: dict[str, Any], replicas: int | None = None) -> dict[str, Any]:
    """A live service as the stack file entry that would create it, for the validator.

    Scaling and deploying next to live stacks are checked by the same rules
    as a stack file; this is the bridge from a service spec to those rules.
    """
    spec = service["Spec"]
    placement = spec.get("TaskTemplate", {}).get("Placement") or {}
    replicated = spec.get("Mode", {}).get("Replicated")
    deploy: dict[str, Any] = {
        "mode": "replicated" if replicated is not None else "global",
        "labels": spec.get("Labels") or {},
        "endpoint_mode": (spec.get("EndpointSpec") or {}).get("Mode", "vip"),
    }
    if replicated is not None:
        deploy["replicas"] = replicas if replicas is not None else replicated.get("Replicas", 1)
    if placement.get("MaxReplicas"):
        deploy["placement"] = {"max_replicas_per_node": placement["MaxReplicas"]}
    if placement.get("Constraints"):
        deploy.setdefault("placement", {})["constraints"] = list(placement["Constraints"])
    ports = [
        {
            "target": p.get("TargetPort"),
            "published": p.get("PublishedPort"),
            "protocol": p.get("Protocol", "tcp"),
            "mode": p.get("PublishMode", "ingress"),
        }
        for p in (spec.get("EndpointSpec") or {}).get("Ports") or []
    ]
    return {"environment": env_of(spec), "deploy": deploy, "ports": ports}


@dataclass
class TaskPort:
    """One row of the port map."""

    service: str
    role: str | None
    slot: int | None
    task: str
    task_id: str
    node: str
    address: str | None
    port: int | None
    state: str
    error: str
    container_id: str | None
    duplicate: bool = False


@dataclass
class RoleUse:
    role: str
    range: str
    used: int
    total: int
    free: int


@dataclass
class PortMap:
    stack: str
    tasks: list[TaskPort] = field(default_factory=list)
    missing_slots: dict[str, list[int]] = field(default_factory=dict)
    duplicate_ports: list[int] = field(default_factory=list)
    roles: list[RoleUse] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.missing_slots and not self.duplicate_ports

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"healthy": self.healthy}


def _address(task: dict[str, Any], network_name: str, node_addr: str | None) -> str | None:
    """The task's address on the DHT network; on the host network, its node's address.

    The stack's own ``<stack>_dht`` first; else the first other network it is
    attached to (a batch joins another stack's network, a hand-written stack
    may name its network freely); ingress never carries DHT traffic.
    """
    attachments = task.get("NetworksAttachments") or []
    ranked = sorted(
        attachments,
        key=lambda a: a.get("Network", {}).get("Spec", {}).get("Name") != network_name,
    )
    for attachment in ranked:
        spec = attachment.get("Network", {}).get("Spec", {})
        addresses = attachment.get("Addresses") or []
        # Host networking shows up as an attachment without addresses.
        if spec.get("Ingress") or spec.get("Name") == "ingress" or not addresses:
            continue
        return addresses[0].split("/")[0]
    return node_addr


def port_map(client: docker.DockerClient, stack: str, policy: Policy | None = None) -> PortMap:
    """Slot, task, node, address and port of every current task of a stack."""
    api = client.api
    services = api.services(filters=stack_filter(stack))
    if not services:
        raise CqkdError(f"no stack named '{stack}' is deployed (no service has that namespace)")
    tasks = api.tasks(filters={**stack_filter(stack), "desired-state": "running"})
    nodes = {n["ID"]: n for n in api.nodes()}
    result = build_port_map(stack, services, tasks, nodes, policy)
    if result.missing_slots:
        # Between two attempts a failing slot has no task Swarm wants running:
        # show its last attempt (failed, and why) rather than nothing.
        ended = api.tasks(filters={**stack_filter(stack), "service": list(result.missing_slots)})
        result.tasks += last_attempts(stack, services, ended, nodes, result.missing_slots)
    return result


def last_attempts(
    stack: str,
    services: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
    missing: dict[str, list[int]],
) -> list[TaskPort]:
    """The newest ended task of each missing slot, as a row of the port map."""
    names = {s["ID"]: s["Spec"]["Name"] for s in services}
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for task in tasks:
        slot = task.get("Slot")
        if task.get("DesiredState") == "running" or slot not in missing.get(
            names.get(task["ServiceID"], ""), []
        ):
            continue
        key = (task["ServiceID"], slot)
        if key not in newest or task["Version"]["Index"] > newest[key]["Version"]["Index"]:
            newest[key] = task
    return task_rows(stack, services, list(newest.values()), nodes, ended=True)


def task_rows(
    stack: str,
    services: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
    ended: bool = False,
) -> list[TaskPort]:
    """One row per task that Swarm wants running (or, ``ended``, per given task), DHT only."""
    rules = {s["ID"]: port_rule(s) for s in services}
    network_name = f"{stack}_{DHT_NETWORK}"
    rows = []
    for task in tasks:
        if not ended and task.get("DesiredState", "running") != "running":
            continue
        rule = rules.get(task["ServiceID"])
        if rule is None or not rule.dht:
            continue
        node = nodes.get(task.get("NodeID", ""), {})
        status = task.get("Status", {})
        slot = task.get("Slot")
        rows.append(
            TaskPort(
                service=rule.service,
                role=rule.role,
                slot=slot,
                task=f"{rule.service}.{slot}",
                task_id=task["ID"],
                node=node.get("Description", {}).get("Hostname", task.get("NodeID", "")),
                address=_address(task, network_name, node.get("Status", {}).get("Addr")),
                port=rule.port(slot),
                state=status.get("State", "unknown"),
                error=status.get("Err", ""),
                container_id=status.get("ContainerStatus", {}).get("ContainerID"),
            )
        )
    return rows


def held_twice(rows: Iterable[TaskPort]) -> list[int]:
    """Ports two current tasks hold at once: at one address, or for one service.

    A port is an endpoint only with its address: worker groups on an overlay
    repeat each other's ports at addresses of their own. Two tasks of one
    service on one port are one slot held twice (whatever their addresses);
    on the host network a task's address is its node's, so two services on
    one node's port are caught by the first count.
    """
    at_address = Counter((t.address, t.port) for t in rows if t.port is not None and t.address)
    in_service = Counter((t.service, t.port) for t in rows if t.port is not None)
    twice = {port for (_, port), n in (at_address + in_service).items() if n > 1}
    return sorted(p for p in twice if p is not None)


def build_port_map(
    stack: str,
    services: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
    policy: Policy | None = None,
) -> PortMap:
    """The port map from already fetched services, tasks and nodes (pure)."""
    rules = {s["ID"]: port_rule(s) for s in services}
    result = PortMap(stack=stack, tasks=task_rows(stack, services, tasks, nodes))
    result.tasks.sort(key=lambda t: (t.port is None, t.port or 0, t.service, t.slot or 0))

    result.duplicate_ports = held_twice(result.tasks)
    for row in result.tasks:
        row.duplicate = row.port in result.duplicate_ports

    present: dict[str, set[int]] = defaultdict(set)
    for row in result.tasks:
        if row.slot is not None:
            present[row.service].add(row.slot)
    for rule in rules.values():
        if rule.dht and rule.replicas:
            missing = sorted(set(range(1, rule.replicas + 1)) - present[rule.service])
            if missing:
                result.missing_slots[rule.service] = missing

    used = {t.port for t in result.tasks if t.port is not None}
    for name, rng in (policy.roles if policy is not None else {}).items():
        in_use = sum(1 for p in used if p in rng)
        result.roles.append(RoleUse(name, str(rng), in_use, len(rng), len(rng) - in_use))
    return result


class NetworkNames:
    """Network IDs in service specs → names, with one list call.

    Swarm refers to the host network by a cluster-level ID that the local
    network list does not show; such IDs are inspected once each.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.by_id = {n["Id"]: n["Name"] for n in client.api.networks()}

    def name(self, network_id: str) -> str:
        if network_id not in self.by_id:
            from docker.errors import NotFound

            try:
                self.by_id[network_id] = self.client.api.inspect_network(network_id)["Name"]
            except NotFound:
                self.by_id[network_id] = network_id
        return self.by_id[network_id]

    def of_service(self, service: dict[str, Any]) -> set[str]:
        attached = service["Spec"].get("TaskTemplate", {}).get("Networks") or []
        return {self.name(n["Target"]) for n in attached if n.get("Target")}


def stack_network_names(doc: dict[str, Any], stack: str) -> set[str]:
    """The engine's names for the networks a stack file's services join.

    ``docker stack deploy`` prefixes a stack's own networks with the stack
    name; external ones keep their name (``host`` for host networking).
    """
    declared = doc.get("networks") or {}
    names = set()
    for service in (doc.get("services") or {}).values():
        joined = service.get("networks") or ["default"]
        for key in joined:
            network = declared.get(key) or {}
            if network.get("external"):
                names.add(network.get("name", key))
            else:
                names.add(network.get("name", f"{stack}_{key}"))
    return names


def _on_host(names: NetworkNames, service: dict[str, Any]) -> bool:
    return "host" in names.of_service(service)


def live_claims(
    client: docker.DockerClient,
    policy: Policy,
    exclude_stack: str | None = None,
    networks: set[str] | None = None,
    names: NetworkNames | None = None,
) -> list[ServicePorts]:
    """Ports already held by services of other stacks, as the validator sees them.

    Two stacks on separate overlay networks may both use 7000-7999: their
    tasks never share a network namespace. Sharing one (a batch joining a
    DHT's network, or host networking) makes equal DHT ports a real
    collision; published ports collide whatever the networks (the routing
    mesh is cluster-wide). ``networks=None`` counts every live service.
    """
    names = names or NetworkNames(client)
    claims = []
    for service in client.api.services():
        spec = service["Spec"]
        stack = (spec.get("Labels") or {}).get(STACK_LABEL)
        if stack is None or stack == exclude_stack:
            continue
        shares = networks is None or bool(names.of_service(service) & networks)
        _, found = check_service(
            f"stack {stack}",
            spec["Name"],
            service_document(service),
            policy,
            _on_host(names, service),
        )
        claims += [c for c in found if c.published or shares]
    return claims


def scale_problems(
    client: docker.DockerClient, stack: str, service: str, replicas: int, policy: Policy
) -> Results:
    """Why scaling a service to ``replicas`` would break the port contract, if it would."""
    return resize_problems(client, stack, {service: replicas}, policy)


def resize_problems(
    client: docker.DockerClient,
    stack: str,
    wanted: Mapping[str, int],
    policy: Policy,
    shapes: Mapping[str, dict[str, Any]] | None = None,
) -> Results:
    """Why giving each service in ``wanted`` its count would break the port contract.

    The validator's own rules, on the live services as they would be after
    scaling (``shapes``: by short name, services as they will be where that
    differs from the swarm, as service objects: a worker group to create,
    the first group given its group label): the new
    slots resolve inside the role's range and avoid blocked ports and other
    services' ports, the network's subnet holds every task, and the nodes'
    bridges hold them.
    """
    source = f"stack {stack}"
    results = Results()
    results.checked(source)
    services = client.api.services(filters=stack_filter(stack))
    by_name = {s["Spec"]["Name"]: s for s in services}
    by_name.update({f"{stack}_{name}": s for name, s in (shapes or {}).items()})
    names = NetworkNames(client)
    problems: list[Problem] = []
    claims: list[ServicePorts] = []
    joined: set[str] = set()
    for service, replicas in wanted.items():
        target = by_name.get(f"{stack}_{service}")
        if target is None:
            message = f"stack '{stack}' has no service '{service}'"
            problems.append(_problem(source, service, message))
            continue
        if port_rule(target).replicas is None:
            message = (
                f"{target['Spec']['Name']} is not mode: replicated; "
                "only replicated services have slots to scale"
            )
            problems.append(_problem(source, service, message))
            continue
        if replicas == 0:
            continue  # a group removed claims nothing
        found, claimed = check_service(
            source, service, service_document(target, replicas), policy, _on_host(names, target)
        )
        problems += found
        claims += claimed
        joined |= names.of_service(target)
    if problems and not claims:
        results.extend(problems)
        return results
    changed = {f"{stack}_{service}" for service in wanted}
    live = live_claims(client, policy, networks=joined, names=names)
    problems += collision_problems(claims, [c for c in live if c.service not in changed])
    counts = {
        name: wanted.get(name.removeprefix(f"{stack}_"), port_rule(s).replicas or 0)
        for name, s in by_name.items()
    }
    problems += _subnet_problems(client, source, stack, sum(counts.values()))
    problems += room_problems(
        _room_document(by_name, counts, names), source, stack, len(nodes_that_run_tasks(client))
    )
    results.extend(problems)
    return results


def _room_document(
    services: Mapping[str, dict[str, Any]], counts: Mapping[str, int], names: NetworkNames
) -> dict[str, Any]:
    """The live services as the stack file room_problems reads: replicas, labels, networks."""
    doc: dict[str, Any] = {"services": {}, "networks": {}}
    for name, service in services.items():
        spec = service["Spec"]
        if spec.get("Mode", {}).get("Replicated") is None or not counts[name]:
            continue
        joined = sorted(names.of_service(service))
        doc["services"][name] = {
            "deploy": {"replicas": counts[name], "labels": spec.get("Labels") or {}},
            "networks": joined,
        }
        for network in joined:
            doc["networks"][network] = (
                {"name": "host", "external": True} if network == "host" else {"driver": "overlay"}
            )
    return doc


def _problem(source: str, service: str, message: str) -> Problem:
    return Problem(source, json_path(["services", service]), message)


def _subnet_problems(
    client: docker.DockerClient, source: str, stack: str, tasks: int
) -> list[Problem]:
    """The stack's DHT network must hold an address for every task after scaling."""
    subnet = stack_subnet(client, stack)
    if subnet is None:
        return []
    return capacity_problems(
        source,
        json_path(["networks", DHT_NETWORK]),
        f"{stack}_{DHT_NETWORK}",
        f"subnet {subnet}",
        subnet,
        tasks,
    )


def _ipv4_subnets(network: dict[str, Any]) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets a network (as the API lists it) was given."""
    subnets = []
    for config in (network.get("IPAM") or {}).get("Config") or []:
        with contextlib.suppress(ValueError):
            subnet = ipaddress.ip_network(config.get("Subnet", ""))
            if isinstance(subnet, ipaddress.IPv4Network):
                subnets.append(subnet)
    return subnets


def taken_subnets(
    client: docker.DockerClient, exclude_stack: str | None = None
) -> list[TakenSubnet]:
    """IPv4 subnets of the engine's networks (swarm and local), by network name.

    Swarm accepts an overlay network whose subnet overlaps another one, then
    cannot give its tasks addresses: they sit in "new" for ever. So a new
    stack's subnet must avoid all of these. A redeployed stack keeps its own.
    """
    taken = []
    for network in client.api.networks():
        labels = network.get("Labels") or {}
        if exclude_stack is not None and labels.get(STACK_LABEL) == exclude_stack:
            continue
        taken += [(network["Name"], subnet) for subnet in _ipv4_subnets(network)]
    return taken


def stack_subnet(client: docker.DockerClient, stack: str) -> ipaddress.IPv4Network | None:
    """The subnet of a deployed stack's DHT network, None if it has none yet."""
    name = f"{stack}_{DHT_NETWORK}"
    for network in client.api.networks(names=[name]):
        subnets = _ipv4_subnets(network) if network["Name"] == name else []
        if subnets:
            return subnets[0]
    return None


def free_subnet(taken: list[TakenSubnet], tasks: int) -> ipaddress.IPv4Network:
    """The first subnet of the right size in the default pool that nothing uses."""
    size = subnet_for(tasks).prefixlen
    pool = ipaddress.IPv4Network(f"{DEFAULT_SUBNET_BASE}/{SUBNET_POOL_PREFIX}")
    for candidate in pool.subnets(new_prefix=size):
        if not any(candidate.overlaps(subnet) for _, subnet in taken):
            return candidate
    raise CqkdError(f"no free /{size} subnet left in {pool}; pass --subnet")


def listed_name(container: dict[str, Any]) -> str:
    """A container's name as the engine's container list gives it, or its ID when it has none.

    The engine lists a container whose removal is under way with an empty
    ``Names``: seen while a plain ``docker stack rm`` of 1001 tasks ran,
    where taking the first name raised IndexError and ended the teardown
    that was waiting for exactly those containers to go.
    """
    names = container.get("Names") or []
    return names[0].lstrip("/") if names else str(container.get("Id", ""))


def stack_leftovers(
    client: docker.DockerClient,
    stack: str,
    others: Iterable[docker.DockerClient] = (),
) -> dict[str, list[str]]:
    """What of a stack still exists, by kind; empty lists mean it is gone.

    Containers are asked of each engine (``others``: the other nodes'):
    Swarm drops a removed service's tasks from its store before their
    containers are gone, so the manager alone cannot tell.
    """
    from docker.errors import DockerException

    flt = stack_filter(stack)
    # The low-level list is one call; the SDK's containers.list() inspects
    # each container in turn and fails when one vanishes meanwhile.
    containers = [listed_name(c) for c in client.api.containers(all=True, filters=flt)]
    for other in others:
        with contextlib.suppress(OSError, DockerException):
            containers += [listed_name(c) for c in other.api.containers(all=True, filters=flt)]
    return {
        "services": [s["Spec"]["Name"] for s in client.api.services(filters=flt)],
        "containers": containers,
        "networks": [n["Name"] for n in client.api.networks(filters=flt)],
    }


@dataclass(frozen=True)
class StackState:
    """A stack as the swarm holds it now, read once (one call per kind): what plans work on."""

    stack: str
    services: list[dict[str, Any]]
    # The tasks Swarm wants running.
    tasks: list[dict[str, Any]]
    networks: list[dict[str, Any]]
    volumes: list[str]
    # Containers of the stack on the engine asked (stopped ones included).
    containers: list[str]

    def running_per_service(self) -> dict[str, int]:
        """Running tasks by service name."""
        names = {s["ID"]: s["Spec"]["Name"] for s in self.services}
        counts = running_counts(self.tasks)
        return {names[sid]: n for sid, n in counts.items() if sid in names}


def stack_state(client: docker.DockerClient, stack: str) -> StackState:
    """Services, tasks, networks, volumes and containers of a stack: five list calls."""
    flt = stack_filter(stack)
    api = client.api
    volumes = (api.volumes(filters=flt) or {}).get("Volumes") or []
    return StackState(
        stack=stack,
        services=api.services(filters=flt),
        tasks=api.tasks(filters={**flt, "desired-state": "running"}),
        networks=api.networks(filters=flt),
        volumes=[v["Name"] for v in volumes],
        containers=[listed_name(c) for c in api.containers(all=True, filters=flt)],
    )


def running_counts(tasks: Iterable[dict[str, Any]]) -> Counter[str]:
    """Running tasks per service ID; Swarm reports a task with a health check as
    running only once it is healthy, so this is also the healthy count."""
    return Counter(
        t["ServiceID"]
        for t in tasks
        if t.get("Status", {}).get("State") == "running" and t.get("DesiredState") == "running"
    )


def expected_replicas(client: docker.DockerClient, stack: str) -> dict[str, tuple[str, int]]:
    """Service ID → (name, replicas) as the swarm now wants them (one API call)."""
    return replicas_of(client.api.services(filters=stack_filter(stack)))


def replicas_of(services: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """Service ID → (name, replicas) of the replicated services among ``services``."""
    wanted = {}
    for service in services:
        replicated = service["Spec"].get("Mode", {}).get("Replicated")
        if replicated is not None:
            wanted[service["ID"]] = (service["Spec"]["Name"], int(replicated.get("Replicas", 0)))
    return wanted
