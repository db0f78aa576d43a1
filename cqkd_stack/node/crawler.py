"""Ask DHT nodes for their routing tables, bucket by bucket, and print them as one JSON object.

    python3 -m cqkd_stack.node.crawler [options] ADDR:PORT [ADDR:PORT ...]
    python3 -m cqkd_stack.node.crawler [options] -       # targets one per line on stdin

``cqkd-stack crawl`` runs this (in-process, or in a probe container when it
cannot enter a task's namespace) to prove the DHT is one network: two halves
of a split DHT both pass the probe's "joined", only the contact graph tells
them apart. What the tables mean is worked out on the host (core/dhtmap.py);
this module only asks and checks what comes back.

A table is read as a DHT crawler reads one: a ``find_node`` towards a random
id inside each bucket, from the farthest bucket (bit 160 differs) down. A
node answers the k contacts closest to the target, and every contact of the
target's bucket is closer to it than any contact outside, so one answer
holds the whole bucket (k at most); once an answer reaches past the bucket
(a contact of a farther bucket comes back), every nearer bucket was in it
too and the table is read. A reply that may have been cut to the node's
reply budget (see REPLY_BUDGET) has its bucket asked once more with another
key; at 1000 nodes that is about 12 queries per node (by the buckets' arithmetic).

Only the given targets (running tasks, as the Docker API lists them) are
asked; contacts the nodes list are returned, never contacted.

The node cuts its answer to 3 times the request's bytes (5 contacts) for a
sender that has not yet answered one of its RPCs, 10 times (20 contacts) for
one that has. So the crawler first pings each node under
:data:`CRAWLER_NODE_ID`; our node, not knowing that id, pings back to verify
it, and the crawler answers as the probe (:data:`PROBE_NODE_ID`), which no
node adds to its table: the node then knows the crawler's address receives,
and keeps no contact that would be dead once the crawler exits. The queries
themselves go under the probe's id, which our node neither verifies nor adds.
A stock kademlia node answers k contacts anyway and adds the crawler's id
once, as it adds the probe's (``handshake=False`` skips that ping).

Output (stdout, one line): ``{"ADDR:PORT": {"id": hex, "contacts": [[hex, ip,
port], ...], "queries": n, "verified": bool, "complete": bool} | null}``;
null for a node that did not answer the ping; ``complete`` when a stop rule
proved the whole table read. Exit 0 if every target answered, 1 if any did not,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import socket
import sys
import time
from typing import Any

import umsgpack

from .config import (
    HEADER_BYTES,
    ID_BYTES,
    MAX_REQUEST_DATAGRAM,
    MAX_RESPONSE_DATAGRAM,
    REPLY_FACTOR,
    K,
)
from .probe import (
    DEFAULT_CONCURRENCY,
    Endpoint,
    ProbeProtocol,
    UsageError,
    ask_all,
    open_endpoint,
    read_targets,
)
from .routing import as_int, contacts_from, is_contact_ip, is_id
from .wire import PROBE_NODE_ID

PROG = "cqkd-crawler"
# sha1(b"cqkd-stack crawler"): the id of the crawler's first ping only (see
# the module's docstring). Fixed, so a stock node keeps at most one of it.
CRAWLER_NODE_ID = bytes.fromhex("9e9f3b36a47e7cd63704c844aa4003e101fc60d8")
ID_BITS = 8 * ID_BYTES
# Buckets asked per node at most: a table of 2**24 nodes fits in 24; a node
# that keeps answering inside every bucket costs no more than that.
MAX_BUCKETS = 24
# How long a ping answer may wait for the node's verifying ping to come in.
HANDSHAKE_WAIT = 0.5
# Unanswered queries in a row after which a node's table is left as read so
# far: a node that stops answering mid-crawl must not cost 24 RPC timeouts.
MAX_FAILURES = 2
# What our node answers a verified sender at most: 10 times the request's
# bytes. A find_node request is 77 bytes, so 749 bytes of contacts: 20 at
# addresses of up to 10 characters, 19 at 11 (10.0.12.34), 17 at 15. A reply
# that may have been cut so is not taken for the whole table, and its bucket
# is asked again with another key inside it.
REQUEST_BYTES = HEADER_BYTES + len(umsgpack.packb(["find_node", [PROBE_NODE_ID, PROBE_NODE_ID]]))
REPLY_BUDGET = REPLY_FACTOR * REQUEST_BYTES - HEADER_BYTES
# fixarray, bin8 id, str8 of "255.255.255.255", uint16 port.
MAX_CONTACT_BYTES = 1 + 2 + ID_BYTES + 1 + 15 + 3


class CrawlProtocol(ProbeProtocol):
    """The probe's protocol with bounded datagrams and a record of who verified us.

    A reply larger than the node's largest (rpcudp's 8 KiB body) or a request
    larger than the node's largest is dropped before decoding, and only what
    the targets send is decoded at all (the crawler sends to nobody else):
    what a peer sends costs a bounded amount.
    """

    def __init__(self, wait_timeout: float, targets: set[tuple[str, int]]) -> None:
        super().__init__(PROBE_NODE_ID, wait_timeout)
        self.targets = targets
        # Targets that pinged us (our node verifying the crawler's address).
        self.verified_by: dict[tuple[str, int], asyncio.Event] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data or (addr[0], addr[1]) not in self.targets:
            return
        if len(data) > (MAX_REQUEST_DATAGRAM if data[0] == 0 else MAX_RESPONSE_DATAGRAM):
            return
        super().datagram_received(data, addr)

    def rpc_ping(self, sender: tuple[str, int], nodeid: bytes) -> bytes:
        self.event_for((sender[0], sender[1])).set()
        return self.node_id

    def event_for(self, address: tuple[str, int]) -> asyncio.Event:
        event = self.verified_by.get(address)
        if event is None:
            event = self.verified_by[address] = asyncio.Event()
        return event


def key_in_bucket(node_id: bytes, index: int, rng: random.Random) -> bytes:
    """A random id whose XOR distance to ``node_id`` has bit length ``index`` (1..160)."""
    distance = (1 << (index - 1)) | rng.getrandbits(index - 1) if index > 1 else 1
    return (as_int(node_id) ^ distance).to_bytes(ID_BYTES, "big")


def answer_bytes(answer: object) -> int:
    """The packed size of an answer the node sent (at most one datagram's worth)."""
    try:
        return len(umsgpack.packb(answer))
    except Exception:  # nothing umsgpack decoded fails to pack; cost bounded anyway
        return MAX_RESPONSE_DATAGRAM


def bucket_of(node_id: bytes, other: bytes) -> int:
    return (as_int(node_id) ^ as_int(other)).bit_length()


async def ask(
    protocol: CrawlProtocol, address: tuple[str, int], name: str, args: list[Any], attempts: int
) -> tuple[bool, Any]:
    for _ in range(attempts):
        answered, data = await getattr(protocol, name)(address, *args)
        if answered:
            return True, data
    return False, None


async def crawl_one(
    protocol: CrawlProtocol,
    target: Endpoint,
    attempts: int,
    handshake: bool,
    rng: random.Random,
) -> dict[str, Any] | None:
    """One node's id and the contacts of its table, or ``None`` if it does not answer."""
    address = (target.host, target.port)
    sender = CRAWLER_NODE_ID if handshake else PROBE_NODE_ID
    answered, node_id = await ask(protocol, address, "ping", [sender], attempts)
    if not answered or not is_id(node_id) or node_id in (PROBE_NODE_ID, CRAWLER_NODE_ID):
        return None
    verified = protocol.event_for(address)
    if handshake:
        # The node's ping went out before its answer; ours is usually back already.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(verified.wait(), HANDSHAKE_WAIT)
    contacts: dict[bytes, list[Any]] = {}
    queries = failures = 0
    complete = False
    index, again = ID_BITS, False
    while index > ID_BITS - MAX_BUCKETS:
        key = key_in_bucket(node_id, index, rng)
        answered, answer = await ask(protocol, address, "find_node", [PROBE_NODE_ID, key], attempts)
        queries += 1
        if not answered:
            failures += 1
            if failures >= MAX_FAILURES:
                break
            index -= 1
            continue
        failures = 0
        found = [
            c for c in contacts_from(answer)[:K] if c[0] not in (PROBE_NODE_ID, CRAWLER_NODE_ID)
        ]
        for contact in found:
            contacts.setdefault(contact[0], [contact[0].hex(), contact[1], contact[2]])
        cut = not verified.is_set() or answer_bytes(answer) + MAX_CONTACT_BYTES > REPLY_BUDGET
        if any(bucket_of(node_id, c[0]) > index for c in found):
            complete = True  # past the bucket: every nearer bucket was in this answer
        elif not found or (not cut and len(found) < K):
            complete = True  # a whole answer, short of k: the table holds no more
        if complete:
            break
        if cut and not again:
            again = True  # the bucket may hold more than fitted: another key inside it
            continue
        index, again = index - 1, False
    return {
        "id": node_id.hex(),
        "contacts": list(contacts.values()),
        "queries": queries,
        "verified": verified.is_set(),
        "complete": complete,
    }


async def crawl(
    targets: list[Endpoint],
    *,
    timeout: float = 60.0,
    rpc_timeout: float = 1.5,
    attempts: int = 2,
    concurrency: int = DEFAULT_CONCURRENCY,
    bind: str = "0.0.0.0",
    handshake: bool = True,
    sock: socket.socket | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Read every target's table, ``concurrency`` nodes at a time (one RPC each in flight).

    Targets must be IPv4 literals (the Docker API's task addresses): a host
    name would be another address than the one the API showed. ``sock`` is
    as for :func:`cqkd_stack.node.probe.probe`. A node unfinished after
    ``timeout`` seconds is ``None``.
    """
    for target in targets:
        if not is_contact_ip(target.host):
            raise UsageError(f"target {target.text!r} is not an IPv4 address")
    protocol = CrawlProtocol(rpc_timeout, {(t.host, t.port) for t in targets})
    transport = await open_endpoint(protocol, bind, sock)
    rng = random.Random(seed)
    return await ask_all(
        targets,
        lambda t: crawl_one(protocol, t, attempts, handshake, rng),
        concurrency,
        timeout,
        transport,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m cqkd_stack.node.crawler",
        description="Read Kademlia nodes' routing tables and print them as JSON.",
    )
    parser.add_argument("targets", nargs="*", metavar="ADDR:PORT", help="targets, or - for stdin")
    parser.add_argument("--timeout", type=float, default=60.0, help="overall deadline, seconds")
    parser.add_argument("--rpc-timeout", type=float, default=1.5, help="seconds per RPC reply")
    parser.add_argument("--attempts", type=int, default=2, help="sends per RPC before giving up")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="nodes read at once"
    )
    parser.add_argument("--bind", default="0.0.0.0", help="local address (default: %(default)s)")
    parser.add_argument(
        "--no-handshake",
        action="store_true",
        help="skip the verifying ping (for stock kademlia nodes, which answer k contacts anyway)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    start = time.monotonic()
    try:
        for name in ("timeout", "rpc_timeout", "attempts", "concurrency"):
            if getattr(args, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be greater than 0")
        targets = read_targets(args.targets)
        results = asyncio.run(
            crawl(
                targets,
                timeout=args.timeout,
                rpc_timeout=args.rpc_timeout,
                attempts=args.attempts,
                concurrency=args.concurrency,
                bind=args.bind,
                handshake=not args.no_handshake,
            )
        )
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: cannot open a UDP socket on {args.bind}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results), flush=True)
    silent = sum(1 for answer in results.values() if answer is None)
    print(
        f"{PROG}: {len(results) - silent}/{len(results)} tables read in "
        f"{time.monotonic() - start:.2f}s",
        file=sys.stderr,
    )
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
