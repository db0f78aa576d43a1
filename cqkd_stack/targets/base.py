"""What every target shares: the surface the registry holds, and what each renders from.

A target turns the port policy and the options below into its file, and reads
a file of its kind back with its problems; the command line and the linter
ask a target only through :class:`Target`. Every target sets the resolver's
inputs the same way (:func:`port_environment`) and keeps Docker's (or the
kubelet's) health checks within one budget (:func:`health_interval`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import DEFAULT_NODE_IMAGE
from ..core.contract import TakenSubnet
from ..core.documents import LoadedStack
from ..core.errors import UsageError
from ..core.policy import Policy
from ..core.results import Problem

# Every health check is a process exec through dockerd, containerd and runc
# (~35 ms of CPU). Measured with 200 workers on 2 cores: a 5 s interval (40
# checks/s) kept the machine ~78% busy, 20 s (10/s) ~25%. So the interval
# grows with the stack to stay within this many checks per second in all.
HEALTH_CHECKS_PER_SECOND = 10
MIN_HEALTH_INTERVAL = 5


# A Linux bridge has at most 1024 ports (BR_MAX_PORTS), port 0 being
# reserved: one bridge holds at most 1023 interfaces. A compose network on
# one host is such a bridge, and so is each node's end of a Swarm overlay.
BRIDGE_MAX_CONTAINERS = 1023


@dataclass(frozen=True)
class RenderOptions:
    replicas: int = 50
    image: str = DEFAULT_NODE_IMAGE
    network: str = "overlay"
    port_offset: int = 0
    subnet: str | None = None
    bootstrap_host: str = "127.0.0.1"
    # Host networking: the swarm node whose address is ``bootstrap_host``.
    # The bootstrap is placed there, or other nodes would look for it on a
    # node where it does not run.
    bootstrap_node: str | None = None
    template: Path | None = None
    # A batch with a port offset joins the DHT of this already deployed stack.
    join_stack: str = "cqkd"
    # Docker's per-task health check (an exec per task per interval); off by default.
    healthcheck: bool = False

    # Kubernetes only: the namespace of every object (None: kubectl's), and the
    # workers' first ordinal (.spec.ordinals.start), whose pod gets the first port.
    namespace: str | None = None
    ordinals_start: int = 0

    @property
    def is_batch(self) -> bool:
        """An offset means "more workers beside a running DHT", not a second DHT."""
        return self.port_offset > 0


def refuse_kubernetes_options(options: RenderOptions) -> None:
    """The Kubernetes options mean nothing to Swarm or docker-compose: refused, not dropped."""
    if options.namespace or options.ordinals_start:
        raise UsageError("--namespace and --ordinals-start apply to --target kubernetes")


def health_interval(tasks: int) -> int:
    """Seconds between health checks of one task, so the whole stack stays in budget."""
    return max(MIN_HEALTH_INTERVAL, math.ceil(tasks / HEALTH_CHECKS_PER_SECOND))


def port_environment(policy: Policy, role: str, offset: int) -> dict[str, str]:
    """The resolver's inputs for a role, from the policy: every target sets the same ones."""
    rng = policy.role_range(role)
    return {
        "CQKD_ROLE": role,
        "BASE_PORT": str(rng.start),
        "PORT_RANGE_END": str(rng.end),
        "PORT_OFFSET": str(offset),
        "PORT_PROTOCOL": policy.protocol,
    }


class NoAliasDumper(yaml.SafeDumper):
    """Template anchors are shared objects; the output should spell them out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _NoAliasCDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """NoAliasDumper with libyaml's emitter (when PyYAML has it)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# Strings for which libyaml's emitter writes byte for byte what PyYAML's does. It
# does not for every string: an empty key, a key past ~128 characters, long or
# non-ASCII text folded or escaped otherwise (tests/unit/targets/test_dump.py).
_PLAIN_TEXT = re.compile(r"[ -~]{1,100}")


def libyaml_writes_alike(data: Any) -> bool:
    """Whether libyaml's emitter writes ``data`` exactly as PyYAML's: only plain values
    and short printable ASCII strings, at any depth."""
    kind = type(data)
    if kind is str:
        return _PLAIN_TEXT.fullmatch(data) is not None
    if kind is dict:
        return all(
            libyaml_writes_alike(key) and libyaml_writes_alike(value) for key, value in data.items()
        )
    if kind is list:
        return all(libyaml_writes_alike(item) for item in data)
    return kind in (int, float, bool, type(None))


def dump_documents(docs: list[Any]) -> str:
    """YAML documents as render writes them: block style, keys in order, no aliases.

    libyaml's emitter writes a 1000-worker stack in ~1 ms against ~9 ms; it is
    used only for documents it writes exactly as PyYAML's emitter does, so the
    output does not depend on which one ran.
    """
    dumper = _NoAliasCDumper if libyaml_writes_alike(docs) else NoAliasDumper
    # One document: what yaml.dump writes, which is dump_all of a list of one.
    return yaml.dump_all(docs, Dumper=dumper, sort_keys=False, default_flow_style=False)


Renderer = Callable[[Policy, RenderOptions], str]
# (text, file) -> the document as the target's tool reads it, or None and why.
Loader = Callable[[str, str], LoadedStack]
# (document, file, policy, subnets the engine has given) -> the target's own problems;
# each target takes what it needs of the last two (docker-compose's rules: neither).
Rules = Callable[[dict[str, Any], str, Policy, Sequence[TakenSubnet]], list[Problem]]


@dataclass(frozen=True)
class Target:
    """One place the network runs, as the command line and the linter ask it.

    The linter reads a file of the target with ``load`` (the document, or None
    and why; every problem with its line), judges its services by the port
    rules when ``services`` says it has Docker services, then adds ``problems``,
    the target's own rules on the document (what its tool would trip on that
    no schema says). ``load`` is None for the Swarm target: a stack file is
    read as ``docker stack deploy`` reads it, and that reader is the linter's
    own (``lint.stackfile``), which no target may import.
    """

    name: str
    render: Renderer
    # Whether a file's text says it is this target's (the linter's guess unless told).
    declared_by: Callable[[str], bool]
    load: Loader | None
    problems: Rules
    services: bool = True
    # What the linter reports a file it read as this target's to be ("": a stack file).
    note: str = ""
