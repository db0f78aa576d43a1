"""The crawler against real node processes on loopback: whole tables, no trace left in them."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Callable

import pytest

from cqkd_stack.core.dhtmap import CrawlTarget, analyse
from cqkd_stack.node import crawler
from cqkd_stack.node.probe import parse_target
from cqkd_stack.node.routing import as_int
from cqkd_stack.node.wire import PROBE_NODE_ID

from .test_node import REPO_ROOT, NodeProc, base_env, free_udp_ports, spawn, wait_for

__all__ = ["spawn"]  # the fixture, used by name

WORKERS = 7


def joined_nodes(spawn: Callable[..., NodeProc]) -> list[NodeProc]:
    ports = free_udp_ports(WORKERS + 1)
    boot = spawn("boot", ports[0], "bootstrap")
    boot.wait_healthy()
    nodes = [boot]
    for n, port in enumerate(ports[1:], 1):
        nodes.append(spawn(f"w{n}", port, "worker", f"127.0.0.1:{ports[0]}"))
    for node in nodes[1:]:
        node.wait_healthy()
    wait_for(
        lambda: boot.ctl("status")[1].get("neighbours") == WORKERS, 10, "the bootstrap to know all"
    )
    # The last joins' verifying pings may still add contacts: wait until five
    # reads in a row see the same tables.
    seen: list[dict[int, int]] = []

    def settled() -> bool:
        seen.append(neighbours(nodes))
        return len(seen) >= 5 and all(s == seen[-1] for s in seen[-5:])

    wait_for(settled, 10, "the routing tables to settle")
    return nodes


def neighbours(nodes: list[NodeProc]) -> dict[int, int]:
    return {node.port: node.ctl("status")[1]["neighbours"] for node in nodes}


def test_a_crawl_reads_every_table_whole_and_no_node_keeps_the_crawler(
    spawn: Callable[..., NodeProc],
) -> None:
    nodes = joined_nodes(spawn)
    texts = [f"127.0.0.1:{node.port}" for node in nodes]
    before = neighbours(nodes)
    answers = asyncio.run(crawler.crawl([parse_target(t) for t in texts], rpc_timeout=1.0, seed=1))
    after = neighbours(nodes)
    assert before == after  # the crawler is in no table
    for node, text in zip(nodes, texts, strict=True):
        got = answers[text]
        assert got is not None, f"{node.name} did not answer"
        # It answered our node's verifying ping, so its answers were whole ones.
        assert got["verified"] is True and got["complete"] is True
        assert got["id"] == node.ctl("status")[1]["node_id"]
        assert len(got["contacts"]) == after[node.port], node.name
        assert {c[2] for c in got["contacts"]} <= {n.port for n in nodes} - {node.port}
    targets = [
        CrawlTarget("t_bootstrap" if i == 0 else "t_worker", None, i, "127.0.0.1", n.port)
        for i, n in enumerate(nodes)
    ]
    result = analyse("t", targets, answers, lookups=4, keys=4, rng=random.Random(1))
    assert result.components == [WORKERS + 1] and result.unknown == []
    assert result.lookups.succeeded == result.lookups.lookups == 16


async def find_node_answer(port: int, handshake: bool) -> list:
    """One find_node towards the node's own id, after a ping with or without the handshake."""
    loop = asyncio.get_running_loop()
    address = ("127.0.0.1", port)
    protocol = crawler.CrawlProtocol(1.0, {address})
    transport, _ = await loop.create_datagram_endpoint(
        lambda: protocol, local_addr=("127.0.0.1", 0)
    )
    try:
        sender = crawler.CRAWLER_NODE_ID if handshake else PROBE_NODE_ID
        ok, node_id = await protocol.ping(address, sender)
        assert ok
        if handshake:
            await asyncio.wait_for(protocol.event_for(address).wait(), 2)
        ok, answer = await protocol.find_node(address, PROBE_NODE_ID, node_id)
        assert ok
        return answer
    finally:
        transport.close()


def test_the_handshake_is_what_gets_whole_answers(spawn: Callable[..., NodeProc]) -> None:
    """An address the node has not verified gets 3x the request's bytes: 5 contacts of 7."""
    nodes = joined_nodes(spawn)
    assert len(asyncio.run(find_node_answer(nodes[0].port, handshake=False))) == 5
    assert len(asyncio.run(find_node_answer(nodes[0].port, handshake=True))) == WORKERS
    assert neighbours(nodes[:1]) == {nodes[0].port: WORKERS}


def test_the_command_prints_json_and_exits_1_for_a_silent_target(
    spawn: Callable[..., NodeProc],
) -> None:
    boot_port, silent = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cqkd_stack.node.crawler",
            "--rpc-timeout",
            "0.3",
            f"127.0.0.1:{boot_port}",
            f"127.0.0.1:{silent}",
        ],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=REPO_ROOT,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert out[f"127.0.0.1:{silent}"] is None
    assert out[f"127.0.0.1:{boot_port}"]["contacts"] == []
    usage = subprocess.run(
        [sys.executable, "-m", "cqkd_stack.node.crawler", "localhost:7000"],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=REPO_ROOT,
        timeout=30,
    )
    assert usage.returncode == 2 and "not an IPv4 address" in usage.stderr


def test_a_key_in_bucket_is_at_that_distance() -> None:
    rng = random.Random(5)
    own = bytes(range(20))
    for index in (1, 2, 80, 159, 160):
        key = crawler.key_in_bucket(own, index, rng)
        assert (as_int(key) ^ as_int(own)).bit_length() == index


def test_only_what_the_targets_send_is_decoded_and_only_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A datagram from anyone else, or larger than a node ever sends, costs no decoding."""
    decoded: list[tuple[bytes, tuple[str, int]]] = []
    monkeypatch.setattr(
        crawler.ProbeProtocol, "datagram_received", lambda self, d, a: decoded.append((d, a))
    )
    target = ("10.0.0.5", 7000)
    protocol = crawler.CrawlProtocol(1.0, {target})
    reply = b"\x01" + bytes(20) + b"\xc0"
    protocol.datagram_received(reply, ("10.0.0.6", 7000))  # not a target
    protocol.datagram_received(b"\x00" + bytes(20) + b"\x90", ("10.0.0.5", 7001))  # other port
    protocol.datagram_received(b"\x01" + bytes(crawler.MAX_RESPONSE_DATAGRAM), target)
    protocol.datagram_received(b"\x00" + bytes(crawler.MAX_REQUEST_DATAGRAM), target)
    protocol.datagram_received(b"", target)
    assert decoded == []
    protocol.datagram_received(reply, target)
    assert decoded == [(reply, target)]
