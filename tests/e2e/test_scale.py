"""Scale that CI can afford: 300 real DHT workers, more than a /24 overlay holds.

Docker's default overlay subnet (/24) gives about 250 task addresses; 300
workers plus bootstrap, Alice and Bob only deploy because the toolkit sizes
the subnet. Every worker is then asked over Kademlia at its own address and
``7000 + slot - 1``, by a probe written here (not the toolkit's readiness
code), so "converged" is checked independently of the code that waited for it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import docker
import pytest

WORKERS = 300
STACK_LABEL = "com.docker.stack.namespace"


def cqkd(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def big_stack(docker_client: docker.DockerClient, node_image: str) -> Iterator[tuple[str, dict]]:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd(
            "deploy",
            "--replicas",
            str(WORKERS),
            "--stack",
            name,
            "--timeout",
            "900",
            "--format",
            "json",
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield name, json.loads(done.stdout)
    finally:
        cqkd("teardown", "--stack", name, "--timeout", "600")
        subprocess.run(["docker", "stack", "rm", name], capture_output=True)


def test_subnet_is_larger_than_docker_default(
    big_stack: tuple[str, dict], docker_client: docker.DockerClient
) -> None:
    name, summary = big_stack
    assert summary["tasks"] == WORKERS + 3
    subnet = docker_client.networks.get(f"{name}_dht").attrs["IPAM"]["Config"][0]["Subnet"]
    assert ipaddress.ip_network(subnet).prefixlen < 24, subnet


def test_every_one_of_300_workers_answers_at_its_slot_port(
    big_stack: tuple[str, dict], docker_client: docker.DockerClient, node_image: str
) -> None:
    name, _ = big_stack
    tasks = docker_client.api.tasks(
        filters={"service": f"{name}_worker", "desired-state": "running"}
    )
    assert sorted(t["Slot"] for t in tasks) == list(range(1, WORKERS + 1))
    targets = {}
    for task in tasks:
        (attachment,) = [
            a for a in task["NetworksAttachments"] if a["Network"]["Spec"]["Name"] == f"{name}_dht"
        ]
        address = attachment["Addresses"][0].split("/")[0]
        targets[f"{address}:{7000 + task['Slot'] - 1}"] = task["Slot"]
    output = docker_client.containers.run(
        node_image,
        ["python3", "-m", "cqkd_stack.probe", "--joined", "--rpc-timeout", "2", *targets],
        entrypoint=[],
        network=f"{name}_dht",
        remove=True,
        stdout=True,
        stderr=False,
    )
    answers = json.loads(output)
    silent = sorted(targets[t] for t, a in answers.items() if a is None)
    assert silent == [], f"slots that did not answer on their port: {silent}"
    lonely = sorted(targets[t] for t, a in answers.items() if not a["neighbours"])
    assert lonely == [], f"slots that answer but have no contact: {lonely}"
    assert len({a["id"] for a in answers.values()}) == WORKERS


def test_alice_and_bob_work_through_300_workers(big_stack: tuple[str, dict]) -> None:
    name, _ = big_stack
    done = cqkd("dht-check", "--all", "--stack", name, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["probe"]["answered"] == result["probe"]["total"] == WORKERS + 3


def test_scale_down_and_back_never_shares_a_port(
    big_stack: tuple[str, dict], docker_client: docker.DockerClient
) -> None:
    """300 -> 150 -> 300 with the port map read throughout: never a port held twice,
    every slot always on 7000 + slot - 1, and returning slots on their old ports."""
    from cqkd_stack.live.inspection import port_map

    name, _ = big_stack
    worker = f"{name}_worker"

    def worker_ports() -> dict[int, int]:
        rows = port_map(docker_client, name).tasks
        return {r.slot: r.port for r in rows if r.service == worker and r.state == "running"}

    before = worker_ports()
    assert len(before) == WORKERS
    samples: list[tuple[list[int], dict[int, int]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result = port_map(docker_client, name)
            rows = {r.slot: r.port for r in result.tasks if r.service == worker}
            samples.append((result.duplicate_ports, rows))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        down = cqkd("scale", "-r", str(WORKERS // 2), "-s", name, "-t", "600")
        assert down.returncode == 0, down.stdout + down.stderr
        up = cqkd("scale", "-r", str(WORKERS), "-s", name, "-t", "600")
        assert up.returncode == 0, up.stdout + up.stderr
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert len(samples) > 10, "the port map was hardly read during the scaling"
    assert all(duplicates == [] for duplicates, _ in samples)
    for _, rows in samples:
        assert all(port == 7000 + slot - 1 for slot, port in rows.items()), rows
    assert worker_ports() == before
    assert cqkd("probe", "-s", name).returncode == 0


def test_teardown_of_300_leaves_nothing(
    big_stack: tuple[str, dict], docker_client: docker.DockerClient
) -> None:
    name, _ = big_stack
    done = cqkd("teardown", "--stack", name, "--timeout", "600")
    assert done.returncode == 0, done.stdout + done.stderr
    flt = {"label": f"{STACK_LABEL}={name}"}
    assert docker_client.services.list(filters=flt) == []
    assert docker_client.api.containers(all=True, filters=flt) == []
    assert docker_client.networks.list(filters=flt) == []
