"""What the node takes from its environment, and every number it runs by.

Kept apart from the loop so that a bad environment can be refused, and each
bound read, without a socket: ``NodeConfig.from_env`` parses everything
before the node opens anything, and the constants below are the limits the
daemon's docstring lists (it is what ``python -m cqkd_stack.node --help``
prints, so the variables' table stays there). Standard library only, plus
the resolver, the one parser of the port contract.
"""

from __future__ import annotations

import os

from .errors import CqkdError
from .resolver import ResolverError, resolve
from .wire import DEFAULT_CONTROL_SOCKET, split_host_port

# Evaluated by type checkers only: ``typing`` and ``collections.abc`` would
# cost memory and start-up time in every container for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

PROG = "cqkd-node"
ROLES = ("bootstrap", "special", "worker")
DEFAULT_HEALTH_FILE = "/tmp/cqkd-health"
# Seconds between health rounds; every check at rest is counted in rounds.
DEFAULT_HEALTH_INTERVAL = 10.0

# Bytes of values held for others (CQKD_STORE_BYTES): the stack's memory
# limits (stacks/cqkd.stack.tmpl.yml) are sized to hold it.
DEFAULT_STORE_BYTES = 4 * 1024 * 1024

# Kademlia's parameters, as the kademlia library's defaults.
K = 20
ALPHA = 3
ID_BYTES = 20
# rpcudp refuses to send an RPC whose msgpack body is larger.
MAX_RPC_BYTES = 8192
MAX_DATAGRAM = 65535
HEADER_BYTES = 1 + ID_BYTES
# Holding a key costs a dict slot even for a tiny value: at most this many.
MAX_STORED = 4096
# A value is one scalar of at most this many msgpack bytes, so the largest
# honest request (a STORE) stays under MAX_REQUEST_DATAGRAM and a find_value
# answer under REPLY_FACTOR times the request that asks for it.
MAX_VALUE_BYTES = 512
# Requests are a name and up to three short arguments: anything longer is
# not ours to decode. Responses (only to a message id we sent) may use
# rpcudp's whole limit.
MAX_REQUEST_DATAGRAM = 1024
MAX_RESPONSE_DATAGRAM = HEADER_BYTES + MAX_RPC_BYTES
# msgpack's fixarray of two: every rpcudp body starts [name, args].
BODY_START = 0x92
# An answer is at most this many times the request's bytes; to a sender that
# has not yet answered one of our RPCs, at most UNVERIFIED_REPLY_FACTOR times.
REPLY_FACTOR = 10
UNVERIFIED_REPLY_FACTOR = 3
# A contact is verified by answering our ping; these bound that work.
MAX_VERIFYING = 256
MAX_VERIFIED = 8192
# An address that did not answer is not pinged again for this long.
UNREACHABLE_FOR = 60.0
# What one newcomer can be handed at most when it joins the table.
HANDOVER_MAX_VALUES = 32
HANDOVER_MAX_BYTES = 16 * 1024
# A lookup asks at most this many nodes and remembers at most this many.
LOOKUP_MAX_QUERIES = 100
LOOKUP_MAX_KNOWN = 8 * K
# Republish lookups run this many at a time.
REPUBLISH_PARALLEL = 2
# The values this node published through its control socket, republished.
MAX_PUBLISHED = 1024
# A source the rate limit finds flooding is dropped by the kernel this long;
# at most this many at a time (guard.KernelMute).
MUTE_SECONDS = 60.0
MAX_MUTED = 64
# A control client that does not read its reply is dropped after this long.
CONTROL_WRITE_TIMEOUT = 2.0
# accept() failing with EMFILE: stop watching the listener for this long.
ACCEPT_PAUSE = 0.5

# A control operation crawls the network; a crawl round waits at most one RPC
# timeout, so 30 s covers several rounds without letting a client hang forever.
OP_TIMEOUT = 30.0
# A request is a key and a value; an RPC is capped at 8 KiB anyway.
MAX_REQUEST_BYTES = 64 * 1024
# The network control port (Alice, Bob; see auth.py) is open to anyone who
# can reach it: a sealed request (a 512-byte value, a key, MAC, nonce,
# timestamp) fits in 4 KiB, must arrive within 5 s, and 8 clients at a time
# are served (the CLI uses one); more are closed at once.
MAX_NETWORK_REQUEST_BYTES = 4096
NETWORK_READ_TIMEOUT = 5.0
MAX_NETWORK_CLIENTS = 8
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH = 107
# How long one name lookup may take before the join attempt counts it as failed.
DNS_TIMEOUT = 10.0
# Contacts pinged per health round: a tenth of the routing table, within bounds.
NEIGHBOUR_CHECK_MIN = 3
NEIGHBOUR_CHECK_MAX = 50
# At rest a node learns who is alive from the traffic it gets anyway (a
# request from a contact, an answer to our RPC), and pings only what it has
# not heard from for a while, counted in health rounds (CQKD_HEALTH_INTERVAL):
# its bootstrap nodes after BOOTSTRAP_CHECK_ROUNDS (a lost bootstrap must be
# noticed soon: issue 10's split), other contacts after CONTACT_STALE_ROUNDS
# (an hour at the default 10 s rounds: the paper refreshes a bucket that
# has been quiet for an hour). A bootstrap node hears from every node that
# knows it each BOOTSTRAP_CHECK_ROUNDS, so its contacts are stale sooner,
# which finds its dead contacts before it hands them to joining nodes, at no
# cost at rest. Pinging a sample every round kept 1000 idle nodes at 0.06
# cores; 3 / 180 / 5 rounds, waking every round, at 0.048 (on loopback,
# benchmarks/idle_cpu.py). A bootstrap check costs the worker a wake-up, a
# send and a receive, and the bootstrap a receive and a send: at 1000
# workers every 90 s it is 11 pings a second in all. A lost bootstrap is
# then noticed within 90 s and an RPC timeout (issue 10's repair).
BOOTSTRAP_CHECK_ROUNDS = 9
CONTACT_STALE_ROUNDS = 360
BOOTSTRAP_CONTACT_STALE_ROUNDS = 2 * BOOTSTRAP_CHECK_ROUNDS
# 1000 containers log: a node that cannot join says so at most this often.
JOIN_WARNING_INTERVAL = 30.0

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class NodeConfig:
    """Everything the node takes from its environment, checked up front.

    Parsing the whole environment before opening any socket means a typo in
    the stack fails the task at once with one clear line. A plain class, not
    a dataclass: ``dataclasses`` (with ``inspect``, ``re``...) would cost
    every container memory.
    """

    __slots__ = (
        "bootstrap_nodes",
        "control_key_file",
        "control_port",
        "control_socket",
        "health_file",
        "health_interval",
        "interface",
        "join_backoff",
        "join_backoff_max",
        "log_level",
        "lookup_deadline",
        "max_per_ip",
        "max_per_net24",
        "name",
        "port",
        "rate",
        "republish_interval",
        "role",
        "rpc_timeout",
        "store_bytes",
        "store_quota",
        "value_ttl",
    )

    def __init__(
        self,
        role: str,
        port: int,
        bootstrap_nodes: tuple[tuple[str, int], ...] = (),
        name: str | None = None,
        health_file: str = DEFAULT_HEALTH_FILE,
        control_socket: str = DEFAULT_CONTROL_SOCKET,
        join_backoff: float = 0.5,
        join_backoff_max: float = 5.0,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        # Tasks on one overlay network answer in milliseconds; rpcudp's 5 s made
        # every dead contact cost a lookup five seconds.
        rpc_timeout: float = 2.0,
        interface: str = "0.0.0.0",
        log_level: int = LEVELS["WARNING"],
        store_bytes: int = DEFAULT_STORE_BYTES,
        store_quota: int = 256 * 1024,
        value_ttl: float = 86400.0,
        republish_interval: float = 3600.0,
        rate: float = 100.0,
        max_per_ip: int = 10,
        max_per_net24: int = 64,
        lookup_deadline: float = 20.0,
        control_port: int | None = None,
        control_key_file: str | None = None,
    ) -> None:
        self.role = role
        self.port = port
        self.bootstrap_nodes = bootstrap_nodes
        self.name = name
        self.health_file = health_file
        self.control_socket = control_socket
        self.join_backoff = join_backoff
        self.join_backoff_max = join_backoff_max
        self.health_interval = health_interval
        self.rpc_timeout = rpc_timeout
        self.interface = interface
        self.log_level = log_level
        self.store_bytes = store_bytes
        self.store_quota = store_quota
        self.value_ttl = value_ttl
        self.republish_interval = republish_interval
        self.rate = rate
        self.max_per_ip = max_per_ip
        self.max_per_net24 = max_per_net24
        self.lookup_deadline = lookup_deadline
        self.control_port = control_port
        self.control_key_file = control_key_file

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"NodeConfig({fields})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NodeConfig:
        """Build the configuration or raise ``CqkdError`` naming the bad variable.

        The port comes from :func:`cqkd_stack.resolver.resolve`, the one parser
        of the port contract; its refusal becomes the node's error.
        """
        role = env.get("CQKD_ROLE", "").strip()
        if role not in ROLES:
            shown = f"{role!r}" if role else "not set"
            raise CqkdError(f"CQKD_ROLE is {shown}; expected one of {', '.join(ROLES)}")
        try:
            resolution = resolve(env)
        except ResolverError as exc:
            raise CqkdError(str(exc)) from None
        if resolution.protocol != "udp":
            raise CqkdError(f"PORT_PROTOCOL={resolution.protocol}: the node speaks UDP only")
        nodes = parse_bootstrap_nodes(env.get("BOOTSTRAP_NODES", ""))
        if role != "bootstrap" and not nodes:
            raise CqkdError(f"a {role} node needs BOOTSTRAP_NODES (host:port,...) to join")
        control_socket = env.get("CQKD_CONTROL_SOCKET") or DEFAULT_CONTROL_SOCKET
        if len(os.fsencode(control_socket)) > MAX_SOCKET_PATH:
            raise CqkdError(
                f"CQKD_CONTROL_SOCKET={control_socket} is longer than the "
                f"{MAX_SOCKET_PATH} bytes a Unix socket path may have"
            )
        control_port, key_file = parse_control_port(env)
        level_name = (env.get("CQKD_LOG_LEVEL") or "WARNING").strip().upper()
        backoff = _parse_number(env, "JOIN_BACKOFF", 0.5)
        return cls(
            role=role,
            port=resolution.port,
            bootstrap_nodes=nodes,
            name=(env.get("CQKD_NODE_NAME") or "").strip() or None,
            health_file=env.get("CQKD_HEALTH_FILE") or DEFAULT_HEALTH_FILE,
            control_socket=control_socket,
            join_backoff=backoff,
            join_backoff_max=max(backoff, _parse_number(env, "JOIN_BACKOFF_MAX", 5.0)),
            health_interval=_parse_number(env, "CQKD_HEALTH_INTERVAL", DEFAULT_HEALTH_INTERVAL),
            rpc_timeout=_parse_number(env, "CQKD_RPC_TIMEOUT", 2.0),
            interface=resolution.bind_host,
            log_level=LEVELS.get(level_name, LEVELS["WARNING"]),
            store_bytes=int(_parse_number(env, "CQKD_STORE_BYTES", DEFAULT_STORE_BYTES)),
            store_quota=int(_parse_number(env, "CQKD_STORE_QUOTA", 256 * 1024)),
            value_ttl=_parse_number(env, "CQKD_VALUE_TTL", 86400.0),
            republish_interval=_parse_number(env, "CQKD_REPUBLISH_INTERVAL", 3600.0),
            rate=_parse_number(env, "CQKD_RATE", 100.0),
            max_per_ip=max(1, int(_parse_number(env, "CQKD_MAX_PER_IP", 10))),
            max_per_net24=max(1, int(_parse_number(env, "CQKD_MAX_PER_NET24", 64))),
            lookup_deadline=_parse_number(env, "CQKD_LOOKUP_DEADLINE", 20.0),
            control_port=control_port,
            control_key_file=key_file,
        )


def parse_control_port(env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """(TCP port, key file) of the network control port, or (None, None) for none.

    The port is opened only with a key file: no key, no port (workers have
    neither). A port without a key file is refused rather than ignored, so a
    stack that forgot the key says so instead of quietly losing the port.
    """
    raw = (env.get("CQKD_CONTROL_PORT") or "").strip()
    key_file = (env.get("CQKD_CONTROL_KEY_FILE") or "").strip() or None
    if not raw and key_file is None:
        return None, None
    if not raw:
        raise CqkdError("CQKD_CONTROL_KEY_FILE is set but CQKD_CONTROL_PORT is not")
    if key_file is None:
        raise CqkdError(
            "CQKD_CONTROL_PORT is set but CQKD_CONTROL_KEY_FILE is not: the network "
            "control port only opens with the stack's key"
        )
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise CqkdError(f"CQKD_CONTROL_PORT={raw!r} is not a port (1-65535)")
    return int(raw), key_file


def _parse_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CqkdError(f"{name}={raw!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise CqkdError(f"{name}={raw} must be greater than 0")
    return value


def parse_bootstrap_nodes(raw: str) -> tuple[tuple[str, int], ...]:
    """``"bootstrap:7000, 10.0.0.5:7001"`` → ``(("bootstrap", 7000), ("10.0.0.5", 7001))``.

    Host names are kept as names: Swarm's DNS only knows a service once its
    task runs, so resolving here, once, would freeze a failure. Empty items are
    ignored so a trailing comma from a template is harmless; duplicates are
    dropped because each one would cost a ping per join attempt.
    """
    result: list[tuple[str, int]] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            host, port = split_host_port(item)
        except ValueError as exc:
            raise CqkdError(f"BOOTSTRAP_NODES item {item!r} {exc}") from None
        if (host, port) not in result:
            result.append((host, port))
    return tuple(result)
