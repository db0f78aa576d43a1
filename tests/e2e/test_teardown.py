"""Teardown paths a healthy small stack never takes: big stacks and crash leftovers."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import yaml

from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.inspection import STACK_LABEL, stack_leftovers
from cqkd_stack.live.teardown import stack_rm
from cqkd_stack.live.waits import wait_until_running
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render


def test_a_large_stack_is_stepped_down_before_removal(
    docker_client: docker.DockerClient, node_image: str, free_subnet: str
) -> None:
    """At full size (step 100) a 1000-task rm killed containerd; here step 2 on 6 tasks."""
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    options = RenderOptions(replicas=6, image=node_image, subnet=free_subnet)
    doc = yaml.safe_load(render(load_policy(), options))
    doc["services"] = {"worker": doc["services"]["worker"]}
    doc["services"]["worker"]["entrypoint"] = ["sleep", "infinity"]
    doc["services"]["worker"]["healthcheck"] = {"disable": True}
    doc["services"]["worker"]["environment"]["BOOTSTRAP_NODES"] = "none:1"
    notes: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "stack.yml"
            path.write_text(yaml.safe_dump(doc))
            subprocess.run(
                ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(path), stack],
                check=True,
                capture_output=True,
            )
        wait_until_running(docker_client, stack, timeout=120)
        result = stack_rm(
            docker_client, stack, 180, lambda _d, _t, note: notes.append(note), drain_step=2
        )
        assert result.complete, result.left
        steps = [n for n in notes if n.startswith("stepping")]
        assert any(n.endswith("down to 4") for n in steps), notes
        assert any(n.endswith("down to 2") for n in steps), notes
        assert not any(n.endswith("down to 0") for n in steps)
    finally:
        subprocess.run(["docker", "stack", "rm", stack], capture_output=True)


def test_teardown_removes_containers_a_crash_left_behind(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    """No service knows them any more, so Swarm never would; teardown must."""
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    orphan = docker_client.containers.create(
        node_image, ["true"], entrypoint=[], labels={STACK_LABEL: stack}
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cqkd_stack", "teardown", "--stack", stack, "--timeout", "60"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert stack_leftovers(docker_client, stack)["containers"] == []
    finally:
        subprocess.run(["docker", "rm", "-f", orphan.id], capture_output=True)


def test_teardown_removes_a_dht_check_job_and_the_control_volume(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    """An interrupted dht-check leaves its job, which holds the stack's control volume;
    `docker stack rm` removes neither."""
    from docker.types import ContainerSpec, Healthcheck, RestartPolicy, ServiceMode, TaskTemplate

    from cqkd_stack.live.dhtcheck import JOB_LABEL

    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    volume = docker_client.volumes.create(f"{stack}_control", labels={STACK_LABEL: stack})
    job = docker_client.api.create_service(
        TaskTemplate(
            ContainerSpec(
                node_image,
                ["sleep", "infinity"],
                mounts=[{"Type": "volume", "Source": volume.name, "Target": "/run/cqkd"}],
                healthcheck=Healthcheck(test=["NONE"]),
                init=True,
            ),
            restart_policy=RestartPolicy(condition="none"),
        ),
        name=f"{stack}_dht-check-alice-000000",
        labels={JOB_LABEL: stack},
        mode=ServiceMode("replicated", replicas=1),
    )
    # Something of the stack itself, so that there is a stack to tear down.
    orphan = docker_client.containers.create(
        node_image, ["true"], entrypoint=[], labels={STACK_LABEL: stack}
    )
    try:
        deadline = time.monotonic() + 60
        while not docker_client.api.containers(filters={"volume": volume.name}):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        done = subprocess.run(
            [sys.executable, "-m", "cqkd_stack", "teardown", "--stack", stack, "--timeout", "60"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert docker_client.api.services(filters={"label": f"{JOB_LABEL}={stack}"}) == []
        assert docker_client.volumes.list(filters={"name": volume.name}) == []
    finally:
        subprocess.run(["docker", "service", "rm", job["ID"]], capture_output=True)
        subprocess.run(["docker", "rm", "-f", orphan.id], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", volume.name], capture_output=True)
