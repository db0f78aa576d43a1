"""The network control port (Alice's and Bob's): sealed requests only, against real nodes.

Real node processes on loopback, real TCP: a peer without the key, with a
stale clock, replaying a captured request, sending garbage or too much, or
holding a connection open gets nothing back and never holds up the node
(its UDP RPCs and its Unix control socket keep answering meanwhile).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.node import nodectl
from cqkd_stack.node.auth import (
    AuthError,
    RequestGate,
    new_key,
    open_reply,
    read_key,
    seal_reply,
    seal_request,
)
from cqkd_stack.node.config import (
    MAX_NETWORK_CLIENTS,
    MAX_NETWORK_REQUEST_BYTES,
    NETWORK_READ_TIMEOUT,
    NodeConfig,
)

from .test_node import NodeProc, free_udp_ports, spawn, wait_for

__all__ = ["spawn"]  # the fixture, imported so pytest finds it here


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- pure


def test_a_sealed_request_opens_once_and_only_with_its_key() -> None:
    key = new_key()
    line, nonce = seal_request(key, {"op": "status"})
    gate = RequestGate(key)
    body, seen = gate.open(line)
    assert seen == nonce and b'"op": "status"' in body
    with pytest.raises(AuthError, match="replayed"):
        gate.open(line)
    with pytest.raises(AuthError, match="bad MAC"):
        RequestGate(new_key()).open(seal_request(key, {"op": "status"})[0])
    # One byte of the body changed: the MAC no longer matches.
    tampered = line.replace(b"status", b"statuz")
    with pytest.raises(AuthError, match="bad MAC"):
        RequestGate(key).open(tampered)


def test_stale_and_future_timestamps_are_refused() -> None:
    key = new_key()
    now = time.time()
    for stamp in (now - 31, now + 31):
        with pytest.raises(AuthError, match="timestamp"):
            RequestGate(key).open(seal_request(key, {"op": "status"}, now=stamp)[0], now=now)
    body, _ = RequestGate(key).open(seal_request(key, {"op": "status"}, now=now - 29)[0], now=now)
    assert body
    # JSON parsing takes NaN and Infinity: neither is a time within the window.
    for stamp in (float("nan"), float("inf")):
        with pytest.raises(AuthError, match="timestamp"):
            RequestGate(key).open(seal_request(key, {"op": "status"}, now=stamp)[0], now=now)


def test_the_nonce_cache_is_bounded_and_refuses_when_full() -> None:
    key = new_key()
    gate = RequestGate(key, max_nonces=3)
    for _ in range(3):
        gate.open(seal_request(key, {"op": "status"})[0])
    with pytest.raises(AuthError, match="too many"):
        gate.open(seal_request(key, {"op": "status"})[0])
    assert len(gate.seen) == 3


@pytest.mark.parametrize(
    "line",
    [b"", b"\n", b"x" * 200, b"0" * 64 + b" not json\n", b"0" * 64 + b"{}\n", b"\xff" * 70],
)
def test_garbage_does_not_open(line: bytes) -> None:
    with pytest.raises(AuthError):
        RequestGate(new_key()).open(line)


def test_a_reply_opens_only_for_its_request_and_key() -> None:
    key = new_key()
    sealed = seal_reply(key, "a" * 32, b'{"ok": true}')
    assert open_reply(key, "a" * 32, sealed) == {"ok": True}
    with pytest.raises(AuthError):
        open_reply(key, "b" * 32, sealed)  # an answer to another request
    with pytest.raises(AuthError):
        open_reply(new_key(), "a" * 32, sealed)
    # A reply is never accepted as a request (different domain prefix).
    with pytest.raises(AuthError, match="bad MAC"):
        RequestGate(key).open(seal_reply(key, "a" * 32, b'{"op": "status", "ts": 1}'))


def test_key_file_must_hold_a_real_key(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 16)
    with pytest.raises(CqkdError, match="16 bytes"):
        read_key(str(short))
    with pytest.raises(CqkdError, match="cannot read"):
        read_key(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CQKD_CONTROL_PORT": "6100"}, "CQKD_CONTROL_KEY_FILE is not"),
        ({"CQKD_CONTROL_KEY_FILE": "/k"}, "CQKD_CONTROL_PORT is not"),
        ({"CQKD_CONTROL_PORT": "61x", "CQKD_CONTROL_KEY_FILE": "/k"}, "not a port"),
        ({"CQKD_CONTROL_PORT": "70000", "CQKD_CONTROL_KEY_FILE": "/k"}, "not a port"),
    ],
)
def test_config_refuses_half_a_control_port(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(CqkdError, match=fragment):
        NodeConfig.from_env({"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000", **env})


def test_no_key_file_means_no_control_port() -> None:
    config = NodeConfig.from_env({"CQKD_ROLE": "bootstrap", "DHT_PORT": "7000"})
    assert (config.control_port, config.control_key_file) == (None, None)


# --------------------------------------------------------------------------- real nodes


@pytest.fixture
def keyed(spawn: Callable[..., NodeProc], tmp_path: Path) -> tuple[NodeProc, NodeProc, int, bytes]:
    """A bootstrap and a special node whose sealed control port is on loopback."""
    key = new_key()
    key_file = tmp_path / "control.key"
    key_file.write_bytes(key)
    key_file.chmod(0o400)
    boot_port, special_port = free_udp_ports(2)
    tcp = free_tcp_port()
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    special = spawn(
        "alice",
        special_port,
        "special",
        f"127.0.0.1:{boot_port}",
        CQKD_NODE_NAME="alice",
        CQKD_CONTROL_PORT=str(tcp),
        CQKD_CONTROL_KEY_FILE=str(key_file),
    )
    special.wait_healthy()
    return boot, special, tcp, key


def exchange(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send ``data``, half-close, read until the peer closes: everything it said.

    tests/e2e/test_control_port.py asks a deployed stack's port the same way.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def still_answers(node: NodeProc) -> None:
    code, status = node.ctl("status")
    assert code == 0 and status["healthy"] is True, status


def test_sealed_set_and_get_over_tcp(keyed: tuple[NodeProc, NodeProc, int, bytes]) -> None:
    _, _, port, key = keyed
    status = nodectl.network_request("127.0.0.1", port, key, {"op": "status"})
    assert status["ok"] is not False and status["name"] == "alice", status
    stored = nodectl.network_request(
        "127.0.0.1", port, key, {"op": "set", "key": "k1", "value": "v1"}
    )
    assert stored["ok"] and stored["stored"], stored
    held = nodectl.network_request("127.0.0.1", port, key, {"op": "holds", "key": "k1"})
    assert held["ok"] and held["published"] is True, held
    bad = nodectl.network_request("127.0.0.1", port, key, {"op": "nope"})
    assert bad["ok"] is False and "unknown op" in bad["error"]  # authenticated: told why


@pytest.mark.parametrize(
    "what",
    ["wrong key", "stale", "future", "garbage", "empty", "oversize", "unsealed json"],
)
def test_refused_requests_get_no_reply(
    keyed: tuple[NodeProc, NodeProc, int, bytes], what: str
) -> None:
    _, alice, port, key = keyed
    status = b'{"op": "status"}'
    data = {
        "wrong key": seal_request(new_key(), {"op": "status"})[0],
        "stale": seal_request(key, {"op": "status"}, now=time.time() - 60)[0],
        "future": seal_request(key, {"op": "status"}, now=time.time() + 60)[0],
        "garbage": os.urandom(300),
        "empty": b"",
        "oversize": b"0" * 64 + b" " + b"x" * MAX_NETWORK_REQUEST_BYTES + b"\n",
        "unsealed json": status + b"\n",
    }[what]
    started = time.monotonic()
    assert exchange(port, data) == b""
    assert time.monotonic() - started < NETWORK_READ_TIMEOUT  # closed at once, not timed out
    still_answers(alice)


def test_a_replayed_request_gets_nothing(keyed: tuple[NodeProc, NodeProc, int, bytes]) -> None:
    _, alice, port, key = keyed
    line, nonce = seal_request(key, {"op": "status"})
    first = exchange(port, line)
    assert open_reply(key, nonce, first)["name"] == "alice"
    assert exchange(port, line) == b""
    still_answers(alice)


def test_a_slow_client_is_dropped_and_holds_up_nothing(
    keyed: tuple[NodeProc, NodeProc, int, bytes],
) -> None:
    _, alice, port, key = keyed
    # Connections that send half a line and then nothing: the node serves
    # MAX_NETWORK_CLIENTS of them at a time and closes more at once.
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_NETWORK_CLIENTS)]
    try:
        for sock in slow:
            sock.sendall(b"0" * 10)
        # The node's loop is not blocked meanwhile: its Unix socket answers.
        still_answers(alice)

        def closed_at_once() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                extra.settimeout(5)
                return extra.recv(1) == b""

        wait_for(closed_at_once, 5, "a connection over the limit to be closed")
        # The slow ones are closed after the read timeout, without a reply.
        started = time.monotonic()
        for sock in slow:
            sock.settimeout(NETWORK_READ_TIMEOUT + 5)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < NETWORK_READ_TIMEOUT + 3
    finally:
        for sock in slow:
            sock.close()
    # Served again once they are gone.
    reply = nodectl.network_request("127.0.0.1", port, key, {"op": "status"})
    assert reply.get("name") == "alice", reply


def test_workers_open_no_control_port(spawn: Callable[..., NodeProc]) -> None:
    boot_port, worker_port = free_udp_ports(2)
    boot = spawn("boot", boot_port, "bootstrap")
    boot.wait_healthy()
    worker = spawn("w1", worker_port, "worker", f"127.0.0.1:{boot_port}")
    worker.wait_healthy()
    pid = worker.proc.pid
    listening = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    own = [line for line in listening if f"socket:[{line.split()[9]}]" in inodes]
    assert own == []  # not a single TCP socket of the worker's


def test_a_missing_key_file_fails_the_node_at_start(
    spawn: Callable[..., NodeProc], tmp_path: Path
) -> None:
    (port,) = free_udp_ports(1)
    node = spawn(
        "alice",
        port,
        "bootstrap",
        CQKD_CONTROL_PORT=str(free_tcp_port()),
        CQKD_CONTROL_KEY_FILE=str(tmp_path / "absent.key"),
    )
    assert node.proc.wait(timeout=10) != 0
    assert "cannot read the control key file" in node.stderr()
