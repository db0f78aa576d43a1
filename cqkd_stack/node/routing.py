"""Where the node keeps its contacts and how it crawls the network for a key.

The routing table and the lookups are the Kademlia part proper: they hold no
socket and send nothing themselves (a lookup asks its node to), so the rules
that keep one host from filling the table, and the bounds of one crawl, can
be read and tested apart from the loop. The contact helpers live here
because every datagram's contacts pass through them: the daemon checks
requests with them, the control socket turns keys into ids with them.
Standard library and ``umsgpack`` only (the node's import rule).
"""

from __future__ import annotations

import _socket
import time

import umsgpack

from .config import ALPHA, ID_BYTES, LOOKUP_MAX_KNOWN, LOOKUP_MAX_QUERIES, MAX_VALUE_BYTES, K
from .wire import PROBE_NODE_ID

# Evaluated by type checkers only (see config.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, Protocol

    from .config import NodeConfig

    Contact = tuple[bytes, str, int]
    Reply = Callable[[bool, Any], None]

    class LookupHost(Protocol):
        """What a lookup needs of its node: its id, table, deadline, timers and RPCs.

        A protocol rather than the node's class, so this module does not
        import the daemon that imports it.
        """

        id: bytes
        table: RoutingTable
        config: NodeConfig

        def later(self, delay: float, callback: Callable[[], None]) -> list[Any]: ...

        def cancel(self, timer: list[Any] | None) -> None: ...

        def rpc(
            self, contact: Contact, name: str, args: list[Any], callback: Reply | None = None
        ) -> None: ...


def is_ipv4(host: str) -> bool:
    try:
        _socket.inet_pton(_socket.AF_INET, host)
    except OSError:
        return False
    return True


def is_contact_ip(host: str) -> bool:
    """An IPv4 literal a peer can be at: a host name would be resolved on the loop.

    ``sendto`` resolves a name synchronously (10 s frozen per name against a
    DNS server that does not answer); 0.0.0.0 and the broadcast address are
    nobody's.
    """
    return is_ipv4(host) and host not in ("0.0.0.0", "255.255.255.255")


def net24(ip: str) -> str:
    return ip.rpartition(".")[0]


def as_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def is_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == ID_BYTES


def contacts_from(answer: object) -> list[Contact]:
    """The valid ``(id, ip, port)`` entries of a ``find_node`` answer; junk is skipped."""
    found: list[Contact] = []
    if not isinstance(answer, list):
        return found
    for item in answer:
        if (
            isinstance(item, (list, tuple))
            and len(item) == 3
            and is_id(item[0])
            and isinstance(item[1], str)
            and is_contact_ip(item[1])
            and isinstance(item[2], int)
            and 0 < item[2] < 65536
        ):
            found.append((item[0], item[1], item[2]))
    return found


def value_size(value: object) -> int | None:
    """The packed size of a value this node holds or passes on, None if it is not one.

    One scalar (the control socket's own rule: string, number, boolean) of at
    most MAX_VALUE_BYTES: a container value of nested empty arrays cost 4 MiB
    of memory per 64 KB datagram.
    """
    if value is None or not isinstance(value, (str, int, float, bool)):
        return None
    try:
        size = len(umsgpack.packb(value))
    except Exception:  # an int beyond 64 bits
        return None
    return size if size <= MAX_VALUE_BYTES else None


# --------------------------------------------------------------------------- routing table


class RoutingTable:
    """k-buckets indexed by the bit length of the XOR distance to our own id.

    Each bucket holds up to k contacts ``(id, ip, port)``, least recently seen
    first. A full bucket keeps its old contacts (they have proven to stay up):
    the newcomer waits among the bucket's spares while the node pings the
    oldest contact, and takes its place only if that one turns out dead.

    A known id is never moved to another address (one ping from anywhere
    used to re-point it), an address holds one id, and one IP or /24 holds at
    most ``max_per_ip`` / ``max_per_net24`` contacts, so one host cannot fill
    the table with ids of its choosing.
    """

    def __init__(
        self, own_id: bytes, k: int = K, max_per_ip: int = 1 << 30, max_per_net24: int = 1 << 30
    ) -> None:
        self.own_id = own_id
        self.own = as_int(own_id)
        self.k = k
        self.max_per_ip = max_per_ip
        self.max_per_net24 = max_per_net24
        self.buckets: dict[int, list[Contact]] = {}
        self.spares: dict[int, list[Contact]] = {}
        self.addresses: dict[tuple[str, int], bytes] = {}
        self.per_ip: dict[str, int] = {}
        self.per_net: dict[str, int] = {}
        # id -> when the contact was last seen alive at its address (monotonic)
        self.seen: dict[bytes, float] = {}

    def index(self, node_id: bytes) -> int:
        return (as_int(node_id) ^ self.own).bit_length()

    def __len__(self) -> int:
        return len(self.addresses)

    def contacts(self) -> list[Contact]:
        return [c for bucket in self.buckets.values() for c in bucket]

    def get(self, node_id: bytes) -> Contact | None:
        for contact in self.buckets.get(self.index(node_id), ()):
            if contact[0] == node_id:
                return contact
        return None

    def at(self, address: tuple[str, int]) -> bytes | None:
        """The id the table holds at ``address``, if any."""
        return self.addresses.get(address)

    def _room_for(self, contact: Contact) -> bool:
        ip = contact[1]
        return (
            (ip, contact[2]) not in self.addresses
            and self.per_ip.get(ip, 0) < self.max_per_ip
            and self.per_net.get(net24(ip), 0) < self.max_per_net24
        )

    def _count(self, contact: Contact, step: int) -> None:
        ip, net = contact[1], net24(contact[1])
        for counts, name in ((self.per_ip, ip), (self.per_net, net)):
            left = counts.get(name, 0) + step
            if left > 0:
                counts[name] = left
            else:
                counts.pop(name, None)
        if step > 0:
            self.addresses[(ip, contact[2])] = contact[0]
        else:
            self.addresses.pop((ip, contact[2]), None)

    def touch(self, contact: Contact) -> tuple[str, Contact | None]:
        """Record that ``contact`` was seen (the caller has verified it).

        Returns "known", "added", "full" (with the bucket's oldest contact,
        which the caller pings), or "refused": the id is known at another
        address, the address holds another id, or its IP or /24 is at its cap.
        """
        index = self.index(contact[0])
        bucket = self.buckets.setdefault(index, [])
        for position, known in enumerate(bucket):
            if known[0] == contact[0]:
                if known[1:] != contact[1:]:
                    return "refused", None
                del bucket[position]
                bucket.append(known)
                self.seen[contact[0]] = time.monotonic()
                return "known", None
        if not self._room_for(contact):
            if not bucket:
                del self.buckets[index]
            return "refused", None
        if len(bucket) < self.k:
            bucket.append(contact)
            self._count(contact, 1)
            self.seen[contact[0]] = time.monotonic()
            return "added", None
        spares = self.spares.setdefault(index, [])
        spares[:] = [c for c in spares if c[0] != contact[0]]
        spares.append(contact)
        del spares[: -self.k]
        return "full", bucket[0]

    def remove(self, node_id: bytes) -> bool:
        """Drop a contact (it did not answer); the newest spare of its bucket that fits moves in."""
        index = self.index(node_id)
        spares = self.spares.get(index)
        if spares:
            spares[:] = [c for c in spares if c[0] != node_id]
        bucket = self.buckets.get(index)
        if not bucket:
            return False
        kept = [c for c in bucket if c[0] != node_id]
        if len(kept) == len(bucket):
            return False
        for contact in bucket:
            if contact[0] == node_id:
                self._count(contact, -1)
        self.seen.pop(node_id, None)
        while spares:
            spare = spares.pop()
            if self._room_for(spare):
                kept.append(spare)
                self._count(spare, 1)
                break
        if kept:
            self.buckets[index] = kept
        else:
            del self.buckets[index]
        if not spares:
            self.spares.pop(index, None)
        return True

    def unseen_for(self, seconds: float, now: float | None = None) -> list[Contact]:
        """The contacts not seen alive within ``seconds`` (a spare that moved in: never)."""
        now = time.monotonic() if now is None else now
        return [c for b in self.buckets.values() for c in b if self.stale(c[0], seconds, now)]

    def stale(self, node_id: bytes, seconds: float, now: float | None = None) -> bool:
        seen = self.seen.get(node_id)
        return seen is None or seen <= (time.monotonic() if now is None else now) - seconds

    def closer_than_us(self, target: bytes, limit: int) -> int:
        """How many contacts are closer to ``target`` than this node, counting up to ``limit``.

        Only the target's own bucket and the ones below it can hold such
        contacts (a contact in a higher bucket differs from us on a bit where
        the target agrees with us), so a STORE costs a few buckets, not a
        sort of the whole table.
        """
        goal = as_int(target)
        mine = self.own ^ goal
        top = mine.bit_length()
        count = 0
        for index, bucket in self.buckets.items():
            if index > top:
                continue
            for contact in bucket:
                if as_int(contact[0]) ^ goal < mine:
                    count += 1
                    if count >= limit:
                        return count
        return count

    def nearest(
        self, target: bytes, k: int = K, exclude: tuple[str, int] | None = None
    ) -> list[Contact]:
        """The k contacts closest to ``target``, except ``target`` and ``exclude``'s address."""
        goal = as_int(target)
        found = [
            c
            for bucket in self.buckets.values()
            for c in bucket
            if c[0] != target and (exclude is None or (c[1], c[2]) != exclude)
        ]
        found.sort(key=lambda c: as_int(c[0]) ^ goal)
        return found[:k]


# --------------------------------------------------------------------------- lookups


class Lookup:
    """An iterative ``find_node`` / ``find_value`` over the network, never asking ourselves.

    Up to alpha RPCs are in flight at once, always to the closest contacts not
    asked yet among the k closest known; it ends when those k have all
    answered or failed (the result is the k closest that answered), or, for
    a value, at the first node that has it. Other nodes list us among their
    contacts; this node never asks itself, so its own storage cannot make a
    ``get`` look like a read across the network.
    """

    def __init__(
        self,
        node: LookupHost,
        target: bytes,
        want_value: bool,
        done: Callable[[Any, list[Contact]], None],
    ) -> None:
        self.node = node
        self.target = target
        self._goal = as_int(target)
        self.want_value = want_value
        self.done = done
        self.known: dict[bytes, Contact] = {}
        self.asked: set[bytes] = set()
        self.without_value: list[Contact] = []
        self.in_flight = 0
        self.finished = False
        self.timer: list[Any] | None = None

    def start(self) -> Lookup:
        """Begin; whatever happens, it ends by the node's lookup deadline.

        A peer that keeps answering with ever-closer (made-up) contacts would
        otherwise keep a lookup, the join's included, running for ever.
        """
        self.timer = self.node.later(self.node.config.lookup_deadline, self._deadline)
        self.add(self.node.table.nearest(self.target))
        self.pump()
        return self

    def cancel(self) -> None:
        self.finished = True
        self.node.cancel(self.timer)

    def _deadline(self) -> None:
        if not self.finished:
            answered = [c for c in self.nearest() if c[0] in self.asked]
            self._finish(None, answered)

    def add(self, contacts: Iterable[Contact]) -> None:
        for contact in contacts:
            node_id = contact[0]
            if node_id in self.known or node_id in self.asked:
                continue  # asked and absent from known: it failed
            if node_id in (self.node.id, PROBE_NODE_ID):
                continue
            self.known[node_id] = contact
        if len(self.known) > LOOKUP_MAX_KNOWN:
            # Keep the closest and every contact asked (their answers count).
            ranked = sorted(self.known.values(), key=self._distance)
            keep = ranked[:LOOKUP_MAX_KNOWN]
            keep += [c for c in ranked[LOOKUP_MAX_KNOWN:] if c[0] in self.asked]
            self.known = {c[0]: c for c in keep}

    def _distance(self, contact: Contact) -> int:
        return as_int(contact[0]) ^ self._goal

    def nearest(self) -> list[Contact]:
        return sorted(self.known.values(), key=self._distance)[:K]

    def pump(self) -> None:
        if self.finished:
            return
        name = "find_value" if self.want_value else "find_node"
        for contact in self.nearest():
            if self.in_flight >= ALPHA:
                break
            if contact[0] in self.asked:
                continue
            if len(self.asked) >= LOOKUP_MAX_QUERIES:
                break
            self.asked.add(contact[0])
            self.in_flight += 1
            self.node.rpc(
                contact,
                name,
                [self.node.id, self.target],
                lambda ok, data, contact=contact: self._answer(contact, ok, data),
            )
        if self.in_flight == 0:
            self._finish(None, [c for c in self.nearest() if c[0] in self.asked])

    def _answer(self, contact: Contact, ok: bool, data: Any) -> None:
        self.in_flight -= 1
        if self.finished:
            return
        if not ok:
            self.known.pop(contact[0], None)
        elif (
            self.want_value and isinstance(data, dict) and value_size(data.get("value")) is not None
        ):
            value = data["value"]
            # As kademlia's crawl: the closest node that did not have the value
            # gets a copy, so the next lookup ends sooner.
            if self.without_value:
                closest = min(self.without_value, key=self._distance)
                self.node.rpc(closest, "store", [self.node.id, self.target, value])
            self._finish(value, [c for c in self.nearest() if c[0] in self.asked])
            return
        else:
            self.without_value.append(contact)
            self.add(contacts_from(data))
        self.pump()

    def _finish(self, value: Any, nodes: list[Contact]) -> None:
        self.finished = True
        self.node.cancel(self.timer)
        self.done(value, nodes)
