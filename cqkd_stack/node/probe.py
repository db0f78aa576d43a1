"""Ping DHT nodes with a real Kademlia RPC and print who answered, as one JSON object.

    python3 -m cqkd_stack.probe [options] ADDR:PORT [ADDR:PORT ...]
    python3 -m cqkd_stack.probe [options] -        # targets one per line on stdin

The end-to-end tests run this in a container attached to the stack's overlay
network, so "every port answers" is checked from inside the DHT network with
the protocol the nodes speak, independently of our resolver's arithmetic.

Output (stdout, one line): ``{"ADDR:PORT": "<responder node id hex>" | null, ...}``
in the order given; with ``--joined`` each answer is ``{"id": hex, "neighbours": n}``
(the node's contacts from a ``find_node``: 0 means listening but not in the
DHT yet). Exit 0 if every target answered, 1 if any did not, 2 for a usage
error.

``cqkd-stack deploy`` / ``scale`` / ``probe`` run it once per poll round in one
container on the stack's network: readiness costs one process per round, not
a health-check exec per task.

Every target gets its own ``ping`` over one local UDP socket, many at once:
an unanswered RPC costs the full RPC timeout (5 s in rpcudp), so 1000 targets
one after another could take over an hour when part of the stack is down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rpcudp.protocol import RPCProtocol

from .wire import PROBE_NODE_ID, split_host_port

PROG = "cqkd-probe"
# Kademlia node ids are SHA-1 sized; anything else answering is not our node.
NODE_ID_BYTES = 20
# Replies that arrive together are queued on the socket; ask for room for
# all of them (the kernel caps this at net.core.rmem_max).
RECEIVE_BUFFER = 4 * 1024 * 1024
# RPCs in flight at once. Every datagram between containers crosses a veth,
# whose receive path queues it on the CPU's backlog (net.core.netdev_max_backlog,
# 1000 by default); a burst of 1000 requests, then 1000 replies, overflowed it:
# 19-34 of ~1000 tasks went unanswered in a round. Kept well below it, the
# burst cannot fill the backlog by itself (the ARP broadcasts a fresh
# container sends to 1000 new addresses still can; see docs/benchmarks.md).
DEFAULT_CONCURRENCY = 128


class UsageError(Exception):
    """Bad command line or target list: exit 2."""


@dataclass(frozen=True)
class Endpoint:
    text: str
    host: str
    port: int


def parse_target(text: str) -> Endpoint:
    """``"10.0.1.5:7003"`` → Endpoint; host names are allowed and resolved later."""
    try:
        host, port = split_host_port(text, "ADDR:PORT")
    except ValueError as exc:
        raise UsageError(f"target {text!r} {exc}") from None
    return Endpoint(text.strip(), host, port)


def read_targets(args: list[str], stdin_lines: list[str] | None = None) -> list[Endpoint]:
    """Targets from the arguments, ``-`` meaning stdin; blanks and ``#`` comments skipped."""
    texts: list[str] = []
    for arg in args:
        if arg == "-":
            lines = stdin_lines if stdin_lines is not None else sys.stdin.read().splitlines()
            texts += [line.strip() for line in lines]
        else:
            texts.append(arg.strip())
    targets: list[Endpoint] = []
    seen: set[str] = set()
    for text in texts:
        if not text or text.startswith("#") or text in seen:
            continue
        seen.add(text)
        targets.append(parse_target(text))
    if not targets:
        raise UsageError("no targets given")
    return targets


class ProbeProtocol(RPCProtocol):
    """Speaks rpcudp's wire format, as kademlia does, under :data:`PROBE_NODE_ID`.

    It answers pings itself while it lives, in case a stock kademlia node did
    add it and checks on it.
    """

    def __init__(self, node_id: bytes, wait_timeout: float) -> None:
        super().__init__(wait_timeout=wait_timeout)
        self.node_id = node_id

    def rpc_ping(self, sender: tuple[str, int], nodeid: bytes) -> bytes:
        return self.node_id

    def _timeout(self, msg_id: bytes) -> None:
        """rpcudp's, for an RPC whose waiter may be gone already.

        A probe round that ends at its deadline cancels the pings still out;
        rpcudp's timer then set a result on the cancelled future and asyncio
        logged "Exception in callback ... InvalidStateError": the only words
        on stderr of a probe run that printed no result, which failed a
        1503-task deploy's wait on the cluster (seen 2026-12-04; why it
        printed nothing was not found).
        """
        entry = self._outstanding.get(msg_id)
        if entry is not None and entry[0].done():
            del self._outstanding[msg_id]
            return
        super()._timeout(msg_id)


async def _address(target: Endpoint) -> tuple[str, int]:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(target.host).version == 4:
            return target.host, target.port
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        target.host, target.port, family=socket.AF_INET, type=socket.SOCK_DGRAM
    )
    return str(infos[0][4][0]), target.port


async def ping_one(protocol: ProbeProtocol, target: Endpoint, attempts: int) -> str | None:
    """The responder's node id in hex, or ``None``; a retry covers one lost datagram."""
    try:
        address = await _address(target)
    except OSError:
        return None
    for _ in range(attempts):
        answered, node_id = await protocol.ping(address, protocol.node_id)
        if answered:
            if isinstance(node_id, bytes) and len(node_id) == NODE_ID_BYTES:
                return node_id.hex()
            return None
    return None


def count_neighbours(answer: object) -> int | None:
    """Contacts in a ``find_node`` answer, the probe itself not counted; None if malformed.

    A stock kademlia node keeps the probe (one fixed id) as a contact once
    pinged, with the port of whichever probe run was last; counting it would
    make a node that never joined look joined.
    """
    if not isinstance(answer, list):
        return None
    contacts = 0
    for contact in answer:
        if not isinstance(contact, (list, tuple)) or len(contact) != 3:
            return None
        if contact[0] != PROBE_NODE_ID:
            contacts += 1
    return contacts


async def joined_one(
    protocol: ProbeProtocol, target: Endpoint, attempts: int
) -> dict[str, object] | None:
    """``{"id": hex, "neighbours": n}`` for a node that answers, else ``None``.

    "Joined" needs more than an answer: a node listens (and answers pings)
    before it has found anybody. ``find_node`` returns the node's contacts,
    so an empty answer means "up, but not in the DHT yet".
    """
    node_id = await ping_one(protocol, target, attempts)
    if node_id is None:
        return None
    address = await _address(target)
    neighbours: int | None = None
    for _ in range(attempts):
        answered, contacts = await protocol.find_node(address, protocol.node_id, protocol.node_id)
        if answered:
            neighbours = count_neighbours(contacts)
            break
    return {"id": node_id, "neighbours": neighbours}


async def probe(
    targets: list[Endpoint],
    *,
    timeout: float = 120.0,
    rpc_timeout: float = 5.0,
    attempts: int = 2,
    concurrency: int = DEFAULT_CONCURRENCY,
    bind: str = "0.0.0.0",
    joined: bool = False,
    sock: socket.socket | None = None,
) -> dict[str, Any]:
    """Ping every target; targets still unanswered after ``timeout`` seconds are ``None``.

    With ``joined``, each answer is ``{"id", "neighbours"}`` (see :func:`joined_one`).
    ``sock``, an unbound UDP socket the caller made (in another network
    namespace: see ``cqkd_stack.live.namespace``), is used instead of a new
    one, bound to ``bind``, and closed at the end.
    """
    protocol = ProbeProtocol(PROBE_NODE_ID, rpc_timeout)
    transport = await open_endpoint(protocol, bind, sock)
    ask = joined_one if joined else ping_one
    return await ask_all(
        targets, lambda t: ask(protocol, t, attempts), concurrency, timeout, transport
    )


async def open_endpoint(
    protocol: asyncio.DatagramProtocol, bind: str, sock: socket.socket | None = None
) -> asyncio.DatagramTransport:
    """``protocol`` on ``sock`` (or a new UDP socket) bound to ``bind``, room for a burst.

    Replies that arrive together queue on the socket: the receive buffer is
    asked for :data:`RECEIVE_BUFFER` (the kernel caps it at rmem_max).
    """
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    try:
        sock.bind((bind, 0))
    except OSError:
        sock.close()
        raise
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
    return transport


async def ask_all(
    targets: list[Endpoint],
    ask: Callable[[Endpoint], Awaitable[Any]],
    concurrency: int,
    timeout: float,
    transport: asyncio.BaseTransport,
) -> dict[str, Any]:
    """``ask(target)`` for every target, ``concurrency`` at a time, then close ``transport``.

    A target whose answer failed or did not come within ``timeout`` seconds
    (for all of them together) is ``None``: one slow target never holds up
    the report of the others.
    """
    gate = asyncio.Semaphore(concurrency)

    async def bounded(target: Endpoint) -> Any:
        async with gate:
            return await ask(target)

    tasks = {t.text: asyncio.ensure_future(bounded(t)) for t in targets}
    try:
        await asyncio.wait(tasks.values(), timeout=timeout)
    finally:
        transport.close()
    results: dict[str, Any] = {}
    for text, task in tasks.items():
        if task.done() and not task.cancelled() and task.exception() is None:
            results[text] = task.result()
        else:
            task.cancel()
            results[text] = None
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m cqkd_stack.probe",
        description="Ping Kademlia nodes and print {ADDR:PORT: node id or null} as JSON.",
    )
    parser.add_argument("targets", nargs="*", metavar="ADDR:PORT", help="targets, or - for stdin")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="overall deadline in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--rpc-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for one ping reply (default: %(default)s, as rpcudp)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=2,
        help="pings per target before it counts as silent (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="pings in flight at once (default: %(default)s)",
    )
    parser.add_argument("--bind", default="0.0.0.0", help="local address (default: %(default)s)")
    parser.add_argument(
        "--joined",
        action="store_true",
        help='also ask each node for its contacts: {"id", "neighbours"} per target',
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print a summary line to stderr"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        for name in ("timeout", "rpc_timeout", "attempts", "concurrency"):
            if getattr(args, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be greater than 0")
        targets = read_targets(args.targets)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    # rpcudp logs every unanswered ping at ERROR; the JSON already says so.
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    start = time.monotonic()
    try:
        results = asyncio.run(
            probe(
                targets,
                timeout=args.timeout,
                rpc_timeout=args.rpc_timeout,
                attempts=args.attempts,
                concurrency=args.concurrency,
                bind=args.bind,
                joined=args.joined,
            )
        )
    except OSError as exc:  # the local socket itself, e.g. a bad --bind address
        print(f"{PROG}: error: cannot open a UDP socket on {args.bind}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results), flush=True)
    silent = [text for text, node_id in results.items() if node_id is None]
    if args.verbose:
        print(
            f"{PROG}: {len(results) - len(silent)}/{len(results)} answered in "
            f"{time.monotonic() - start:.2f}s",
            file=sys.stderr,
        )
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
