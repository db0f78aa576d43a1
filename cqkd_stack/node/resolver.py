"""Turn a DHT container's environment into its one port, or refuse loudly.

Swarm can template ``environment`` but not a published port, so every DHT task
gets ``TASK_SLOT={{.Task.Slot}}`` plus its role's range and computes
``BASE_PORT + (slot - 1) + PORT_OFFSET`` here (see "Container environment
contract" in docs/design.md).

This module runs as the entrypoint of 1000+ containers and in images that are
not ours, so it uses the standard library only, imports nothing else from
``cqkd_stack``, and avoids modules that are slow to import (``argparse``,
``dataclasses``, ``typing``): every millisecond here is paid once per task on
every deploy and restart.

Usage::

    python -m cqkd_stack.resolver [--json] [--no-bind-check]
    python -m cqkd_stack.resolver [--no-bind-check] exec -- CMD [ARG ...]

or from Python: ``get_dynamic_port()`` (the environment of this process) and
``resolve(env)`` (any mapping, with the reasons); see docs/ports.md. The file
is self-contained: an image that is not ours may copy it alone.
"""

from __future__ import annotations

import os
import sys

# Evaluated by type checkers only: importing ``typing`` or ``collections.abc``
# at run time would cost start-up time in every container for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PROG = "cqkd-resolver"

# Ports below 1024 need privileges the node does not have; a value there is
# almost always a slot or a typo, never a deliberate choice.
MIN_PORT = 1024
MAX_PORT = 65535
# The seed design's contract: with BASE_PORT unset, a task is a worker and its
# range is the default policy's worker range, so `WORKER_ID=5` alone means
# 7004 and `LEGACY_PORT_MODE=true` alone means 7000. Written out here because
# the resolver reads no policy file; a unit test keeps it equal to
# stacks/port-policy.yml.
DEFAULT_BASE_PORT = 7000
DEFAULT_RANGE_END = 7999

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})

USAGE = f"""\
usage: python -m cqkd_stack.resolver [--json] [--no-bind-check]
       python -m cqkd_stack.resolver [--no-bind-check] exec -- CMD [ARG ...]

Compute this task's DHT port from the environment (DHT_PORT, or
BASE_PORT + (TASK_SLOT - 1) + PORT_OFFSET, or LEGACY_PORT_MODE; BASE_PORT
defaults to 7000, range 7000-7999, PORT_OFFSET to 0; on Kubernetes the slot
is the StatefulSet ordinal (POD_INDEX, or HOSTNAME with STATEFULSET_NAME)
minus ORDINALS_START, plus 1) and check that
it can be bound. Without a subcommand, print the port; with `exec`, export
DHT_PORT=<port> and replace this process with CMD.

options:
  --json           print {{"port", "slot", "source", "role"}} as JSON
  --no-bind-check  do not try to bind the port (dry runs, outside the container)
  -h, --help       show this help

Errors go to stderr as one line starting "{PROG}: error: "; exit 1 for a
bad environment or an unbindable port, 2 for a usage error.
"""


class ResolverError(ValueError):
    """The environment cannot give this task a port it may use.

    A ``ValueError`` so callers that only validate input need not know about
    this module; the message is written for the operator reading ``docker
    service ps --no-trunc`` and is always a single line. ``variable`` names
    the environment variable at fault (None when it is the absence of one),
    so a linter can point at the line in the stack file.
    """

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class Resolution:
    """The port a task will use and why, so logs and ``--json`` can explain it.

    A hand-written class rather than a dataclass or NamedTuple because
    importing ``dataclasses``/``typing`` would dominate the resolver's start-up
    time.
    """

    __slots__ = ("bind_host", "port", "protocol", "role", "slot", "source")

    def __init__(
        self,
        port: int,
        slot: int | None,
        source: str,
        role: str | None = None,
        protocol: str = "udp",
        bind_host: str = "0.0.0.0",
    ) -> None:
        self.port = port
        # None unless the port was computed from a slot: legacy mode and an
        # explicit DHT_PORT ignore the slot, and reporting one would mislead.
        self.slot = slot
        # "DHT_PORT" | "TASK_SLOT" | "WORKER_ID" | "POD_INDEX" | "HOSTNAME" | "legacy"
        self.source = source
        self.role = role
        self.protocol = protocol
        self.bind_host = bind_host

    def _key(self) -> tuple[object, ...]:
        return (self.port, self.slot, self.source, self.role, self.protocol, self.bind_host)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resolution):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Resolution({fields})"

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` shape: what an operator needs, not the bind details."""
        return {"port": self.port, "slot": self.slot, "source": self.source, "role": self.role}


def _get(env: Mapping[str, str], name: str) -> str | None:
    """An unset and an empty variable mean the same thing.

    Compose and stack files often write ``DHT_PORT: ""`` to switch a value off;
    treating that as a port would turn a harmless blank into an error.
    """
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value


def _reject_template(name: str, raw: str) -> None:
    """Catch values nobody rendered before they become baffling int errors.

    ``{{.Task.Slot}}`` is only filled in by Swarm (not by ``docker run`` or
    Compose), and ``<<.Task.Slot>>`` is our own template's spelling that
    ``invoke render`` replaces; seeing either means the wrong tool started us.
    """
    if "{{" in raw or "}}" in raw or "<<" in raw or ">>" in raw:
        hint = (
            "Swarm fills in {{.Task.Slot}} only for services it runs "
            "(docker stack deploy / docker service create), and `invoke render` "
            "turns <<.Task.Slot>> into it"
        )
        if name == "DHT_PORT":
            hint += (
                "; even rendered, DHT_PORT={{.Task.Slot}} would give ports 1, 2, 3...: "
                "set TASK_SLOT={{.Task.Slot}} with BASE_PORT instead"
            )
        else:
            hint += "; outside Swarm set TASK_SLOT or WORKER_ID to a number"
        raise ResolverError(f"{name}={raw!r} is an unrendered template: {hint}", name)


def _parse_int(name: str, raw: str) -> int:
    """Strict integer parsing, because ``int()`` accepts too much.

    ``int()`` takes ``"7_000"`` and non-ASCII digits; a port typo should fail
    here with the variable's name rather than produce a surprising port.
    """
    _reject_template(name, raw)
    text = raw.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ResolverError(f"{name}={raw!r} is not an integer", name)
    return int(text)


def optional_int(env: Mapping[str, str], name: str) -> int | None:
    """An integer variable of the contract, None when unset; the linter reads them so too."""
    raw = _get(env, name)
    return None if raw is None else _parse_int(name, raw)


def _parse_flag(env: Mapping[str, str], name: str) -> bool:
    """A misspelt switch must not silently mean "off" and hand out other ports."""
    raw = env.get(name, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ResolverError(f"{name}={raw!r} is not a boolean: use true/1/yes or false/0/no", name)


def _describe_range(role: str | None, low: int, high: int) -> str:
    """Name the role in range messages so the operator knows which policy entry to look at."""
    return f"{role} range {low}-{high}" if role else f"range {low}-{high}"


def _check_role_range(base: int | None, end: int | None, role: str | None) -> None:
    """A broken range would make every later message about it wrong."""
    for name, value in (("BASE_PORT", base), ("PORT_RANGE_END", end)):
        if value is not None and not MIN_PORT <= value <= MAX_PORT:
            raise ResolverError(f"{name}={value} is outside {MIN_PORT}..{MAX_PORT}", name)
    if base is not None and end is not None and end < base:
        who = f"the {role} range" if role else "the range"
        raise ResolverError(
            f"PORT_RANGE_END={end} is below BASE_PORT={base}: {who} is empty", "PORT_RANGE_END"
        )


def _slot_source(env: Mapping[str, str]) -> tuple[str, str] | None:
    """TASK_SLOT is what Swarm gives us; WORKER_ID only exists for runs without Swarm."""
    for name in ("TASK_SLOT", "WORKER_ID"):
        raw = _get(env, name)
        if raw is not None:
            return name, raw
    return None


def _ordinal_slot(env: Mapping[str, str]) -> tuple[str, int] | None:
    """A Kubernetes StatefulSet pod's slot: its ordinal, counted from ``ORDINALS_START``.

    The ordinal comes from ``POD_INDEX`` (the downward API's
    ``metadata.labels['apps.kubernetes.io/pod-index']``), else from the pod's
    host name ``<STATEFULSET_NAME>-<ordinal>`` (clusters older than the
    label). Ordinal ``ORDINALS_START`` (``.spec.ordinals.start``, default 0)
    is slot 1, so the first pod gets the range's first port.
    """
    raw = _get(env, "POD_INDEX")
    name = "POD_INDEX"
    if raw is None:
        prefix = _get(env, "STATEFULSET_NAME")
        if prefix is None:
            return None
        name = "HOSTNAME"
        host = (_get(env, "HOSTNAME") or "").strip()
        head, dash, raw = host.rpartition("-")
        if not dash or head != prefix.strip():
            raise ResolverError(
                f"HOSTNAME={host!r} is not <STATEFULSET_NAME>-<ordinal> with "
                f"STATEFULSET_NAME={prefix.strip()!r}: set POD_INDEX from the pod's "
                "apps.kubernetes.io/pod-index label, or fix STATEFULSET_NAME",
                "STATEFULSET_NAME",
            )
    ordinal = _parse_int(name, raw)
    start = optional_int(env, "ORDINALS_START") or 0
    if ordinal < start:
        raise ResolverError(f"{name} gives ordinal {ordinal}, below ORDINALS_START={start}", name)
    return name, ordinal - start + 1


def _looks_like_slot(env: Mapping[str, str], port: int) -> bool:
    """Spot ``DHT_PORT={{.Task.Slot}}``, the mistake this whole tool exists to stop.

    A rendered slot is 1, 2, 3..., so anything under 1024 is one, and so is a
    value equal to the task's own slot.
    """
    if 1 <= port < MIN_PORT:
        return True
    found = _slot_source(env)
    if found is None:
        return False
    raw = found[1].strip()
    return raw.isascii() and raw.isdigit() and int(raw) == port


def _explicit_port(
    env: Mapping[str, str], raw: str, base: int | None, end: int | None, role: str | None
) -> int:
    """An explicit port wins, but only if it is one this role may use."""
    port = _parse_int("DHT_PORT", raw)
    low = base if base is not None else MIN_PORT
    high = end if end is not None else MAX_PORT
    if not low <= port <= high and _looks_like_slot(env, port):
        raise ResolverError(
            f"DHT_PORT={port} looks like a raw {{{{.Task.Slot}}}} (tasks get 1, 2, 3...), "
            "not a port: set TASK_SLOT={{.Task.Slot}} (with BASE_PORT) instead of DHT_PORT "
            "and the resolver computes BASE_PORT + (slot - 1) + PORT_OFFSET",
            "DHT_PORT",
        )
    if not MIN_PORT <= port <= MAX_PORT:
        raise ResolverError(f"DHT_PORT={port} is outside {MIN_PORT}..{MAX_PORT}", "DHT_PORT")
    if not low <= port <= high:
        raise ResolverError(
            f"DHT_PORT={port} is outside the {_describe_range(role, low, high)} "
            "(BASE_PORT..PORT_RANGE_END)",
            "DHT_PORT",
        )
    return port


def resolve(env: Mapping[str, str]) -> Resolution:
    """Compute the task's port from its environment, or raise ResolverError.

    Pure (no sockets, no ``os.environ``) so every rule can be tested without a
    container. Priority: explicit ``DHT_PORT``, then ``LEGACY_PORT_MODE``,
    then the slot formula. There is deliberately no fallback: a wrong or
    random port would join the DHT somewhere nobody can find it.
    """
    role = _get(env, "CQKD_ROLE")
    role = role.strip() if role is not None else None

    protocol_raw = env.get("PORT_PROTOCOL", "")
    protocol = protocol_raw.strip().lower() or "udp"
    if protocol not in ("udp", "tcp"):
        raise ResolverError(f"PORT_PROTOCOL={protocol_raw!r} must be udp or tcp", "PORT_PROTOCOL")
    bind_host = (_get(env, "BIND_HOST") or "0.0.0.0").strip()

    base = optional_int(env, "BASE_PORT")
    end = optional_int(env, "PORT_RANGE_END")
    _check_role_range(base, end, role)

    def done(port: int, slot: int | None, source: str) -> Resolution:
        return Resolution(port, slot, source, role, protocol, bind_host)

    raw_port = _get(env, "DHT_PORT")
    if raw_port is not None:
        return done(_explicit_port(env, raw_port, base, end, role), None, "DHT_PORT")

    default_range = base is None and end is None
    if default_range:
        # An explicit DHT_PORT (above) keeps its old freedom; only the formula
        # and legacy mode fall back to the default worker range.
        base, end = DEFAULT_BASE_PORT, DEFAULT_RANGE_END
    if base is None:
        raise ResolverError(
            f"PORT_RANGE_END={end} is set but BASE_PORT is not: set BASE_PORT to the first "
            f"port of the {role + ' ' if role else ''}role's range, or neither of them "
            f"for the default worker range {DEFAULT_BASE_PORT}-{DEFAULT_RANGE_END}",
            "PORT_RANGE_END",
        )

    if _parse_flag(env, "LEGACY_PORT_MODE"):
        return done(base, None, "legacy")

    found = _slot_source(env)
    ordinal = _ordinal_slot(env) if found is None else None
    if found is None and ordinal is None:
        raise ResolverError(
            "neither TASK_SLOT nor WORKER_ID is set: set TASK_SLOT={{.Task.Slot}} in the "
            "stack (WORKER_ID=<n> outside Swarm; POD_INDEX or STATEFULSET_NAME on "
            "Kubernetes), or an explicit DHT_PORT"
        )
    if ordinal is not None:
        slot_name, slot = ordinal
    else:
        assert found is not None
        slot_name, slot_raw = found
        slot = _parse_int(slot_name, slot_raw)
    if slot < 1:
        raise ResolverError(f"{slot_name}={slot} must be >= 1 (Swarm slots start at 1)", slot_name)

    offset = optional_int(env, "PORT_OFFSET") or 0
    if offset < 0:
        raise ResolverError(f"PORT_OFFSET={offset} must be >= 0", "PORT_OFFSET")

    port = base + (slot - 1) + offset
    high = end if end is not None else MAX_PORT
    if port > high:
        # The range is the environment's (the port policy's, as render wrote
        # it): widening the policy alone would leave PORT_RANGE_END behind.
        widen = (
            "set BASE_PORT and PORT_RANGE_END to a wider range (the port policy's)"
            if default_range
            else "raise PORT_RANGE_END together with the role's range in the port policy"
        )
        raise ResolverError(
            f"slot {slot} ({slot_name}) with PORT_OFFSET={offset} gives port {port}, outside "
            f"the {_describe_range(role, base, high)} (BASE_PORT + (slot - 1) + PORT_OFFSET): "
            f"scale the service down or {widen}",
            slot_name,
        )
    return done(port, slot, slot_name)


def get_dynamic_port(env: Mapping[str, str] | None = None) -> int:
    """This task's DHT port, from ``os.environ`` as it is at the time of the call.

    The design's Python API (its ``scripts/worker_node.py`` calls it): the
    same rules and the same refusals (:class:`ResolverError`, a
    ``ValueError``) as ``python -m cqkd_stack.resolver``, because it is the
    same :func:`resolve`. ``os.environ`` is read at each call, not at import,
    so a process (or a test) that changes it gets the port of what it set.
    It does not try to bind the port, which the caller is about to do
    itself: use :func:`check_bindable` for the command line's bind check.
    ``env`` replaces ``os.environ``, for callers that hold their own mapping.
    """
    return resolve(os.environ if env is None else env).port


def check_bindable(port: int, protocol: str = "udp", host: str = "0.0.0.0") -> None:
    """Fail now, with a clear message, if the node could not bind its port.

    Otherwise the node dies later with a less specific error, or worse, two
    tasks share a port. The socket is closed again before the node starts, so
    this is a check, not a reservation. UDP binds without SO_REUSEADDR, which
    on Linux would let a second UDP socket share a port and hide the conflict;
    TCP sets it so a port in TIME_WAIT from the previous task is not a false
    alarm (a listening TCP socket still conflicts).
    """
    # Only the check needs sockets: the node imports this module for the port
    # alone, and ``socket`` costs it about 0.5 MiB (its enums; see daemon.py).
    import socket

    protocol = protocol.lower()
    if protocol not in ("udp", "tcp"):
        raise ResolverError(f"protocol {protocol!r} must be udp or tcp")
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
        family, _, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            if protocol == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        raise ResolverError(
            f"cannot bind {protocol} port {port} on {host}: {exc}; "
            "another process or task holds it, and the resolver never picks another port"
        ) from exc


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status instead of exiting.

    Hand-rolled parsing: the grammar is three flags and one subcommand, and
    ``argparse`` (with ``gettext`` and ``re``) would be most of our start-up.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    want_json = False
    bind_check = True
    command: list[str] | None = None
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(USAGE, end="")
            return 0
        if arg == "--json":
            want_json = True
        elif arg == "--no-bind-check":
            bind_check = False
        elif arg == "exec":
            # Resolver options may also sit between `exec` and `--`.
            while args and args[0] == "--no-bind-check":
                bind_check = False
                args.pop(0)
            if args and args[0] == "--":
                args.pop(0)
            command = args
            break
        else:
            return _usage_error(f"unknown argument {arg!r}")
    if command is not None:
        if not command:
            return _usage_error("exec needs a command: exec -- CMD [ARG ...]")
        if want_json:
            return _usage_error("--json cannot be combined with exec")

    try:
        result = resolve(os.environ)
        if bind_check:
            check_bindable(result.port, result.protocol, result.bind_host)
    except ResolverError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1

    if command is not None:
        os.environ["DHT_PORT"] = str(result.port)
        sys.stdout.flush()
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"{PROG}: error: cannot run {command[0]!r}: {exc}", file=sys.stderr)
            return 1

    if want_json:
        import json  # only this path needs it; keep it off the entrypoint's start-up

        print(json.dumps(result.as_dict()))
    else:
        print(result.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
