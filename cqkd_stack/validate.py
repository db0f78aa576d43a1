"""Stack files → problems: the JSON Schema, then the port rules a schema cannot say.

A stack that fails here is never deployed. Each check names the file, the
path in the document and what was expected, because the reader is an
operator looking at a CI log, not at this code.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .documents import parse_yaml, read_text, schema_problems
from .policy import Policy, PortRange
from .render import ROLE_LABEL, subnet_capacity
from .results import Problem, Results, json_path

SCHEMA = "stack.schema.json"
SLOT_PLACEHOLDER = "{{.Task.Slot}}"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.0.0.0/24")  # Docker's default size for overlays
_TRUE = {"1", "true", "yes", "on"}
TakenSubnet = tuple[str, ipaddress.IPv4Network]


@dataclass(frozen=True)
class ServicePorts:
    """The ports one service's tasks will take, for cross-service collision checks."""

    file: str
    service: str
    role: str
    ports: PortRange
    protocol: str


def key_values(value: Any) -> dict[str, str]:
    """Compose accepts environment and labels as a mapping or a KEY=VALUE list."""
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        pairs = (str(item).split("=", 1) for item in value)
        return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}
    return {}


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _ports(ports: PortRange) -> str:
    return f"port {ports}" if len(ports) == 1 else f"ports {ports}"


def _plural(role: str, count: int) -> str:
    noun = {"worker": "worker", "special": "special node", "bootstrap": "bootstrap node"}
    word = noun.get(role, f"{role} task")
    return f"{count} {word}{'' if count == 1 else 's'}"


class _ServiceCheck:
    """The port checks of one service; collects problems instead of stopping at one."""

    def __init__(self, file: str, name: str, service: dict[str, Any], policy: Policy) -> None:
        self.file, self.name, self.service, self.policy = file, name, service, policy
        self.deploy: dict[str, Any] = service.get("deploy") or {}
        self.env = key_values(service.get("environment"))
        self.labels = key_values(self.deploy.get("labels"))
        self.problems: list[Problem] = []

    def problem(self, where: Iterable[str | int], message: str) -> None:
        path = json_path(["services", self.name, *where])
        self.problems.append(Problem(self.file, path, message))

    @property
    def is_dht(self) -> bool:
        keys = ("CQKD_ROLE", "DHT_PORT", "BASE_PORT", "TASK_SLOT")
        return ROLE_LABEL in self.labels or any(k in self.env for k in keys)

    def published_ports(self) -> None:
        """Swarm cannot give each task its own published port; catch the attempts."""
        dnsrr = self.deploy.get("endpoint_mode") == "dnsrr"
        for i, entry in enumerate(self.service.get("ports") or []):
            if isinstance(entry, dict):
                values = [str(entry.get("published", "")), str(entry.get("target", ""))]
                mode = entry.get("mode", "ingress")
            else:
                values, mode = [str(entry)], "ingress"
            spec = ":".join(v for v in values if v)
            if any("{{" in v for v in values):
                self.problem(
                    ["ports", i],
                    f"published port '{spec}' is templated, but Swarm fills "
                    f"{SLOT_PLACEHOLDER} only in environment, hostname and mounts; "
                    "pass TASK_SLOT in the environment and let the resolver derive the port",
                )
            elif any("-" in v.split("/")[0] for v in values):
                self.problem(
                    ["ports", i],
                    f"published port range '{spec}' gives every task every port of the range; "
                    "each task listens on one port derived from its slot, so publish none "
                    "(or one port with mode: host)",
                )
            if mode == "ingress" and dnsrr:
                self.problem(
                    ["ports", i],
                    f"port '{spec}' is published in ingress mode, which Docker rejects with "
                    "endpoint_mode: dnsrr; publish it with mode: host or drop it",
                )

    def role(self) -> str | None:
        env_role, label_role = self.env.get("CQKD_ROLE"), self.labels.get(ROLE_LABEL)
        if env_role and label_role and env_role != label_role:
            self.problem(
                ["environment", "CQKD_ROLE"],
                f"role '{env_role}' disagrees with deploy label {ROLE_LABEL}='{label_role}'",
            )
        role = env_role or label_role
        if role and role not in self.policy.roles:
            where = ["environment", "CQKD_ROLE"] if env_role else ["deploy", "labels"]
            self.problem(
                where,
                f"unknown role '{role}'; the policy defines {self.policy.describe_roles()}",
            )
            return None
        return role

    def role_for_port(self, role: str | None, port: int, where: list[str | int]) -> str | None:
        """The role whose range must hold ``port``: the declared one, or the one it falls in."""
        name = role or self.policy.role_of_port(port)
        if name is None:
            self.problem(
                where,
                f"port {port} is outside every role's range ({self.policy.describe_roles()})",
            )
            return None
        rng = self.policy.roles[name]
        if port not in rng:
            self.problem(where, f"port {port} is outside the {name} range {rng}")
            return None
        return name

    def port_number(self, key: str) -> int | None:
        value = self.env[key]
        number = _int(value)
        if number is None:
            self.problem(["environment", key], f"{key}='{value}' is not a port number")
        return number

    def ports(self) -> ServicePorts | None:
        role = self.role()
        if self.problems:
            return None
        mode = self.deploy.get("mode", "replicated")
        if mode != "replicated":
            self.problem(
                ["deploy", "mode"],
                f"a {role or 'DHT'} service must be mode: replicated; in mode {mode} tasks "
                "have no slot numbers, so no port can be derived from the slot",
            )
            return None
        replicas = int(self.deploy.get("replicas", 1))
        if "DHT_PORT" in self.env:
            return self._explicit_port(role, replicas)
        return self._slot_ports(role, replicas)

    def _explicit_port(self, role: str | None, replicas: int) -> ServicePorts | None:
        value = self.env["DHT_PORT"]
        if "{{" in value:
            self.problem(
                ["environment", "DHT_PORT"],
                f"DHT_PORT is set from {value} directly, which gives ports 1, 2, 3...; "
                f"set TASK_SLOT: '{SLOT_PLACEHOLDER}' and BASE_PORT and let the resolver "
                "derive the port",
            )
            return None
        port = self.port_number("DHT_PORT")
        if port is None:
            return None
        role = self.role_for_port(role, port, ["environment", "DHT_PORT"])
        if role is None:
            return None
        if replicas > 1 and self.policy.one_port_per_worker and not self.policy.legacy_mode:
            self.problem(
                ["environment", "DHT_PORT"],
                f"{_plural(role, replicas)} would all use DHT_PORT={port}, but the policy "
                "gives one port per task; set TASK_SLOT and BASE_PORT instead of DHT_PORT",
            )
            return None
        return self._claim(role, PortRange(port, port))

    def _slot_ports(self, role: str | None, replicas: int) -> ServicePorts | None:
        if "BASE_PORT" not in self.env:
            self.problem(
                ["environment"],
                "no port source: set BASE_PORT (with TASK_SLOT) or DHT_PORT",
            )
            return None
        base = self.port_number("BASE_PORT")
        offset = _int(self.env.get("PORT_OFFSET", "0"))
        if offset is None or offset < 0:
            value = self.env["PORT_OFFSET"]
            self.problem(
                ["environment", "PORT_OFFSET"], f"PORT_OFFSET='{value}': expected 0 or more"
            )
            return None
        if base is None:
            return None
        role = self.role_for_port(role, base, ["environment", "BASE_PORT"])
        if role is None:
            return None
        rng = self.policy.roles[role]
        end = _int(self.env.get("PORT_RANGE_END", str(rng.end)))
        if end is None or end > rng.end or end < base:
            self.problem(
                ["environment", "PORT_RANGE_END"],
                f"PORT_RANGE_END='{self.env['PORT_RANGE_END']}': expected a port from "
                f"{base} to the {role} range end {rng.end}",
            )
            return None
        if self.env.get("LEGACY_PORT_MODE", "").lower() in _TRUE:
            if replicas > 1 and not self.policy.legacy_mode:
                self.problem(
                    ["environment", "LEGACY_PORT_MODE"],
                    f"LEGACY_PORT_MODE puts all {_plural(role, replicas)} on port {base}; "
                    "the policy does not allow legacy mode (legacy_mode: false)",
                )
                return None
            return self._claim(role, PortRange(base, base))
        slot = self.env.get("TASK_SLOT")
        if slot is None and "WORKER_ID" not in self.env:
            self.problem(
                ["environment"],
                f"no slot source: set TASK_SLOT: '{SLOT_PLACEHOLDER}' so each task gets its port",
            )
            return None
        if slot is not None and SLOT_PLACEHOLDER not in slot and replicas > 1:
            self.problem(
                ["environment", "TASK_SLOT"],
                f"TASK_SLOT is fixed at '{slot}', so all {_plural(role, replicas)} would get "
                f"the same port; set it to '{SLOT_PLACEHOLDER}'",
            )
            return None
        ports = self.policy.ports_for(role, replicas, offset + base - rng.start)
        if ports is None:
            return None
        limit = PortRange(rng.start, end)
        if ports.end > limit.end:
            shifted = f" from PORT_OFFSET {offset}" if offset else ""
            self.problem(
                ["deploy", "replicas"],
                f"{_plural(role, replicas)} need ports {ports}{shifted}, but the {role} range "
                f"is {limit} ({len(limit)} ports)",
            )
            return None
        for port in self.policy.blocked_in(ports):
            slot_number = port - ports.start + 1
            self.problem(
                ["deploy", "replicas"],
                f"slot {slot_number} would get port {port}, which the policy blocks",
            )
        return self._claim(role, ports)

    def _claim(self, role: str, ports: PortRange) -> ServicePorts:
        protocol = self.env.get("PORT_PROTOCOL", self.policy.protocol)
        return ServicePorts(self.file, self.name, role, ports, protocol)


def _network_problems(
    file: str, doc: dict[str, Any], taken: Sequence[TakenSubnet] = ()
) -> list[Problem]:
    """dnsrr gives every task an address on each network it joins: check they fit.

    ``taken`` are subnets of networks that already exist: an overlay that
    overlaps one is created, but its tasks never get addresses.
    """
    problems = []
    networks = doc.get("networks") or {}
    demand: dict[str, int] = {}
    for service in doc["services"].values():
        deploy = service.get("deploy") or {}
        if deploy.get("mode", "replicated") != "replicated":
            continue
        joined = service.get("networks") or ["default"]
        for name in joined:
            demand[name] = demand.get(name, 0) + int(deploy.get("replicas", 1))
    for name, tasks in demand.items():
        network = networks.get(name) or {}
        if network.get("external") or network.get("driver", "overlay") != "overlay":
            continue
        configs = (network.get("ipam") or {}).get("config") or []
        where = ["networks", name, "ipam", "config", 0, "subnet"]
        subnet_text = configs[0].get("subnet") if configs else None
        if subnet_text is None:
            subnet, what = DEFAULT_SUBNET, "Docker's default /24"
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
        capacity = subnet_capacity(subnet)
        if tasks > capacity:
            prefix = next(p for p in range(subnet.prefixlen, 0, -1) if 2 ** (32 - p) - 3 >= tasks)
            problems.append(
                Problem(
                    file,
                    json_path(where),
                    f"{tasks} tasks join network '{name}' and each needs an address, but "
                    f"{what} holds {capacity}; use a /{prefix} or larger",
                )
            )
    return problems


def check_document(
    doc: dict[str, Any], file: str, policy: Policy, taken: Sequence[TakenSubnet] = ()
) -> tuple[list[Problem], list[ServicePorts]]:
    """Schema and semantic problems of one parsed stack, and the ports it claims."""
    problems = schema_problems(doc, SCHEMA, file)
    if problems:
        return problems, []
    claims = []
    for name, service in doc["services"].items():
        check = _ServiceCheck(file, name, service, policy)
        check.published_ports()
        if check.is_dht:
            claim = check.ports()
            if claim is not None:
                claims.append(claim)
        problems += check.problems
    problems += _network_problems(file, doc, taken)
    return problems, claims


def collision_problems(
    claims: Sequence[ServicePorts], existing: Sequence[ServicePorts] = ()
) -> list[Problem]:
    """Two services, in one file, two files or a live stack, must never share a port.

    ``existing`` are claims already made (services deployed on the swarm);
    problems are reported only on the new claims.
    """
    problems = []
    for i, later in enumerate(claims):
        for earlier in [*existing, *claims[:i]]:
            if later.protocol == earlier.protocol and later.ports.overlaps(earlier.ports):
                verb = "overlap" if len(later.ports) > 1 else "overlaps"
                where = "" if earlier.file == later.file else f" in {earlier.file}"
                problems.append(
                    Problem(
                        later.file,
                        json_path(["services", later.service]),
                        f"{_ports(later.ports)} {verb} service '{earlier.service}'{where} "
                        f"({earlier.ports}); give one of them a PORT_OFFSET past the other",
                    )
                )
    return problems


def validate_texts(
    sources: Sequence[tuple[str, str]],
    policy: Policy,
    existing: Sequence[ServicePorts] = (),
    taken: Sequence[TakenSubnet] = (),
) -> Results:
    """Validate (file name, text) pairs together, so collisions across files are found.

    ``existing`` and ``taken`` describe a live swarm (ports other stacks hold,
    subnets other networks use); a linter run has neither.
    """
    results = Results()
    claims: list[ServicePorts] = []
    for file, text in sources:
        results.checked(file)
        doc, problems = parse_yaml(text, file, "a stack with services")
        if doc is not None:
            problems, found = check_document(doc, file, policy, taken)
            claims += found
        results.extend(problems)
    results.extend(collision_problems(claims, existing))
    return results


def validate_files(paths: Sequence[Path | str], policy: Policy) -> Results:
    """Read every file first: a missing one is a usage error before any judgement."""
    sources = [(str(path), read_text(Path(path))) for path in paths]
    return validate_texts(sources, policy)
