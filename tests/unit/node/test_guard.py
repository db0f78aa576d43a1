"""The node's bounds as objects: the per-source token bucket, the kernel mute, the value store.

The mute is tested on real loopback sockets: what it promises is what the
kernel does with its filter.
"""

from __future__ import annotations

import contextlib
import socket

from cqkd_stack.node.guard import ENTRY_OVERHEAD, KernelMute, RateLimiter, ValueStore


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
    assert store.age(b"k", now=100.0) == 50.0  # since the republish, not the first store
    assert store.get(b"k", now=111.0) is None
    assert store.age(b"k", now=111.0) is None and store.age(b"other", now=1.0) is None
    assert store.used == 0 and store.by_owner == {}


def test_rate_limiter_names_a_source_refused_a_burst_in_a_row_once() -> None:
    limiter = RateLimiter(rate=10, burst=20)
    flooder, busy = ("10.0.0.1", 7000), ("10.0.0.2", 7000)
    for _ in range(20 + 19):
        limiter.allow(flooder, now=0.0)
    assert limiter.flooding == []  # 19 refused: not yet a burst's worth
    limiter.allow(flooder, now=0.0)
    for _ in range(100):
        limiter.allow(flooder, now=0.0)
    assert limiter.flooding == [flooder]  # named once, however long it goes on
    # A busy peer that pauses until its bucket refills starts again at zero.
    for second in range(10):
        for _ in range(20 + 19):
            limiter.allow(busy, now=second * 10.0)
    assert limiter.flooding == [flooder]


def receiver_and_senders(count: int) -> tuple[socket.socket, list[socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.2)
    senders = []
    for _ in range(count):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        senders.append(sender)
    return receiver, senders


def received_from(receiver: socket.socket, senders: list[socket.socket]) -> list[int]:
    """Each sender sends its index; the indices that arrive, in order."""
    for index, sender in enumerate(senders):
        sender.sendto(bytes([index]), receiver.getsockname())
    got = []
    with contextlib.suppress(TimeoutError):
        while len(got) < len(senders):
            got.append(receiver.recv(16)[0])
    return got


def test_kernel_mute_drops_exactly_the_muted_sources_until_they_expire() -> None:
    receiver, senders = receiver_and_senders(5)
    mute = KernelMute(receiver, limit=3, seconds=60)
    try:
        for index in (0, 2, 4):
            assert mute.add(senders[index].getsockname(), now=0.0)
        assert mute.available, mute.error
        # The limit: a fourth source is not muted.
        assert not mute.add(senders[1].getsockname(), now=0.0)
        assert received_from(receiver, senders) == [1, 3]
        assert mute.expire(now=30.0) == []
        assert sorted(mute.expire(now=60.0)) == sorted(s.getsockname() for s in senders[::2])
        assert received_from(receiver, senders) == [0, 1, 2, 3, 4]
    finally:
        receiver.close()
        for sender in senders:
            sender.close()


def test_kernel_mute_tells_ports_of_one_address_apart() -> None:
    receiver, senders = receiver_and_senders(2)
    mute = KernelMute(receiver)
    try:
        assert mute.add(senders[1].getsockname())
        assert received_from(receiver, senders) == [0]
    finally:
        receiver.close()
        for sender in senders:
            sender.close()
