"""The port rules a schema cannot say, on the services of one document.

Each service's DHT ports (slot 1 to N, as the resolver in each task will
compute them: ``contract.resolve_slot`` asks it) must lie in its role's range
of the policy, avoid blocked ports and leave every task its own; published
ports must be usable, and no two services, in one file, several files or a
live stack, may share a port. Every problem names the file, the path in the
document and what to do, because the reader is an operator looking at a CI log.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.contract import (
    CONTROL_KEY_VARIABLE,
    CONTROL_PORT_VARIABLE,
    FIXED_VARIABLES,
    GROUP_LABEL,
    ROLE_LABEL,
    SLOT_PLACEHOLDER,
    SLOT_VARIABLES,
    TakenSubnet,
    has_placeholder,
    is_dht,
    is_slot_template,
    key_values,
    resolve_slot,
    role_of,
)
from ..core.documents import EnvOrigin
from ..core.policy import Policy, PortRange
from ..core.results import Problem, json_path
from ..node.resolver import MIN_PORT, Resolution, ResolverError, optional_int
from ..targets import swarm
from ..targets.base import Target
from .published import PublishedPort, published_ports

TEMPLATED_PORT_FIX = (
    f"Swarm fills {SLOT_PLACEHOLDER} only in environment, hostname and mounts: drop the entry "
    "and pass TASK_SLOT in the environment, so the resolver derives each task's port "
    "(the network reaches every task there)"
)


@dataclass(frozen=True)
class ServicePorts:
    """Ports one service's tasks will take, for collision checks across services.

    ``on_host`` ports are bound in the hosts' network namespace (published
    ports, and DHT ports of services on the host network); the DHT ports of
    overlay services live in each task's own namespace and only collide with
    other DHT ports, which the policy keeps apart anyway.
    """

    file: str
    service: str
    role: str
    ports: PortRange
    protocol: str
    on_host: bool = False
    path: str = ""
    published: bool = False
    # For advice: the role range's last port and what the port came from
    # (TASK_SLOT, WORKER_ID, DHT_PORT...); a published entry that is the
    # service's own DHT port (a compose worker's) says so in ``own``.
    range_end: int | None = None
    source: str = ""
    own: bool = False
    # A worker group's number (GROUP_LABEL), and the one node constraint
    # (``node.labels.K`` / ``node.id`` / ``node.hostname`` ==) the service is
    # held to: what lets two services hold the same ports apart.
    group: str | None = None
    pinned: tuple[str, str] | None = None

    @property
    def where(self) -> str:
        return self.path or json_path(["services", self.service])


def _plural(role: str, count: int) -> str:
    noun = {"worker": "worker", "special": "special node", "bootstrap": "bootstrap node"}
    word = noun.get(role, f"{role} task")
    return f"{count} {word}{'' if count == 1 else 's'}"


def _ports(ports: PortRange) -> str:
    return f"port {ports}" if len(ports) == 1 else f"ports {ports}"


def _on_host_network(doc: dict[str, Any], service: dict[str, Any]) -> bool:
    """A service on the external network named ``host`` binds its ports on the hosts."""
    if service.get("network_mode") == "host":
        return True
    networks = doc.get("networks") or {}
    joined = service.get("networks") or []
    names = joined if isinstance(joined, list) else list(joined)
    for name in names:
        network = networks.get(name) or {}
        if network.get("external") and network.get("name", name) == "host":
            return True
    return False


class _ServiceCheck:
    """The port checks of one service; collects problems instead of stopping at one."""

    def __init__(
        self,
        file: str,
        name: str,
        service: dict[str, Any],
        policy: Policy,
        on_host: bool = False,
        origins: Mapping[str, EnvOrigin] | None = None,
    ) -> None:
        self.file, self.name, self.service, self.policy = file, name, service, policy
        self.on_host = on_host
        self.origins = origins or {}
        self.deploy: dict[str, Any] = service.get("deploy") or {}
        self.env = key_values(service.get("environment"))
        self.labels = key_values(self.deploy.get("labels"))
        self.problems: list[Problem] = []
        # CQKD_CONTROL_PORT once control_port() has read it.
        self.control: int | None = None

    def problem(self, where: Iterable[str | int], message: str) -> None:
        """A problem at ``where`` in the service; a variable set in an env file is shown there.

        The stack file has no line for it, so the problem points at the
        ``env_file`` entry and names the env file's line.
        """
        parts = list(where)
        variable = str(parts[1]) if len(parts) == 2 and parts[0] == "environment" else None
        origin = self.origins.get(variable) if variable else None
        if origin is not None:
            parts = list(origin.parts)
            message = f"{message} ({variable} is set in env file {origin})"
        path = json_path(["services", self.name, *parts])
        self.problems.append(Problem(self.file, path, message))

    @property
    def is_dht(self) -> bool:
        return is_dht(self.env, self.labels)

    @property
    def replicated(self) -> bool:
        return self.deploy.get("mode", "replicated") == "replicated"

    @property
    def replicas(self) -> int:
        value = self.deploy.get("replicas", 1)
        return value if isinstance(value, int) and not isinstance(value, bool) else 1

    def deploy_modes(self) -> None:
        """Values `docker stack config` passes and `docker stack deploy` then refuses."""
        choices = {
            "mode": ("replicated", "global", "replicated-job", "global-job"),
            "endpoint_mode": ("vip", "dnsrr"),
        }
        for key, allowed in choices.items():
            value = self.deploy.get(key)
            if value is not None and value not in allowed:
                self.problem(
                    ["deploy", key], f"{key} '{value}': expected one of {', '.join(allowed)}"
                )

    # --- the DHT port ---------------------------------------------------------

    def role(self) -> str | None:
        env_role, label_role = self.env.get("CQKD_ROLE"), self.labels.get(ROLE_LABEL)
        if env_role and label_role and env_role != label_role:
            self.problem(
                ["environment", "CQKD_ROLE"],
                f"role '{env_role}' disagrees with deploy label {ROLE_LABEL}='{label_role}'",
            )
        role = role_of(self.env, self.labels)
        if role and role not in self.policy.roles:
            where = ["environment", "CQKD_ROLE"] if env_role else ["deploy", "labels"]
            self.problem(
                where,
                f"unknown role '{role}'; the policy defines {self.policy.describe_roles()}",
            )
            return None
        return role

    def dht_ports(self) -> ServicePorts | None:
        """The ports slots 1..N take, as the resolver in each task will compute them."""
        role = self.role()
        if self.problems:
            return None
        if not self.replicated:
            mode = self.deploy.get("mode")
            self.problem(
                ["deploy", "mode"],
                f"a {role or 'DHT'} service must be mode: replicated; in mode {mode} tasks "
                "have no slot numbers, so no port can be derived from the slot",
            )
            return None
        replicas = self.replicas
        if replicas < 1:
            self.problem(
                ["deploy", "replicas"],
                f"replicas: {replicas} starts no {role or 'DHT'} task"
                + ("; without one no node can join the DHT" if role == "bootstrap" else "")
                + ": give it 1 or more, or remove the service",
            )
            return None
        if not self._slot_templates_ok():
            return None
        first = self._resolve(1, None)
        if first is None:
            return None
        last = self._resolve(replicas, role) if replicas > 1 else first
        if last is None:
            return None
        if replicas > 1 and last.port == first.port and not self._may_share(first, role, replicas):
            return None
        ports = PortRange(first.port, last.port)
        source = first.source if first.source in ("DHT_PORT",) else "BASE_PORT"
        return self._within_policy(role, ports, source, first, replicas)

    def _slot_templates_ok(self) -> bool:
        """A slot template with text around it would shift or break every port."""
        ok = True
        for name in SLOT_VARIABLES:
            value = self.env.get(name, "")
            if "{{" in value and not is_slot_template(value):
                self.problem(
                    ["environment", name],
                    f"{name}='{value}' is not exactly '{SLOT_PLACEHOLDER}': Swarm would "
                    "render the text around it too, and the slot would be wrong or no number",
                )
                ok = False
        for name in FIXED_VARIABLES:
            value = self.env.get(name, "")
            if has_placeholder(value):
                self.problem(
                    ["environment", name],
                    f"{name}='{value}' would differ from task to task (Swarm fills the "
                    f"placeholder in for each), but the port contract needs one {name} for "
                    f"every task of the service: write the value itself; only TASK_SLOT "
                    f"takes '{SLOT_PLACEHOLDER}'",
                )
                ok = False
        dht_port = self.env.get("DHT_PORT", "")
        if "{{" in dht_port:
            self.problem(
                ["environment", "DHT_PORT"],
                f"DHT_PORT is set from {dht_port} directly, which gives ports 1, 2, 3...; "
                f"set TASK_SLOT: '{SLOT_PLACEHOLDER}' and BASE_PORT and let the resolver "
                "derive the port",
            )
            ok = False
        return ok

    def _resolve(self, slot: int, role: str | None) -> Resolution | None:
        """Ask the resolver what task ``slot`` will get; its refusal is the problem."""
        try:
            return resolve_slot(self.env, slot)
        except ResolverError as exc:
            if slot > 1 and exc.variable in SLOT_VARIABLES:
                count = _plural(role or "DHT", slot)
                self.problem(["deploy", "replicas"], f"{count}: {exc}")
            else:
                where = ["environment", exc.variable] if exc.variable else ["environment"]
                self.problem(where, str(exc))
            return None

    def _may_share(self, first: Resolution, role: str | None, replicas: int) -> bool:
        """Every task resolves to one port: allowed only where the policy says so."""
        who = _plural(role or "DHT", replicas)
        if first.source == "legacy":
            if self.policy.legacy_mode:
                return True
            self.problem(
                ["environment", "LEGACY_PORT_MODE"],
                f"LEGACY_PORT_MODE puts all {who} on port {first.port}; "
                "the policy does not allow legacy mode (legacy_mode: false): remove "
                "LEGACY_PORT_MODE, or allow it in the port policy (legacy_mode: true)",
            )
        elif first.source == "DHT_PORT":
            if self.policy.legacy_mode or not self.policy.one_port_per_worker:
                return True
            self.problem(
                ["environment", "DHT_PORT"],
                f"{who} would all use DHT_PORT={first.port}, but the policy "
                "gives one port per task; set TASK_SLOT and BASE_PORT instead of DHT_PORT",
            )
        else:
            value = self.env.get(first.source, "")
            self.problem(
                ["environment", first.source],
                f"{first.source} is fixed at '{value}', so all {who} would get the same "
                f"port; set TASK_SLOT to '{SLOT_PLACEHOLDER}'",
            )
        return False

    def _within_policy(
        self,
        role: str | None,
        ports: PortRange,
        source: str,
        first: Resolution,
        replicas: int,
    ) -> ServicePorts | None:
        """The resolver's ports must also be the policy's: the role's range, nothing blocked."""
        where: list[str | int] = ["environment", source if source in self.env else "CQKD_ROLE"]
        name = role or self.policy.role_of_port(ports.start)
        if name is None:
            self.problem(
                where,
                f"port {ports.start} is outside every role's range "
                f"({self.policy.describe_roles()})",
            )
            return None
        rng = self.policy.roles[name]
        if ports.start not in rng:
            self.problem(where, f"port {ports.start} is outside the {name} range {rng}")
            return None
        if ports.end > rng.end:
            # Already read by the resolver for this very port, so it parses.
            offset = optional_int(self.env, "PORT_OFFSET") if first.slot else None
            shifted = f" from PORT_OFFSET {offset}" if offset else ""
            fits = rng.end - ports.start + 1
            self.problem(
                ["deploy", "replicas"],
                f"{_plural(name, replicas)} need ports {ports}{shifted}, but the {name} range "
                f"is {rng} ({len(rng)} ports): scale the service down to {fits} or widen "
                f"the {name} range in the port policy to end at {ports.end} or later",
            )
            return None
        end = optional_int(self.env, "PORT_RANGE_END")
        if end is not None and end > rng.end:
            self.problem(
                ["environment", "PORT_RANGE_END"],
                f"PORT_RANGE_END='{end}' reaches past the {name} range end {rng.end}: "
                f"scaling up would hand out ports of another role; lower it to {rng.end}, or "
                f"widen the {name} range in the port policy to end at {end}",
            )
        for port in self.policy.blocked_in(ports):
            self.problem(
                ["deploy", "replicas"] if len(ports) > 1 else where,
                f"slot {port - ports.start + 1} would get port {port}, which the policy blocks"
                if len(ports) > 1
                else f"port {port} is blocked by the policy",
            )
        return ServicePorts(
            self.file,
            self.name,
            name,
            ports,
            first.protocol,
            on_host=self.on_host,
            range_end=rng.end,
            source=first.source,
            group=self.labels.get(GROUP_LABEL),
            pinned=node_pin(self.deploy),
        )

    # --- the sealed control port ---------------------------------------------

    def control_port(self) -> int | None:
        """CQKD_CONTROL_PORT as the node will read it, held to the policy's control range.

        The node refuses to start with a port and no key file (or a port that
        is not one), so those are problems here, before a deploy.
        """
        raw = self.env.get(CONTROL_PORT_VARIABLE, "").strip()
        if not raw:
            return None
        where = ["environment", CONTROL_PORT_VARIABLE]
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            self.problem(where, f"{CONTROL_PORT_VARIABLE}={raw!r} is not a port (1-65535)")
            return None
        port = self.control = int(raw)
        if not self.env.get(CONTROL_KEY_VARIABLE, "").strip():
            self.problem(
                where,
                f"{CONTROL_PORT_VARIABLE} is set but {CONTROL_KEY_VARIABLE} is not: the node "
                "refuses to start without the stack's control key (render adds both)",
            )
        control = self.policy.control
        if control is None:
            self.problem(
                where,
                f"control port {port}, but the policy has no control range: add one "
                "(control: {start: 6100, end: 6109}) or drop the port",
            )
        elif port not in control:
            self.problem(
                where,
                f"control port {port} is outside the policy's control range {control}",
            )
        return port

    def _control_entry_ok(self, where: list[str | int], port: PublishedPort) -> None:
        """An entry into the control range publishes this service's own control port, as TCP."""
        control = self.policy.control
        own = self.control
        targets_control = own is not None and port.target is not None and own in port.target
        in_range = control is not None and any(
            r is not None and r.overlaps(control) for r in (port.target, port.published)
        )
        if not targets_control and in_range:
            self.problem(
                where,
                f"'{port.spec}' is in the control range {control}, which the policy keeps "
                f"for the special nodes' {CONTROL_PORT_VARIABLE}; publish another port",
            )
            return
        if targets_control and port.protocol != "tcp":
            self.problem(
                where,
                f"the control port {own} speaks TCP, but '{port.spec}' publishes "
                f"{port.protocol}: set protocol: tcp",
            )

    # --- published ports ------------------------------------------------------

    def published(self, own: ServicePorts | None) -> list[ServicePorts]:
        """Every port the service publishes on the hosts, checked one entry at a time."""
        claims = []
        entries = self.service.get("ports") or []
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            port, error = published_ports(entry)
            if error:
                self.problem(["ports", i], error)
                continue
            assert port is not None
            if self._published_ok(i, port, own):
                claims += self._published_claims(i, port, own)
        return claims

    def _published_ok(self, i: int, port: PublishedPort, own: ServicePorts | None) -> bool:
        """One entry's problems; each says what to do, and doing it gives a valid entry."""
        where: list[str | int] = ["ports", i]
        before = len(self.problems)
        if port.templated:
            self.problem(where, f"published port '{port.spec}' is templated; {TEMPLATED_PORT_FIX}")
            return False
        self._control_entry_ok(where, port)
        dht = own is not None or self.is_dht
        if dht and self.replicated and self.replicas > 1:
            self.problem(where, self._many_tasks(port, own))
            return False
        if dht and port.is_range:
            self.problem(
                where,
                f"published port range '{port.spec}' gives the task every port of the range, "
                f"but it listens on one; {self._own_port_fix(own)}",
            )
            return False
        if port.mode == "ingress" and self.deploy.get("endpoint_mode") == "dnsrr":
            several = self.replicated and self.replicas > 1 and not self._one_per_node()
            also = (
                f" and deploy.placement.max_replicas_per_node: 1 (its {self.replicas} tasks "
                "cannot share a host port on one node)"
                if several
                else ""
            )
            self.problem(
                where,
                f"port '{port.spec}' is published in ingress mode, which Docker rejects with "
                f"endpoint_mode: dnsrr; publish it with mode: host{also}, or drop it",
            )
        if port.published is None:
            return len(self.problems) == before
        if port.published.start < MIN_PORT and not self.policy.allow_privileged_ports:
            self.problem(
                where,
                f"published port {port.published} is privileged (below {MIN_PORT}); the "
                "policy does not allow privileged ports (allow_privileged_ports: false): "
                f"publish a port from {MIN_PORT} up, or allow them in the port policy "
                "(allow_privileged_ports: true)",
            )
        for blocked in self.policy.blocked_in(port.published):
            self.problem(
                where,
                f"published port {blocked} is blocked by the policy: publish another port, "
                "or take it out of the policy's blocked_ports",
            )
        self._published_in_role_range(where, port, own)
        shared = self.replicated and self.replicas > 1
        if shared and port.mode == "host" and not self._one_per_node():
            self.problem(
                where,
                f"{self.replicas} tasks publish host port {port.published} (mode: host); "
                "two of them on one node cannot both bind it: set "
                "deploy.placement.max_replicas_per_node: 1 or publish none",
            )
        return len(self.problems) == before

    def _many_tasks(self, port: PublishedPort, own: ServicePorts | None) -> str:
        """Why no published port can serve a DHT service of several tasks, and the way out.

        Each task listens on a port of its own, so one published port (or a
        range through the routing mesh) reaches one task, or any one.
        """
        count = self.replicas
        theirs = f"its own port ({own.ports}, one each)" if own is not None else "its own port"
        if port.is_range:
            why = f"published port range '{port.spec}' gives every task every port of the range"
        elif port.mode == "ingress" and self.deploy.get("endpoint_mode") == "dnsrr":
            why = (
                f"port '{port.spec}' is published in ingress mode, which Docker rejects with "
                "endpoint_mode: dnsrr (and the routing mesh would hand each packet to any one "
                "of the tasks)"
            )
        elif port.mode == "ingress":
            why = (
                f"port '{port.spec}' is published through the routing mesh: each packet "
                "reaches any one of the tasks"
            )
        else:
            why = f"port '{port.spec}' (mode: host) reaches one port"
        return (
            f"{why}, but each of the {count} tasks listens on {theirs}; publish none: the "
            "network reaches every task at its own port, and host networking "
            "(`render --network host`, no ports:) reaches each task at its port from outside "
            "the swarm"
        )

    @staticmethod
    def _own_port_fix(own: ServicePorts | None) -> str:
        if own is None:
            return "publish only the port it listens on, with mode: host"
        port, protocol = own.ports.start, own.protocol
        return (
            f"publish only its own port {port}: "
            f"{{target: {port}, published: {port}, protocol: {protocol}, mode: host}}"
        )

    def _published_in_role_range(
        self, where: list[str | int], port: PublishedPort, own: ServicePorts | None
    ) -> None:
        """Role ranges belong to DHT tasks; only a task's own port may be published there."""
        assert port.published is not None
        if own is not None and port.target is not None:
            if not own.ports.overlaps(port.target) or port.target.start not in own.ports:
                self.problem(
                    where,
                    f"target port {port.target} is not the port this service's task listens "
                    f"on ({own.ports}), so nothing would answer behind it; "
                    f"{self._own_port_fix(own)}",
                )
                return
            if port.published == port.target and own.ports.start == port.published.start:
                return
        for name, rng in self.policy.roles.items():
            if port.published.overlaps(rng):
                self.problem(
                    where,
                    f"published port {port.published} is in the {name} range {rng}, which "
                    "the policy reserves for DHT tasks; publish it outside every role range",
                )

    def _one_per_node(self) -> bool:
        placement = self.deploy.get("placement") or {}
        return placement.get("max_replicas_per_node") == 1

    def _published_claims(
        self, i: int, port: PublishedPort, own: ServicePorts | None
    ) -> list[ServicePorts]:
        if port.published is None:
            return []
        mine = own is not None and port.published == port.target == own.ports
        return [
            ServicePorts(
                self.file,
                self.name,
                "published",
                port.published,
                port.protocol,
                on_host=True,
                path=json_path(["services", self.name, "ports", i]),
                published=True,
                own=mine,
                pinned=node_pin(self.deploy),
            )
        ]


def check_service(
    file: str,
    name: str,
    service: dict[str, Any],
    policy: Policy,
    on_host: bool = False,
    origins: Mapping[str, EnvOrigin] | None = None,
) -> tuple[list[Problem], list[ServicePorts]]:
    """One service's problems and the ports it claims (DHT port range, published ports).

    ``origins``: the variables of its environment that an env file set.
    """
    check = _ServiceCheck(file, name, service, policy, on_host, origins)
    check.deploy_modes()
    check.control_port()
    own = check.dht_ports() if check.is_dht else None
    claims = [own] if own is not None else []
    claims += check.published(own)
    return check.problems, claims


def check_services(
    doc: dict[str, Any],
    file: str,
    policy: Policy,
    target: Target = swarm.TARGET,
    taken: Sequence[TakenSubnet] = (),
    origins: Mapping[str, Mapping[str, EnvOrigin]] | None = None,
) -> tuple[list[Problem], list[ServicePorts]]:
    """The project's rules on a document Docker's schema accepts, then the target's own.

    ``target``'s rules know what its tool needs besides ports: Swarm's
    overlays, docker-compose's bridges on one host. ``taken``: subnets the
    engine's networks hold. ``origins``: per service, the variables an env
    file set (``LoadedStack.env_origins``).
    """
    problems: list[Problem] = []
    claims: list[ServicePorts] = []
    if not doc.get("services"):
        # Docker accepts a file without services; as a stack it deploys nothing.
        problems.append(Problem(file, "$.services", "no services: a stack needs at least one"))
        return problems, claims
    for name, service in doc["services"].items():
        found, claimed = check_service(
            file, name, service, policy, _on_host_network(doc, service), (origins or {}).get(name)
        )
        problems += found
        claims += claimed
    problems += target.problems(doc, file, policy, taken)
    return problems, claims


# A label name stops at the operator, so the match never backtracks into it.
_PIN = re.compile(r"\s*(node\.labels\.[^\s=!]+|node\.id|node\.hostname)\s*==\s*(\S+)\s*")


def node_pin(deploy: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (attribute, value) of the first constraint that holds a service to named nodes.

    A node has one value for each of these, so two services pinned on one
    attribute to different values never run on the same node.
    """
    constraints = (deploy.get("placement") or {}).get("constraints") or []
    for constraint in constraints if isinstance(constraints, list) else []:
        found = _PIN.fullmatch(constraint) if isinstance(constraint, str) else None
        if found:
            return found.group(1), found.group(2)
    return None


def _apart(a: ServicePorts, b: ServicePorts) -> bool:
    """Two claims that can never meet in one network namespace, whatever their ports.

    On different nodes (pinned to different values of one attribute), nothing
    they bind meets. Two worker groups of one stack on an overlay give every
    task an address of its own, so their equal DHT ports are different
    endpoints; that is what groups are for, and only they are let off.
    """
    if a.pinned and b.pinned and a.pinned[0] == b.pinned[0] and a.pinned[1] != b.pinned[1]:
        return True
    overlay_dht = not (a.on_host or b.on_host or a.published or b.published)
    groups = a.group is not None and b.group is not None and a.group != b.group
    return overlay_dht and groups and a.file == b.file


def _conflict(a: ServicePorts, b: ServicePorts) -> bool:
    """Whether two claims can bind the same port in the same network namespace."""
    if a.protocol != b.protocol or _apart(a, b):
        return False
    if a.service == b.service and a.file == b.file:
        # A service's own port published by one of its entries is fine; the
        # same host port in two of its entries is not.
        return a.published and b.published and a.path != b.path
    both_dht = not a.published and not b.published
    return both_dht or (a.on_host and b.on_host)


def collision_problems(
    claims: Sequence[ServicePorts], existing: Sequence[ServicePorts] = ()
) -> list[Problem]:
    """No two services, in one file, several files or a live stack, may share a port.

    ``existing`` are claims already made (services deployed on the swarm);
    problems are reported only on the new claims, at most one per claim, so
    the report grows linearly with the stack. A sweep over the claims sorted
    by first port keeps the work near n log n even for a hostile file with
    thousands of services: each claim stops at its first conflict.
    """
    new = {id(claim) for claim in claims}
    reported: dict[int, ServicePorts] = {}
    everything = [*existing, *claims]
    active: list[tuple[int, int, ServicePorts]] = []  # (end, input order, claim)
    ordered = sorted(enumerate(everything), key=lambda pair: pair[1].ports.start)
    for i, claim in ordered:
        while active and active[0][0] < claim.ports.start:
            heapq.heappop(active)
        for _, j, other in active:
            if _conflict(claim, other):
                # The one given later answers for the pair, as a reader expects.
                later, earlier = (claim, other) if i > j else (other, claim)
                if id(later) in new and id(later) not in reported:
                    reported[id(later)] = earlier
                break
        heapq.heappush(active, (claim.ports.end, i, claim))
    # A service whose DHT port collides also collides where it publishes that
    # port: one problem, whose fix (another port) moves both.
    moved = {(c.file, c.service) for c in claims if id(c) in reported and not c.published}
    return [
        _collision(claim, reported[id(claim)])
        for claim in claims
        if id(claim) in reported and not (claim.own and (claim.file, claim.service) in moved)
    ]


def _move_past(claim: ServicePorts, other: ServicePorts) -> str:
    """How to move ``claim``'s DHT ports past ``other``'s, where its role's range allows it."""
    if claim.source == "WORKER_ID" and len(claim.ports) == 1:
        return f"give {claim.service} a WORKER_ID of its own (a port it publishes goes with it)"
    if claim.source == "DHT_PORT":
        return f"give {claim.service} another DHT_PORT (or TASK_SLOT and BASE_PORT)"
    shift = other.ports.end - claim.ports.start + 1
    moved = PortRange(claim.ports.start + shift, claim.ports.end + shift)
    if claim.range_end is not None and moved.end > claim.range_end:
        need = len(claim.ports) + len(other.ports)
        return (
            f"side by side they need {need} ports, past the {claim.role} range's end "
            f"{claim.range_end}: scale one of them down, or widen the range in the port "
            "policy (and PORT_RANGE_END with it)"
        )
    return f"raise {claim.service}'s PORT_OFFSET by {shift}, to {_ports(moved)}"


def _collision(claim: ServicePorts, other: ServicePorts) -> Problem:
    verb = "overlap" if len(claim.ports) > 1 else "overlaps"
    where = "" if other.file == claim.file else f" in {other.file}"
    what = "published " if claim.published else ""
    fix = (
        "publish one of them on another port"
        if claim.published or other.published
        else _move_past(claim, other)
    )
    return Problem(
        claim.file,
        claim.where,
        f"{what}{_ports(claim.ports)} {verb} service '{other.service}'{where} "
        f"({other.ports}); {fix}",
    )
