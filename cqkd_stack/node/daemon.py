"""The reference Kademlia node that every DHT task of the stack runs.

Run as ``python3 -m cqkd_stack.node`` (the image's entrypoint). It computes its
own UDP port with ``cqkd_stack.resolver`` from the task's environment
(``TASK_SLOT``/``WORKER_ID``, ``BASE_PORT``, ``PORT_OFFSET``, ``DHT_PORT``,
``LEGACY_PORT_MODE``...; see "Container environment contract" and "The
reference node's interfaces" in docs/design.md), so no second interpreter start
is needed in front of it. The node

* listens on UDP ``BIND_HOST:port`` (default ``0.0.0.0``) and answers
  Kademlia RPCs (``ping``, ``store``, ``find_node``, ``find_value``, ``stun``)
  at once, before it has joined, in the wire format of ``kademlia`` 2.2.3 /
  ``rpcudp`` 5.0.1: one byte (``0`` request, ``1`` response), a 20-byte message
  id, then msgpack; k = 20, alpha = 3, 160-bit ids, k-buckets by XOR distance;
  an unanswered RPC times out after ``CQKD_RPC_TIMEOUT`` and its contact
  leaves the routing table;
* joins through ``BOOTSTRAP_NODES`` (host names resolved to every IPv4 address
  they have, off the event loop) and through any peer it already knows, and
  NEVER gives up: Swarm starts tasks in any order and Docker's DNS lists a
  dnsrr task only once it runs, so a node whose bootstrap is not there yet
  retries with capped exponential backoff and jitter, and says why on stderr
  at the first failure and then at most every 30 s (1000 containers log);
* writes the health file (``:XXXX `` for ``grep -qf FILE /proc/net/udp``) once it
  is in the DHT (a bootstrap node: once it listens) and removes it while it
  has no neighbour, trying a fresh join every health round meanwhile;
* learns which contacts are alive from the traffic it gets anyway, and pings
  only those it has not heard from in 360 health rounds
  (``CQKD_HEALTH_INTERVAL``; a bootstrap node: 18), so dead ones leave the
  table at next to no cost at rest; its bootstrap nodes after 9 rounds
  without news: once none answers (Swarm replaced a lost one), it joins
  again each round until one does, so the nodes that join the replacement
  and the older ones stay one DHT. At rest it sleeps until the next check
  is due, and a contact's check falling due shortly after the bootstrap's
  goes with it, so a worker wakes once a bootstrap check;
* serves ``set`` / ``get`` / ``status`` / ``holds`` on a Unix control socket
  (one JSON line in, one out), where ``get`` always asks the network and
  never this node, and ``holds`` only says whether this node's own store has
  the key (``dht-check --kill-holders`` finds the holders with it);
* stops at once on SIGTERM/SIGINT and exits 0, so tearing down 1000 tasks does
  not wait out ``stop_grace_period`` per task.

Why it is written this way: 1000+ containers each run one, and what a node
imports is what each container costs in memory that is not shared. The
``kademlia`` library needs ``asyncio`` (with ``ssl``, ``logging``...), which
roughly doubles the private memory of the process. So this node is one thread
on one ``selectors`` loop, built on the standard library modules the
interpreter loads anyway (``os``, ``time``) plus ``selectors`` and ``umsgpack``
(the msgpack implementation rpcudp itself uses, pure Python). Sockets and
signals come from ``_socket`` and ``_signal``, the C modules under ``socket``
and ``signal``: those two wrap every constant in an ``enum`` class at import,
about 0.7 MiB of private memory per container (measured in the image), and
``contextlib`` (0.18 MiB with ``functools``) is not imported for ``suppress``.
``json`` and ``hashlib`` are imported only when the control socket
is used; a node id and a message id are just ``os.urandom(20)``. Host
names are looked up in a short-lived forked child that writes the addresses
to a pipe the loop watches: Docker's DNS can be slow under load and
``getaddrinfo`` cannot time out (a stuck child is killed), and the C
library's resolver state (about 0.5 MiB, measured) then never enters the
long-lived process.

It prints exactly one line to stdout (when it first joins); everything else
is quiet unless ``CQKD_LOG_LEVEL`` asks for more.

Environment (besides the port variables, ``CQKD_ROLE`` and ``BOOTSTRAP_NODES``):

``CQKD_NODE_NAME``        optional name of a special node (``alice``), shown in logs and status
``CQKD_HEALTH_FILE``      health file path (default ``/tmp/cqkd-health``)
``CQKD_CONTROL_SOCKET``   control socket path (default ``/tmp/cqkd/control.sock``)
``CQKD_CONTROL_PORT``     TCP port for sealed control requests (Alice, Bob); needs the key file
``CQKD_CONTROL_KEY_FILE`` the stack's control key (a Swarm config); no file, no control port
``JOIN_BACKOFF``          first pause between join attempts in seconds (default 0.5)
``JOIN_BACKOFF_MAX``      longest pause between join attempts (default 5)
``CQKD_HEALTH_INTERVAL``  seconds between neighbour checks (default 10)
``CQKD_RPC_TIMEOUT``      seconds to wait for one Kademlia RPC reply (default 2; rpcudp's is 5)
``CQKD_LOG_LEVEL``        DEBUG, INFO, WARNING (default) or ERROR, for diagnostics on stderr
``CQKD_STORE_BYTES``      byte budget of all values held for others (default 4194304)
``CQKD_STORE_QUOTA``      bytes one source IP may have held here (default 262144)
``CQKD_VALUE_TTL``        seconds a value is held unless stored again (default 86400)
``CQKD_REPUBLISH_INTERVAL`` seconds between republishing held values (default 3600)
``CQKD_RATE``             requests per second served per source ip:port (default 100, burst 2x)
``CQKD_MAX_PER_IP``       routing-table contacts per IP (default 10)
``CQKD_MAX_PER_NET24``    routing-table contacts per /24 (default 64)
``CQKD_LOOKUP_DEADLINE``  seconds any lookup, the join's included, may run (default 20)

Limits on a hostile network (every datagram may come from an attacker):

* nothing is decoded before its size and first bytes are checked: a request
  over ``MAX_REQUEST_DATAGRAM`` (1 KiB) or a response over rpcudp's 8 KiB
  plus header, a response to no message id of ours, a body that does not
  start as ``[name, args]``;
* a request from an unknown id brings at most one ping of ours to its
  address (once per ``UNREACHABLE_FOR`` if unanswered); the contact joins the
  routing table only once it answers there, under the id its own pong gives
  (an id another peer listed for an address is never taken on trust); a
  request never moves a known id to another address, and a failed RPC drops
  a contact only at the address it failed at; at most ``CQKD_MAX_PER_IP`` contacts per IP and
  ``CQKD_MAX_PER_NET24`` per /24 (the defaults hold a 1000-task overlay in a
  /22, and the loopback tests; raise the first for many workers per host in
  host-network mode); one id per address;
* a STORE is accepted only from an address that answered one of our RPCs,
  for a key this node is among the k closest to, with one scalar value of
  at most ``MAX_VALUE_BYTES`` (512) packed bytes, within the store budget and
  the sender IP's quota; when they are spent new keys are refused, nothing is
  evicted; values expire after ``CQKD_VALUE_TTL`` unless stored again;
* an answer is at most ``REPLY_FACTOR`` (10) times its request's bytes, and
  ``UNVERIFIED_REPLY_FACTOR`` (3) times for a sender that never answered us;
  each source ip:port gets ``CQKD_RATE`` requests a second, and one refused
  a burst's worth in a row is dropped by the kernel (a socket filter) for
  ``MUTE_SECONDS`` (60), at most ``MAX_MUTED`` (64) sources at a time;
* a newcomer is handed at most ``HANDOVER_MAX_VALUES`` values and
  ``HANDOVER_MAX_BYTES`` bytes, only once it answered our ping;
* the only datagrams sent to an address that has not answered us are the
  answer to its own request, that one ping, and a lookup's queries to the
  contacts other nodes list (at most ``LOOKUP_MAX_QUERIES`` per lookup, each
  smaller than the answer that listed it);
* contact addresses from the network are IPv4 literals (a host name would
  be resolved on the loop); a lookup ends after ``CQKD_LOOKUP_DEADLINE``, or
  ``LOOKUP_MAX_QUERIES`` RPCs, and keeps at most ``LOOKUP_MAX_KNOWN`` contacts;
* holders republish every value to the current closest nodes each
  ``CQKD_REPUBLISH_INTERVAL``, and the publisher its own values;
* the control socket is created with mode 0600 and refused in a directory
  others may write to without the sticky bit, or over a path another user
  owns (``nodectl`` refuses a listener running as another user); accept()
  failing for want of descriptors pauses the listener 0.5 s instead of
  spinning; a client that does not read its reply is dropped after 2 s; the
  health file is written through a fresh ``O_EXCL | O_NOFOLLOW`` temporary file.
* the TCP control port (``CQKD_CONTROL_PORT``, only with a key file)
  answers only requests sealed with the stack's key (HMAC-SHA256, at most
  30 s old, nonce never seen before); anything else, a request over 4 KiB
  or one not sent within 5 s is closed without a reply; 8 connections at a
  time, more are closed at once.

``JOIN_RETRIES`` is accepted and ignored: the node no longer gives up joining.
"""

from __future__ import annotations

import _signal
import _socket
import os
import selectors
import sys
import time

import umsgpack

from .config import (
    BODY_START,
    BOOTSTRAP_CHECK_ROUNDS,
    BOOTSTRAP_CONTACT_STALE_ROUNDS,
    CONTACT_STALE_ROUNDS,
    DNS_TIMEOUT,
    HANDOVER_MAX_BYTES,
    HANDOVER_MAX_VALUES,
    HEADER_BYTES,
    ID_BYTES,
    JOIN_WARNING_INTERVAL,
    LEVELS,
    MAX_DATAGRAM,
    MAX_MUTED,
    MAX_REQUEST_DATAGRAM,
    MAX_RESPONSE_DATAGRAM,
    MAX_RPC_BYTES,
    MAX_STORED,
    MAX_VALUE_BYTES,
    MAX_VERIFIED,
    MAX_VERIFYING,
    MUTE_SECONDS,
    NEIGHBOUR_CHECK_MAX,
    NEIGHBOUR_CHECK_MIN,
    PROG,
    REPLY_FACTOR,
    REPUBLISH_PARALLEL,
    UNREACHABLE_FOR,
    UNVERIFIED_REPLY_FACTOR,
    K,
    NodeConfig,
)
from .control import ControlServer
from .errors import CqkdError
from .guard import KernelMute, RateLimiter, ValueStore
from .routing import Lookup, RoutingTable, as_int, is_contact_ip, is_id, is_ipv4, value_size
from .wire import PROBE_NODE_ID

# Evaluated by type checkers only: ``typing`` and ``collections.abc`` would
# cost memory and start-up time in every container for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .routing import Contact, Reply

# "after=" in the joined line counts from here: close to process start, so it
# includes imports and is comparable across nodes.
_LOADED = time.monotonic()


def _random_fraction() -> float:
    """A float in [0, 1) for jitter and sampling, without importing ``random``."""
    return int.from_bytes(os.urandom(4), "big") / 4294967296


# --------------------------------------------------------------------------- health file


def health_pattern(port: int) -> str:
    """The text ``grep -qf`` looks for in ``/proc/net/udp``: ``":1B58 "`` for 7000.

    The kernel prints ports as four upper-case hex digits after a colon. The
    trailing space matters: without it the pattern would also match the
    eight-digit timer field (``tm->when``, e.g. ``00:1B58C0DE``) of any socket.
    It still matches a socket whose *remote* port is ours; inside a task's own
    network namespace only the node's sockets are listed, so that is accepted.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return f":{port:04X} "


class HealthFile:
    """The file Swarm's health check greps for; present only while the node is in the DHT."""

    def __init__(self, path: str | os.PathLike[str], port: int) -> None:
        self.path = os.fspath(path)
        self.pattern = health_pattern(port)

    def write(self) -> None:
        """Write atomically: the health check must never read a half-written pattern.

        No trailing newline, because ``grep -f`` would read the empty line
        after it as a pattern that matches every line of /proc/net/udp.
        The temporary file has a fresh random name and is created with
        ``O_EXCL | O_NOFOLLOW``: in a shared directory a name known in advance
        could be a planted symlink, and the write would go where it points.
        ``os.replace`` then swaps the name itself, never following a link there.
        """
        folder, name = os.path.split(self.path)
        tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o644)
            try:
                os.write(fd, self.pattern.encode("ascii"))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CqkdError(f"cannot write health file {self.path}: {exc}") from None

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # The first write the node makes: a read-only root filesystem
            # without a tmpfs on /tmp fails here, so say what to mount.
            raise CqkdError(
                f"cannot write in {os.path.dirname(self.path) or '.'} (health file "
                f"{self.path}): {exc.strerror or exc}; with a read-only root filesystem "
                "mount a tmpfs there (stacks: volumes: [{type: tmpfs, target: /tmp}])"
            ) from None

    def exists(self) -> bool:
        return os.path.exists(self.path)


# --------------------------------------------------------------------------- the node


class _JoinAttempt:
    """One join attempt: pings out, names being resolved, and what went wrong."""

    __slots__ = ("bootstraps", "errors", "names", "over", "pinged", "timer", "waiting")

    def __init__(self) -> None:
        self.pinged: list[tuple[str, int]] = []
        # Addresses that came from BOOTSTRAP_NODES (not from the table).
        self.bootstraps: set[tuple[str, int]] = set()
        self.names: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.waiting = 0
        self.over = False
        self.timer: list[Any] | None = None


class DhtNode:
    """One running node: UDP RPCs, the routing table, joins, health file and control socket.

    Everything happens on one ``selectors`` loop: datagrams, control
    connections, timers (RPC timeouts, join backoff, health rounds), the
    pipes of name-lookup children and the socket the signal handler wakes the
    loop through (``signal.set_wakeup_fd``). Operations
    (lookups, joins, control requests) are callbacks on that loop, so none of
    them stops the node from answering RPCs. The control socket's clients are
    a :class:`~cqkd_stack.node.control.ControlServer`'s, not the node's: they
    are rare, and the datagram path stays in this class alone.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = os.urandom(ID_BYTES)
        self.table = RoutingTable(self.id, K, config.max_per_ip, config.max_per_net24)
        self.storage = ValueStore(
            config.store_bytes, config.store_quota, config.value_ttl, MAX_STORED
        )
        # What this node published through its control socket: it republishes them.
        self.published: dict[bytes, Any] = {}
        self.limiter = RateLimiter(config.rate, 2 * config.rate)
        # Addresses that answered one of our RPCs -> the id their pong gave
        # (None for another RPC's answer); oldest first, bounded.
        self.verified: dict[tuple[str, int], bytes | None] = {}
        # Our verification pings in flight, and addresses that did not answer one.
        self._verifying: set[tuple[str, int]] = set()
        self._unreachable: dict[tuple[str, int], float] = {}
        self._republishing: list[bytes] = []
        self._republish_running = 0
        self.health = HealthFile(config.health_file, config.port)
        self.started = _LOADED
        self.selector = selectors.DefaultSelector()
        self.sock: _socket.socket | None = None
        self.muted: KernelMute | None = None
        self.control: ControlServer | None = None
        # Alice's and Bob's sealed control port (CQKD_CONTROL_PORT), else None.
        self.network_control: ControlServer | None = None
        self.wake_r, self.wake_w = _socket.socketpair()
        # msgid -> (deadline, callback, address)
        self.pending: dict[bytes, tuple[float, Reply, tuple[str, int]]] = {}
        # [when, callback]; a cancelled timer's callback is None
        self.timers: list[list[Any]] = []
        self.stopping = False
        self.announced = False  # the joined line is printed once for the whole life
        self.in_dht = False  # a join succeeded (or, for a bootstrap node, it need not)
        # When the join's second lookup for our own id falls due (see _join_succeeded).
        self.second_lookup_at: float | None = None
        self.attempt: _JoinAttempt | None = None
        self.join_failures = 0
        self.join_delay = config.join_backoff
        # Rejoining for want of a bootstrap while in the DHT: the rounds to the
        # next try after a failed one, and when it is due (see _join_failed).
        self.rejoin_rounds = 1
        self.rejoin_at = 0.0
        self.last_join_error: str | None = None
        self._last_warning: float | None = None
        self._pinging: set[bytes] = set()
        # Node ids that answered at a BOOTSTRAP_NODES address. While none is
        # left (one stopped answering, or another node answers there), each
        # health round joins again: see ``_bootstrap_gone``.
        self.bootstrap_ids: set[bytes] = set()
        # (host, port) -> (pid, pipe) of the child process looking the name up
        self._resolving: dict[tuple[str, int], tuple[int, int]] = {}

    # -- diagnostics

    def say(self, level: str, text: str) -> None:
        if LEVELS[level] >= self.config.log_level:
            print(f"{PROG}: {level.lower()}: {text}", file=sys.stderr, flush=True)

    # -- timers and the loop

    def later(self, delay: float, callback: Callable[[], None]) -> list[Any]:
        timer = [time.monotonic() + delay, callback]
        self.timers.append(timer)
        return timer

    @staticmethod
    def cancel(timer: list[Any] | None) -> None:
        if timer is not None:
            timer[1] = None

    def _timeout(self) -> float | None:
        deadlines = [t[0] for t in self.timers if t[1] is not None]
        deadlines += [entry[0] for entry in self.pending.values()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _run_due(self) -> None:
        now = time.monotonic()
        expired = [msgid for msgid, entry in self.pending.items() if entry[0] <= now]
        for msgid in expired:
            entry = self.pending.pop(msgid, None)
            if entry is not None:
                self._guard(entry[1], False, None)
        due = [t for t in self.timers if t[0] <= now and t[1] is not None]
        self.timers = [t for t in self.timers if t[0] > now and t[1] is not None]
        for timer in due:
            callback, timer[1] = timer[1], None
            if callback is not None:
                self._guard(callback)

    def _guard(self, callback: Callable[..., None], *args: Any) -> None:
        """Run one callback; a bug in one operation must not take the node down."""
        try:
            callback(*args)
        except CqkdError as exc:
            self.say("ERROR", exc.message)
        except Exception as exc:
            self.say("ERROR", f"internal error: {exc!r}")

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0); ``CqkdError`` if the sockets cannot be opened."""
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        _signal.signal(_signal.SIGTERM, self._on_signal)
        _signal.signal(_signal.SIGINT, self._on_signal)
        _signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        try:
            self.start()
            while not self.stopping:
                events = self.selector.select(self._timeout())
                for key, _ in events:
                    if self.stopping:
                        break
                    self._guard(key.data)
                if not self.stopping:
                    self._run_due()
            return 0
        finally:
            self.close()

    def start(self) -> None:
        """Listen on UDP and open the control socket; leftovers of an earlier run go first.

        A restarted container keeps /tmp, and a stale health file would make
        the new process look healthy before it has joined.
        """
        self.health.remove()
        address = (self.config.interface, self.config.port)
        try:
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            self.sock = sock
            sock.bind(address)
        except OSError as exc:
            raise CqkdError(
                f"cannot listen on UDP {address[0]}:{address[1]}: {exc}; "
                "the node never picks another port"
            ) from None
        sock.setblocking(False)
        self.muted = KernelMute(sock, MAX_MUTED, MUTE_SECONDS)
        control = self.control = ControlServer.unix(self, self.config.control_socket)
        if self.config.control_port is not None and self.config.control_key_file:
            from .auth import read_key

            key = read_key(self.config.control_key_file)
            self.network_control = ControlServer.network(
                self, self.config.interface, self.config.control_port, key
            )
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.selector.register(sock, selectors.EVENT_READ, self._on_datagrams)
        for server in (control, self.network_control):
            if server is not None:
                self.selector.register(server.listener, selectors.EVENT_READ, server.on_accept)
        if self.config.role == "bootstrap":
            # Listening is enough: the first node of a network has nobody to join.
            self.announce()
            if self.config.bootstrap_nodes:
                self.join_attempt()
        else:
            self.join_attempt()
        self.later(self.config.health_interval, self.health_round)
        self.later(self.config.republish_interval, self.republish_round)

    def close(self) -> None:
        """Health file first, so the health check fails before anything else goes away."""
        self.health.remove()
        for server in (self.control, self.network_control):
            if server is not None:
                server.close()
        if self.sock is not None:
            self.sock.close()
        for name in list(self._resolving):
            self._end_lookup(name, kill=True)
        _signal.set_wakeup_fd(-1)
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()

    def _on_wake(self) -> None:
        """Drain the wake-up socket; the signal handler has already set ``stopping``."""
        try:
            while self.wake_r.recv(4096):
                pass
        except OSError:
            pass

    # -- RPCs

    def call(self, address: tuple[str, int], name: str, args: list[Any], callback: Reply) -> None:
        """Send one RPC; ``callback(True, answer)`` or, after the RPC timeout, ``(False, None)``."""
        msgid = os.urandom(ID_BYTES)
        deadline = time.monotonic() + self.config.rpc_timeout
        try:
            body = umsgpack.packb([name, args])
            if len(body) > MAX_RPC_BYTES:
                raise ValueError(f"{name} RPC of {len(body)} bytes exceeds 8 KiB")
            assert self.sock is not None
            self.sock.sendto(b"\x00" + msgid + body, address)
        except Exception as exc:  # fails on the next loop turn, never re-entrantly
            self.say("DEBUG", f"cannot send {name} to {address[0]}:{address[1]}: {exc}")
            deadline = 0.0
        self.pending[msgid] = (deadline, callback, address)

    def rpc(
        self, contact: Contact, name: str, args: list[Any], callback: Reply | None = None
    ) -> None:
        """An RPC to a known contact: seen again if it answers, out of the table if not."""

        def settle(ok: bool, data: Any) -> None:
            if not ok:
                # Only the contact at that address: a peer listing a known
                # id at a dead address must not evict the real one.
                if self.table.get(contact[0]) == contact:
                    self._bootstrap_gone(contact[0])
                    self.table.remove(contact[0])
                    self.say("DEBUG", f"no answer from {contact[1]}:{contact[2]}; contact dropped")
            elif name == "ping" and data != contact[0]:
                # Another node answers at that address now (a restart).
                if self.table.get(contact[0]) == contact:
                    self._bootstrap_gone(contact[0])
                    self.table.remove(contact[0])
                if is_id(data):
                    self.welcome(data, contact[1], contact[2])
            elif name == "ping" or self.table.get(contact[0]) == contact:
                self.welcome(*contact)  # its own pong, or a contact we know there
            else:
                # The address answered, but its id came from whoever listed
                # it: only its own pong may put an id there.
                self._verify((contact[1], contact[2]))
            if callback is not None:
                callback(ok, data)

        self.call((contact[1], contact[2]), name, args, settle)

    def _bootstrap_gone(self, node_id: bytes) -> None:
        """A bootstrap node this node knew is gone: join again until a bootstrap answers.

        Swarm replaces a lost bootstrap task with a node of a new id (maybe at
        a new address). Nodes that join from then on meet only the new one,
        and it knows none of the older nodes: without a new join the DHT
        splits in two, and a value stored before the loss cannot be found
        from the new half (seen here after a node was lost).
        """
        if node_id in self.bootstrap_ids:
            self.bootstrap_ids.discard(node_id)
            self.say("INFO", "a bootstrap node is gone; joining again at the next health round")

    def _needs_bootstrap(self) -> bool:
        """In the DHT but in touch with no bootstrap node (any more)."""
        return bool(self.config.bootstrap_nodes) and not self.bootstrap_ids

    def welcome(self, node_id: bytes, ip: str, port: int) -> None:
        """kademlia's ``welcome_if_new`` for a contact that answered one of our RPCs there.

        Only verified contacts come here: a request alone never adds nor moves
        a contact (see :meth:`_heard_from`). Two ways a node could fool itself
        are kept out as well:

        * A node never enters its own routing table. Stock kademlia adds any
          pinger, so a node listed in its own BOOTSTRAP_NODES (or a bootstrap
          replica reached through a service name that also resolves to
          itself) would count itself as a neighbour and report healthy alone.
        * Nor does the probe (:data:`cqkd_stack.wire.PROBE_NODE_ID`): it exits
          right after pinging, and as a contact it would make a node that has
          not joined look joined, then cost the next lookup an RPC timeout.

        A new contact gets the stored values it should hold, as the paper's
        section 2.5 and the library do, within bounds: see :meth:`_hand_over`.
        """
        if node_id == self.id or node_id == PROBE_NODE_ID or not is_contact_ip(ip):
            return
        contact = (node_id, ip, port)
        status, oldest = self.table.touch(contact)
        if status == "added":
            self._hand_over(contact)
        elif (
            status == "full"
            and oldest is not None
            and self.table.stale(oldest[0], self._stale_after())
        ):
            # The bucket's oldest is pinged only if not heard from lately: an
            # idle bootstrap hears from hundreds of nodes its buckets have no
            # room for, and each used to cost a ping.
            self._check_alive(oldest)

    def _check_alive(self, contact: Contact) -> None:
        """Ping a contact we know (it answered us before) unless a ping is out already."""
        if contact[0] in self._pinging:
            return
        self._pinging.add(contact[0])
        self.rpc(contact, "ping", [self.id], lambda ok, data: self._pinging.discard(contact[0]))

    def _hand_over(self, contact: Contact) -> None:
        """Send a verified newcomer the values it is closer to than we are, boundedly.

        One XOR per held key (no sort of the table per key, which cost 5 s of
        CPU per newcomer with 3,100 contacts and 4,096 keys), and at most
        HANDOVER_MAX_VALUES values or HANDOVER_MAX_BYTES bytes: the republish
        covers what does not fit.
        """
        new = as_int(contact[0])
        own = self.table.own
        sent = size = 0
        for key, value in self.storage.items():
            goal = as_int(key)
            if new ^ goal >= own ^ goal:
                continue
            cost = value_size(value) or MAX_VALUE_BYTES
            if sent >= HANDOVER_MAX_VALUES or size + cost > HANDOVER_MAX_BYTES:
                break
            sent += 1
            size += cost
            self.rpc(contact, "store", [self.id, key, value])

    def _accept_store(self, key: bytes, value: Any, ip: str) -> bool:
        """Hold a value for ``ip`` if it is one, small, ours to hold and within budget."""
        size = value_size(value)
        if size is None:
            return False
        if self.table.closer_than_us(key, K) >= K:
            return False  # k known nodes are closer: it is theirs to hold
        return self.storage.put(key, value, size, ip)

    def store_own(self, key: bytes, value: Any) -> bool:
        """Hold a value this node publishes itself (charged to no network source)."""
        size = value_size(value)
        return size is not None and self.storage.put(key, value, size, "")

    def _on_datagrams(self) -> None:
        """Read up to 64 datagrams; each is checked before any decoding.

        Only a request of at most MAX_REQUEST_DATAGRAM bytes that starts as
        ``[name, args]`` from a source within its rate, or a response to a
        message id we sent, is decoded: a 57 KB map of colliding keys cost
        0.3 s of CPU to decode.
        """
        assert self.sock is not None
        for _ in range(64):  # then give timers and the control socket a turn
            try:
                data, address = self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                self.say("DEBUG", f"receive failed: {exc}")
                return
            size = len(data)
            if size <= HEADER_BYTES:
                continue
            msgid = data[1:HEADER_BYTES]
            kind = data[0]
            if kind == 0:
                if data[HEADER_BYTES] != BODY_START:
                    continue
                if not self.limiter.allow((address[0], address[1])):
                    if self.limiter.flooding:
                        self._mute_floods()
                    continue
                if size > MAX_REQUEST_DATAGRAM:
                    if data[HEADER_BYTES + 1 : HEADER_BYTES + 7] == b"\xa5store":
                        # A refusal costs less than the request, and a stock
                        # kademlia peer does not drop us as dead for it.
                        self._send(b"\x01" + msgid + b"\xc2", address)
                    continue
            elif kind == 1:
                entry = self.pending.get(msgid)
                if entry is None or size > MAX_RESPONSE_DATAGRAM:
                    continue
            else:
                continue
            try:
                payload = umsgpack.unpackb(data[HEADER_BYTES:])
            except Exception as exc:
                self.say("DEBUG", f"undecodable datagram from {address[0]}:{address[1]}: {exc}")
                continue
            if kind == 0:
                self._guard(self._serve, msgid, payload, address, size)
            else:
                entry = self.pending.pop(msgid, None)
                if entry is not None:
                    # The message id went only to that address: it receives.
                    self._mark_verified(entry[2], payload if is_id(payload) else None)
                    self._guard(entry[1], True, payload)

    def _mute_floods(self) -> None:
        """Have the kernel drop the sources the rate limit found flooding, for a while.

        Never a contact of the routing table: a flood may carry a spoofed
        source, and muting a contact's address (the bootstrap's) would also
        drop its answers to us and cut this node off; a contact's requests
        still meet the rate limit.
        """
        assert self.muted is not None
        for source in self.limiter.flooding:
            if self.table.at(source) is not None:
                continue
            if self.muted.add(source):
                self.say(
                    "WARNING",
                    f"{source[0]}:{source[1]} sent over {self.limiter.burst:g} requests beyond "
                    f"its rate without a pause: the kernel drops its datagrams for "
                    f"{MUTE_SECONDS:g} s",
                )
                self.later(MUTE_SECONDS, self._unmute)
            elif not self.muted.available and self.muted.error is not None:
                self.say("WARNING", f"cannot mute a flooding source: {self.muted.error}")
                self.muted.error = None  # said once
        self.limiter.flooding.clear()

    def _unmute(self) -> None:
        assert self.muted is not None
        for source in self.muted.expire():
            self.limiter.forget(source)

    def _mark_verified(self, address: tuple[str, int], node_id: bytes | None) -> None:
        if node_id is None:
            node_id = self.verified.get(address)
        self.verified.pop(address, None)
        self.verified[address] = node_id
        self._unreachable.pop(address, None)
        while len(self.verified) > MAX_VERIFIED:
            del self.verified[next(iter(self.verified))]

    def _heard_from(self, node_id: bytes, address: tuple[str, int]) -> None:
        """A request claims ``node_id`` from ``address``: refresh, or verify, never trust.

        * known there: seen again;
        * known elsewhere: the known address is pinged (it has answered us
          before); the claim moves nothing;
        * unknown: one ping of ours to that address, and the contact joins the
          table only when the answer comes back from it.
        """
        if node_id in (self.id, PROBE_NODE_ID):
            return
        known = self.table.get(node_id)
        if known is not None:
            if (known[1], known[2]) == address:
                self.table.touch(known)
            else:
                self._check_alive(known)
            return
        if self.verified.get(address) == node_id:
            self.welcome(node_id, address[0], address[1])
            return
        self._verify(address)

    def _verify(self, address: tuple[str, int]) -> None:
        """Ping an address that sent us a request, at most once at a time and per while."""
        if address in self._verifying or len(self._verifying) >= MAX_VERIFYING:
            return
        if not is_contact_ip(address[0]) or self.table.at(address) is not None:
            return
        now = time.monotonic()
        until = self._unreachable.get(address)
        if until is not None and until > now:
            return
        if len(self._unreachable) >= MAX_VERIFIED:
            self._unreachable = {a: t for a, t in self._unreachable.items() if t > now}
            if len(self._unreachable) >= MAX_VERIFIED:
                return  # too many silent addresses: ping none until some expire
        self._verifying.add(address)

        def answered(ok: bool, data: Any) -> None:
            self._verifying.discard(address)
            if ok and is_id(data):
                self.welcome(data, address[0], address[1])
            elif not ok:
                self._unreachable[address] = time.monotonic() + UNREACHABLE_FOR

        self.call(address, "ping", [self.id], answered)

    def _send(self, datagram: bytes, address: tuple[str, int]) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(datagram, address)
        except OSError as exc:
            self.say("DEBUG", f"cannot answer {address[0]}:{address[1]}: {exc}")

    def _serve(self, msgid: bytes, payload: Any, address: tuple[str, int], size: int) -> None:
        """Answer one request as kademlia's ``KademliaProtocol`` does; malformed ones get none.

        The answer is at most REPLY_FACTOR times the request, and
        UNVERIFIED_REPLY_FACTOR times for a sender that never answered us (its
        source address may be a victim's); a find_node answer is cut to fit,
        and a value that does not fit is answered with contacts instead.
        """
        if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[1], list)):
            return
        name, args = payload
        ip, port = address[0], address[1]
        trusted = address in self.verified
        budget = size * (REPLY_FACTOR if trusted else UNVERIFIED_REPLY_FACTOR) - HEADER_BYTES
        if name == "stun" and not args:
            answer: Any = [ip, port]
        elif name == "ping" and len(args) == 1 and is_id(args[0]):
            self._heard_from(args[0], address)
            answer = self.id
        elif name == "store" and len(args) == 3 and is_id(args[0]) and is_id(args[1]):
            self._heard_from(args[0], address)
            # Only from an address that has shown it receives (BEP 5's token
            # does the same): a spoofed STORE must not fill the budget.
            answer = trusted and self._accept_store(args[1], args[2], ip)
        elif name in ("find_node", "find_value") and len(args) == 2 and all(map(is_id, args)):
            self._heard_from(args[0], address)
            answer = None
            if name == "find_value":
                value = self.storage.get(args[1])
                if value is not None and len(umsgpack.packb({"value": value})) <= budget:
                    answer = {"value": value}
            if answer is None:
                answer = self._contacts_within(args[1], address, budget)
        else:
            self.say("DEBUG", f"ignored request {name!r} from {ip}:{port}")
            return
        self._send(b"\x01" + msgid + umsgpack.packb(answer), address)

    def _contacts_within(self, target: bytes, asker: tuple[str, int], budget: int) -> list[Contact]:
        contacts = self.table.nearest(target, K, exclude=asker)
        used = 3  # the array's header
        for count, contact in enumerate(contacts):
            used += len(umsgpack.packb(contact))
            if used > budget:
                return contacts[:count]
        return contacts

    # -- joining

    def join_attempt(self) -> None:
        """Ping every bootstrap address and every known peer at once; the first answer joins.

        Known peers count because other nodes may reach us before we reach
        the bootstrap node. Names are resolved in child processes; literal addresses
        and peers are pinged at once, so a slow name holds nothing up.

        A node already in the DHT that joins again only for want of a
        bootstrap pings the bootstrap addresses alone: its peers answering
        proves nothing it lacks. Pinging the whole table (and looking itself
        up on the first peer's answer) every round is what 1000 nodes did at
        once when a loaded host made their bootstrap checks time out
        together, and on the 3-node cluster the host never came back from it.
        """
        if self.attempt is not None or self.stopping:
            return
        attempt = self.attempt = _JoinAttempt()
        if not self.in_dht:
            for contact in self.table.contacts():
                self._join_ping(attempt, (contact[1], contact[2]))
        for host, port in self.config.bootstrap_nodes:
            if is_ipv4(host):
                attempt.bootstraps.add((host, port))
                self._join_ping(attempt, (host, port))
            else:
                attempt.names.append((host, port))
                attempt.waiting += 1
                self._resolve(host, port)
        if attempt.names:
            attempt.timer = self.later(DNS_TIMEOUT, lambda: self._names_timed_out(attempt))
        self._join_check(attempt)

    def _join_ping(self, attempt: _JoinAttempt, address: tuple[str, int]) -> None:
        if address in attempt.pinged:
            return
        attempt.pinged.append(address)
        attempt.waiting += 1
        self.call(
            address,
            "ping",
            [self.id],
            lambda ok, data: self._join_pong(attempt, address, ok, data),
        )

    def _join_pong(
        self, attempt: _JoinAttempt, address: tuple[str, int], ok: bool, data: Any
    ) -> None:
        attempt.waiting -= 1
        # Our own address may be in the list; answering ourselves is no contact.
        if ok and is_id(data) and data not in (self.id, PROBE_NODE_ID):
            self.welcome(data, address[0], address[1])
            if address in attempt.bootstraps:
                self.bootstrap_ids.add(data)
            if not attempt.over:
                self._join_succeeded(attempt)
            return
        self._join_check(attempt)

    def _resolve(self, host: str, port: int) -> None:
        """Look ``host`` up in a forked child (one per name at a time); its pipe brings the answer.

        Not in this process: the C library's resolver (NSS, DNS state) costs
        about 0.5 MiB that would stay for the node's whole life, in each of
        1000 containers, for a lookup done a few times. Not in a thread
        either, for the same memory, and because a child stuck on a slow DNS
        server can simply be killed when the attempt gives up on it.
        """
        name = (host, port)
        if name in self._resolving:
            return
        try:
            read_end, write_end = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(read_end)
                os.close(write_end)
                raise
        except OSError as exc:
            error = f"cannot start a lookup: {exc}"
            # Later, not now: the join attempt is still adding its entries.
            self.later(0, lambda: self._name_resolved(name, None, error))
            return
        if pid == 0:
            self._lookup_child(write_end, host, port)  # never returns
        os.close(write_end)
        os.set_blocking(read_end, False)
        self._resolving[name] = (pid, read_end)
        chunks: list[bytes] = []
        self.selector.register(
            read_end, selectors.EVENT_READ, lambda: self._on_lookup_pipe(name, chunks)
        )

    @staticmethod
    def _lookup_child(write_end: int, host: str, port: int) -> None:
        """In the child: resolve, write ``ok ADDR...`` or ``error TEXT`` to the pipe, exit."""
        try:
            _signal.set_wakeup_fd(-1)
            _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            # Let go of the node's sockets: a lingering child must not hold its port.
            os.closerange(3, write_end)
            os.closerange(write_end + 1, 65536)
            try:
                infos = _socket.getaddrinfo(host, port, _socket.AF_INET, _socket.SOCK_DGRAM)
                found: list[str] = []
                for *_, sockaddr in infos:
                    if str(sockaddr[0]) not in found:
                        found.append(str(sockaddr[0]))
                text = "ok " + " ".join(found)
            except Exception as exc:
                text = "error " + (str(exc) or type(exc).__name__)
            os.write(write_end, text.encode("utf-8", "replace"))
        finally:
            os._exit(0)

    def _on_lookup_pipe(self, name: tuple[str, int], chunks: list[bytes]) -> None:
        entry = self._resolving.get(name)
        if entry is None:
            return
        try:
            chunk = os.read(entry[1], 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            chunks.append(chunk)
            return
        self._end_lookup(name)
        kind, _, rest = b"".join(chunks).decode("utf-8", "replace").partition(" ")
        if kind == "ok":
            self._name_resolved(name, [(ip, name[1]) for ip in rest.split()], "")
        else:
            self._name_resolved(name, None, rest or "the lookup died")

    def _end_lookup(self, name: tuple[str, int], kill: bool = False) -> None:
        """Close a lookup child's pipe and reap it (after killing it, if asked)."""
        entry = self._resolving.pop(name, None)
        if entry is None:
            return
        pid, read_end = entry
        try:
            self.selector.unregister(read_end)
        except (KeyError, ValueError):
            pass
        os.close(read_end)
        try:
            if kill:
                os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, 0)  # at EOF it is exiting; killed, it goes at once
        except OSError:
            pass

    def _name_resolved(
        self, name: tuple[str, int], found: list[tuple[str, int]] | None, error: str
    ) -> None:
        attempt = self.attempt
        if attempt is None or name not in attempt.names:
            # That attempt is over: it timed out, or a known peer answered
            # before the name did, as a peer always does when a node joins
            # again for a lost bootstrap. The new bootstrap must still hear
            # from us, or the nodes that lived through the loss and those
            # that joined it since stay two DHTs for good.
            for address in found or ():
                self._ping_bootstrap(address)
            return
        attempt.names.remove(name)
        attempt.waiting -= 1
        if found is None:
            attempt.errors.append(f"cannot resolve {name[0]}: {error}")
        for address in found or ():
            attempt.bootstraps.add(address)
            self._join_ping(attempt, address)
        self._join_check(attempt)

    def _ping_bootstrap(self, address: tuple[str, int]) -> None:
        """One ping to an address of BOOTSTRAP_NODES; its answer is a contact and a bootstrap."""

        def answered(ok: bool, data: Any) -> None:
            if ok and is_id(data) and data not in (self.id, PROBE_NODE_ID):
                self.welcome(data, address[0], address[1])
                self.bootstrap_ids.add(data)

        self.call(address, "ping", [self.id], answered)

    def _names_timed_out(self, attempt: _JoinAttempt) -> None:
        for host, port in attempt.names:
            self._end_lookup((host, port), kill=True)
            attempt.errors.append(f"cannot resolve {host}: timed out")
            attempt.waiting -= 1
        attempt.names.clear()
        self._join_check(attempt)

    def _join_check(self, attempt: _JoinAttempt) -> None:
        if attempt.over or attempt.waiting > 0:
            return
        attempt.over = True
        self.cancel(attempt.timer)
        if self.attempt is attempt:
            self.attempt = None
        if attempt.pinged:
            tried = ", ".join(f"{h}:{p}" for h, p in attempt.pinged)
            reason = "; ".join([f"no bootstrap node answered ({tried})", *attempt.errors])
        else:
            reason = "; ".join(attempt.errors) or "no bootstrap address"
        self._join_failed(reason)

    def _join_failed(self, reason: str) -> None:
        self.last_join_error = reason
        self.join_failures += 1
        if self.in_dht:
            # Lost every neighbour, or every bootstrap, after joining: a later
            # health round tries again. A bootstrap that is only slow (the
            # whole host loaded) must not be pinged by every node each round:
            # 1, 2, 4 ... rounds apart, at most a bootstrap check's.
            rounds = self.rejoin_rounds * (0.5 + _random_fraction() / 2)
            self.rejoin_at = time.monotonic() + rounds * self.config.health_interval
            self.rejoin_rounds = min(2 * self.rejoin_rounds, BOOTSTRAP_CHECK_ROUNDS)
            self.say("INFO", f"rejoin attempt failed: {reason}")
            return
        now = time.monotonic()
        what = "BOOTSTRAP_NODES" if self.config.role == "bootstrap" else "the DHT"
        text = f"cannot join {what} yet (attempt {self.join_failures}, still trying): {reason}"
        if self._last_warning is None or now - self._last_warning >= JOIN_WARNING_INTERVAL:
            self._last_warning = now
            self.say("WARNING", text)
        else:
            self.say("INFO", text)
        # Capped exponential backoff with jitter: the jitter spreads 1000
        # workers that start together, so a bootstrap node that comes up late
        # is not hit by all of them in the same instant.
        delay = self.join_delay * (0.5 + _random_fraction() / 2)
        self.join_delay = min(self.join_delay * 2, self.config.join_backoff_max)
        self.later(delay, self.join_attempt)

    def _join_succeeded(self, attempt: _JoinAttempt) -> None:
        """A contact answered and is in the routing table: the node is in the DHT.

        Filling the rest of the table is a lookup for our own id that, after
        churn, waits out every dead contact the others still list; so it runs
        alongside everything else instead of holding up the health file.

        That lookup is also how the others learn of us: each pings us before
        adding us, and one whose ping timed out (a loaded host, mid-deploy)
        leaves us out for ``UNREACHABLE_FOR``. Nothing else would announce us
        again until our contacts went stale, an hour later: 2 of 1103 workers
        were in no other table right after a deploy (issue 21). So the lookup
        runs once more, with the bootstrap check due ``BOOTSTRAP_CHECK_ROUNDS``
        rounds on (90 s at the default round, past ``UNREACHABLE_FOR``).
        """
        attempt.over = True
        self.cancel(attempt.timer)
        if self.attempt is attempt:
            self.attempt = None
        if self.last_join_error is not None:
            self.say("INFO", f"joined after {self.join_failures} failed attempt(s)")
        self.in_dht = True
        self.join_delay = self.config.join_backoff
        self.rejoin_rounds, self.rejoin_at = 1, 0.0
        self.announce()
        self.second_lookup_at = (
            time.monotonic() + BOOTSTRAP_CHECK_ROUNDS * self.config.health_interval
        )

        def filled(value: Any, nodes: list[Contact]) -> None:
            self.say("INFO", f"routing table filled: {len(self.table)} contacts")

        Lookup(self, self.id, False, filled).start()

    def announce(self) -> None:
        """Healthy: write the health file, and print the one stdout line the first time."""
        self.health.write()
        if not self.announced:
            self.announced = True
            name = f" name={self.config.name}" if self.config.name else ""
            print(
                f"{PROG}: joined role={self.config.role}{name} port={self.config.port} "
                f"neighbours={len(self.table)} "
                f"after={time.monotonic() - self.started:.2f}s",
                flush=True,
            )

    # -- health

    def health_round(self) -> None:
        """Ping the contacts not heard from for a while, then keep the health file honest.

        Kademlia only learns a contact is dead when an RPC to it fails. After
        churn (a scale-down, a restart) every lookup would otherwise wait out
        each dead contact's RPC timeout, and the bootstrap node hands its dead
        contacts to every node that joins. A contact heard from lately is
        alive, so at rest each is pinged once per ``CONTACT_STALE_ROUNDS``
        rounds, not a tenth of the table every round (see config); and a
        check falling due soon after the bootstrap's goes with it (see
        :meth:`_pull_forward`), so a worker at rest wakes once a bootstrap
        check, not once a round.
        """
        interval = self.config.health_interval
        now = time.monotonic()
        if self.second_lookup_at is not None and self.second_lookup_at - interval / 2 <= now:
            self.second_lookup_at = None
            if self.in_dht and len(self.table):
                Lookup(self, self.id, False, lambda value, nodes: None).start()
        size = len(self.table)
        count = min(NEIGHBOUR_CHECK_MAX, max(NEIGHBOUR_CHECK_MIN, size // 10))
        boots = self.bootstrap_ids
        # Our bootstrap nodes sooner: their loss must be noticed (issue 10).
        # Half a round early, so a wake-up timed for this check always finds it due.
        due = self.table.unseen_for(BOOTSTRAP_CHECK_ROUNDS * interval - interval / 2, now)
        sample = [c for c in due if c[0] in boots]
        others = self.table.unseen_for(self._stale_after() - self._pull_forward(), now)
        others = [c for c in others if c[0] not in boots]
        others.sort(key=lambda _: _random_fraction())
        sample += others[:count]
        if not sample:
            self._after_health_pings()
            return
        left = [len(sample)]

        def pinged(ok: bool, data: Any) -> None:
            left[0] -= 1
            if left[0] == 0:
                self._after_health_pings()

        for contact in sample:
            self.rpc(contact, "ping", [self.id], pinged)

    def _stale_after(self) -> float:
        """Seconds without news after which a contact is pinged (see config)."""
        rounds = CONTACT_STALE_ROUNDS
        if self.config.role == "bootstrap":
            rounds = BOOTSTRAP_CONTACT_STALE_ROUNDS
        return rounds * self.config.health_interval

    def _pull_forward(self) -> float:
        """How much sooner than due a contact is pinged, to share a wake-up with the bootstrap's.

        A worker checks its bootstrap every BOOTSTRAP_CHECK_ROUNDS rounds;
        pinging a contact up to that much before it is stale (1/60 of its
        staleness) means the node never wakes for it alone. A bootstrap node
        checks no bootstrap: its contacts, which check it, are pinged on time.
        """
        if self.config.role == "bootstrap" or not self.config.bootstrap_nodes:
            return 0.0
        return BOOTSTRAP_CHECK_ROUNDS * self.config.health_interval

    def _next_round(self) -> float:
        """Seconds until the next contact falls due; one round while joining or rejoining.

        Waking every round only to find nothing due was most of what 1000
        idle nodes cost (one select, a table scan and a stat a round each).
        """
        interval = self.config.health_interval
        if self.config.role != "bootstrap" and (
            not self.in_dht or len(self.table) == 0 or self._needs_bootstrap()
        ):
            return interval
        boots = self.bootstrap_ids
        boot_after = BOOTSTRAP_CHECK_ROUNDS * interval
        other_after = self._stale_after() - self._pull_forward()
        seen = self.table.seen
        now = time.monotonic()
        soonest = now + self._stale_after()
        if self.second_lookup_at is not None:
            soonest = min(soonest, self.second_lookup_at)
        for node_id in self.table.addresses.values():
            last = seen.get(node_id)
            if last is None:
                return interval
            soonest = min(soonest, last + (boot_after if node_id in boots else other_after))
        return max(interval, soonest - now)

    def _after_health_pings(self) -> None:
        """Health file gone while the table is empty, with a fresh join attempt per round."""
        try:
            if self.config.role == "bootstrap":
                if not self.health.exists():
                    self.health.write()
            elif self.in_dht:
                if len(self.table) == 0:
                    self.health.remove()
                    self.join_attempt()
                else:
                    if not self.health.exists():
                        self.health.write()
                    if (
                        self._needs_bootstrap()
                        and self.attempt is None
                        and self.rejoin_at <= time.monotonic()
                    ):
                        self.join_attempt()
        finally:
            self.later(self._next_round(), self.health_round)

    # -- republish

    def republish_round(self) -> None:
        """Store every held and published value again on the current closest nodes.

        The Kademlia paper's hourly republish: holders that die or a value
        refused somewhere must not lose it while one holder (or the publisher)
        lives. Expired values go first; lookups run REPUBLISH_PARALLEL at a time.
        """
        try:
            self.storage.expire()
            keys = [key for key, _ in self.storage.items()]
            keys += [key for key in self.published if key not in self.storage.entries]
            self._republishing = keys
            for _ in range(REPUBLISH_PARALLEL):
                self._republish_next()
        finally:
            self.later(self.config.republish_interval, self.republish_round)

    def _republish_next(self) -> None:
        if self._republish_running >= REPUBLISH_PARALLEL or self.stopping:
            return
        while self._republishing:
            key = self._republishing.pop()
            value = self.storage.get(key)
            if value is None:
                value = self.published.get(key)
            if value is not None and len(self.table):
                break
        else:
            return
        self._republish_running += 1

        def located(_: Any, nodes: list[Contact]) -> None:
            self._republish_running -= 1
            for contact in nodes:
                self.rpc(contact, "store", [self.id, key, value])
            self._republish_next()

        Lookup(self, key, False, located).start()

    # -- what the control socket asks of the node (see ``control.ControlServer``)

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "role": self.config.role,
            "name": self.config.name,
            "port": self.config.port,
            "node_id": self.id.hex(),
            "neighbours": len(self.table),
            "muted": len(self.muted) if self.muted is not None else 0,
            "healthy": self.health.exists(),
        }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        # The image runs the node with -OO, which drops every docstring.
        print(
            __doc__
            or f"{PROG}: configured through the environment; without -OO, "
            "python3 -m cqkd_stack.node --help lists the variables"
        )
        return 0
    if args:
        print(
            f"{PROG}: error: takes no arguments (configure it through the environment)",
            file=sys.stderr,
        )
        return 2
    try:
        config = NodeConfig.from_env(os.environ)
        return DhtNode(config).run()
    except CqkdError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
