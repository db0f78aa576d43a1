"""The engine and image steps against the real engine: idempotent, and the image works.

``setup`` runs on machines that already ran it (CI reruns, developers), so the
second run of every step must report that it did nothing. The image tests run
containers of the real node image rather than inspecting files: the
entrypoint must really turn a slot into a port.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from cqkd_stack.host import engine, images

HEALTH_TEST = ["CMD", "grep", "-qf", "/tmp/cqkd-health", "/proc/net/udp"]
SECOND = 1_000_000_000  # Docker reports durations in nanoseconds


def test_engine_steps_do_nothing_the_second_time(docker_client: docker.DockerClient) -> None:
    first = engine.ensure_engine()
    second = engine.ensure_engine()
    assert second.done == [], second.done
    assert second.swarm_node_id and second.swarm_node_id == first.swarm_node_id
    assert second.swarm_node_id == docker_client.info()["Swarm"]["NodeID"]
    ipaddress.ip_address(second.advertise_addr)
    assert second.server_version and second.api_version
    # Each step on its own is idempotent too: ``setup`` calls them one by one.
    assert engine.ensure_installed().done == []
    assert engine.ensure_running().done == []
    assert engine.ensure_swarm().done == []


def test_engine_reports_whether_swarm_tasks_may_use_local_images(
    docker_client: docker.DockerClient,
) -> None:
    status = engine.ensure_running()
    if status.prefer_offline is not True:
        assert any(engine.PREFER_OFFLINE_ENV in w for w in status.warnings), status.warnings
    else:
        assert status.warnings == []


def test_node_image_is_labelled_with_the_hash_of_its_inputs(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    image = docker_client.images.get(node_image)
    base = docker_client.images.get(images.host_base_image())
    expected = images.build_inputs_hash(images.project_root(), base.id)
    assert image.labels[images.HASH_LABEL] == expected
    assert node_image == images.NODE_IMAGE
    latest = docker_client.images.get(node_image.rsplit(":", 1)[0] + ":latest")
    assert latest.id == image.id


def test_second_ensure_images_does_not_rebuild(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    before = docker_client.images.get(node_image).id
    result = images.ensure_images()
    assert result.done == [], result.done
    assert result.wheelhouse is None, "the wheelhouse was rebuilt although nothing changed"
    assert result.node_id == before == docker_client.images.get(node_image).id


def test_the_node_is_the_entrypoint_and_listens_on_its_slot_port(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    """No resolver process in front: the node computes 7000 + 3 - 1 itself."""
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        container = docker_client.containers.run(
            node_image,
            environment={"CQKD_ROLE": "bootstrap", "TASK_SLOT": "3", "BASE_PORT": "7000"},
            name=name,
            detach=True,
        )
        code, output = container.exec_run(
            ["python3", "-m", "cqkd_stack.probe", "--rpc-timeout", "2", "127.0.0.1:7002"]
        )
        assert code == 0, output
        assert json.loads(output)["127.0.0.1:7002"]
        code, output = container.exec_run(["python3", "-m", "cqkd_stack.probe", "127.0.0.1:7003"])
        assert code == 1, "a port next to the slot's must be silent"
    finally:
        remove_container(docker_client, name)


def test_the_resolver_entrypoint_still_exports_the_port_for_other_commands(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    """What bring-your-own images use: `resolver exec -- CMD` with DHT_PORT set."""
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        output = docker_client.containers.run(
            node_image,
            ["python3", "-c", "import os;print(os.environ['DHT_PORT'])"],
            entrypoint=["python3", "-m", "cqkd_stack.resolver", "exec", "--"],
            environment={"TASK_SLOT": "3", "BASE_PORT": "7000", "PORT_RANGE_END": "7999"},
            name=name,
            remove=True,
        )
    finally:
        remove_container(docker_client, name)
    assert output.decode().strip() == "7002"


@pytest.mark.parametrize(
    ("hostname", "extra", "port"),
    [
        # What a StatefulSet pod has: its host name, and the ordinal label
        # through the downward API where the cluster sets it.
        ("cqkd-worker-3", {"STATEFULSET_NAME": "cqkd-worker"}, 7003),
        ("cqkd-worker-3", {"STATEFULSET_NAME": "cqkd-worker", "POD_INDEX": "4"}, 7004),
        ("cqkd-worker-1", {"STATEFULSET_NAME": "cqkd-worker", "ORDINALS_START": "1"}, 7000),
    ],
)
def test_the_resolver_in_a_pod_like_container_takes_the_port_from_the_ordinal(
    resolver_in_container: Callable[..., dict[str, Any]],
    hostname: str,
    extra: dict[str, str],
    port: int,
) -> None:
    """The host name is the container's own (Docker sets HOSTNAME, as the kubelet does)."""
    found = resolver_in_container(hostname, {"CQKD_ROLE": "worker", "BASE_PORT": "7000", **extra})
    assert found["port"] == port
    assert found["source"] == ("POD_INDEX" if "POD_INDEX" in extra else "HOSTNAME")


def test_image_declares_the_health_check(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    health = docker_client.images.get(node_image).attrs["Config"]["Healthcheck"]
    assert health["Test"] == HEALTH_TEST
    assert health["Interval"] == 5 * SECOND
    assert health["Timeout"] == 3 * SECOND
    assert health["StartPeriod"] == 60 * SECOND
    assert health["Retries"] == 3


def test_a_source_change_rebuilds_and_reaches_the_image(
    docker_client: docker.DockerClient, node_image: str, tmp_path: Path
) -> None:
    """Build from a copy of the project with one more module in node/, under a throwaway tag."""
    project = copy_project(images.project_root(), tmp_path / "project")
    token = uuid.uuid4().hex
    (project / "cqkd_stack" / "node" / "_cqkdtest_marker.py").write_text(f"TOKEN = {token!r}\n")
    repo = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    tag = f"{repo}:probe"
    base = docker_client.images.get(images.host_base_image())
    try:
        image, inputs, wheelhouse, done = images.ensure_node_image(
            docker_client, base, project_dir=project, wheelhouse=tmp_path / "wheels", tag=tag
        )
        assert done == [f"built {tag}"]
        assert wheelhouse == tmp_path / "wheels"
        assert inputs != docker_client.images.get(node_image).labels[images.HASH_LABEL]
        assert image.labels[images.HASH_LABEL] == inputs

        output = docker_client.containers.run(
            tag,
            ["python3", "-c", "import cqkd_stack.node._cqkdtest_marker as m; print(m.TOKEN)"],
            entrypoint=[],
            name=repo,
            remove=True,
        )
        assert output.decode().strip() == token

        again, _, wheelhouse, done = images.ensure_node_image(
            docker_client, base, project_dir=project, wheelhouse=tmp_path / "wheels", tag=tag
        )
        assert (again.id, wheelhouse, done) == (image.id, None, [])
    finally:
        remove_container(docker_client, repo)
        for name in (tag, f"{repo}:latest"):
            with suppress(docker.errors.NotFound):
                docker_client.images.remove(name)


def copy_project(src: Path, dest: Path) -> Path:
    """What a wheel build reads: metadata, README, the package and its data."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(src / name, dest / name)
    for name in ("cqkd_stack", "stacks", "schemas"):
        shutil.copytree(src / name, dest / name, ignore=ignore)
    return dest


def remove_container(client: docker.DockerClient, name: str) -> None:
    with suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True)


@pytest.fixture(autouse=True)
def _resolver_present() -> None:
    # The image's node computes its port with the resolver; a checkout without
    # it cannot make a working image, and every failure below would say less.
    assert (images.project_root() / "cqkd_stack" / "node" / "resolver.py").is_file()
