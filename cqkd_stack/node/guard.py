"""What bounds the node's cost on a hostile network: rate, kernel mute, value store.

Kept out of ``daemon`` so each bound can be unit-tested without the node.
Standard library only (the node's import rule); ``ctypes`` is imported only
when a first source is muted, and sockets are ``_socket``'s (see daemon.py).
"""

from __future__ import annotations

import _socket
import struct
import time

# Evaluated by type checkers only (see daemon.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Every held value costs at least this much beside its packed bytes: the key,
# the dict slot and the entry's list (measured about 100 bytes on CPython 3.11).
ENTRY_OVERHEAD = 128


class RateLimiter:
    """A token bucket per source address, in a table of bounded size.

    A source is the full ``(ip, port)``: tests and host-network deployments
    run many honest nodes on one address, so an IP-wide bucket would let one
    flooder silence its neighbours. The table forgets idle buckets first; a
    source that spreads over more ports than the table holds gets at most a
    fresh burst per port, and each of its datagrams still costs a bounded amount.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        # source -> [tokens, last seen, datagrams refused since it last paused]
        self.buckets: dict[tuple[str, int], list[float]] = {}
        # Sources refused ``burst`` datagrams in a row without pausing long
        # enough to refill: a flood, not a busy peer. The node mutes them
        # (:class:`KernelMute`) and clears the list.
        self.flooding: list[tuple[str, int]] = []

    def allow(self, source: tuple[str, int], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(source)
        if bucket is None:
            if len(self.buckets) >= self.max_sources:
                self._prune(now)
            bucket = self.buckets[source] = [self.burst, now, 0]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens >= self.burst:
            tokens = self.burst
            bucket[2] = 0
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            bucket[2] += 1
            if bucket[2] == self.burst:
                self.flooding.append(source)
            return False
        bucket[0] = tokens - 1.0
        return True

    def forget(self, source: tuple[str, int]) -> None:
        """Start ``source`` again with a full bucket (its mute has ended)."""
        self.buckets.pop(source, None)

    def _prune(self, now: float) -> None:
        """Forget the buckets that have refilled (their sources are idle), else all of them."""
        full = self.burst / self.rate
        idle = [s for s, bucket in self.buckets.items() if now - bucket[1] >= full]
        for source in idle:
            del self.buckets[source]
        if len(self.buckets) >= self.max_sources:
            self.buckets.clear()


# Classic BPF (linux/filter.h): the instructions a mute filter is made of.
BPF_LD_W_ABS = 0x20
BPF_LD_H_ABS = 0x28
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
# A negative load offset that reads the IP header (linux/filter.h).
SKF_NET_OFF = -0x100000
# Where a UDP socket's filter sees the packet: offset 0 is the UDP header,
# whose first two bytes are the source port; the IPv4 source address is at
# byte 12 of the IP header.
IP_SOURCE = SKF_NET_OFF + 12
UDP_SOURCE_PORT = 0
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
ACCEPT = 0xFFFFFFFF
DROP = 0


def mute_program(sources: list[tuple[str, int]]) -> list[tuple[int, int, int, int]]:
    """A socket filter that drops datagrams from ``sources`` (IPv4 ip, port) and keeps the rest.

    Four instructions per source: load the source address, compare, load the
    source port, compare; a match jumps to the final ``DROP``.
    """
    program: list[tuple[int, int, int, int]] = []
    for index, (ip, port) in enumerate(sources):
        address = struct.unpack("!I", _socket.inet_aton(ip))[0]
        to_drop = (len(sources) - 1 - index) * 4 + 1
        program += [
            (BPF_LD_W_ABS, 0, 0, IP_SOURCE & 0xFFFFFFFF),
            (BPF_JEQ_K, 0, 2, address),
            (BPF_LD_H_ABS, 0, 0, UDP_SOURCE_PORT),
            (BPF_JEQ_K, to_drop, 0, port),
        ]
    program += [(BPF_RET_K, 0, 0, ACCEPT), (BPF_RET_K, 0, 0, DROP)]
    return program


class KernelMute:
    """Flooding sources dropped by the kernel, before they reach the node's receive queue.

    A rate limit in the node still reads every datagram: one sender on
    loopback sent 450,000 pings a second, more than a Python loop can read
    and refuse, so the socket's queue filled and honest pings were dropped
    with the flood (up to 46 of 146 lost in 10 s). A classic BPF filter on
    the socket, which needs no privilege, drops a muted source's datagrams
    in the sender's own kernel path. At most ``limit`` sources are muted,
    each for ``seconds``; a flood spread over more sources than that meets
    the rate limit only. Where the kernel refuses filters the mute is off
    and the rate limit stays.
    """

    def __init__(self, sock: _socket.socket, limit: int = 64, seconds: float = 60.0) -> None:
        self.sock = sock
        self.limit = limit
        self.seconds = seconds
        self.until: dict[tuple[str, int], float] = {}
        self.available = True
        self.error: str | None = None

    def __len__(self) -> int:
        return len(self.until)

    def __contains__(self, source: object) -> bool:
        return source in self.until

    def add(self, source: tuple[str, int], now: float | None = None) -> bool:
        """Mute ``source``; False if the mute is off, full, or the source is not IPv4."""
        now = time.monotonic() if now is None else now
        if not self.available or source in self.until:
            return False
        self.expire(now)
        if len(self.until) >= self.limit:
            return False
        try:
            _socket.inet_aton(source[0])
        except OSError:
            return False
        self.until[source] = now + self.seconds
        self._install()
        return self.available

    def expire(self, now: float | None = None) -> list[tuple[str, int]]:
        """Unmute the sources whose time is up; they are returned."""
        now = time.monotonic() if now is None else now
        done = [source for source, until in self.until.items() if until <= now]
        for source in done:
            del self.until[source]
        if done and self.available:
            self._install()
        return done

    def _install(self) -> None:
        try:
            if not self.until:
                self.sock.setsockopt(_socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                return
            import ctypes  # the filter is passed by address; most nodes never mute

            program = mute_program(sorted(self.until))
            code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
            buffer = ctypes.create_string_buffer(code, len(code))
            fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
            # The kernel copies the program: the buffer may go after this call.
            self.sock.setsockopt(_socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as exc:
            # Off for good, and nothing left muted by an earlier filter.
            self.available = False
            self.error = str(exc)
            self.until.clear()
            try:
                self.sock.setsockopt(_socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError:
                pass


class ValueStore:
    """The values other nodes asked this one to hold, within a byte budget and quotas.

    Each entry is ``[value, cost, owner, expires]``: ``cost`` is the packed size
    plus :data:`ENTRY_OVERHEAD`, ``owner`` the IP that stored it (its quota is
    charged). When the budget or the owner's quota is spent, new keys are
    refused rather than old ones evicted: evicting let 4,096 tiny STOREs wipe
    every honest value. A key not stored again within ``ttl`` expires; the
    holders' republish is what keeps a live value stored.
    """

    def __init__(self, budget: int, quota: int, ttl: float, max_keys: int) -> None:
        self.budget = budget
        self.quota = quota
        self.ttl = ttl
        self.max_keys = max_keys
        self.entries: dict[bytes, list[Any]] = {}
        self.used = 0
        self.by_owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes, now: float | None = None) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[3] <= (time.monotonic() if now is None else now):
            self.discard(key)
            return None
        return entry[0]

    def age(self, key: bytes, now: float | None = None) -> float | None:
        """Seconds since ``key`` was last stored (or stored again), None if it is not held.

        Every store sets the expiry to ``now + ttl``, so the expiry says when.
        """
        if self.get(key, now) is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, now - (self.entries[key][3] - self.ttl))

    def put(self, key: bytes, value: Any, size: int, owner: str, now: float | None = None) -> bool:
        """Hold ``value`` (``size`` packed bytes) for ``owner``; False if over a bound.

        The same value stored again only renews its expiry (republish), so
        a holder's refresh never counts twice against anyone's quota.
        """
        now = time.monotonic() if now is None else now
        entry = self.entries.get(key)
        if entry is not None and entry[0] == value and type(entry[0]) is type(value):
            entry[3] = now + self.ttl
            return True
        cost = size + ENTRY_OVERHEAD
        freed = entry[1] if entry is not None else 0
        same_owner = entry is not None and entry[2] == owner
        if self.used - freed + cost > self.budget:
            return False
        if self.by_owner.get(owner, 0) - (freed if same_owner else 0) + cost > self.quota:
            return False
        if entry is None and len(self.entries) >= self.max_keys:
            return False
        if entry is not None:
            self.discard(key)
        self.entries[key] = [value, cost, owner, now + self.ttl]
        self.used += cost
        self.by_owner[owner] = self.by_owner.get(owner, 0) + cost
        return True

    def discard(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.used -= entry[1]
        left = self.by_owner.get(entry[2], 0) - entry[1]
        if left > 0:
            self.by_owner[entry[2]] = left
        else:
            self.by_owner.pop(entry[2], None)

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        old = [key for key, entry in self.entries.items() if entry[3] <= now]
        for key in old:
            self.discard(key)
        return len(old)

    def items(self) -> list[tuple[bytes, Any]]:
        return [(key, entry[0]) for key, entry in self.entries.items()]
