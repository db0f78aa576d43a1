"""The stack contract: what the targets write and the linter and the live code read back.

Labels, roles, network names, subnet sizing and the slot template are one
agreement between the stack file and the code that inspects the live swarm;
writing them here once keeps the renderers, the linter, the inspection of a
live swarm and deploy from drifting apart. The port a task gets is not here:
only ``cqkd_stack.node.resolver`` computes it, and :func:`resolve_slot` asks
it, the same way each task does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ..node.resolver import Resolution, resolve
from .errors import InvalidInput

ROLE_LABEL = "cqkd.role"
# On the node images `setup` builds: the digest of what went into the image. It
# also tells this project's node (which never keeps the probe) from a stock one.
HASH_LABEL = "org.cqkd.build-inputs"
STACK_LABEL = "com.docker.stack.namespace"
DHT_NETWORK = "dht"
HOST_NETWORK = "hostnet"
# The image's user (Dockerfile `USER 10001:10001`); a numeric id needs no passwd entry.
NODE_USER = 10001
# Alice's and Bob's sealed control port (see cqkd_stack.node.auth). The key is
# the Swarm config <stack>_control-key, which deploy creates (32 random bytes)
# and every manager can read back; the task gets it as this file, 0400, owned
# by the node's user. The port is published in mode: host, which Docker only
# maps for a task with an interface on docker_gwbridge: the DHT network is
# internal (no gwbridge), so the special nodes also join CONTROL_NETWORK.
CONTROL_KEY_CONFIG = "control-key"
CONTROL_KEY_FILE = "/run/cqkd-control.key"
CONTROL_NETWORK = "control"
CONTROL_PORT_VARIABLE = "CQKD_CONTROL_PORT"
CONTROL_KEY_VARIABLE = "CQKD_CONTROL_KEY_FILE"


# More workers than the worker range has ports: the workers are split into
# worker groups, services `worker`, `worker-2`, ... each with slots 1..range
# size and so the same ports (docs/ports.md, "More workers than the range").
# Each group's service carries its number in GROUP_LABEL. On an overlay each
# task has its own address, so groups may share nodes; on the host network a
# port is taken on the whole node, so each group is held to the nodes whose
# label group_node_label(stack) has its number (set by the operator: deploy
# refuses host-network groups until it sets them itself).
GROUP_LABEL = "cqkd.group"


def group_node_label(stack: str) -> str:
    """The node label that places a host-network stack's worker groups, one a node."""
    return f"org.cqkd.group.{stack}"


def group_service(service: str, group: int) -> str:
    """``worker``, ``worker-2``, ...: group 1 keeps the template's name, so a stack
    that grows past one group keeps its first service (and its running tasks)."""
    return service if group == 1 else f"{service}-{group}"


# The most workers one service may be split into, and the most groups: a
# /16 overlay's addresses (the largest subnet the stack is given), and what
# the validator still reads within a second (about 350 groups reach its
# 30,000 YAML nodes). Checked before any group is made, so that a count of a
# billion is refused at once rather than split into a million services
# (measured: 43 s for `render -r 1000000000` without it).
MAX_GROUPED_WORKERS = 2**16 - 3
MAX_WORKER_GROUPS = 256


def worker_groups(replicas: int, size: int) -> list[int]:
    """Replicas per group, each full before the next starts.

    Filling rather than evening out means growing or shrinking the stack only
    ever changes its last group: a group's slots, and so its tasks' ports,
    stay as they are.
    """
    if size < 1:
        raise ValueError(f"a worker group needs at least one port, got {size}")
    if replicas > MAX_GROUPED_WORKERS:
        raise InvalidInput(
            f"{replicas} workers: at most {MAX_GROUPED_WORKERS} fit one stack "
            "(the addresses of a /16 overlay); deploy fewer workers"
        )
    if -(-replicas // size) > MAX_WORKER_GROUPS:
        raise InvalidInput(
            f"{replicas} workers in a worker range of {size} ports need "
            f"{-(-replicas // size)} worker groups, more than {MAX_WORKER_GROUPS}: "
            "widen the worker range in the port policy, or deploy fewer workers"
        )
    full, rest = divmod(replicas, size)
    return [size] * full + ([rest] if rest else [])


def control_key_config(stack: str) -> str:
    """The Swarm config holding a stack's control key: in the stack's namespace."""
    return f"{stack}_{CONTROL_KEY_CONFIG}"


# Stacks take their overlay subnets from DEFAULT_SUBNET_BASE/SUBNET_POOL_PREFIX.
DEFAULT_SUBNET_BASE = "10.213.0.0"
SUBNET_POOL_PREFIX = 16
# What Docker gives an overlay that names no subnet.
DOCKER_DEFAULT_SUBNET = ipaddress.IPv4Network("10.0.0.0/24")
# Addresses an overlay subnet loses before tasks get any: network, broadcast,
# gateway. Docker also gives each swarm node one load-balancer address.
RESERVED_ADDRESSES = 3
# A subnet the engine has given a network already, by network name.
TakenSubnet = tuple[str, ipaddress.IPv4Network]
SLOT_PLACEHOLDER = "{{.Task.Slot}}"
# Go templates allow spaces inside the braces; Swarm renders both alike.
_SLOT_TEMPLATE = re.compile(r"\{\{-?\s*\.Task\.Slot\s*-?\}\}")
# A service that sets any of these takes part in the DHT port contract.
CONTRACT_VARIABLES = ("CQKD_ROLE", "DHT_PORT", "BASE_PORT", "TASK_SLOT", "WORKER_ID")
SLOT_VARIABLES = ("TASK_SLOT", "WORKER_ID")
# The resolver's inputs that must be one value for every task of a service:
# a placeholder there (PORT_OFFSET: "{{.Task.Slot}}") gives each task another rule.
FIXED_VARIABLES = (
    "CQKD_ROLE",
    "BASE_PORT",
    "PORT_RANGE_END",
    "PORT_OFFSET",
    "LEGACY_PORT_MODE",
    "PORT_PROTOCOL",
)


def key_values(value: Any) -> dict[str, str]:
    """Compose accepts environment and labels as a mapping or a KEY=VALUE list."""
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        pairs = (str(item).split("=", 1) for item in value)
        return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}
    return {}


def role_of(env: Mapping[str, str], labels: Mapping[str, str]) -> str | None:
    """The role a service declares: its CQKD_ROLE, else its deploy label."""
    return env.get("CQKD_ROLE") or labels.get(ROLE_LABEL) or None


def service_role(service: Mapping[str, Any], *, template: bool = False) -> str | None:
    """The role of a service of a stack file, as ``role_of`` reads a live one.

    ``template``: the service of a template (or of the stack rendered from
    one), which declares its role with the ``cqkd.role`` label alone, as
    written; the renderer writes CQKD_ROLE from it, and a label the policy
    lacks (even an empty one) is refused there rather than passed over.
    """
    deploy = service.get("deploy") or {}
    if template:
        return (deploy.get("labels") or {}).get(ROLE_LABEL)
    return role_of(key_values(service.get("environment")), key_values(deploy.get("labels")))


def is_dht(env: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a service takes part in the DHT (and so must follow the contract)."""
    return ROLE_LABEL in labels or any(name in env for name in CONTRACT_VARIABLES)


def has_placeholder(value: str) -> bool:
    """Whether Swarm would render something in ``value`` (any ``{{...}}``)."""
    return "{{" in value


def is_slot_template(value: str) -> bool:
    """``{{.Task.Slot}}`` and nothing else: extra text would shift every port."""
    return _SLOT_TEMPLATE.fullmatch(value.strip()) is not None


def fill_slot(text: str, slot: int) -> str:
    """``text`` as task ``slot`` sees it: Swarm fills in the slot template."""
    return _SLOT_TEMPLATE.sub(str(slot), text)


def env_for_slot(env: Mapping[str, str], slot: int) -> dict[str, str]:
    """The environment task ``slot`` will see."""
    return {k: fill_slot(v, slot) for k, v in env.items()}


def resolve_slot(env: Mapping[str, str], slot: int) -> Resolution:
    """What the resolver in task ``slot`` will compute (raises ResolverError)."""
    return resolve(env_for_slot(env, slot))


def subnet_capacity(network: ipaddress.IPv4Network) -> int:
    """Task addresses a subnet holds; dnsrr spends one per task per network."""
    return max(network.num_addresses - RESERVED_ADDRESSES, 0)


def subnet_for(tasks: int, base: str = DEFAULT_SUBNET_BASE) -> ipaddress.IPv4Network:
    """The smallest subnet, /24 or larger, that holds ``tasks`` twice over.

    A lost node's tasks keep their addresses until the node is back, while
    Swarm starts their replacements elsewhere: measured on a 3-node cluster,
    203 tasks in a /24 (253 addresses, a tenth of headroom), one node
    killed, and 20 of its 67 replacements stayed "New" for good, with no
    address to take. So every task may be replaced once (a lost node of
    any size, a start-first update) besides the load-balancer address each
    node takes; a /24 (Docker's default) is the floor.
    """
    need = tasks + max(16, tasks)
    for prefix in range(24, 15, -1):
        network = ipaddress.IPv4Network(f"{base}/{prefix}", strict=False)
        if subnet_capacity(network) >= need:
            return network
    raise InvalidInput(f"{tasks} tasks do not fit in one overlay subnet of /16 or smaller")
