"""What bounds the node's cost on a hostile network: the per-source rate and the value store.

Kept out of ``daemon`` so each bound can be unit-tested without a socket.
Standard library only (the node's import rule).
"""

from __future__ import annotations

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
        self.buckets: dict[tuple[str, int], list[float]] = {}

    def allow(self, source: tuple[str, int], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(source)
        if bucket is None:
            if len(self.buckets) >= self.max_sources:
                self._prune(now)
            bucket = self.buckets[source] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        """Forget the buckets that have refilled (their sources are idle), else all of them."""
        full = self.burst / self.rate
        idle = [s for s, (_, seen) in self.buckets.items() if now - seen >= full]
        for source in idle:
            del self.buckets[source]
        if len(self.buckets) >= self.max_sources:
            self.buckets.clear()


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
