"""Compose ``ports:`` entries → the host ports they open, as Docker reads them.

Short syntax is ``[HOST_IP:][PUBLISHED[-END]:]TARGET[-END][/PROTOCOL]`` (an
integer is a target alone); the long syntax is a mapping with ``target``,
``published``, ``protocol`` and ``mode``. Docker's defaults apply: protocol
tcp, mode ingress, no published port means Swarm picks one (30000+).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.policy import PortRange
from ..node.resolver import MAX_PORT
from .stackfile import parse_port_spec


@dataclass(frozen=True)
class PublishedPort:
    """One ``ports:`` entry, parsed."""

    spec: str
    target: PortRange | None
    published: PortRange | None
    protocol: str = "tcp"
    mode: str = "ingress"
    templated: bool = False

    @property
    def is_range(self) -> bool:
        return any(r is not None and len(r) > 1 for r in (self.target, self.published))


class _Refused(ValueError):
    """An entry Docker would refuse, with the reason an operator can act on."""


def _range(text: str, what: str, spec: str) -> PortRange:
    first, _, last = text.partition("-")
    try:
        start, end = int(first), int(last or first)
    except ValueError:
        raise _Refused(f"{what} port '{text}' in '{spec}' is not a number or range") from None
    if end < start:
        raise _Refused(f"{what} port range '{text}' in '{spec}' ends before it starts")
    return _ports(start, end, what, spec)


def _ports(start: int, end: int, what: str, spec: str) -> PortRange:
    """Docker takes 0 and ranges of any size; a port a task can be reached on is 1-65535."""
    for number in (start, end):
        if not 1 <= number <= MAX_PORT:
            raise _Refused(f"{what} port {number} in '{spec}' is not a port (1-{MAX_PORT})")
    return PortRange(start, end)


def _short(spec: str) -> PublishedPort:
    """Read as Docker reads it (compose.parse_port_spec), then held to real port numbers."""
    parsed = parse_port_spec(spec)
    if isinstance(parsed, str):
        raise _Refused(f"'{spec}' is not a valid port mapping: {parsed}")
    target = _ports(*parsed.container, "target", spec)
    published = _ports(*parsed.host, "published", spec) if parsed.host else None
    return PublishedPort(spec, target, published, parsed.protocol)


def _long(entry: dict[str, Any]) -> PublishedPort:
    target_value, published_value = entry.get("target"), entry.get("published")
    spec = ":".join(str(v) for v in (published_value, target_value) if v not in (None, ""))
    if target_value in (None, ""):
        raise _Refused(f"port entry '{spec}' has no target: the container port is required")
    target = _range(str(target_value), "target", spec)
    published = None
    if published_value not in (None, ""):
        published = _range(str(published_value), "published", spec)
    protocol = str(entry.get("protocol") or "tcp").lower()
    return PublishedPort(spec, target, published, protocol, str(entry.get("mode") or "ingress"))


def published_ports(entry: Any) -> tuple[PublishedPort | None, str | None]:
    """The entry parsed, or why it cannot be: (port, None) or (None, message)."""
    raw = str(entry) if not isinstance(entry, dict) else ""
    values = [str(v) for v in entry.values()] if isinstance(entry, dict) else [raw]
    if any("{{" in v for v in values):
        spec = raw or ":".join(values)
        return PublishedPort(spec, None, None, templated=True), None
    try:
        port = _long(entry) if isinstance(entry, dict) else _short(raw)
    except _Refused as exc:
        return None, str(exc)
    published, target = port.published, port.target
    if published is not None and target is not None and len(published) != len(target):
        return None, (
            f"'{port.spec}' publishes {len(published)} ports onto "
            f"{len(target)}: the two ranges must be the same size"
        )
    if port.protocol not in ("tcp", "udp", "sctp"):
        return None, f"protocol '{port.protocol}' in '{port.spec}': expected tcp, udp or sctp"
    if port.mode not in ("ingress", "host"):
        return None, f"mode '{port.mode}' in '{port.spec}': expected ingress or host"
    return port, None
