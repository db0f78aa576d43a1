"""The probe from this process, through a socket made in another network namespace.

No engine: ``unshare --net`` gives a real node a namespace of its own, as
Docker gives a task, where nothing on the host network can reach it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cqkd_stack.live.namespace import Namespace
from cqkd_stack.node.probe import parse_target, probe

from ..node.test_node import PYTHON, REPO_ROOT, base_env, free_udp_ports, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="entering a network namespace needs root (CI runs as root)",
)


@pytest.fixture
def hidden_node(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A bootstrap node alone in its own network namespace: (its pid, its port)."""
    (port,) = free_udp_ports(1)  # free on the host too, so nothing answers there
    health = tmp_path / "health"
    env = {
        **base_env(),
        "CQKD_ROLE": "bootstrap",
        "DHT_PORT": str(port),
        "CQKD_HEALTH_FILE": str(health),
        "CQKD_CONTROL_SOCKET": str(tmp_path / "control.sock"),
    }
    script = 'ip link set lo up && exec "$0" -m cqkd_stack.node'
    proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", script, PYTHON], env=env, cwd=REPO_ROOT
    )
    try:
        wait_for(health.exists, 10, "the node in its namespace to listen")
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait()


def ask(port: int, sock: object = None) -> dict[str, object]:
    targets = [parse_target(f"127.0.0.1:{port}")]
    return asyncio.run(probe(targets, rpc_timeout=0.5, attempts=1, joined=True, sock=sock))


def test_a_socket_made_in_a_namespace_reaches_what_only_that_namespace_sees(
    hidden_node: tuple[int, int],
) -> None:
    pid, port = hidden_node
    assert ask(port) == {f"127.0.0.1:{port}": None}  # from the host: nobody there
    namespace = Namespace(pid)
    try:
        answer = ask(port, namespace.udp_socket())[f"127.0.0.1:{port}"]
        assert isinstance(answer, dict) and len(str(answer["id"])) == 40, answer
        assert answer["neighbours"] == 0  # the first node of its DHT
        assert ask(port, namespace.udp_socket())[f"127.0.0.1:{port}"] == answer  # each round anew
    finally:
        namespace.close()


def test_a_namespace_that_cannot_be_entered_is_an_os_error() -> None:
    with pytest.raises(OSError):
        Namespace(2**22 + 12345)  # no such process


def test_a_pid_is_entered_only_when_it_is_the_containers_own(tmp_path: Path) -> None:
    """A remote or nested engine's PID names another process here: never entered.

    Seen on the 3-node Docker-in-Docker cluster: the manager's engine gave
    its task's PID in its own PID namespace, the probe entered whatever
    process had that PID on this machine, and all 1103 tasks looked silent.
    """
    from cqkd_stack.live.namespace import is_container_process

    ours, other = "a" * 64, "b" * 64
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "cgroup").write_text(f"0::/docker/{ours}\n")
    (tmp_path / "42").mkdir()
    # A process of a container inside a Docker-in-Docker node: its id is in the path too.
    (tmp_path / "42" / "cgroup").write_text(f"0::/docker/{other}/docker/{ours}\n")
    assert is_container_process(41, ours, str(tmp_path))
    assert is_container_process(42, ours, str(tmp_path))
    assert not is_container_process(41, other, str(tmp_path))  # someone else's process
    assert not is_container_process(43, ours, str(tmp_path))  # no such process
    assert not is_container_process(41, ours[:12], str(tmp_path))  # a short id proves nothing
    assert not is_container_process(os.getpid(), ours)  # this test is in no container
