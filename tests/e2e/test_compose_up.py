"""The compose target on the real engine, run by Debian's docker-compose 1.29.2.

docker-compose itself reads every rendered file (``config``), brings the
network up (83 services, past the 64 where its `up` could deadlock), and
takes it down; each worker must answer a Kademlia ping at its own host port,
from this machine's own address, and Alice's value must reach Bob through
the DHT.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest

from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.compose_project import PROJECT_LABEL, SERVICE_LABEL
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.compose import render_compose

pytestmark = pytest.mark.e2e
# Past docker-compose 1.29's pool of 64 threads, where its `up` could deadlock
# (docker/compose#5864) before deploy raised COMPOSE_PARALLEL_LIMIT.
WORKERS = 80
PROJECT = "cqkd-compose-test"
CASES = Path(__file__).resolve().parent.parent / "cases" / "positive"
SHIFTED_POLICY = """\
version: 1
protocol: udp
one_port_per_worker: true
legacy_mode: false
roles:
  bootstrap: {start: 15678, end: 15699}
  special: {start: 16000, end: 16099}
  worker: {start: 17000, end: 17999}
blocked_ports: []
"""


def cqkd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True, timeout=timeout
    )


def left(client: docker.DockerClient, project: str) -> dict[str, list[str]]:
    label = {"label": f"{PROJECT_LABEL}={project}"}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=label)],
        "networks": [n.name for n in client.networks.list(filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
    }


@pytest.fixture(scope="module")
def deployed(
    docker_client: docker.DockerClient, node_image: str, compose_cli: str
) -> Iterator[dict]:
    """``deploy --target compose`` of the workers; always taken down afterwards.

    The engine's health events are read while it runs (its event buffer is
    too short to ask afterwards at 83 containers): ``bootstrap_healthy_ns``
    is when the bootstrap first passed its check.
    """
    cqkd("teardown", "--target", "compose", "-s", PROJECT)
    events = docker_client.events(
        decode=True,
        filters={"event": "health_status", "label": f"{PROJECT_LABEL}={PROJECT}"},
    )
    healthy: list[tuple[str, int]] = []

    def listen() -> None:
        for event in events:
            if event.get("status") == "health_status: healthy":
                service = event["Actor"]["Attributes"].get(SERVICE_LABEL, "")
                healthy.append((service, int(event["timeNano"])))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    done = cqkd(
        "deploy",
        "--target",
        "compose",
        "-r",
        str(WORKERS),
        "-i",
        node_image,
        "-s",
        PROJECT,
        "-f",
        "json",
        "-t",
        "300",
    )
    events.close()
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        summary["bootstrap_healthy_ns"] = min(
            (at for service, at in healthy if service == "bootstrap"), default=None
        )
        yield summary
    finally:
        cqkd("teardown", "--target", "compose", "-s", PROJECT)


def _host_address() -> str:
    """This machine's own address (not loopback): what another host would use."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.123", 9))  # no packet is sent; picks the outgoing address
        return probe.getsockname()[0]


def _wait_for_answers(targets: list[str], timeout: float = 60) -> dict:
    """Ping until every target answers or ``timeout`` passes; the last answers."""
    deadline = time.monotonic() + timeout
    while True:
        answers = _ping(targets)
        if all(answers.values()) or time.monotonic() > deadline:
            return answers


def _ping(targets: list[str]) -> dict:
    """A Kademlia ping from this process's own probe, not the deploy's."""
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack.probe", "--joined", "--attempts", "3", *targets],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_docker_compose_reads_every_rendered_file_and_the_positive_cases(
    compose_cli: str, tmp_path: Path
) -> None:
    files = []
    for replicas in (1, WORKERS, 1000):
        path = tmp_path / f"compose-{replicas}.yml"
        path.write_text(render_compose(load_policy(), RenderOptions(replicas=replicas)))
        files.append(path)
    files += sorted(CASES.glob("compose-*/compose.yml"))
    for path in files:
        done = subprocess.run(
            [compose_cli, "-f", str(path), "config", "--services"], capture_output=True, text=True
        )
        assert done.returncode == 0, (path, done.stderr)
        services = done.stdout.split()
        assert "bootstrap" in services
        if path.name == "compose-1000.yml":
            assert len(services) == 1003
            assert "worker-1000" in services


def test_each_worker_answers_at_its_own_host_port(
    deployed: dict, docker_client: docker.DockerClient
) -> None:
    nodes = deployed["nodes"]
    workers = [n for n in nodes if n["role"] == "worker"]
    assert [(n["service"], n["port"]) for n in workers] == [
        (f"worker-{k}", 7000 + k - 1) for k in range(1, WORKERS + 1)
    ]
    assert deployed["answered"] == WORKERS + 3
    address = _host_address()
    answers = _ping([f"{address}:{n['port']}" for n in nodes])
    silent = [t for t, a in answers.items() if not a]
    assert not silent, silent
    lonely = [t for t, a in answers.items() if a["neighbours"] < 1]
    assert not lonely, lonely
    assert len({a["id"] for a in answers.values()}) == len(nodes)  # one node per port
    # Each port is published by the container of its own worker, which runs as
    # rendered: WORKER_ID=k, its port in its environment, hardened.
    label = {"label": f"{PROJECT_LABEL}={PROJECT}"}
    by_service = {c.labels[SERVICE_LABEL]: c for c in docker_client.containers.list(filters=label)}
    for n in workers:
        container = by_service[n["service"]]
        k = int(n["service"].split("-")[1])
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["WORKER_ID"] == str(k)
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert bindings == {f"{n['port']}/udp": [{"HostIp": "", "HostPort": str(n["port"])}]}
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["Memory"] == 64 * 1024 * 1024
        assert container.attrs["Config"]["User"] == "10001:10001"


def _nanoseconds(rfc3339: str) -> int:
    """Docker's ``2026-11-27T18:02:00.123456789Z`` → ns since the epoch (to the microsecond)."""
    stamp = datetime.fromisoformat(rfc3339[:26].rstrip("Z") + "+00:00")
    return int(stamp.timestamp() * 1_000_000) * 1000


def test_workers_started_after_the_bootstrap_was_healthy(
    deployed: dict, docker_client: docker.DockerClient
) -> None:
    healthy = deployed["bootstrap_healthy_ns"]
    assert healthy is not None, "the bootstrap never reported healthy during the deploy"
    label = {"label": f"{PROJECT_LABEL}={PROJECT}"}
    starts = {
        c.labels[SERVICE_LABEL]: _nanoseconds(c.attrs["State"]["StartedAt"])
        for c in docker_client.containers.list(filters=label)
        if c.labels[SERVICE_LABEL] != "bootstrap"
    }
    assert len(starts) == WORKERS + 2
    early = {name: at for name, at in starts.items() if at < healthy}
    assert not early, (healthy, early)


def test_alice_stores_and_bob_reads_through_the_dht(deployed: dict) -> None:
    done = cqkd("dht-check", "--target", "compose", "-s", PROJECT, "-f", "json")
    assert done.returncode == 0, done.stderr
    check = json.loads(done.stdout)
    assert (check["stored_by"], check["read_by"], check["via"]) == ("alice", "bob", "exec")
    assert len(check["value"]) == 32


def test_deploying_again_keeps_every_container(
    deployed: dict, docker_client: docker.DockerClient
) -> None:
    label = {"label": f"{PROJECT_LABEL}={PROJECT}"}
    before = {c.id for c in docker_client.containers.list(filters=label)}
    again = cqkd("deploy", "--target", "compose", "-r", str(WORKERS), "-s", PROJECT, "-f", "json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {c.id for c in docker_client.containers.list(filters=label)} == before


def test_a_second_project_on_the_same_ports_starts_nothing(
    deployed: dict, docker_client: docker.DockerClient
) -> None:
    project = "cqkd-compose-refused"
    done = cqkd("deploy", "--target", "compose", "-r", "4", "-s", project)
    assert done.returncode == 1, done.stderr
    assert "host ports 5678, 6000-6001, 7000-7003 already in use" in done.stderr
    assert left(docker_client, project) == {"containers": [], "networks": [], "volumes": []}


def test_an_invalid_file_starts_nothing(
    compose_cli: str, docker_client: docker.DockerClient, node_image: str, tmp_path: Path
) -> None:
    project = "cqkd-compose-invalid"
    bad = tmp_path / "bad.yml"
    text = render_compose(load_policy(), RenderOptions(replicas=3, image=node_image))
    bad.write_text(text.replace("WORKER_ID: '3'", "WORKER_ID: '2'"))
    refused = cqkd("deploy", "--target", "compose", "--file", str(bad), "-s", project)
    assert refused.returncode == 1
    assert "$.services.worker-3: port 7001 overlaps service 'worker-2'" in refused.stderr
    assert "nothing was deployed" in refused.stderr
    assert left(docker_client, project) == {"containers": [], "networks": [], "volumes": []}


def test_docker_compose_down_leaves_nothing(
    compose_cli: str, docker_client: docker.DockerClient, node_image: str, tmp_path: Path
) -> None:
    """The file as an operator uses it without cqkd-stack: up, answer, down.

    Its own policy moves every range by 10000, beside the test project: the
    ports follow the policy.
    """
    project = "cqkd-compose-plain"
    policy = tmp_path / "policy.yml"
    policy.write_text(SHIFTED_POLICY)
    path = tmp_path / "docker-compose.yml"
    text = render_compose(load_policy(policy), RenderOptions(replicas=3, image=node_image))
    path.write_text(text)
    base = [compose_cli, "-p", project, "-f", str(path)]
    try:
        up = subprocess.run([*base, "up", "-d"], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        assert len(left(docker_client, project)["containers"]) == 6
        ports = ["15678", "16000", "16001", "17000", "17001", "17002"]
        answers = _wait_for_answers([f"{_host_address()}:{p}" for p in ports])
        assert all(answers.values()), answers
    finally:
        down = subprocess.run([*base, "down", "-v"], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert left(docker_client, project) == {"containers": [], "networks": [], "volumes": []}
