"""The port policy: which ports each DHT role may use, and which none may.

The policy says where ports may lie; which port a task gets is the
resolver's alone (``contract.resolve_slot`` asks it), so the formula is
written once, in the code every container runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .documents import data_file, parse_yaml, read_text, schema_problems
from .errors import InvalidInput
from .results import Problem

SCHEMA = "port-policy.schema.json"


def default_policy_path() -> Path:
    return data_file("stacks", "port-policy.yml")


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive range of ports, as operators write them (7000-7999)."""

    start: int
    end: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __str__(self) -> str:
        return f"{self.start}-{self.end}" if self.end != self.start else str(self.start)

    def overlaps(self, other: PortRange) -> bool:
        return self.start <= other.end and other.start <= self.end


class PolicyError(InvalidInput):
    """The policy itself is wrong: no stack can be judged against it.

    Exit 1, as for the same file given among ``validate``'s files: a policy
    that was read and fails its checks is invalid input, not a usage error.
    """

    def __init__(self, problems: list[Problem]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"the port policy is invalid:\n{lines}")
        self.problems = problems


@dataclass(frozen=True)
class Policy:
    roles: dict[str, PortRange]
    protocol: str = "udp"
    one_port_per_worker: bool = True
    legacy_mode: bool = False
    allow_privileged_ports: bool = False
    blocked_ports: frozenset[int] = field(default_factory=frozenset)
    source: str = "<built-in>"
    # TCP ports of the special nodes' sealed control port (container side);
    # None: the stack gets none, and dht-check uses Swarm jobs.
    control: PortRange | None = None

    def role_range(self, role: str) -> PortRange:
        try:
            return self.roles[role]
        except KeyError:
            known = ", ".join(self.roles)
            raise InvalidInput(
                f"{self.source}: no role '{role}'; the policy defines: {known}"
            ) from None

    def role_of_port(self, port: int) -> str | None:
        return next((name for name, rng in self.roles.items() if port in rng), None)

    def describe_roles(self) -> str:
        return ", ".join(f"{name} {rng}" for name, rng in self.roles.items())

    def blocked_in(self, ports: PortRange) -> list[int]:
        return sorted(p for p in self.blocked_ports if p in ports)


def policy_problems(data: Any, file: str) -> list[Problem]:
    """Schema errors plus what a schema cannot say: inverted and overlapping ranges."""
    problems = schema_problems(data, SCHEMA, file) or _float_ports(data, file)
    if problems:
        return problems
    ranges = {name: PortRange(r["start"], r["end"]) for name, r in data["roles"].items()}
    for name, rng in ranges.items():
        if rng.start > rng.end:
            problems.append(
                Problem(file, f"$.roles.{name}", f"start {rng.start} is after end {rng.end}")
            )
    if "control" in data:
        control = PortRange(data["control"]["start"], data["control"]["end"])
        if control.start > control.end:
            problems.append(
                Problem(file, "$.control", f"start {control.start} is after end {control.end}")
            )
        for name, rng in ranges.items():
            if control.overlaps(rng):
                problems.append(
                    Problem(
                        file,
                        "$.control",
                        f"range {control} overlaps role '{name}' ({rng}); the control "
                        "ports must lie outside every role range",
                    )
                )
    names = list(ranges)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = ranges[first], ranges[second]
            if a.start <= a.end and b.start <= b.end and a.overlaps(b):
                problems.append(
                    Problem(
                        file,
                        f"$.roles.{second}",
                        f"range {b} overlaps role '{first}' ({a}); role ranges must be disjoint",
                    )
                )
    return problems


def _float_ports(data: dict[str, Any], file: str) -> list[Problem]:
    """JSON Schema's "integer" takes 7000.0; a port written so is a typo or a generator bug."""
    found = [
        (f"$.roles.{name}.{key}", value)
        for name, rng in data["roles"].items()
        for key, value in rng.items()
        if isinstance(value, float)
    ]
    found += [
        (f"$.control.{key}", value)
        for key, value in (data.get("control") or {}).items()
        if isinstance(value, float)
    ]
    found += [
        (f"$.blocked_ports[{i}]", v)
        for i, v in enumerate(data.get("blocked_ports", []))
        if isinstance(v, float)
    ]
    return [
        Problem(file, path, f"{value} is not a port: write ports as whole numbers ({int(value)})")
        for path, value in found
    ]


def load_policy(path: Path | str | None = None) -> Policy:
    """Load and check a policy file; the default is the one shipped in ``stacks/``."""
    path = Path(path) if path is not None else default_policy_path()
    file = str(path)
    data, problems = parse_yaml(read_text(path), file, "a port policy with roles")
    if not problems:
        problems = policy_problems(data, file)
    if problems:
        raise PolicyError(problems)
    return Policy(
        roles={name: PortRange(r["start"], r["end"]) for name, r in data["roles"].items()},
        protocol=data.get("protocol", "udp"),
        one_port_per_worker=data.get("one_port_per_worker", True),
        legacy_mode=data.get("legacy_mode", False),
        allow_privileged_ports=data.get("allow_privileged_ports", False),
        blocked_ports=frozenset(data.get("blocked_ports", [])),
        source=file,
        control=PortRange(data["control"]["start"], data["control"]["end"])
        if "control" in data
        else None,
    )
