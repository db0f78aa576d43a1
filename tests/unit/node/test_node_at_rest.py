"""A DHT at rest: what a node sends when nobody asks it anything (issue 20).

Pinging a tenth of the table every health round kept 1000 idle nodes at
0.06 cores. A contact heard from lately (a request from it, an answer to our
RPC) is alive, so only those not heard from for ``CONTACT_STALE_ROUNDS``
rounds are pinged. Real node processes on loopback, with a short health
interval so the rounds go by quickly; raw sockets stand for the contacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import umsgpack

from cqkd_stack.node.config import BOOTSTRAP_CHECK_ROUNDS, CONTACT_STALE_ROUNDS
from cqkd_stack.node.routing import RoutingTable

from .test_node import NodeProc, free_udp_ports, wait_for
from .test_node_hostile import Peer, node_id_of, peers, spawn, verified

__all__ = ["peers", "spawn"]  # the fixtures, imported so pytest finds them here

# Rounds short enough that a contact goes stale in 3 s.
ROUND = 3.0 / CONTACT_STALE_ROUNDS


def answer_lookups(peer: Peer, msgid: bytes, name: str, args: list[Any], address: Any) -> None:
    """A contact's answer to find_node: no contacts of its own."""
    if name == "find_node":
        peer.sock.sendto(b"\x01" + msgid + umsgpack.packb([]), address)


def test_a_routing_table_knows_when_each_contact_was_last_seen() -> None:
    table = RoutingTable(bytes(20))
    one, two = (b"\x01" * 20, "10.0.0.1", 7000), (b"\x02" * 20, "10.0.0.2", 7000)
    table.touch(one)
    table.touch(two)
    now = time.monotonic()
    assert table.unseen_for(60, now) == []
    assert sorted(table.unseen_for(60, now + 61)) == [one, two]
    table.touch(one)  # seen again: fresh
    assert table.unseen_for(60, time.monotonic() + 30) == []
    assert table.stale(two[0], 60, now + 61) and not table.stale(one[0], 60, now + 30)
    table.remove(two[0])
    assert two[0] not in table.seen  # bounded by the table


def test_an_idle_node_pings_only_contacts_it_has_not_heard_from(
    spawn: Callable[..., NodeProc], peers: Callable[..., Peer]
) -> None:
    boot_port, port = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    node = spawn(
        "w",
        port,
        "worker",
        f"127.0.0.1:{boot_port}",
        CQKD_HEALTH_INTERVAL=str(ROUND),
        CQKD_RPC_TIMEOUT="0.3",
    )
    node.wait_healthy()
    # Contacts answer lookups (the join's second one asks them too).
    quiet, chatty = peers(on_request=answer_lookups), peers(on_request=answer_lookups)
    verified(quiet, node)
    verified(chatty, node)
    quiet_start = len(quiet.requests_received("ping"))
    chatty_start = len(chatty.requests_received("ping"))
    stale = CONTACT_STALE_ROUNDS * ROUND
    start = time.monotonic()
    quiet_pinged_at = None
    while time.monotonic() - start < stale + 2.0:
        chatty.send(port, b"\x00" + bytes(20) + b"\x92\xa4ping\x91\xc4\x14" + chatty.id)
        if quiet_pinged_at is None and len(quiet.requests_received("ping")) > quiet_start:
            quiet_pinged_at = time.monotonic() - start
        time.sleep(0.2)  # pacing: the chatty contact's own traffic
    # The old node pinged a sample of three of its four contacts every round.
    # A check may be pulled forward to share the bootstrap check's wake-up.
    early = (BOOTSTRAP_CHECK_ROUNDS + 1) * ROUND
    assert quiet_pinged_at is not None and quiet_pinged_at > stale - early, quiet_pinged_at
    assert len(chatty.requests_received("ping")) == chatty_start


def voluntary_switches(pid: int) -> int:
    """How often the process has blocked: each time its loop slept and woke again."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{pid}/status")


def test_an_idle_worker_wakes_only_when_a_check_is_due(spawn: Callable[..., NodeProc]) -> None:
    """Waking every round to find nothing due was most of what 1000 idle nodes cost.

    At rest a worker's only duty is its bootstrap check, every
    BOOTSTRAP_CHECK_ROUNDS rounds: a wake-up for the check and one for the
    answer. The old loop also woke once every round.
    """
    interval = 0.05
    boot_port, port = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap", CQKD_HEALTH_INTERVAL=str(interval))
    boot.wait_healthy()
    node = spawn(
        "w",
        port,
        "worker",
        f"127.0.0.1:{boot_port}",
        CQKD_HEALTH_INTERVAL=str(interval),
        CQKD_LOG_LEVEL="INFO",
    )
    node.wait_healthy()
    wait_for(lambda: "routing table filled" in node.stderr(), 5, "the join's lookup to end")
    window = 3.0
    before = voluntary_switches(node.proc.pid)
    time.sleep(window)  # the measure: what the node does while nobody asks
    woke = voluntary_switches(node.proc.pid) - before
    rounds = window / interval
    checks = rounds / BOOTSTRAP_CHECK_ROUNDS
    assert woke < rounds, (woke, rounds)
    assert woke >= checks / 2, (woke, checks)  # it still checks its bootstrap


def test_a_newcomer_no_one_pinged_back_looks_itself_up_once_more(
    spawn: Callable[..., NodeProc], peers: Callable[..., Peer]
) -> None:
    """2 of 1103 workers were in no other table right after a deploy (issue 21).

    The others add a newcomer only once it answers their ping, and one whose
    ping timed out on a loaded host leaves it out for a while; before the fix
    nothing announced it again for an hour. The bootstrap here answers pings
    and lookups but never pings the worker back, as such a peer: the worker
    must ask for its own id once more, and only once.
    """
    interval = 0.1
    asked: list[tuple[float, bytes]] = []  # (when, target) of each find_node

    def answer(peer: Peer, msgid: bytes, name: str, args: list[Any], address: Any) -> None:
        if name == "find_node":
            asked.append((time.monotonic(), args[1]))
        answer_lookups(peer, msgid, name, args, address)

    boot = peers(on_request=answer)
    (port,) = free_udp_ports(1)
    node = spawn(
        "w", port, "worker", f"127.0.0.1:{boot.port}", CQKD_HEALTH_INTERVAL=str(interval)
    )
    node.wait_healthy()
    own = node_id_of(node)

    def own_lookups() -> list[float]:
        return [when for when, target in list(asked) if target == own]

    wait_for(lambda: len(own_lookups()) >= 1, 5, "the join's lookup")
    wait_for(lambda: len(own_lookups()) >= 2, 5, "a second lookup for its own id")
    first, second = own_lookups()[:2]
    due = BOOTSTRAP_CHECK_ROUNDS * interval
    assert second - first > due / 2, (first, second)  # later, not a retry
    rest = time.monotonic() + 3 * due
    while time.monotonic() < rest:  # the measure: three more of its periods
        time.sleep(interval)
    assert len(own_lookups()) == 2, own_lookups()


def test_a_node_that_lost_its_bootstrap_pings_only_the_bootstrap_and_less_and_less(
    spawn: Callable[..., NodeProc], peers: Callable[..., Peer]
) -> None:
    """The 3-node cluster drowned past ~1100 workers (issue 21).

    A loaded host made bootstrap checks time out together, and every such
    node then joined again each round by pinging its whole routing table
    (and looking itself up when the first peer answered): ~1000 python
    processes runnable at once. Its peers answering proves nothing the node
    lacks; only a bootstrap does, and a slow one is asked less and less often.
    """
    interval = 0.1
    boot = peers(on_request=answer_lookups)
    (port,) = free_udp_ports(1)
    node = spawn(
        "w",
        port,
        "worker",
        f"127.0.0.1:{boot.port}",
        CQKD_HEALTH_INTERVAL=str(interval),
        CQKD_RPC_TIMEOUT="0.3",
        CQKD_LOG_LEVEL="INFO",
    )
    node.wait_healthy()
    others = [peers(on_request=answer_lookups) for _ in range(4)]
    for peer in others:
        verified(peer, node)
    wait_for(lambda: node.ctl("status")[1]["neighbours"] == 5, 5, "five contacts")
    boot.answer_pings = False
    wait_for(lambda: "a bootstrap node is gone" in node.stderr(), 5, "the lost bootstrap")
    pinged = [len(peer.requests_received("ping")) for peer in others]
    boot_pings = len(boot.requests_received("ping"))
    window = 40 * interval
    end = time.monotonic() + window
    while time.monotonic() < end:  # the measure: forty rounds without a bootstrap
        time.sleep(interval)
    assert [len(peer.requests_received("ping")) for peer in others] == pinged
    tries = len(boot.requests_received("ping")) - boot_pings
    # Every round would be 40; 1, 2, 4, 8, 9, 9 ... rounds apart (with jitter) about 8.
    assert 2 <= tries <= 14, tries
    assert node.health.exists()  # still in the DHT all along
    asked = len(boot.requests_received("find_node"))
    boot.answer_pings = True
    wait_for(
        lambda: len(boot.requests_received("find_node")) > asked,
        (BOOTSTRAP_CHECK_ROUNDS + 3) * interval + 2,
        "the node to join the bootstrap again and look itself up through it",
    )
