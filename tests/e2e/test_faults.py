"""Faults a Swarm operator meets, each on a real stack of its own (issue 10's single-node half).

A deploy interrupted by a teardown, and a rolling update to a new image tag
watched through the port map the whole time.
"""

from __future__ import annotations

import threading
import uuid

import docker
from test_stack import STACK_LABEL, cqkd, leftovers, remove_quietly, wait_for

from cqkd_stack.live.inspection import port_map
from cqkd_stack.live.readiness import PROBE_LABEL


def test_teardown_while_a_deploy_is_still_converging_removes_everything(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        started = cqkd("deploy", "-r", "100", "-s", name, "--no-wait")
        assert started.returncode == 0, started.stdout + started.stderr
        tasks = docker_client.api.tasks(filters={"label": f"{STACK_LABEL}={name}"})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        assert len(running) < 103, "the stack had converged before the teardown began"
        done = cqkd("teardown", "-s", name, "-t", "300")
        assert done.returncode == 0, done.stdout + done.stderr
        assert leftovers(docker_client, name) == {"services": [], "containers": [], "networks": []}
        probes = docker_client.api.containers(all=True, filters={"label": f"{PROBE_LABEL}={name}"})
        assert probes == []
    finally:
        remove_quietly(name)


def test_a_rolling_update_keeps_every_port_unique_and_the_dht_answering(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    """Deploy again with a new image tag: stop-first, ten at a time; watched throughout."""
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    tag = f"cqkd-dht-node:rolling-{uuid.uuid4().hex[:6]}"
    docker_client.images.get(node_image).tag(tag)
    samples: list[tuple[list[int], dict[tuple[str, int], int]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result = port_map(docker_client, name)
            rows = {(r.service, r.slot): r.port for r in result.tasks if r.state == "running"}
            samples.append((result.duplicate_ports, rows))
            stop.wait(0.3)

    try:
        first = cqkd("deploy", "-r", "20", "-s", name, "-t", "300")
        assert first.returncode == 0, first.stdout + first.stderr
        before = port_map(docker_client, name)
        expected = {(r.service, r.slot): r.port for r in before.tasks}
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            update = cqkd("deploy", "-r", "20", "-s", name, "-i", tag, "-t", "300")
            assert update.returncode == 0, update.stdout + update.stderr

            def rolled() -> bool:
                services = docker_client.services.list(filters={"label": f"{STACK_LABEL}={name}"})
                return all(
                    s.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(tag)
                    and (s.attrs.get("UpdateStatus") or {}).get("State") in (None, "completed")
                    for s in services
                )

            wait_for(rolled, 300, f"every service updated to {tag}")
        finally:
            stop.set()
            sampler.join(timeout=30)
        assert len(samples) > 5
        assert all(duplicates == [] for duplicates, _ in samples)
        for _, rows in samples:
            assert all(port == expected[key] for key, port in rows.items()), rows
        checked = cqkd("dht-check", "--all", "-s", name)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        stop.set()
        cqkd("teardown", "-s", name, "-t", "300")
        remove_quietly(name)
        docker_client.images.remove(tag, noprune=True)
