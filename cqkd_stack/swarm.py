"""Read-only questions to a live swarm: which tasks a stack has, where, on which port.

One API call per kind of object (services, tasks, nodes), never one per task:
the port map must stay fast at 1000 tasks. Ports are derived from each
service's own environment with the policy's formula, the same inputs the
in-container resolver uses.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CqkdError
from .policy import Policy, PortRange
from .render import DEFAULT_SUBNET_BASE, DHT_NETWORK, ROLE_LABEL, subnet_for
from .resolver import DEFAULT_BASE_PORT
from .validate import ServicePorts, key_values

if TYPE_CHECKING:
    import docker

STACK_LABEL = "com.docker.stack.namespace"
# Stacks take their overlay subnets from DEFAULT_SUBNET_BASE/16.
SUBNET_POOL_PREFIX = 16
_TRUE = {"1", "true", "yes", "on"}


def connect() -> docker.DockerClient:
    """A client for a swarm manager (every stack operation needs one), or what to do."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        raise CqkdError(
            f"cannot reach the Docker engine ({exc}); start it with: cqkd-stack setup"
        ) from None
    require_manager(client)
    return client


def require_manager(client: docker.DockerClient) -> None:
    """Stacks need a swarm manager; say so before anything else fails obscurely."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        raise CqkdError("this engine is not a swarm manager; initialise one with: cqkd-stack setup")
    return swarm


def stack_filter(stack: str) -> dict[str, str]:
    return {"label": f"{STACK_LABEL}={stack}"}


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    """A service spec's container environment as a mapping."""
    container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
    return key_values(container.get("Env"))


@dataclass(frozen=True)
class ServicePortRule:
    """How one live service turns a slot into a port (from its own environment)."""

    service: str
    role: str | None
    base: int | None
    offset: int
    fixed: int | None  # DHT_PORT, or BASE_PORT in legacy mode
    replicas: int | None
    protocol: str

    def port(self, slot: int | None) -> int | None:
        if self.fixed is not None:
            return self.fixed
        if self.base is None or slot is None:
            return None
        return Policy.port_for(self.base, slot, self.offset)

    def ports(self) -> PortRange | None:
        if self.fixed is not None:
            return PortRange(self.fixed, self.fixed)
        if self.base is None or not self.replicas:
            return None
        return PortRange(self.port(1), self.port(self.replicas))  # type: ignore[arg-type]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def port_rule(service: dict[str, Any]) -> ServicePortRule:
    spec = service["Spec"]
    env = env_of(spec)
    labels = spec.get("Labels") or {}
    replicated = spec.get("Mode", {}).get("Replicated")
    base = _int(env.get("BASE_PORT"))
    fixed = _int(env.get("DHT_PORT"))
    role = env.get("CQKD_ROLE") or labels.get(ROLE_LABEL)
    if base is None and fixed is None and role and not env.get("PORT_RANGE_END"):
        base = DEFAULT_BASE_PORT  # what the resolver in each task falls back to
    if fixed is None and env.get("LEGACY_PORT_MODE", "").lower() in _TRUE:
        fixed = base
    return ServicePortRule(
        service=spec["Name"],
        role=role,
        base=base,
        offset=_int(env.get("PORT_OFFSET")) or 0,
        fixed=fixed,
        replicas=replicated.get("Replicas") if replicated else None,
        protocol=env.get("PORT_PROTOCOL", "udp"),
    )


def is_dht(rule: ServicePortRule) -> bool:
    return rule.role is not None or rule.base is not None or rule.fixed is not None


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
    return build_port_map(stack, services, tasks, nodes, policy)


def task_rows(
    stack: str,
    services: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
) -> list[TaskPort]:
    """One row per task that Swarm wants running, for the DHT services only."""
    rules = {s["ID"]: port_rule(s) for s in services}
    network_name = f"{stack}_{DHT_NETWORK}"
    rows = []
    for task in tasks:
        if task.get("DesiredState", "running") != "running":
            continue
        rule = rules.get(task["ServiceID"])
        if rule is None or not is_dht(rule):
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

    counts = Counter(t.port for t in result.tasks if t.port is not None)
    result.duplicate_ports = sorted(p for p, n in counts.items() if n > 1)
    for row in result.tasks:
        row.duplicate = row.port in result.duplicate_ports

    present: dict[str, set[int]] = defaultdict(set)
    for row in result.tasks:
        if row.slot is not None:
            present[row.service].add(row.slot)
    for rule in rules.values():
        if is_dht(rule) and rule.replicas:
            missing = sorted(set(range(1, rule.replicas + 1)) - present[rule.service])
            if missing:
                result.missing_slots[rule.service] = missing

    used = {p for p in counts}
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


def live_claims(
    client: docker.DockerClient,
    exclude_stack: str | None = None,
    networks: set[str] | None = None,
) -> list[ServicePorts]:
    """Ports already held by DHT services of other stacks that share a network.

    Two stacks on separate overlay networks may both use 7000-7999: their
    tasks never share a network namespace. Sharing one (a batch joining a
    DHT's network, or host networking) makes equal ports a real collision.
    ``networks=None`` counts every live service.
    """
    services = client.api.services()
    names = NetworkNames(client)
    claims = []
    for service in services:
        spec = service["Spec"]
        stack = (spec.get("Labels") or {}).get(STACK_LABEL)
        if stack is None or stack == exclude_stack:
            continue
        if networks is not None and not names.of_service(service) & networks:
            continue
        rule = port_rule(service)
        ports = rule.ports()
        if is_dht(rule) and ports is not None and rule.role:
            source = f"stack {stack}"
            claims.append(ServicePorts(source, rule.service, rule.role, ports, rule.protocol))
    return claims


def scale_problems(
    client: docker.DockerClient, stack: str, service: str, replicas: int, policy: Policy
) -> list[str]:
    """Why scaling a service to ``replicas`` would break the port contract, if it would.

    The same rules as validation: the new slots must stay inside the role's
    range, avoid blocked ports and other services' ports, and the DHT
    network's subnet must hold the extra addresses.
    """
    from .render import subnet_capacity
    from .validate import collision_problems

    full = f"{stack}_{service}"
    services = client.api.services(filters=stack_filter(stack))
    target = next((s for s in services if s["Spec"]["Name"] == full), None)
    if target is None:
        return [f"stack '{stack}' has no service '{service}'"]
    rule = port_rule(target)
    if rule.replicas is None:
        return [f"{full} is not mode: replicated; only replicated services have slots to scale"]
    if rule.fixed is not None and replicas > 1 and not policy.legacy_mode:
        return [f"{full} has one fixed port ({rule.fixed}); {replicas} tasks would share it"]
    if rule.base is None or rule.role not in policy.roles:
        return [f"{full} has no BASE_PORT and known role; cannot derive its ports"]
    problems = []
    rng = policy.roles[rule.role]
    wanted = PortRange(rule.port(1), rule.port(replicas))  # type: ignore[arg-type]
    if wanted.end > rng.end:
        problems.append(
            f"{full}: {replicas} tasks need ports {wanted}, but the {rule.role} range is "
            f"{rng} ({len(rng)} ports)"
        )
    problems += [
        f"{full}: slot {p - wanted.start + 1} would get port {p}, which the policy blocks"
        for p in policy.blocked_in(wanted)
    ]
    joined = NetworkNames(client).of_service(target)
    others = [c for c in live_claims(client, networks=joined) if c.service != full]
    mine = ServicePorts(f"stack {stack}", full, rule.role, wanted, rule.protocol)
    problems += [p.message for p in collision_problems([mine], others)]
    network_name = f"{stack}_{DHT_NETWORK}"
    for network in client.api.networks(names=[network_name]):
        if network["Name"] != network_name:
            continue
        configs = (network.get("IPAM") or {}).get("Config") or []
        subnets = [c["Subnet"] for c in configs if c.get("Subnet")]
        if not subnets:
            continue
        capacity = subnet_capacity(ipaddress.IPv4Network(subnets[0]))
        others_on_net = sum(port_rule(s).replicas or 0 for s in services if s["ID"] != target["ID"])
        if others_on_net + replicas > capacity:
            problems.append(
                f"network {network_name} ({subnets[0]}) holds {capacity} task addresses; "
                f"{others_on_net + replicas} tasks would need one each"
            )
    return problems


def taken_subnets(
    client: docker.DockerClient, exclude_stack: str | None = None
) -> list[tuple[str, ipaddress.IPv4Network]]:
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
        for config in (network.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(config.get("Subnet", ""))
            except ValueError:
                continue
            if isinstance(subnet, ipaddress.IPv4Network):
                taken.append((network["Name"], subnet))
    return taken


def free_subnet(
    taken: list[tuple[str, ipaddress.IPv4Network]], tasks: int
) -> ipaddress.IPv4Network:
    """The first subnet of the right size in the default pool that nothing uses."""
    size = subnet_for(tasks).prefixlen
    pool = ipaddress.IPv4Network(f"{DEFAULT_SUBNET_BASE}/{SUBNET_POOL_PREFIX}")
    for candidate in pool.subnets(new_prefix=size):
        if not any(candidate.overlaps(subnet) for _, subnet in taken):
            return candidate
    raise CqkdError(f"no free /{size} subnet left in {pool}; pass --subnet")


def stack_leftovers(client: docker.DockerClient, stack: str) -> dict[str, list[str]]:
    """What of a stack still exists, by kind; empty lists mean it is gone."""
    flt = stack_filter(stack)
    return {
        "services": [s["Spec"]["Name"] for s in client.api.services(filters=flt)],
        # The low-level list is one call; the SDK's containers.list() inspects
        # each container in turn and fails when one vanishes meanwhile.
        "containers": [
            c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters=flt)
        ],
        "networks": [n["Name"] for n in client.api.networks(filters=flt)],
    }


def running_counts(tasks: Iterable[dict[str, Any]]) -> Counter[str]:
    """Running tasks per service ID; Swarm reports a task with a health check as
    running only once it is healthy, so this is also the healthy count."""
    return Counter(
        t["ServiceID"]
        for t in tasks
        if t.get("Status", {}).get("State") == "running" and t.get("DesiredState") == "running"
    )
