"""``--dry-run`` on a real swarm: the plan is right, and nothing changes.

Seen on f6d6f43: no task had a dry run, and Invoke's ``--dry`` ("echo
commands instead of running") was accepted and deployed a real stack.
What "changes nothing" means is read from the Docker API here, not from
our code: every service's id and spec version, every task id and its
desired state, every network, volume and container of the stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

STACK_LABEL = "com.docker.stack.namespace"
WORKERS = 3


def cqkd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed command, exactly as an operator runs it."""
    command = [str(Path(sys.executable).parent / "cqkd-stack"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def snapshot(client: docker.DockerClient, stack: str) -> dict[str, Any]:
    """Everything of the stack a change would show in."""
    flt = {"label": f"{STACK_LABEL}={stack}"}
    api = client.api
    return {
        "services": sorted(
            (s["Spec"]["Name"], s["ID"], s["Version"]["Index"]) for s in api.services(filters=flt)
        ),
        "tasks": sorted((t["ID"], t["DesiredState"]) for t in api.tasks(filters=flt)),
        "networks": sorted(n["Id"] for n in api.networks(filters=flt)),
        "volumes": sorted(v["Name"] for v in (api.volumes(filters=flt) or {}).get("Volumes") or []),
        "containers": sorted(c["Id"] for c in api.containers(all=True, filters=flt)),
    }


def by_service(plan: dict[str, Any], stack: str) -> dict[str, dict[str, Any]]:
    return {s["service"].removeprefix(f"{stack}_"): s for s in plan["services"]}


@pytest.fixture(scope="module")
def stack(docker_client: docker.DockerClient, node_image: str) -> Iterator[str]:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd("deploy", "-r", str(WORKERS), "-s", name, "--timeout", "300")
        assert done.returncode == 0, done.stdout + done.stderr
        yield name
    finally:
        flt = {"label": f"{STACK_LABEL}={name}"}
        if docker_client.api.services(filters=flt) or docker_client.api.networks(filters=flt):
            cqkd("teardown", "-s", name, "--timeout", "300")


def test_a_dry_run_with_the_same_options_plans_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    before = snapshot(docker_client, stack)
    done = cqkd("deploy", "-r", str(WORKERS), "-s", stack, "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    assert plan["dry_run"] is True and plan["ok"] is True
    assert {s["action"] for s in plan["services"]} == {"unchanged"}, plan["services"]
    assert plan["tasks"] == {"starting": 0, "stopping": 0, "replaced": 0}
    assert plan["networks_created"] == [] and plan["bootstrap_first"] is False
    assert {i["action"] for i in plan["images"]} == {"present"}
    assert snapshot(docker_client, stack) == before


def test_a_dry_run_with_more_workers_plans_them_and_changes_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    before = snapshot(docker_client, stack)
    done = cqkd("deploy", "-r", "5", "-s", stack, "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    worker = by_service(plan, stack)["worker"]
    assert (worker["action"], worker["current"], worker["replicas"]) == ("scale", 3, 5)
    assert worker["ports"] == ["7000-7004/udp"] and worker["starting"] == 2
    assert plan["tasks"] == {"starting": 2, "stopping": 0, "replaced": 0}
    text = cqkd("deploy", "-r", "5", "-s", stack, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert f"dry run: deploy of stack '{stack}' (nothing was deployed)" in text.stdout
    assert "3 -> 5 replicas  ports 7000-7004/udp  2 tasks start" in text.stdout
    assert snapshot(docker_client, stack) == before


def test_a_dry_run_of_an_image_nobody_has_refuses_as_the_deploy_would(
    stack: str, docker_client: docker.DockerClient
) -> None:
    before = snapshot(docker_client, stack)
    image = f"cqkd-dht-node:absent-{uuid.uuid4().hex[:6]}"
    done = cqkd("deploy", "-r", "3", "-s", stack, "-i", image, "--dry-run", "--format", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    assert (
        plan["ok"] is False and "is on neither this engine nor the manager" in plan["problems"][0]
    )
    assert {s["action"] for s in plan["services"]} == {"update"}
    assert snapshot(docker_client, stack) == before


def test_a_dry_run_scale_plans_the_tasks_that_stop_and_changes_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    before = snapshot(docker_client, stack)
    done = cqkd("scale", "-r", "2", "-s", stack, "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    (worker,) = json.loads(done.stdout)["services"]
    assert (worker["action"], worker["current"], worker["replicas"]) == ("scale", 3, 2)
    assert (worker["stopping"], worker["ports"]) == (1, ["7000-7001/udp"])
    refused = cqkd("scale", "-r", "1001", "-s", stack, "--dry-run")
    assert refused.returncode == 1
    assert "dry run: nothing was changed; the real run would refuse too" in refused.stderr
    assert snapshot(docker_client, stack) == before


def test_a_dry_run_teardown_lists_what_would_go_and_removes_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    before = snapshot(docker_client, stack)
    done = cqkd("teardown", "-s", stack, "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    services = by_service(plan, stack)
    assert set(services) == {"bootstrap", "alice", "bob", "worker"}
    assert {s["action"] for s in services.values()} == {"remove"}
    assert plan["tasks"]["stopping"] == WORKERS + 3
    assert f"{stack}_dht" in plan["networks_removed"]
    assert plan["containers_removed"] == len(before["containers"])
    assert snapshot(docker_client, stack) == before


def test_a_dry_run_on_a_fresh_name_creates_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """The module's stack runs meanwhile, so the fresh one is planned beside it."""
    fresh = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd("deploy", "-r", "4", "-s", fresh, "--dry-run", "--format", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        plan = json.loads(done.stdout)
        assert {s["action"] for s in plan["services"]} == {"create"}
        assert plan["tasks"] == {"starting": 7, "stopping": 0, "replaced": 0}
        assert plan["bootstrap_first"] is True
        assert any(n.startswith(f"{fresh}_dht ") for n in plan["networks_created"])
        gone = cqkd("teardown", "-s", fresh, "--dry-run")
        assert gone.returncode == 1
        assert f"would refuse: no stack named '{fresh}' is deployed" in gone.stdout
        assert snapshot(docker_client, fresh) == {
            "services": [],
            "tasks": [],
            "networks": [],
            "volumes": [],
            "containers": [],
        }
    finally:
        subprocess.run(["docker", "stack", "rm", fresh], capture_output=True)
