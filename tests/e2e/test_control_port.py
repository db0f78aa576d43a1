"""dht-check over Alice's and Bob's sealed control ports, on the real swarm.

A small stack deployed as an operator would; the published port is found
here from the Docker API (task status and node address), not through the
toolkit, and an unauthenticated peer at that port must get nothing back.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from cqkd_stack.node.auth import seal_request

WORKERS = 5
STACK_LABEL = "com.docker.stack.namespace"


def cqkd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The command exactly as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def stack(docker_client: docker.DockerClient, node_image: str) -> Iterator[str]:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd("deploy", "--replicas", str(WORKERS), "--stack", name, "--timeout", "300")
        assert done.returncode == 0, done.stdout + done.stderr
        yield name
    finally:
        flt = {"label": f"{STACK_LABEL}={name}"}
        if docker_client.api.services(filters=flt) or docker_client.api.configs(filters=flt):
            cqkd("teardown", "--stack", name, "--timeout", "300")
            subprocess.run(["docker", "stack", "rm", name], capture_output=True)


def published(client: docker.DockerClient, stack: str, service: str) -> tuple[str, int]:
    """(node address, host port) of the service's published TCP port, from the API alone."""
    tasks = client.api.tasks(filters={"service": f"{stack}_{service}", "desired-state": "running"})
    task = next(t for t in tasks if t["Status"]["State"] == "running")
    ports = [p for p in task["Status"]["PortStatus"]["Ports"] if p["Protocol"] == "tcp"]
    node = client.api.inspect_node(task["NodeID"])
    address = node["Status"]["Addr"]
    if address in ("", "0.0.0.0"):
        address = node["ManagerStatus"]["Addr"].rpartition(":")[0]
    return address, ports[0]["PublishedPort"]


def exchange(port: int, host: str, data: bytes) -> bytes:
    """What the peer at ``host:port`` sends back for ``data`` before it closes.

    As tests/unit/node/test_network_control.py asks a node on loopback (the
    e2e tests import nothing from the unit tests).
    """
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_dht_check_goes_over_the_control_ports(stack: str) -> None:
    done = cqkd("dht-check", "--stack", stack, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["via"] == "network", result
    assert result["fallback"] == []
    assert result["stored_by"] == "alice" and result["read_by"] == "bob"
    assert len(result["value"]) == 32 and result["round_trip_seconds"] < 5
    text = cqkd("dht-check", "--stack", stack, "--via", "network")
    assert text.returncode == 0 and "by network" in text.stdout, text.stdout + text.stderr


def test_the_job_path_still_works_for_the_same_stack(stack: str) -> None:
    done = cqkd("dht-check", "--stack", stack, "--format", "json", "--via", "job")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["via"] == "job"


def test_an_unauthenticated_peer_gets_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    address, port = published(docker_client, stack, "alice")
    bob = published(docker_client, stack, "bob")
    assert bob != (address, port)  # each special node its own port
    assert exchange(port, host=address, data=b'{"op": "status"}\n') == b""
    assert exchange(port, host=address, data=seal_request(b"k" * 32, {"op": "status"})[0]) == b""
    # The stack's key is in a Swarm config that a manager reads back.
    config = docker_client.api.inspect_config(f"{stack}_control-key")
    assert config["Spec"]["Labels"][STACK_LABEL] == stack
    key = base64.b64decode(config["Spec"]["Data"])
    assert len(key) == 32
    line, _ = seal_request(key, {"op": "status"})
    assert b'"name": "alice"' in exchange(port, host=address, data=line)
    # The key is in no environment variable or label of the service.
    spec = docker_client.api.inspect_service(f"{stack}_alice")["Spec"]
    assert key.hex() not in json.dumps(spec) and config["Spec"]["Data"] not in json.dumps(spec)


def test_the_key_is_a_read_only_file_of_the_node_user(
    stack: str, docker_client: docker.DockerClient
) -> None:
    flt = {"label": [f"{STACK_LABEL}={stack}", f"com.docker.swarm.service.name={stack}_alice"]}
    (summary,) = docker_client.api.containers(filters=flt)
    attrs = docker_client.api.inspect_container(summary["Id"])
    container = docker_client.containers.get(summary["Id"])
    # A Swarm config is not among the container's listed mounts: ask the file.
    code, out = container.exec_run(["stat", "-L", "-c", "%a %u", "/run/cqkd-control.key"])
    assert (code, out.strip()) == (0, b"400 10001")
    code, out = container.exec_run(["sh", "-c", "echo x >> /run/cqkd-control.key"])
    assert code != 0, out  # not writable, not even by its owner
    # Workers have no key and listen on no TCP port.
    env = attrs["Config"]["Env"]
    assert "CQKD_CONTROL_KEY_FILE=/run/cqkd-control.key" in env
    workers = docker_client.api.containers(
        filters={
            "label": [f"{STACK_LABEL}={stack}", f"com.docker.swarm.service.name={stack}_worker"]
        }
    )
    worker = docker_client.api.inspect_container(workers[0]["Id"])
    control = ("CQKD_CONTROL_PORT=", "CQKD_CONTROL_KEY_FILE=")
    assert [e for e in worker["Config"]["Env"] if e.startswith(control)] == []
    assert [m["Destination"] for m in worker["Mounts"]] == ["/tmp"]


def test_teardown_removes_the_key_config(stack: str, docker_client: docker.DockerClient) -> None:
    done = cqkd("teardown", "--stack", stack, "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    assert docker_client.api.configs(filters={"name": f"{stack}_control-key"}) == []
