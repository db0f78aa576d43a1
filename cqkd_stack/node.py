"""The reference Kademlia node that every DHT task of the stack runs.

Run as ``python3 -m cqkd_stack.node`` behind the resolver entrypoint, which has
already exported ``DHT_PORT`` (see "Container environment contract" and "The
reference node's interfaces" in docs/design.md). The node

* listens on UDP ``0.0.0.0:DHT_PORT`` with kademlia's ``Server``;
* joins through ``BOOTSTRAP_NODES`` (host names resolved to every IPv4 address
  they have) with bounded retries and exponential backoff, because Swarm may
  start a worker long before the bootstrap task is reachable;
* writes the health file (``:XXXX `` for ``grep -qf FILE /proc/net/udp``) once it
  is in the DHT and removes it when it loses every neighbour, so Swarm's
  ``running`` means "in the DHT";
* serves ``set`` / ``get`` / ``status`` on a Unix control socket, where ``get``
  always asks the network and never answers from this node's own storage;
* stops at once on SIGTERM/SIGINT and exits 0, so tearing down 1000 tasks does
  not wait out ``stop_grace_period`` per task.

It prints exactly one line to stdout (when it becomes healthy); everything
else is quiet unless ``CQKD_LOG_LEVEL`` asks for more, because 1000 containers
log.

Environment (besides ``DHT_PORT``, ``CQKD_ROLE`` and ``BOOTSTRAP_NODES``):

``CQKD_NODE_NAME``        optional name of a special node (``alice``), shown in logs and status
``CQKD_HEALTH_FILE``      health file path (default ``/tmp/cqkd-health``)
``CQKD_CONTROL_SOCKET``   control socket path (default ``/tmp/cqkd-control.sock``)
``JOIN_RETRIES``          join attempts before giving up (default 30)
``JOIN_BACKOFF``          first pause between attempts in seconds (default 0.5)
``JOIN_BACKOFF_MAX``      longest pause between attempts (default 5)
``CQKD_HEALTH_INTERVAL``  seconds between neighbour checks (default 10)
``CQKD_RPC_TIMEOUT``      seconds to wait for one Kademlia RPC reply (default 2; rpcudp's is 5)
``CQKD_LOG_LEVEL``        Python log level for diagnostics on stderr (default WARNING)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node, NodeHeap
from kademlia.protocol import KademliaProtocol
from kademlia.utils import digest

from .errors import CqkdError
from .wire import PROBE_NODE_ID, split_host_port

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

PROG = "cqkd-node"
ROLES = ("bootstrap", "special", "worker")
DEFAULT_HEALTH_FILE = "/tmp/cqkd-health"
DEFAULT_CONTROL_SOCKET = "/tmp/cqkd-control.sock"

# A control operation crawls the network; a crawl round waits at most one RPC
# timeout, so 30 s covers several rounds without letting a client hang forever.
OP_TIMEOUT = 30.0
# A request is a key and a value; kademlia caps an RPC at 8 KiB anyway.
MAX_REQUEST_BYTES = 64 * 1024
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_SOCKET_PATH = 107
# How long one name lookup may take before the join attempt counts as failed.
DNS_TIMEOUT = 10.0
# Contacts pinged per health round: a tenth of the routing table, within bounds.
NEIGHBOUR_CHECK_MIN = 3
NEIGHBOUR_CHECK_MAX = 50

log = logging.getLogger(PROG)
# "after=" in the joined line counts from here: close to process start, so it
# includes imports and is comparable across nodes.
_LOADED = time.monotonic()


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node takes from its environment, checked up front.

    Parsing the whole environment before opening any socket means a typo in
    the stack fails the task at once with one clear line, instead of after
    minutes of join retries.
    """

    role: str
    port: int
    bootstrap_nodes: tuple[tuple[str, int], ...] = ()
    name: str | None = None
    health_file: Path = Path(DEFAULT_HEALTH_FILE)
    control_socket: Path = Path(DEFAULT_CONTROL_SOCKET)
    join_retries: int = 30
    join_backoff: float = 0.5
    join_backoff_max: float = 5.0
    health_interval: float = 10.0
    # Tasks on one overlay network answer in milliseconds; rpcudp's 5 s made
    # every dead contact cost a lookup five seconds.
    rpc_timeout: float = 2.0
    interface: str = "0.0.0.0"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NodeConfig:
        """Build the configuration or raise ``CqkdError`` naming the bad variable."""
        role = env.get("CQKD_ROLE", "").strip()
        if role not in ROLES:
            shown = f"{role!r}" if role else "not set"
            raise CqkdError(f"CQKD_ROLE is {shown}; expected one of {', '.join(ROLES)}")
        port = _parse_port(env.get("DHT_PORT"))
        nodes = parse_bootstrap_nodes(env.get("BOOTSTRAP_NODES", ""))
        if role != "bootstrap" and not nodes:
            raise CqkdError(f"a {role} node needs BOOTSTRAP_NODES (host:port,...) to join")
        control_socket = Path(env.get("CQKD_CONTROL_SOCKET") or DEFAULT_CONTROL_SOCKET)
        if len(os.fsencode(control_socket)) > MAX_SOCKET_PATH:
            raise CqkdError(
                f"CQKD_CONTROL_SOCKET={control_socket} is longer than the "
                f"{MAX_SOCKET_PATH} bytes a Unix socket path may have"
            )
        backoff = _parse_number(env, "JOIN_BACKOFF", 0.5)
        return cls(
            role=role,
            port=port,
            bootstrap_nodes=nodes,
            name=(env.get("CQKD_NODE_NAME") or "").strip() or None,
            health_file=Path(env.get("CQKD_HEALTH_FILE") or DEFAULT_HEALTH_FILE),
            control_socket=control_socket,
            join_retries=int(_parse_number(env, "JOIN_RETRIES", 30, integer=True)),
            join_backoff=backoff,
            join_backoff_max=max(backoff, _parse_number(env, "JOIN_BACKOFF_MAX", 5.0)),
            health_interval=_parse_number(env, "CQKD_HEALTH_INTERVAL", 10.0),
            rpc_timeout=_parse_number(env, "CQKD_RPC_TIMEOUT", NodeConfig.rpc_timeout),
        )


def _parse_port(raw: str | None) -> int:
    if raw is None or not raw.strip():
        raise CqkdError(
            "DHT_PORT is not set; start the node through the resolver "
            "(python3 -m cqkd_stack.resolver exec -- python3 -m cqkd_stack.node)"
        )
    try:
        port = int(raw.strip())
    except ValueError:
        raise CqkdError(f"DHT_PORT={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise CqkdError(f"DHT_PORT={port} is outside 1-65535")
    return port


def _parse_number(
    env: Mapping[str, str], name: str, default: float, integer: bool = False
) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise CqkdError(f"{name}={raw!r} is not {kind}") from None
    if value <= 0:
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


# --------------------------------------------------------------------------- health file


class HealthFile:
    """The file Swarm's health check greps for; present only while the node is in the DHT."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.pattern = health_pattern(port)

    def write(self) -> None:
        """Write atomically: the health check must never read a half-written pattern.

        No trailing newline, because ``grep -f`` would read the empty line
        after it as a pattern that matches every line of /proc/net/udp.
        """
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.pattern, encoding="ascii")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CqkdError(f"cannot write health file {self.path}: {exc}") from None

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def exists(self) -> bool:
        return self.path.exists()


# --------------------------------------------------------------------------- Kademlia pieces


class NodeProtocol(KademliaProtocol):
    """kademlia's protocol, minus two ways a node can fool itself, plus a timeout knob.

    * A node never enters its own routing table. Stock kademlia adds any
      pinger, so a node listed in its own BOOTSTRAP_NODES (or a bootstrap
      replica reached through a service name that also resolves to itself)
      would count itself as a neighbour and report healthy alone.
    * Nor does the probe (:data:`cqkd_stack.probe.PROBE_NODE_ID`): it exits
      right after pinging, and as a contact it would make a node that has not
      joined look joined, then cost the next lookup an RPC timeout.
    * The RPC timeout is configurable; rpcudp's constructor takes one, but
      ``KademliaProtocol`` does not pass it through and leaves 5 s.
    """

    def __init__(self, source_node: Node, storage: Any, ksize: int, rpc_timeout: float) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = rpc_timeout

    def welcome_if_new(self, node: Node) -> None:
        if node.id in (self.source_node.id, PROBE_NODE_ID):
            return
        super().welcome_if_new(node)


class NodeServer(Server):
    """``Server`` that builds :class:`NodeProtocol` with our RPC timeout."""

    def __init__(self, rpc_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rpc_timeout = rpc_timeout

    def _create_protocol(self) -> NodeProtocol:
        return NodeProtocol(self.node, self.storage, self.ksize, self.rpc_timeout)

    def neighbour_count(self) -> int:
        if self.protocol is None:
            return 0
        return sum(len(bucket) for bucket in self.protocol.router.buckets)

    async def check_some_neighbours(self) -> int:
        """Ping a sample of the routing table; the library drops those that stay silent.

        Kademlia only learns a contact is dead when an RPC to it fails, and the
        library refreshes hourly. After churn (a scale-down, a restart) every
        lookup would otherwise wait out each dead contact's RPC timeout, and
        the bootstrap node hands its dead contacts to every node that joins.
        Returns how many were pinged.
        """
        if self.protocol is None:
            return 0
        contacts = [n for bucket in self.protocol.router.buckets for n in bucket.get_nodes()]
        if not contacts:
            return 0
        count = min(
            len(contacts), NEIGHBOUR_CHECK_MAX, max(NEIGHBOUR_CHECK_MIN, len(contacts) // 10)
        )
        sample = random.sample(contacts, count)
        await asyncio.gather(*(self.protocol.call_ping(n) for n in sample), return_exceptions=True)
        return count


class _ExcludingNodeHeap(NodeHeap):
    """A crawl's candidate heap that never contains the crawling node itself.

    Other nodes list us among their contacts; without this the crawl would
    send ``find_value`` to ourselves and our own storage would answer.
    """

    def __init__(self, node: Node, maxsize: int, exclude_id: bytes) -> None:
        super().__init__(node, maxsize)
        self._exclude_id = exclude_id

    def push(self, nodes: Node | list[Node]) -> None:
        if not isinstance(nodes, list):
            nodes = [nodes]
        super().push([n for n in nodes if n.id != self._exclude_id])


class _SkipSelf:
    """Makes a library crawl's candidate heap an :class:`_ExcludingNodeHeap`."""

    def __init__(
        self, protocol: KademliaProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)  # type: ignore[call-arg]
        self.nearest = _ExcludingNodeHeap(node, ksize, protocol.source_node.id)
        self.nearest.push(peers)


class _NetworkValueCrawl(_SkipSelf, ValueSpiderCrawl):
    pass


class _NetworkNodeCrawl(_SkipSelf, NodeSpiderCrawl):
    pass


class NoNeighboursError(CqkdError):
    """The routing table is empty, so the network cannot be asked at all."""


async def network_get(server: Server, key: str) -> Any:
    """Look ``key`` up in the network only; ``None`` if no other node has it.

    ``Server.get`` returns a locally stored value without any network traffic,
    and its crawl may ask this node itself; either would let ``dht-check``
    "prove" a read that never crossed the network.
    """
    target = Node(digest(key))
    nearest = server.protocol.router.find_neighbors(target)
    if not nearest:
        raise NoNeighboursError("this node has no neighbours to ask")
    crawl = _NetworkValueCrawl(server.protocol, target, nearest, server.ksize, server.alpha)
    return await crawl.find()


async def network_set(server: Server, key: str, value: Any) -> tuple[int, bool]:
    """Store ``key`` on the k closest other nodes; return (how many acked, kept locally).

    Reimplements ``Server.set_digest`` to report a count instead of a bool and
    to survive a crawl that finds nobody alive (the library then calls
    ``max()`` on an empty list and raises ``ValueError``).
    """
    dkey = digest(key)
    target = Node(dkey)
    nearest = server.protocol.router.find_neighbors(target)
    if not nearest:
        raise NoNeighboursError("this node has no neighbours to store on")
    crawl = _NetworkNodeCrawl(server.protocol, target, nearest, server.ksize, server.alpha)
    nodes = await crawl.find()
    if not nodes:
        return 0, False
    farthest = max(n.distance_to(target) for n in nodes)
    local = server.node.distance_to(target) < farthest
    if local:
        server.storage[dkey] = value
    results = await asyncio.gather(*(server.protocol.call_store(n, dkey, value) for n in nodes))
    return sum(1 for ok, _ in results if ok), local


# --------------------------------------------------------------------------- name resolution


async def resolve_ipv4(host: str, port: int, timeout: float = DNS_TIMEOUT) -> list[tuple[str, int]]:
    """Every IPv4 address of ``host`` (kademlia's bootstrap accepts addresses only).

    The lookup runs in a daemon thread rather than the loop's executor: a
    stuck DNS server must not keep the process alive after SIGTERM, and
    ``asyncio.run`` would otherwise join the executor thread on exit.
    """
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 4:
            return [(host, port)]
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[tuple[str, int]]] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
            found: list[tuple[str, int]] = []
            for *_, sockaddr in infos:
                addr = (str(sockaddr[0]), port)
                if addr not in found:
                    found.append(addr)
            result: Any = found
            error: BaseException | None = None
        except OSError as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed while we waited
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True).start()
    return await asyncio.wait_for(future, timeout)


async def resolve_all(nodes: Iterable[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[str]]:
    """Resolve every bootstrap entry; return (addresses, one error text per failed name).

    One name failing does not fail the attempt while another resolves: with
    several bootstrap services, one may simply not be running yet.
    """
    nodes = list(nodes)
    results = await asyncio.gather(
        *(resolve_ipv4(host, port) for host, port in nodes), return_exceptions=True
    )
    addresses: list[tuple[str, int]] = []
    errors: list[str] = []
    for (host, _), result in zip(nodes, results, strict=True):
        if isinstance(result, BaseException):
            reason = "timed out" if isinstance(result, asyncio.TimeoutError) else str(result)
            errors.append(f"cannot resolve {host}: {reason}")
            continue
        for addr in result:
            if addr not in addresses:
                addresses.append(addr)
    return addresses, errors


# --------------------------------------------------------------------------- control requests


@dataclass(frozen=True)
class Request:
    op: str
    key: str | None = None
    value: Any = None


class RequestError(CqkdError):
    """A control request the node cannot act on; its text goes back to the client."""


def parse_request(raw: bytes) -> Request:
    """Check one control request; kept pure so every refusal is unit-testable."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("request must be a JSON object")
    op = data.get("op")
    if op == "status":
        return Request("status")
    if op not in ("set", "get"):
        raise RequestError(f"unknown op {op!r}; expected set, get or status")
    key = data.get("key")
    if not isinstance(key, str) or not key:
        raise RequestError(f"{op} needs a non-empty string 'key'")
    if op == "get":
        return Request("get", key)
    if "value" not in data:
        raise RequestError("set needs a 'value'")
    value = data["value"]
    # What kademlia's storage and msgpack carry; null would read back as "absent".
    if not isinstance(value, (str, int, float, bool)):
        raise RequestError("value must be a string, number or boolean")
    return Request("set", key, value)


# --------------------------------------------------------------------------- the node


class DhtNode:
    """One running node: the Kademlia server plus health file and control socket."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.server = NodeServer(rpc_timeout=config.rpc_timeout)
        self.health = HealthFile(config.health_file, config.port)
        self.started = _LOADED
        self.healthy = False
        self.last_join_error: str | None = None
        self._control: asyncio.AbstractServer | None = None
        self._stragglers: set[asyncio.Future[Any]] = set()

    # -- lifecycle

    async def start(self) -> None:
        """Listen on UDP and open the control socket; leftovers of an earlier run go first.

        A restarted container keeps /tmp, and a stale health file would make
        the new process look healthy before it has joined.
        """
        self.health.remove()
        try:
            await self.server.listen(self.config.port, self.config.interface)
        except OSError as exc:
            raise CqkdError(
                f"cannot listen on UDP {self.config.interface}:{self.config.port}: {exc}"
            ) from None
        path = self.config.control_socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        try:
            self._control = await asyncio.start_unix_server(
                self._serve_client, path=str(path), limit=MAX_REQUEST_BYTES
            )
        except OSError as exc:
            raise CqkdError(f"cannot open control socket {path}: {exc}") from None

    def close(self) -> None:
        """Health file first, so the health check fails before anything else goes away."""
        self.health.remove()
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.control_socket.unlink()
        self.server.stop()

    # -- joining

    async def join_once(self) -> int:
        """One join attempt; the number of neighbours afterwards (0 = failed)."""
        addresses, errors = await resolve_all(self.config.bootstrap_nodes)
        if not addresses:
            self.last_join_error = "; ".join(errors) or "no bootstrap address"
            return 0
        await self.bootstrap(addresses)
        count = self.server.neighbour_count()
        if count == 0:
            tried = ", ".join(f"{h}:{p}" for h, p in addresses)
            self.last_join_error = f"no bootstrap node answered ({tried})"
            if errors:
                self.last_join_error += "; " + "; ".join(errors)
        return count

    async def bootstrap(self, addresses: list[tuple[str, int]]) -> None:
        """Like ``Server.bootstrap``, but crawl as soon as the first contact answers.

        The library waits for every ping, so one silent address costs the full
        RPC timeout on every join. Silent addresses are normal here: a Swarm
        service name resolves to every task of the service, and BOOTSTRAP_NODES
        lists every bootstrap port, so most (address, port) pairs are not a node.
        Pings still in flight are left to finish on their own; cancelling them
        would make rpcudp's timeout callback fail on a cancelled future.
        """
        pending = {asyncio.ensure_future(self.server.bootstrap_node(a)) for a in addresses}
        self._stragglers |= pending
        for task in pending:
            task.add_done_callback(self._stragglers.discard)
        contacts: list[Node] = []
        while pending and not contacts:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Our own address may be in the list; answering ourselves is no contact.
            contacts += [
                t.result()
                for t in done
                if t.result() is not None and t.result().id != self.server.node.id
            ]
        if contacts:
            protocol = self.server.protocol
            for contact in contacts:
                protocol.welcome_if_new(contact)
            crawl = _NetworkNodeCrawl(
                protocol, self.server.node, contacts, self.server.ksize, self.server.alpha
            )
            # A contact answered and is in the routing table: the node is in the
            # DHT. Filling the rest of the table is a lookup that, after churn,
            # waits out every dead contact the others still list (5 s each,
            # round after round); measured 15-30 s per new worker. So it goes on
            # in the background instead of holding up the join and the health check.
            filling = asyncio.ensure_future(crawl.find())
            self._stragglers.add(filling)
            filling.add_done_callback(self._stragglers.discard)

    async def join(self) -> bool:
        """Join with bounded retries; exponential backoff with jitter.

        The jitter spreads 1000 workers that start together, so a bootstrap
        node that comes up late is not hit by all of them in the same instant.
        """
        delay = self.config.join_backoff
        for attempt in range(1, self.config.join_retries + 1):
            if await self.join_once() > 0:
                return True
            log.info("join attempt %d failed: %s", attempt, self.last_join_error)
            if attempt < self.config.join_retries:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.config.join_backoff_max)
        return False

    async def join_in_background(self) -> None:
        """A bootstrap node's join: failing it is worth a warning, not an exit.

        The bootstrap node is the network's anchor; it is useful even alone,
        and the others will find it.
        """
        if not await self.join():
            log.warning("could not join BOOTSTRAP_NODES: %s", self.last_join_error)

    def become_healthy(self) -> None:
        self.health.write()
        if not self.healthy:
            self.healthy = True
            name = f" name={self.config.name}" if self.config.name else ""
            print(
                f"{PROG}: joined role={self.config.role}{name} port={self.config.port} "
                f"neighbours={self.server.neighbour_count()} "
                f"after={time.monotonic() - self.started:.2f}s",
                flush=True,
            )

    async def watch(self) -> None:
        """Keep the health file honest: gone while the node has no neighbours.

        Each round also pings a sample of the contacts, so dead ones leave the
        routing table before a lookup meets them. A worker that lost every
        neighbour tries one fresh join per round; an empty table is worth
        acting on, not just reporting.
        """
        while True:
            await asyncio.sleep(self.config.health_interval)
            with contextlib.suppress(Exception):
                await self.server.check_some_neighbours()
            if self.config.role == "bootstrap":
                if not self.health.exists():
                    self.health.write()
                continue
            if self.server.neighbour_count() == 0:
                self.health.remove()
                with contextlib.suppress(Exception):
                    await self.join_once()
            if self.server.neighbour_count() > 0 and not self.health.exists():
                self.health.write()

    # -- control socket

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                reply: dict[str, Any] = {
                    "ok": False,
                    "error": f"request longer than {MAX_REQUEST_BYTES} bytes",
                }
            else:
                reply = await self.handle(raw)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nobody is left to tell
        finally:
            writer.close()

    async def handle(self, raw: bytes) -> dict[str, Any]:
        """Turn one request into one reply; never raises, so the client always hears back."""
        try:
            request = parse_request(raw)
            return await asyncio.wait_for(self._execute(request), OP_TIMEOUT)
        except CqkdError as exc:
            return {"ok": False, "error": exc.message}
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"no answer from the network within {OP_TIMEOUT:g}s"}
        except Exception as exc:  # a library bug must not kill the node
            log.exception("control request failed")
            return {"ok": False, "error": f"internal error: {exc!r}"}

    async def _execute(self, request: Request) -> dict[str, Any]:
        if request.op == "status":
            return {
                "ok": True,
                "role": self.config.role,
                "name": self.config.name,
                "port": self.config.port,
                "node_id": self.server.node.id.hex(),
                "neighbours": self.server.neighbour_count(),
                "healthy": self.health.exists(),
            }
        assert request.key is not None
        if request.op == "get":
            value = await network_get(self.server, request.key)
            return {"ok": True, "key": request.key, "value": value}
        replicas, local = await network_set(self.server, request.key, request.value)
        return {
            "ok": True,
            "key": request.key,
            "stored": replicas > 0,
            "replicas": replicas,
            "local": local,
        }


async def run(config: NodeConfig) -> int:
    """Run the node until SIGTERM/SIGINT (exit 0) or a failed join (``CqkdError``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = DhtNode(config)
    tasks: list[asyncio.Task[Any]] = []
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await node.start()
        if config.role == "bootstrap":
            # Listening is enough: the first node of a network has nobody to join.
            node.become_healthy()
            if config.bootstrap_nodes:
                tasks.append(asyncio.ensure_future(node.join_in_background()))
        else:
            joining = asyncio.ensure_future(node.join())
            tasks.append(joining)
            await asyncio.wait({joining, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                return 0
            if not joining.result():
                raise CqkdError(
                    f"could not join the DHT after {config.join_retries} attempts: "
                    f"{node.last_join_error}"
                )
            node.become_healthy()
        tasks.append(asyncio.ensure_future(node.watch()))
        await stopping
        return 0
    finally:
        for task in (*tasks, stopping):
            task.cancel()
        node.close()


def _configure_logging(env: Mapping[str, str]) -> None:
    """Quiet by default: WARNING for kademlia, and rpcudp's per-timeout ERROR only when debugging.

    rpcudp logs every unanswered RPC at ERROR; during a join before the
    bootstrap node is up, or during a 1000-task teardown, that is expected
    noise multiplied by every container.
    """
    name = (env.get("CQKD_LOG_LEVEL") or "WARNING").strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        level = logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format=f"{PROG}: %(levelname)s %(name)s: %(message)s"
    )
    # kademlia logs every RPC at INFO; only a DEBUG run wants that.
    debug = level <= logging.DEBUG
    logging.getLogger("kademlia").setLevel(level if debug else max(level, logging.WARNING))
    logging.getLogger("rpcudp").setLevel(level if debug else logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args:
        print(
            f"{PROG}: error: takes no arguments (configure it through the environment)",
            file=sys.stderr,
        )
        return 2
    _configure_logging(os.environ)
    try:
        config = NodeConfig.from_env(os.environ)
        return asyncio.run(run(config))
    except CqkdError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
