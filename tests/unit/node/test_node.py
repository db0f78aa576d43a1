"""Tests for the reference node, ``nodectl`` and ``probe``.

Pure helpers are tested directly. Everything else runs real nodes: real UDP
sockets on this machine, real subprocesses, the real /proc/net/udp for the
health check. The node's job is to behave correctly as a process (join,
health file, signals, control socket) and to speak the protocol of the
``kademlia`` / ``rpcudp`` libraries, so the interoperability tests run the
stock library next to our nodes; mocks would only prove that our mocks agree
with us.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kademlia.network import Server
from kademlia.node import Node
from kademlia.utils import digest as kademlia_digest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.node import nodectl, probe
from cqkd_stack.node.config import K, NodeConfig, parse_bootstrap_nodes
from cqkd_stack.node.control import Request, RequestError, parse_request
from cqkd_stack.node.daemon import HealthFile, health_pattern
from cqkd_stack.node.routing import RoutingTable
from cqkd_stack.node.wire import digest

REPO_ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
JOINED = re.compile(
    r"^cqkd-node: joined role=(?P<role>\w+)(?: name=(?P<name>\S+))? port=(?P<port>\d+) "
    r"neighbours=(?P<n>\d+) after=(?P<after>\d+\.\d\d)s$"
)


# --------------------------------------------------------------------------- pure helpers


def test_parse_bootstrap_nodes_keeps_names_and_order() -> None:
    assert parse_bootstrap_nodes("bootstrap:7000, 10.0.0.5:7001,,bootstrap:7000,") == (
        ("bootstrap", 7000),
        ("10.0.0.5", 7001),
    )
    assert parse_bootstrap_nodes("") == ()
    assert parse_bootstrap_nodes(" , ") == ()
    assert parse_bootstrap_nodes("[::1]:7000") == (("::1", 7000),)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("bootstrap", "not host:port"),
        (":7000", "not host:port"),
        ("bootstrap:seven", "no numeric port"),
        ("bootstrap:0", "outside 1-65535"),
        ("bootstrap:70000", "outside 1-65535"),
    ],
)
def test_parse_bootstrap_nodes_rejects(raw: str, fragment: str) -> None:
    with pytest.raises(CqkdError, match=fragment):
        parse_bootstrap_nodes(raw)


@pytest.mark.parametrize(
    ("port", "pattern"),
    [(7000, ":1B58 "), (7999, ":1F3F "), (80, ":0050 "), (65535, ":FFFF ")],
)
def test_health_pattern_is_proc_net_udp_format(port: int, pattern: str) -> None:
    assert health_pattern(port) == pattern


def test_health_pattern_rejects_impossible_ports() -> None:
    with pytest.raises(ValueError):
        health_pattern(65536)


def test_health_file_is_exactly_the_pattern(tmp_path: Path) -> None:
    health = HealthFile(tmp_path / "health", 7000)
    health.write()
    assert (tmp_path / "health").read_bytes() == b":1B58 "  # no newline: grep -f
    health.write()  # rewriting over an existing file is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["health"]  # no temp left
    health.remove()
    health.remove()
    assert not health.exists()


def test_config_from_env_defaults() -> None:
    config = NodeConfig.from_env({"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000"})
    assert config.role == "bootstrap"
    assert config.port == 7000
    assert config.bootstrap_nodes == ()
    assert config.name is None
    assert config.health_file == "/tmp/cqkd-health"
    assert config.control_socket == "/tmp/cqkd/control.sock"
    assert (config.join_backoff, config.join_backoff_max) == (0.5, 5.0)
    assert (config.health_interval, config.rpc_timeout) == (10.0, 2.0)
    assert config.interface == "0.0.0.0"


def test_config_from_env_everything() -> None:
    config = NodeConfig.from_env(
        {
            "CQKD_ROLE": "special",
            "CQKD_NODE_NAME": "alice",
            "DHT_PORT": " 7100 ",
            "BOOTSTRAP_NODES": "bootstrap:7000",
            "CQKD_HEALTH_FILE": "/run/h",
            "CQKD_CONTROL_SOCKET": "/run/c.sock",
            "JOIN_RETRIES": "3",  # accepted and ignored: the node never gives up
            "JOIN_BACKOFF": "0.1",
            "JOIN_BACKOFF_MAX": "0.05",
            "CQKD_HEALTH_INTERVAL": "2",
            "CQKD_RPC_TIMEOUT": "1.5",
            "CQKD_LOG_LEVEL": "debug",
        }
    )
    assert config.name == "alice"
    assert config.port == 7100
    assert config.bootstrap_nodes == (("bootstrap", 7000),)
    assert config.health_file == "/run/h"
    assert config.control_socket == "/run/c.sock"
    assert config.join_backoff_max == 0.1  # never below the first pause
    assert (config.health_interval, config.rpc_timeout) == (2.0, 1.5)
    assert config.log_level == 10


def test_config_takes_the_port_from_the_resolver() -> None:
    """The slot formula is the resolver's; the node just asks it."""
    env = {"CQKD_ROLE": "worker", "BOOTSTRAP_NODES": "b:5678", "TASK_SLOT": "3"}
    assert NodeConfig.from_env({**env, "BASE_PORT": "7000"}).port == 7002
    assert NodeConfig.from_env({**env, "BASE_PORT": "6000", "PORT_OFFSET": "10"}).port == 6012
    assert NodeConfig.from_env({**env, "BIND_HOST": "127.0.0.1"}).interface == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CQKD_ROLE": "worker", "BOOTSTRAP_NODES": "b:7000"}, "neither TASK_SLOT nor WORKER_ID"),
        ({"CQKD_ROLE": "worker", "DHT_PORT": "x", "BOOTSTRAP_NODES": "b:1"}, "not an integer"),
        ({"CQKD_ROLE": "worker", "DHT_PORT": "0", "BOOTSTRAP_NODES": "b:1"}, "outside"),
        ({"CQKD_ROLE": "worker", "TASK_SLOT": "{{.Task.Slot}}"}, "unrendered template"),
        ({"DHT_PORT": "7000"}, "CQKD_ROLE is not set"),
        ({"CQKD_ROLE": "peer", "DHT_PORT": "7000"}, "CQKD_ROLE is 'peer'"),
        ({"CQKD_ROLE": "worker", "DHT_PORT": "7000"}, "needs BOOTSTRAP_NODES"),
        ({"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000", "PORT_PROTOCOL": "tcp"}, "UDP only"),
        ({"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000", "JOIN_BACKOFF": "0"}, "greater than 0"),
        ({"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000", "JOIN_BACKOFF_MAX": "x"}, "a number"),
        (
            {"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000", "CQKD_CONTROL_SOCKET": "/" + "x" * 120},
            "longer than",
        ),
    ],
)
def test_config_from_env_rejects(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(CqkdError, match=fragment):
        NodeConfig.from_env(env)


def test_digest_is_kademlias() -> None:
    for key in ("greeting", "ключ", "a" * 300):
        assert digest(key) == kademlia_digest(key)


def _id(n: int) -> bytes:
    return n.to_bytes(20, "big")


def test_routing_table_keeps_old_contacts_and_promotes_a_spare() -> None:
    table = RoutingTable(_id(0))
    # Every id with the top bit set shares bucket 160 (distance bit length 160).
    top = [(_id((1 << 159) + i), "10.0.0.1", 7000 + i) for i in range(K + 2)]
    assert [table.touch(c)[0] for c in top[:K]] == ["added"] * K
    status, oldest = table.touch(top[K])
    assert (status, oldest) == ("full", top[0])  # the oldest is kept, to be pinged
    assert len(table) == K and table.get(top[K][0]) is None
    assert table.touch(top[0]) == ("known", None)  # seen again: now the newest
    assert table.touch(top[K + 1]) == ("full", top[1])
    assert table.remove(top[1][0])  # the ping failed: the newest spare moves in
    assert table.get(top[K + 1][0]) == top[K + 1]
    assert table.get(top[K][0]) is None
    assert len(table) == K
    assert not table.remove(_id(12345))


def test_routing_table_nearest_by_xor_distance() -> None:
    table = RoutingTable(_id(0))
    contacts = [(_id(n), "10.0.0.1", 7000 + n) for n in (1, 2, 3, 8, 9, 200)]
    for contact in contacts:
        table.touch(contact)
    assert [c[0] for c in table.nearest(_id(9), k=3)] == [_id(8), _id(1), _id(3)]
    # Never the target itself, never the asker's own address.
    assert _id(9) not in [c[0] for c in table.nearest(_id(9))]
    assert _id(8) not in [c[0] for c in table.nearest(_id(9), exclude=("10.0.0.1", 7008))]
    # A known id never moves to another address (one ping used to hijack it).
    assert table.touch((_id(8), "10.0.0.2", 7008)) == ("refused", None)
    assert table.get(_id(8)) == (_id(8), "10.0.0.1", 7008)
    assert len(table) == len(contacts)


def test_parse_request_accepts() -> None:
    assert parse_request(b'{"op": "status"}\n') == Request("status")
    assert parse_request(b'{"op": "get", "key": "k"}') == Request("get", "k")
    assert parse_request(b'{"op": "set", "key": "k", "value": "v"}') == Request("set", "k", "v")
    assert parse_request(b'{"op": "set", "key": "k", "value": 3}') == Request("set", "k", 3)
    assert parse_request(b'{"op": "holds", "key": "k"}') == Request("holds", "k")
    # holds asks about a key only: a value sent along is not part of the question.
    assert parse_request(b'{"op": "holds", "key": "k", "value": 1}') == Request("holds", "k")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"op": "delete", "key": "k"}', "unknown op"),
        (b'{"op": "get"}', "non-empty string 'key'"),
        (b'{"op": "get", "key": 5}', "non-empty string 'key'"),
        (b'{"op": "holds"}', "holds needs a non-empty string 'key'"),
        (b'{"op": "holds", "key": ""}', "holds needs a non-empty string 'key'"),
        (b'{"op": "Holds", "key": "k"}', "unknown op"),
        (b'{"op": "set", "key": "k"}', "needs a 'value'"),
        (b'{"op": "set", "key": "k", "value": null}', "string, number or boolean"),
        (b'{"op": "set", "key": "k", "value": [1]}', "string, number or boolean"),
    ],
)
def test_parse_request_rejects(raw: bytes, fragment: str) -> None:
    with pytest.raises(RequestError, match=fragment):
        parse_request(raw)


@pytest.mark.parametrize(
    ("op", "reply", "code"),
    [
        ("status", {"ok": True}, 0),
        ("status", {"ok": False, "error": "x"}, 1),
        ("get", {"ok": True, "value": "v"}, 0),
        ("get", {"ok": True, "value": None}, 1),
        ("set", {"ok": True, "stored": True}, 0),
        ("set", {"ok": True, "stored": False}, 1),
        ("holds", {"ok": True, "holds": True}, 0),
        ("holds", {"ok": True, "holds": False}, 1),
        ("holds", {"ok": False, "error": "x"}, 1),
    ],
)
def test_nodectl_exit_code(op: str, reply: dict[str, Any], code: int) -> None:
    assert nodectl.exit_code(op, reply) == code


def test_probe_targets_from_args_and_stdin() -> None:
    targets = probe.read_targets(
        ["10.0.0.1:7000", "-"], stdin_lines=["", "# comment", "worker-2:7001", "10.0.0.1:7000"]
    )
    assert [(t.host, t.port) for t in targets] == [("10.0.0.1", 7000), ("worker-2", 7001)]
    for bad in ("10.0.0.1", "10.0.0.1:x", "10.0.0.1:0"):
        with pytest.raises(probe.UsageError):
            probe.parse_target(bad)
    with pytest.raises(probe.UsageError, match="no targets"):
        probe.read_targets(["-"], stdin_lines=[])


# --------------------------------------------------------------------------- real processes


def free_udp_ports(count: int) -> list[int]:
    """Ports the kernel handed out a moment ago; held together so they differ."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def base_env() -> dict[str, str]:
    """The caller's environment minus anything the node reads, plus the repo on the path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CQKD_", "DHT_", "JOIN_", "BOOTSTRAP_", "TASK_", "BASE_PORT"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class NodeProc:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    health: Path
    sock: Path
    out: Path
    err: Path

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def stderr(self) -> str:
        return self.err.read_text()

    def healthy(self) -> bool:
        return self.health.exists()

    def wait_healthy(self, timeout: float = 8.0) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.stderr()}")
            return self.healthy()

        wait_for(check, timeout, f"{self.name} to become healthy")

    def ctl(self, *args: str) -> tuple[int, dict[str, Any]]:
        return run_module("nodectl", "--socket", str(self.sock), *args)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


def run_module(module: str, *args: str, stdin: str | None = None) -> tuple[int, Any]:
    done = subprocess.run(
        [PYTHON, "-m", f"cqkd_stack.{module}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=REPO_ROOT,
        timeout=30,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, json.loads(lines[0])


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProc]]:
    """Start nodes as real processes; every one is killed when the test ends."""
    procs: list[NodeProc] = []

    def start(name: str, port: int, role: str, bootstrap: str = "", **extra: str) -> NodeProc:
        files = {k: tmp_path / f"{name}.{k}" for k in ("health", "sock", "out", "err")}
        env = {
            **base_env(),
            "CQKD_ROLE": role,
            "DHT_PORT": str(port),
            "BOOTSTRAP_NODES": bootstrap,
            "CQKD_HEALTH_FILE": str(files["health"]),
            "CQKD_CONTROL_SOCKET": str(files["sock"]),
            **extra,
        }
        with files["out"].open("wb") as out, files["err"].open("wb") as err:
            proc = subprocess.Popen(
                [PYTHON, "-m", "cqkd_stack.node"], env=env, cwd=REPO_ROOT, stdout=out, stderr=err
            )
        node = NodeProc(
            name, port, proc, files["health"], files["sock"], files["out"], files["err"]
        )
        procs.append(node)
        return node

    try:
        yield start
    finally:
        for node in procs:
            node.stop()


@pytest.fixture
def cluster(spawn: Callable[..., NodeProc]) -> list[NodeProc]:
    """A bootstrap node and three workers, all healthy."""
    *ports, dead = free_udp_ports(5)
    boot = spawn("boot", ports[0], "bootstrap")
    boot.wait_healthy()
    # A literal address plus a name, so the resolver path runs too, and a
    # silent one that must not hold up the join for a full RPC timeout.
    join = f"127.0.0.1:{dead},127.0.0.1:{ports[0]},localhost:{ports[0]}"
    workers = [spawn(f"w{i}", port, "worker", join) for i, port in enumerate(ports[1:], 1)]
    for node in workers:
        node.wait_healthy()
    return [boot, *workers]


def test_cluster_joins_and_is_healthy_by_proc_net_udp(cluster: list[NodeProc]) -> None:
    for node in cluster:
        assert node.health.read_bytes() == health_pattern(node.port).encode()
        # Exactly the image's health check, against this machine's real table.
        check = subprocess.run(["grep", "-qf", str(node.health), "/proc/net/udp"])
        assert check.returncode == 0, f"{node.name}: pattern not in /proc/net/udp"
        lines = node.lines()
        assert len(lines) == 1, lines
        match = JOINED.match(lines[0])
        assert match, lines[0]
        assert match["port"] == str(node.port)
        role = "bootstrap" if node.name == "boot" else "worker"
        assert match["role"] == role
        assert (int(match["n"]) >= 1) == (role == "worker")
        assert float(match["after"]) < 3.0  # rpcudp's timeout is 5 s
        assert node.stderr() == ""  # quiet: 1000 containers log
    # The pattern of a port nobody listens on must not match anything.
    dead = HealthFile(cluster[0].health.with_name("dead.health"), free_udp_ports(1)[0])
    dead.write()
    assert subprocess.run(["grep", "-qf", str(dead.path), "/proc/net/udp"]).returncode == 1


def test_status_probe_and_network_set_get(cluster: list[NodeProc]) -> None:
    ids = {}
    for node in cluster:
        code, status = node.ctl("status")
        assert code == 0, status
        assert status["port"] == node.port
        assert status["healthy"] is True
        assert status["neighbours"] >= 1
        assert isinstance(status["seconds"], float)
        ids[f"127.0.0.1:{node.port}"] = status["node_id"]
    neighbours_before = cluster[0].ctl("status")[1]["neighbours"]

    code, answered = run_module("probe", *ids)
    assert code == 0
    assert answered == ids  # every port answered with the node id it reports itself
    # Targets on stdin, plus one port where nobody listens.
    dead = f"127.0.0.1:{free_udp_ports(1)[0]}"
    stdin = "\n".join([*ids, dead]) + "\n"
    code, answered = run_module(
        "probe", "--rpc-timeout", "0.5", "--attempts", "1", "-", stdin=stdin
    )
    assert code == 1
    assert answered == {**ids, dead: None}
    # The probe did not leave itself behind as a (soon dead) neighbour.
    assert cluster[0].ctl("status")[1]["neighbours"] == neighbours_before

    w1, w2, w3 = cluster[1:]
    code, stored = w1.ctl("set", "greeting", "hello from w1")
    assert code == 0, stored
    assert stored["ok"] and stored["stored"] and stored["replicas"] >= 1
    code, got = w2.ctl("get", "greeting")
    assert code == 0, got
    assert got["value"] == "hello from w1"
    code, got = w3.ctl("get", "never-set")
    assert code == 1
    assert got == {"ok": True, "key": "never-set", "value": None, "seconds": got["seconds"]}


def test_nodectl_errors_are_json_lines(cluster: list[NodeProc], tmp_path: Path) -> None:
    code, reply = run_module("nodectl", "--socket", str(tmp_path / "nobody.sock"), "status")
    assert code == 1
    assert reply["ok"] is False and "no control socket" in reply["error"]
    usage = subprocess.run(
        [PYTHON, "-m", "cqkd_stack.nodectl", "frob"],
        capture_output=True,
        env=base_env(),
        cwd=REPO_ROOT,
    )
    assert usage.returncode == 2
    # A malformed request gets an error reply, and the node keeps serving.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(cluster[1].sock))
        sock.sendall(b"not json\n")
        reply = json.loads(sock.makefile().readline())
    assert reply["ok"] is False and "not JSON" in reply["error"]
    assert cluster[1].ctl("status")[0] == 0


def test_holds_says_which_nodes_store_a_value_and_who_published_it(
    cluster: list[NodeProc],
) -> None:
    """The nodes that say they hold a key are the ones the store reached, no more."""
    writer = cluster[1]
    code, stored = writer.ctl("set", "held-somewhere", "v")
    assert code == 0, stored
    answers = {node.name: node.ctl("holds", "held-somewhere") for node in cluster}
    holders = {name for name, (code, reply) in answers.items() if reply["holds"]}
    for name, (code, reply) in answers.items():
        assert reply["ok"] and reply["key"] == "held-somewhere", reply
        assert code == (0 if reply["holds"] else 1)
        assert reply["published"] is (name == writer.name)
    # Four nodes, k = 20: every other node was asked, and each ack is a holder.
    assert len(holders - {writer.name}) == stored["replicas"] == 3
    assert (writer.name in holders) is stored["local"]
    code, reply = cluster[2].ctl("holds", "never-set")
    assert code == 1 and reply["holds"] is False and reply["published"] is False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_nodes_join_a_replaced_bootstrap_so_the_dht_does_not_split(
    spawn: Callable[..., NodeProc], host: str
) -> None:
    """The bootstrap is lost and replaced at another address (as Swarm reschedules it).

    Nodes that join afterwards meet only the new bootstrap. Unless the older
    nodes join again, the two halves never meet and a value stored before
    the loss cannot be read from the new half. Given as a name (as every
    stack gives it), the bootstrap's address comes from a lookup child, after
    a known peer has answered the rejoin's ping: the older nodes then never
    met the new bootstrap and the DHT stayed split for good (dht-check
    --kill-holders found it on Swarm: 7 survivors apart from 21 newcomers).
    """
    old_port, new_port, *ports = free_udp_ports(5)
    quick = {"CQKD_HEALTH_INTERVAL": "0.3", "CQKD_RPC_TIMEOUT": "0.5"}
    # The name a Swarm stack gives resolves to the old task, then to the new one.
    both = f"{host}:{old_port},{host}:{new_port}"
    first = spawn("boot1", old_port, "bootstrap", **quick)
    first.wait_healthy()
    older = [spawn(f"w{i}", port, "worker", both, **quick) for i, port in enumerate(ports[:2])]
    for node in older:
        node.wait_healthy()
    code, stored = older[0].ctl("set", "before-the-loss", "still here")
    assert code == 0 and stored["replicas"] >= 1, stored

    first.stop()
    second = spawn("boot2", new_port, "bootstrap", **quick)
    second.wait_healthy()
    newcomer = spawn("w-new", ports[2], "worker", f"127.0.0.1:{new_port}", **quick)
    newcomer.wait_healthy()

    def read() -> bool:
        code, got = newcomer.ctl("get", "before-the-loss")
        return code == 0 and got["value"] == "still here"

    wait_for(read, 10, "the newcomer reads the value stored before the bootstrap was lost")
    # Each older node notices the loss at its own next bootstrap check (every
    # BOOTSTRAP_CHECK_ROUNDS rounds at rest, no longer every round): the
    # second may come a few rounds after the first.
    wait_for(
        lambda: second.ctl("status")[1]["neighbours"] >= 3, 5, "the new bootstrap to know all"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_once_and_cleans_up(
    spawn: Callable[..., NodeProc], sig: signal.Signals
) -> None:
    boot_port, worker_port = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    worker = spawn("w", worker_port, "worker", f"127.0.0.1:{boot_port}")
    worker.wait_healthy()
    for node in (worker, boot):
        assert node.sock.exists()
        node.proc.send_signal(sig)
        assert node.proc.wait(timeout=2) == 0
        assert not node.health.exists()
        assert not node.sock.exists()
        assert node.stderr() == ""


def test_signal_during_join_exits_zero(spawn: Callable[..., NodeProc]) -> None:
    (port,) = free_udp_ports(1)
    node = spawn("w", port, "worker", "127.0.0.1:9", CQKD_RPC_TIMEOUT="30")
    wait_for(node.sock.exists, 5, "the control socket")
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=2) == 0
    assert not node.sock.exists()


def test_missing_port_is_a_clear_error(spawn: Callable[..., NodeProc]) -> None:
    node = spawn("w", 0, "worker", "127.0.0.1:7000", DHT_PORT="")
    assert node.proc.wait(timeout=5) == 1
    err = node.stderr()
    assert err.startswith("cqkd-node: error: neither TASK_SLOT nor WORKER_ID is set"), err
    assert len(err.splitlines()) == 1
    assert not node.sock.exists()


def test_busy_port_is_a_clear_error_and_never_another_port(
    spawn: Callable[..., NodeProc],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        node = spawn("boot", port, "bootstrap")
        assert node.proc.wait(timeout=5) == 1
    err = node.stderr()
    assert err.startswith(f"cqkd-node: error: cannot listen on UDP 0.0.0.0:{port}: "), err
    assert not node.health.exists() and node.lines() == []


@pytest.mark.parametrize(
    ("unresolvable", "reason"),
    [
        ("", "no bootstrap node answered"),
        ("nohost.invalid:7000,", "cannot resolve nohost.invalid"),
    ],
)
def test_join_never_gives_up_and_says_why_once(
    spawn: Callable[..., NodeProc], unresolvable: str, reason: str
) -> None:
    """A bootstrap that is not there yet is normal under Swarm: keep trying, quietly."""
    boot_port, port = free_udp_ports(2)
    node = spawn(
        "w",
        port,
        "worker",
        f"{unresolvable}127.0.0.1:{boot_port}",
        JOIN_RETRIES="1",  # ignored
        JOIN_BACKOFF="0.05",
        JOIN_BACKOFF_MAX="0.1",
        CQKD_RPC_TIMEOUT="0.2",
    )
    wait_for(lambda: reason in node.stderr(), 5, "the first join warning")
    time.sleep(1.0)  # several more attempts, each one failing
    assert node.proc.poll() is None
    err = node.stderr().splitlines()
    # One line: the reason at the first failure, then at most one every 30 s.
    assert len(err) == 1, err
    assert err[0].startswith("cqkd-node: warning: cannot join the DHT yet (attempt 1, "), err
    assert reason in err[0] and f"127.0.0.1:{boot_port}" in err[0]
    assert not node.health.exists() and node.lines() == []
    code, status = node.ctl("status")  # the control socket works meanwhile
    assert code == 0 and status["healthy"] is False

    boot = spawn("boot", boot_port, "bootstrap")
    node.wait_healthy(timeout=5)
    match = JOINED.match(node.lines()[0])
    assert match and match["role"] == "worker" and match["n"] == "1"
    assert boot.ctl("status")[1]["neighbours"] == 1


def test_worker_waits_for_a_late_bootstrap(spawn: Callable[..., NodeProc]) -> None:
    boot_port, worker_port = free_udp_ports(2)
    worker = spawn(
        "w",
        worker_port,
        "worker",
        f"localhost:{boot_port}",
        JOIN_BACKOFF="0.1",
        JOIN_BACKOFF_MAX="0.2",
        CQKD_RPC_TIMEOUT="0.3",
    )
    wait_for(worker.sock.exists, 5, "the worker's control socket")
    code, status = worker.ctl("status")
    assert code == 0 and status["healthy"] is False and status["neighbours"] == 0
    boot = spawn("boot", boot_port, "bootstrap")
    worker.wait_healthy()
    assert JOINED.match(worker.lines()[0])
    assert boot.ctl("status")[1]["neighbours"] == 1


def test_health_file_follows_the_neighbours(spawn: Callable[..., NodeProc]) -> None:
    """Lost every neighbour: file gone; bootstrap back: rejoined and healthy again."""
    boot_port, worker_port = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    worker = spawn(
        "w",
        worker_port,
        "worker",
        f"127.0.0.1:{boot_port}",
        CQKD_HEALTH_INTERVAL="0.2",
        CQKD_RPC_TIMEOUT="0.3",
    )
    worker.wait_healthy()
    boot.proc.terminate()
    assert boot.proc.wait(timeout=2) == 0
    # Kademlia notices a dead contact only when an RPC to it goes unanswered
    # (the health round's ping may get there first: then there is nobody to ask).
    code, got = worker.ctl("get", "anything")
    assert code == 1 and got.get("value") is None, got
    assert worker.ctl("status")[1]["neighbours"] == 0
    wait_for(lambda: not worker.healthy(), 3, "the health file to go")
    spawn("boot2", boot_port, "bootstrap")
    worker.wait_healthy(timeout=5)
    assert worker.proc.poll() is None
    assert len(worker.lines()) == 1  # still one log line for the whole life


def test_bootstrap_nodes_join_each_other(spawn: Callable[..., NodeProc]) -> None:
    """A bootstrap node is healthy at once; listing itself does not make it its own peer."""
    first, second = free_udp_ports(2)
    a = spawn("a", first, "bootstrap")
    a.wait_healthy()
    b = spawn("b", second, "bootstrap", f"127.0.0.1:{second},localhost:{first}")
    b.wait_healthy()
    wait_for(lambda: a.ctl("status")[1]["neighbours"] == 1, 5, "a to learn about b")
    assert b.ctl("status")[1]["neighbours"] == 1
    assert b.lines()[0].startswith(f"cqkd-node: joined role=bootstrap port={second} ")


def test_dead_contacts_are_evicted_without_a_lookup(spawn: Callable[..., NodeProc]) -> None:
    """After churn the bootstrap node must forget a killed worker on its own.

    Otherwise it hands the dead contact to every node that joins, and each
    of their lookups waits out an RPC timeout on it (seen on a live swarm:
    joins of 15-30 s after a rolling restart).
    """
    boot_port, live_port, dead_port = free_udp_ports(3)
    boot = spawn("boot", boot_port, "bootstrap", CQKD_HEALTH_INTERVAL="0.2", CQKD_RPC_TIMEOUT="0.3")
    boot.wait_healthy()
    live = spawn("live", live_port, "worker", f"127.0.0.1:{boot_port}")
    doomed = spawn("doomed", dead_port, "worker", f"127.0.0.1:{boot_port}")
    live.wait_healthy()
    doomed.wait_healthy()
    wait_for(lambda: boot.ctl("status")[1]["neighbours"] == 2, 5, "both workers known")
    doomed.stop()  # SIGKILL: no goodbye, as when a node or container dies
    wait_for(lambda: boot.ctl("status")[1]["neighbours"] == 1, 5, "the dead worker to go")
    assert live.ctl("status")[1]["neighbours"] >= 1


def test_lone_node_counts_neither_itself_nor_the_probe(spawn: Callable[..., NodeProc]) -> None:
    """Pinging itself (its own BOOTSTRAP_NODES) or being probed is no neighbour."""
    (port,) = free_udp_ports(1)
    node = spawn(
        "a",
        port,
        "bootstrap",
        f"127.0.0.1:{port}",
        JOIN_BACKOFF="0.05",
        JOIN_BACKOFF_MAX="0.1",
        CQKD_RPC_TIMEOUT="0.2",
    )
    node.wait_healthy()  # a bootstrap node is healthy alone
    wait_for(lambda: "cannot join BOOTSTRAP_NODES yet" in node.stderr(), 5, "the warning")
    node_id = node.ctl("status")[1]["node_id"]
    target = f"127.0.0.1:{port}"
    # The probe speaks rpcudp (the library) and gets the id back.
    assert run_module("probe", target) == (0, {target: node_id})
    assert run_module("probe", "--joined", target) == (
        0,
        {target: {"id": node_id, "neighbours": 0}},
    )
    assert node.ctl("status")[1]["neighbours"] == 0
    assert node.proc.poll() is None


def test_worker_joins_through_a_peer_that_found_it(spawn: Callable[..., NodeProc]) -> None:
    """Another node may reach a worker before the worker reaches its bootstrap."""
    boot_port, early_port, late_port, silent = free_udp_ports(4)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    late = spawn(
        "late",
        late_port,
        "worker",
        f"127.0.0.1:{silent}",  # its own bootstrap never answers
        JOIN_BACKOFF="0.1",
        JOIN_BACKOFF_MAX="0.2",
        CQKD_RPC_TIMEOUT="0.2",
    )
    wait_for(lambda: "no bootstrap node answered" in late.stderr(), 5, "late to fail once")
    # early joins through boot and also pings late, which welcomes it.
    early = spawn("early", early_port, "worker", f"127.0.0.1:{boot_port},127.0.0.1:{late_port}")
    early.wait_healthy()
    late.wait_healthy(timeout=5)
    assert JOINED.match(late.lines()[0])
    # The lookup that fills the table found boot through early.
    wait_for(lambda: late.ctl("status")[1]["neighbours"] == 2, 5, "late to know boot")


# --------------------------------------------------------------------------- the stock library


class KademliaLoop:
    """An asyncio loop in a thread, running stock ``kademlia.network.Server`` nodes.

    The loop must keep answering RPCs while the test blocks on our nodes
    (nodectl subprocesses), hence a thread rather than ``asyncio.run``.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[Server] = []

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def server(self) -> tuple[Server, int]:
        async def make() -> Server:
            server = Server()
            await server.listen(0, "127.0.0.1")
            return server

        server = self.run(make())
        self.servers.append(server)
        return server, server.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def kademlia_loop() -> Iterator[KademliaLoop]:
    loop = KademliaLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def pair(spawn: Callable[..., NodeProc]) -> tuple[NodeProc, NodeProc]:
    """Our bootstrap node and one of our workers, joined."""
    boot_port, worker_port = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    worker = spawn("w", worker_port, "worker", f"127.0.0.1:{boot_port}")
    worker.wait_healthy()
    return boot, worker


def test_stock_kademlia_stores_and_our_node_gets(
    pair: tuple[NodeProc, NodeProc], kademlia_loop: KademliaLoop
) -> None:
    boot, worker = pair
    server, _ = kademlia_loop.server()
    # bootstrap = ping + a find_node crawl: our answers must parse as the library's.
    found = kademlia_loop.run(server.bootstrap([("127.0.0.1", boot.port)]))
    assert sorted(n.port for n in found) == sorted([boot.port, worker.port])
    assert kademlia_loop.run(server.set("from-kademlia", "stored by the library")) is True
    # Our rpc_store kept it, and rpc_find_value answers in the library's format.
    boot_id = bytes.fromhex(boot.ctl("status")[1]["node_id"])
    answered, reply = kademlia_loop.run(
        server.protocol.call_find_value(
            Node(boot_id, "127.0.0.1", boot.port), Node(digest("from-kademlia"))
        )
    )
    assert answered and reply == {"value": "stored by the library"}
    code, got = worker.ctl("get", "from-kademlia")
    assert code == 0 and got["value"] == "stored by the library", got
    # The library's node is in our tables now, as any pinger.
    assert worker.ctl("status")[1]["neighbours"] == 2


def test_our_node_sets_and_stock_kademlia_gets(
    pair: tuple[NodeProc, NodeProc], kademlia_loop: KademliaLoop
) -> None:
    boot, worker = pair
    holder, _ = kademlia_loop.server()
    kademlia_loop.run(holder.bootstrap([("127.0.0.1", boot.port)]))
    wait_for(lambda: worker.ctl("status")[1]["neighbours"] == 2, 5, "worker to know holder")
    code, stored = worker.ctl("set", "from-ours", "stored by our node")
    assert code == 0 and stored["replicas"] == 2, stored  # boot and the library's node
    assert holder.storage.get(digest("from-ours")) == "stored by our node"
    # A fresh library node has nothing locally: its get crawls our nodes.
    reader, _ = kademlia_loop.server()
    kademlia_loop.run(reader.bootstrap([("127.0.0.1", boot.port)]))
    # Joining may already have handed it a copy (kademlia's welcome_if_new):
    # forget it, so the library's get has to crawl.
    reader.storage.data.clear()
    assert kademlia_loop.run(reader.get("from-ours")) == "stored by our node"


def test_get_asks_the_network_never_this_node(
    pair: tuple[NodeProc, NodeProc], kademlia_loop: KademliaLoop
) -> None:
    """A value held only by the asking node is not found; held by another, it is.

    The library's node reaches boot as 127.0.0.2 (loopback too), so when boot
    asks it, its answer lists boot under an address boot does not know as its
    own: only the id tells boot not to ask itself (on Swarm, a task attached
    to several networks is seen under several addresses in the same way).
    """
    boot, worker = pair
    server, _ = kademlia_loop.server()
    boot_id = bytes.fromhex(boot.ctl("status")[1]["node_id"])
    # boot holds values only for a sender that has shown it receives: the
    # library's ping makes boot ping it back, and its answer verifies it.
    boot_node = Node(boot_id, "127.0.0.2", boot.port)
    assert kademlia_loop.run(server.protocol.call_ping(boot_node))[0]
    wait_for(lambda: boot.ctl("status")[1]["neighbours"] == 2, 5, "boot to verify the library")
    answered, _ = kademlia_loop.run(
        server.protocol.call_store(
            Node(boot_id, "127.0.0.2", boot.port), digest("only-boot"), "held by boot"
        )
    )
    assert answered
    code, got = worker.ctl("get", "only-boot")
    assert code == 0 and got["value"] == "held by boot", got
    # boot asks worker and the library's node, which lists boot: nobody else has it.
    code, got = boot.ctl("get", "only-boot")
    assert code == 1 and got == {"ok": True, "key": "only-boot", "value": None, **_s(got)}


def _s(reply: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": reply["seconds"]}
