"""An image of one's own, built from exactly the files docs/ports.md shows, deployed with --image.

The image is the stock kademlia package on the project's base with the
resolver copied in as one file (docs/examples/own-image, built by its
build.sh with wheels from the host). ``deploy --image`` must wait until
every task answers, and the check here does not trust deploy: addresses
come from the Docker API, ports are computed here from the slots, and a
probe container on the stack's overlay asks every task a Kademlia find_node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import docker
import docker.errors
import pytest

from cqkd_stack.host import images

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "own-image"
WORKERS = 5
STACK_LABEL = "com.docker.stack.namespace"
# Each service's first port under the default policy (Bob is Alice's + 1).
FIRST_PORT = {"bootstrap": 5678, "alice": 6000, "bob": 6001, "worker": 7000}


def cqkd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def own_image(
    docker_client: docker.DockerClient, node_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The docs' image, built by the docs' build.sh in a copy of the docs' folder."""
    tag = f"cqkdtest-own-node:{uuid.uuid4().hex[:8]}"
    context = tmp_path_factory.mktemp("own") / "own-image"
    shutil.copytree(EXAMPLE, context)
    env = {
        **os.environ,
        "CQKD_STACK": str(REPO),
        "PYTHON": sys.executable,
        "BASE_IMAGE": images.host_base_image(),
    }
    try:
        built = subprocess.run(
            ["sh", str(context / "build.sh"), tag], env=env, capture_output=True, text=True
        )
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        yield tag
    finally:
        with suppress(docker.errors.ImageNotFound, docker.errors.APIError):
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def deployed(docker_client: docker.DockerClient, own_image: str) -> Iterator[tuple[str, dict]]:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd(
            "deploy",
            "--image",
            own_image,
            "--replicas",
            str(WORKERS),
            "--stack",
            name,
            "--timeout",
            "300",
            "--format",
            "json",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield name, json.loads(done.stdout)
    finally:
        cqkd("teardown", "--stack", name, "--timeout", "300")
        subprocess.run(["docker", "stack", "rm", name], capture_output=True)


def test_the_image_holds_the_stock_kademlia_and_no_package_of_ours(
    docker_client: docker.DockerClient, own_image: str
) -> None:
    code = (
        "import importlib.util, importlib.metadata as m; "
        "print(m.version('kademlia'), importlib.util.find_spec('cqkd_stack') is None)"
    )
    output = docker_client.containers.run(
        own_image, ["python3", "-c", code], entrypoint=[], remove=True, read_only=True
    )
    assert output.decode().split() == ["2.2.3", "True"]
    config = docker_client.images.get(own_image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][:3] == ["python3", "/app/cqkd_resolver.py", "exec"]


def test_every_task_answers_find_node_at_its_slot_port(
    docker_client: docker.DockerClient, node_image: str, own_image: str, deployed: tuple[str, dict]
) -> None:
    stack, summary = deployed
    assert summary["tasks"] == WORKERS + 3
    services = docker_client.api.services(filters={"label": f"{STACK_LABEL}={stack}"})
    by_id = {s["ID"]: s["Spec"]["Name"].removeprefix(f"{stack}_") for s in services}
    for service in services:
        image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image.split("@")[0] == own_image
    targets: dict[str, str] = {}
    tasks = docker_client.api.tasks(
        filters={"label": f"{STACK_LABEL}={stack}", "desired-state": "running"}
    )
    for task in tasks:
        name = by_id[task["ServiceID"]]
        (address,) = [
            a["Addresses"][0].split("/")[0]
            for a in task["NetworksAttachments"]
            if a["Network"]["Spec"]["Name"] == f"{stack}_dht"
        ]
        targets[f"{address}:{FIRST_PORT[name] + task['Slot'] - 1}"] = f"{name}.{task['Slot']}"
    assert sorted(targets.values()) == sorted(
        ["alice.1", "bob.1", "bootstrap.1", *(f"worker.{n}" for n in range(1, WORKERS + 1))]
    )
    output = docker_client.containers.run(
        node_image,
        ["python3", "-m", "cqkd_stack.probe", "--joined", *targets],
        entrypoint=[],
        network=f"{stack}_dht",
        remove=True,
        stdout=True,
        stderr=False,
    )
    answers = json.loads(output)
    silent = sorted(targets[t] for t, answer in answers.items() if answer is None)
    assert silent == [], f"tasks that did not answer at their slot's port: {silent}"
    alone = sorted(
        targets[t]
        for t, answer in answers.items()
        if not targets[t].startswith("bootstrap") and (answer["neighbours"] or 0) < 1
    )
    assert alone == [], f"tasks with no contact: {alone}"
    assert len({answer["id"] for answer in answers.values()}) == WORKERS + 3
