"""The node's bounds as pure objects: the per-source token bucket and the value store."""

from __future__ import annotations

from cqkd_stack.node.guard import ENTRY_OVERHEAD, RateLimiter, ValueStore


def test_rate_limiter_allows_a_burst_then_the_rate_per_source() -> None:
    limiter = RateLimiter(rate=10, burst=20)
    flooder, other = ("10.0.0.1", 7000), ("10.0.0.1", 7001)
    assert sum(limiter.allow(flooder, now=0.0) for _ in range(100)) == 20
    assert limiter.allow(other, now=0.0)  # another port of the same IP is not punished
    assert sum(limiter.allow(flooder, now=1.0) for _ in range(100)) == 10


def test_rate_limiter_table_stays_bounded() -> None:
    limiter = RateLimiter(rate=10, burst=20, max_sources=50)
    for port in range(1000):
        limiter.allow(("10.0.0.1", port), now=0.0)
    assert len(limiter.buckets) <= 50


def test_value_store_refuses_over_quota_and_budget_instead_of_evicting() -> None:
    store = ValueStore(
        budget=10 * (ENTRY_OVERHEAD + 10), quota=4 * (ENTRY_OVERHEAD + 10), ttl=60, max_keys=100
    )
    assert store.put(b"honest", "h", 10, "10.0.0.9", now=0.0)
    accepted = [store.put(bytes([n]), n, 10, "10.0.0.1", now=0.0) for n in range(20)]
    assert accepted.count(True) == 4  # the flooder's quota
    assert store.get(b"honest", now=1.0) == "h"
    for ip in ("10.0.0.2", "10.0.0.3"):
        for n in range(20):
            store.put(ip.encode() + bytes([n]), n, 10, ip, now=0.0)
    assert store.used <= store.budget
    assert store.get(b"honest", now=1.0) == "h"


def test_value_store_expires_and_a_same_value_store_only_renews() -> None:
    store = ValueStore(budget=10_000, quota=10_000, ttl=60, max_keys=100)
    assert store.put(b"k", "v", 2, "10.0.0.1", now=0.0)
    used = store.used
    assert store.put(b"k", "v", 2, "10.0.0.2", now=50.0)  # a republish by another holder
    assert store.used == used and store.by_owner == {"10.0.0.1": used}
    assert store.get(b"k", now=100.0) == "v"
    assert store.get(b"k", now=111.0) is None
    assert store.used == 0 and store.by_owner == {}
