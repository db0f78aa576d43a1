"""Template + policy + options → a Swarm stack file.

The template in ``stacks/`` carries the structure (services, roles, Swarm
settings that must not drift); this module carries the numbers (replicas,
ports, subnet), all taken from the policy so a rendered stack always passes
validation against the policy it was rendered with.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.contract import (
    CONTROL_KEY_CONFIG,
    CONTROL_KEY_FILE,
    CONTROL_KEY_VARIABLE,
    CONTROL_NETWORK,
    CONTROL_PORT_VARIABLE,
    DHT_NETWORK,
    DOCKER_DEFAULT_SUBNET,
    GROUP_LABEL,
    HOST_NETWORK,
    NODE_USER,
    ROLE_LABEL,
    TakenSubnet,
    control_key_config,
    group_node_label,
    group_service,
    key_values,
    resolve_slot,
    service_role,
    subnet_capacity,
    subnet_for,
    worker_groups,
)
from ..core.documents import data_file, parse_yaml, read_text
from ..core.errors import CqkdError, UsageError
from ..core.policy import Policy
from ..core.results import Problem, json_path
from .base import (
    BRIDGE_MAX_CONTAINERS,
    RenderOptions,
    Target,
    dump_documents,
    health_interval,
    port_environment,
    refuse_kubernetes_options,
)

DEFAULT_TEMPLATE = "cqkd.stack.tmpl.yml"
EXTENSION = "x-cqkd"
_PLACEHOLDER = re.compile(r"<<(\.[A-Za-z][\w.]*)>>")
# Service name -> its role, as the template declares it (None: not a DHT service).
Roles = Mapping[str, str | None]


def swarm_placeholders(text: str) -> str:
    """``<<.Task.Slot>>`` → ``{{.Task.Slot}}``."""
    return _PLACEHOLDER.sub(r"{{\1}}", text)


def _set_healthcheck(doc: dict[str, Any], roles: Roles, tasks: int, enabled: bool) -> None:
    """Docker health checks off unless asked for; with them, only the interval is set.

    Readiness is the toolkit's own Kademlia probe (one process per poll round
    for the whole stack), not a check per task: every check is an exec through
    dockerd, and at 1000 tasks they kept the load above 120 and held tasks out
    of DNS until their first check passed. Enabled, the check stays the
    image's (Test empty = inherit) and its interval keeps the stack within
    HEALTH_CHECKS_PER_SECOND.
    """
    for name, service in doc["services"].items():
        if roles.get(name) is None:
            continue
        if enabled:
            service.setdefault("healthcheck", {})["interval"] = f"{health_interval(tasks)}s"
        else:
            service["healthcheck"] = {"disable": True}


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    service["environment"] = env
    return env


def _replace_placeholders(value: Any) -> Any:
    if isinstance(value, str):
        return swarm_placeholders(value)
    if isinstance(value, dict):
        return {k: _replace_placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_placeholders(v) for v in value]
    return value


def load_template(path: Path | None) -> tuple[dict[str, Any], str]:
    path = path or data_file("stacks", DEFAULT_TEMPLATE)
    data, problems = parse_yaml(read_text(path), str(path), "a stack template with services")
    if problems:
        raise UsageError(str(problems[0]))
    if not isinstance(data.get("services"), dict):
        raise UsageError(f"{path}::$.services: a template needs a mapping of services")
    return data, str(path)


SubnetChooser = Callable[[int], ipaddress.IPv4Network]


def render_document(
    policy: Policy,
    options: RenderOptions,
    choose_subnet: SubnetChooser | None = None,
    groups: bool = True,
) -> dict[str, Any]:
    """The stack as data; ``render`` serialises it.

    ``choose_subnet`` picks the overlay's subnet from the number of tasks on
    it when ``options.subnet`` is not given (deploy asks the live engine for
    a free one); without it the subnet is sized at the default base.
    ``groups=False`` keeps more workers than the range in one service (for a
    target that publishes each worker's port on one host, where groups'
    repeated ports would meet), so the validator refuses it.
    """
    refuse_kubernetes_options(options)
    if options.replicas < 1:
        raise UsageError(f"--replicas must be at least 1, got {options.replicas}")
    if options.port_offset < 0:
        raise UsageError(f"--port-offset must be 0 or more, got {options.port_offset}")
    if options.network not in ("overlay", "host"):
        raise UsageError(f"--network must be overlay or host, got '{options.network}'")
    if not options.image.strip() or any(c.isspace() for c in options.image):
        raise UsageError(f"--image must name an image (NAME[:TAG]), got {options.image!r}")
    doc, template = load_template(options.template)
    doc = {k: v for k, v in doc.items() if not k.startswith("x-")}
    services: dict[str, dict[str, Any]] = doc["services"]
    # The template's labels declare the roles; read once, before anything is changed.
    roles = {name: service_role(service, template=True) for name, service in services.items()}
    if options.is_batch:
        _keep_workers_only(doc, roles, policy, options)
        _set_healthcheck(doc, roles, options.replicas, options.healthcheck)
        return _replace_placeholders(doc)

    bootstrap_nodes = []
    for name, service in services.items():
        role = roles[name]
        if role is None:
            continue
        extension = service.pop(EXTENSION, {}) or {}
        deploy = service.setdefault("deploy", {})
        if role == "worker":
            deploy["replicas"] = options.replicas
        offset = int(extension.get("port-offset", 0))
        if role == "worker":
            offset += options.port_offset
        _environment(service).update(port_environment(policy, role, offset))
        if role == "special" and policy.control is not None and options.network == "overlay":
            _add_control_port(doc, service, policy.control.start + offset, policy, options)
        service["image"] = options.image
        if role == "bootstrap":
            host = name if options.network == "overlay" else options.bootstrap_host
            # The bootstrap's own tasks will resolve these ports the same way.
            env = {k: swarm_placeholders(v) for k, v in key_values(service["environment"]).items()}
            replicas = int(deploy.get("replicas", 1))
            slots = range(1, replicas + 1)
            bootstrap_nodes += [f"{host}:{resolve_slot(env, n).port}" for n in slots]
    if not bootstrap_nodes:
        raise CqkdError(f"{template}: no service has {ROLE_LABEL}: bootstrap; nodes cannot join")
    for service in services.values():
        env = service.get("environment")
        if isinstance(env, dict) and env.get("CQKD_ROLE") not in (None, "bootstrap"):
            env["BOOTSTRAP_NODES"] = ",".join(bootstrap_nodes)

    if groups:
        roles = _split_into_groups(doc, roles, options)
    services = doc["services"]
    tasks = sum(int(s.get("deploy", {}).get("replicas", 1)) for s in services.values())
    _set_healthcheck(doc, roles, tasks, options.healthcheck)
    if options.network == "host":
        _use_host_network(doc)
        if options.bootstrap_node:
            _pin_bootstraps(services, roles, options.bootstrap_node)
    else:
        _size_overlay(doc, options, choose_subnet or subnet_for)
    return _replace_placeholders(doc)


def _add_control_port(
    doc: dict[str, Any],
    service: dict[str, Any],
    port: int,
    policy: Policy,
    options: RenderOptions,
) -> None:
    """A special node's sealed TCP control port: key as a Swarm config, port published on its host.

    The port is published in mode: host (ingress cannot be combined with
    dnsrr) without a fixed host port: Docker picks a free one on the node
    and reports it in the task's status, which dht-check reads through any
    manager. A fixed host port would make two stacks (or Alice and Bob of
    one, on one node) fight over it. Host-mode publishing needs an interface
    on docker_gwbridge, which the internal DHT network does not give, so the
    service also joins the (non-internal) control network. The key is the
    external config ``<stack>_control-key`` that deploy creates; the task
    reads it as a 0400 file of the node's user.
    """
    assert policy.control is not None
    if port not in policy.control:
        raise CqkdError(
            f"the special services need control ports up to {port}, but the policy's "
            f"control range is {policy.control}: widen it"
        )
    _environment(service).update(
        {CONTROL_PORT_VARIABLE: str(port), CONTROL_KEY_VARIABLE: CONTROL_KEY_FILE}
    )
    service["ports"] = [{"target": port, "protocol": "tcp", "mode": "host"}]
    # A new list: the template's services share theirs through a YAML anchor.
    networks = list(service.get("networks") or [DHT_NETWORK])
    service["networks"] = (
        [*networks, CONTROL_NETWORK] if CONTROL_NETWORK not in networks else networks
    )
    service["configs"] = [
        {
            "source": CONTROL_KEY_CONFIG,
            "target": CONTROL_KEY_FILE,
            "uid": str(NODE_USER),
            "gid": str(NODE_USER),
            "mode": 0o400,
        }
    ]
    doc.setdefault("networks", {}).setdefault(CONTROL_NETWORK, {"driver": "overlay"})
    doc.setdefault("configs", {})[CONTROL_KEY_CONFIG] = {
        "external": True,
        "name": control_key_config(options.join_stack),
    }


def group_size(service: dict[str, Any]) -> int:
    """How many slots the service's port range holds: the most tasks one worker group has.

    The range is the one the resolver will read (BASE_PORT + PORT_OFFSET up to
    PORT_RANGE_END), so a template's own offset is counted.
    """
    env = key_values(service.get("environment"))
    start = int(env["BASE_PORT"]) + int(env.get("PORT_OFFSET") or 0)
    return int(env["PORT_RANGE_END"]) - start + 1


def _split_into_groups(doc: dict[str, Any], roles: Roles, options: RenderOptions) -> Roles:
    """A worker service with more replicas than its range has ports becomes worker groups.

    Group k is a copy of the service named ``group_service(name, k)``, with
    its own slots 1..size and so the same ports as the others: on an overlay
    every task has an address of its own. On the host network a group is
    placed on the nodes labelled with its number (one a node: deploy labels
    them), as two groups on one node would bind the same ports. A stack
    within one range is rendered exactly as before.
    """
    services: dict[str, dict[str, Any]] = doc["services"]
    out: dict[str, dict[str, Any]] = {}
    new_roles: dict[str, str | None] = {}
    for name, service in services.items():
        replicas = int(service.get("deploy", {}).get("replicas", 1))
        size = group_size(service) if roles[name] == "worker" else replicas
        if replicas <= size:
            out[name], new_roles[name] = service, roles[name]
            continue
        for group, count in enumerate(worker_groups(replicas, size), 1):
            spec = deepcopy(service)
            copy_name = group_service(name, group)
            deploy = spec["deploy"]
            deploy["replicas"] = count
            deploy["labels"] = {**key_values(deploy.get("labels")), GROUP_LABEL: str(group)}
            hostname = spec.get("hostname")
            if isinstance(hostname, str) and group > 1:
                spec["hostname"] = hostname.replace(name, copy_name, 1)
            if options.network == "host":
                constraint = f"node.labels.{group_node_label(options.join_stack)} == {group}"
                placement = deploy.setdefault("placement", {})
                placement["constraints"] = [*placement.get("constraints", []), constraint]
            out[copy_name], new_roles[copy_name] = spec, "worker"
    doc["services"] = out
    return new_roles


def _pin_bootstraps(services: dict[str, dict[str, Any]], roles: Roles, node_id: str) -> None:
    """Bootstrap tasks on the node their address names (host networking only)."""
    for name, service in services.items():
        if roles[name] == "bootstrap":
            placement = service.setdefault("deploy", {}).setdefault("placement", {})
            constraint = f"node.id == {node_id}"
            if constraint not in placement.setdefault("constraints", []):
                placement["constraints"].append(constraint)


def _keep_workers_only(
    doc: dict[str, Any], roles: Roles, policy: Policy, options: RenderOptions
) -> None:
    """A second batch: only workers, on the first stack's network and bootstrap node.

    Service names are namespaced by the stack (``cqkd_bootstrap``), and that
    full name resolves on the shared network from any stack attached to it.
    """
    services = doc["services"]
    workers = {n: s for n, s in services.items() if roles[n] == "worker"}
    if not workers:
        raise UsageError("the template has no worker service to make a batch of")
    bootstrap = policy.role_range("bootstrap").start
    if options.network == "host":
        host = options.bootstrap_host
    else:
        host = f"{options.join_stack}_bootstrap"
    for service in workers.values():
        service.pop(EXTENSION, None)
        service["image"] = options.image
        service.setdefault("deploy", {})["replicas"] = options.replicas
        _environment(service).update(
            port_environment(policy, "worker", options.port_offset),
            BOOTSTRAP_NODES=f"{host}:{bootstrap}",
        )
    doc["services"] = workers
    # The template's named volumes (Alice's and Bob's control volume) belong
    # to the services left out.
    doc.pop("volumes", None)
    if options.network == "host":
        _use_host_network(doc)
    else:
        external = {"external": True, "name": f"{options.join_stack}_{DHT_NETWORK}"}
        doc["networks"] = {DHT_NETWORK: external}


def dht_tasks(policy: Policy, options: RenderOptions) -> int:
    """How many tasks the rendered stack puts on its DHT network (sizes its subnet)."""
    return _tasks_on(render_document(policy, options), DHT_NETWORK)


def _tasks_on(doc: dict[str, Any], network: str) -> int:
    total = 0
    for service in doc["services"].values():
        if network in (service.get("networks") or []):
            total += int(service.get("deploy", {}).get("replicas", 1))
    return total


def _size_overlay(
    doc: dict[str, Any], options: RenderOptions, choose_subnet: SubnetChooser
) -> None:
    tasks = _tasks_on(doc, DHT_NETWORK)
    if options.subnet:
        try:
            subnet = ipaddress.IPv4Network(options.subnet)
        except ValueError as exc:
            raise UsageError(f"--subnet: {exc}") from None
    else:
        subnet = choose_subnet(tasks)
    network = doc.setdefault("networks", {}).setdefault(DHT_NETWORK, {"driver": "overlay"})
    network["ipam"] = {"config": [{"subnet": str(subnet)}]}


# On the host's network every task of a machine has the machine's address, so
# the node's caps on contacts per IP and per /24 (10 and 64, against one
# address filling a table) would keep a routing table to a few neighbours.
# Raised to what a table of this many nodes holds; a template's own value stays.
HOST_NETWORK_CONTACT_CAPS = {"CQKD_MAX_PER_IP": "160", "CQKD_MAX_PER_NET24": "160"}


def _use_host_network(doc: dict[str, Any]) -> None:
    """Tasks share the host's network: the unique port is what keeps them apart."""
    for service in doc["services"].values():
        service["networks"] = [HOST_NETWORK]
        env = service.get("environment")
        if isinstance(env, dict) and "CQKD_ROLE" in env:
            for name, value in HOST_NETWORK_CONTACT_CAPS.items():
                env.setdefault(name, value)
    doc["networks"] = {HOST_NETWORK: {"external": True, "name": "host"}}


def render(
    policy: Policy, options: RenderOptions, choose_subnet: SubnetChooser | None = None
) -> str:
    doc = render_document(policy, options, choose_subnet)
    batch = f" (a batch at port offset {options.port_offset})" if options.is_batch else ""
    header = (
        f"# Rendered by cqkd-stack {__version__}: {options.replicas} workers{batch}, "
        f"network {options.network}, policy {policy.source}.\n"
        "# Validate before deploying: cqkd-stack validate FILE\n"
    )
    body = dump_documents([doc])
    return header + body


# --- what Swarm needs of a stack that no schema says ---------------------------


def network_problems(
    doc: dict[str, Any], file: str, policy: Policy, taken: Sequence[TakenSubnet] = ()
) -> list[Problem]:
    """dnsrr gives every task an address on each network it joins: check they fit.

    The Swarm target's own rules on a stack (the registry's ``problems``; the
    policy has no say in them). ``taken`` are subnets of networks that already
    exist: an overlay that overlaps one is created, but its tasks never get
    addresses.
    """
    problems = []
    networks = doc.get("networks") or {}
    for name, tasks in network_demand(doc).items():
        network = networks.get(name) or {}
        if network.get("external") or network.get("driver", "overlay") != "overlay":
            continue
        configs = (network.get("ipam") or {}).get("config") or []
        where = ["networks", name, "ipam", "config", 0, "subnet"]
        subnet_text = configs[0].get("subnet") if configs else None
        if subnet_text is None:
            subnet, what = DOCKER_DEFAULT_SUBNET, "Docker's default /24"
            where = ["networks", name] if name in networks else ["services"]
        else:
            try:
                subnet = ipaddress.IPv4Network(subnet_text)
            except ValueError as exc:
                problems.append(Problem(file, json_path(where), f"not a valid IPv4 subnet: {exc}"))
                continue
            what = f"subnet {subnet}"
            for other, used in taken:
                if subnet.overlaps(used):
                    problems.append(
                        Problem(
                            file,
                            json_path(where),
                            f"subnet {subnet} overlaps network '{other}' ({used}) on this "
                            "engine; Swarm would create the network but never give its "
                            "tasks addresses",
                        )
                    )
        problems += capacity_problems(file, json_path(where), name, what, subnet, tasks)
    return problems


def network_demand(doc: dict[str, Any]) -> dict[str, int]:
    """Tasks of replicated services on each network (each takes an address and a bridge port)."""
    demand: dict[str, int] = {}
    for service in doc["services"].values():
        deploy = service.get("deploy") or {}
        if deploy.get("mode", "replicated") != "replicated":
            continue
        replicas = deploy.get("replicas", 1)
        joined = service.get("networks") or ["default"]
        for name in joined:
            demand[name] = demand.get(name, 0) + (replicas if isinstance(replicas, int) else 1)
    return demand


# Each node's end of an overlay is a Linux bridge whose VXLAN device takes one
# of its ports; past them, tasks fail with "exchange full". Kept free besides:
# a probe's or a debug container's attachment, and a task started while its
# predecessor still holds its port.
BRIDGE_HEADROOM = 8
TASKS_PER_NODE = BRIDGE_MAX_CONTAINERS - 1 - BRIDGE_HEADROOM


def room_problems(doc: dict[str, Any], source: str, stack: str, nodes: int) -> list[Problem]:
    """What a swarm of ``nodes`` nodes that run tasks cannot hold: deploy refuses it first.

    An overlay's tasks spread over the nodes, each node's bridge holding
    TASKS_PER_NODE. On the host network each worker group needs a node of
    its own (its ports are bound on the node, which deploy labels for it).
    """
    problems = []
    networks = doc.get("networks") or {}
    groups = [
        name
        for name, service in doc["services"].items()
        if GROUP_LABEL in key_values((service.get("deploy") or {}).get("labels"))
    ]
    for name, tasks in network_demand(doc).items():
        network = networks.get(name) or {}
        if network.get("name") == "host":
            if len(groups) > nodes:
                problems.append(
                    Problem(
                        source,
                        json_path(["services", groups[nodes]]),
                        f"{len(groups)} worker groups on the host network each need a node "
                        f"of their own (deploy labels one with {group_node_label(stack)}=k "
                        f"for group k), and the swarm has {nodes} node"
                        f"{'s' if nodes != 1 else ''} that run tasks: add nodes, use the "
                        "overlay network, or deploy fewer workers",
                    )
                )
            continue
        if network.get("external") or network.get("driver", "overlay") != "overlay":
            continue
        if tasks > nodes * TASKS_PER_NODE:
            need = -(-tasks // TASKS_PER_NODE)
            problems.append(
                Problem(
                    source,
                    json_path(["networks", name]),
                    f"{tasks} tasks on network '{name}' need {need} nodes: a node's bridge "
                    f"of an overlay holds {TASKS_PER_NODE} "
                    f"tasks (besides its VXLAN device and {BRIDGE_HEADROOM} ports kept free), and "
                    f"the swarm has {nodes} node{'s' if nodes != 1 else ''} that run tasks: "
                    "add nodes, or deploy fewer workers",
                )
            )
    return problems


def capacity_problems(
    file: str, where: str, name: str, what: str, subnet: ipaddress.IPv4Network, tasks: int
) -> list[Problem]:
    """Each task on a dnsrr network takes an address: refuse more tasks than the subnet has."""
    capacity = subnet_capacity(subnet)
    if tasks <= capacity:
        return []
    prefix = next(
        p
        for p in range(subnet.prefixlen, 0, -1)
        if subnet_capacity(subnet.supernet(new_prefix=p)) >= tasks
    )
    return [
        Problem(
            file,
            where,
            f"{tasks} tasks join network '{name}' and each needs an address, but "
            f"{what} holds {capacity}; use a /{prefix} or larger",
        )
    ]


TARGET = Target(
    name="swarm",
    render=render,
    # The default: a file that declares no other target is a Swarm stack file.
    declared_by=lambda text: False,
    load=None,
    problems=network_problems,
)
