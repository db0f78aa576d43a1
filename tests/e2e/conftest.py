"""What every end-to-end test needs: a real engine and the node image.

No mocked Docker client anywhere: these tests talk to the engine on this
machine. Without one they skip on a laptop, but fail on CI, where a missing
engine means the setup is broken and skipping would hide it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.host import cluster as harness
from cqkd_stack.host import images
from cqkd_stack.live import inspection
from cqkd_stack.live.client import local_engine

E2E_DIR = Path(__file__).resolve().parent
# Not the default name: the tests must never take down a cluster of the developer's.
CLUSTER_NAME = "cqkd-test-cluster"
CLUSTER_NODES = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/e2e, so ``-m "not e2e"`` selects the unit tests."""
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """The docker CLI's path, or skip (fail on CI) when it is not installed."""
    import shutil

    path = shutil.which("docker")
    if path is None:
        if on_ci():
            pytest.fail("the docker CLI is not installed on CI")
        pytest.skip("docker CLI not installed")
    return path


@pytest.fixture(scope="session")
def git_cli() -> str:
    """git's path, or skip (fail on CI, which cloned this checkout with it)."""
    path = shutil.which("git")
    if path is None:
        if on_ci():
            pytest.fail("git is not installed on CI")
        pytest.skip("git not installed")
    return path


@pytest.fixture(scope="session")
def compose_cli(docker_client: docker.DockerClient) -> str:
    """The distribution's docker-compose, which runs the compose target's files.

    Debian 12 and Ubuntu package the Python 1.29.2 that the target's schema
    comes from; Debian 13 packages the Go rewrite (2.x), which reads the same
    files. Either is used as installed.
    """
    found = shutil.which("docker-compose")
    if found is None:
        if on_ci():
            pytest.fail("docker-compose is not installed on CI (invoke test installs it)")
        pytest.skip("docker-compose not installed: apt-get install docker-compose")
    version = subprocess.run([found, "version", "--short"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip()[:2] in ("1.", "2."), version
    return found


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local engine, or skip (fail on CI) when none answers."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        if on_ci():
            pytest.fail("Docker engine not reachable; on CI the engine is required", pytrace=False)
        pytest.skip(f"Docker engine not reachable ({exc}); run `invoke setup` first")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def node_image(docker_client: docker.DockerClient) -> str:
    """The node image tag, built once per session (a no-op when it is current)."""
    try:
        result = images.ensure_images()
    except CqkdError as exc:
        pytest.fail(f"cannot build the node image: {exc.message}", pytrace=False)
    return result.node_image


@pytest.fixture
def free_subnet(docker_client: docker.DockerClient) -> str:
    """A /24 no network on the engine uses, for a test that deploys a stack file itself.

    A rendered file without an engine carries the default subnet; deployed beside
    any stack that already holds it, Swarm leaves every task in "new" (CI saw it).
    """
    return str(inspection.free_subnet(inspection.taken_subnets(docker_client), 6))


@pytest.fixture
def resolver_in_container(
    docker_client: docker.DockerClient, node_image: str
) -> Callable[..., dict[str, Any]]:
    """Run the node image's resolver (with its bind check) as a pod would; its JSON answer.

    ``run(hostname, environment, **options)``: the container gets that host
    name (Docker sets HOSTNAME from it, as the kubelet's runtime does), a
    read-only root and no capability unless ``options`` say otherwise.
    """

    def run(hostname: str, environment: dict[str, str], **options: Any) -> dict[str, Any]:
        name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
        settings = {"read_only": True, "cap_drop": ["ALL"], **options}
        try:
            output = docker_client.containers.run(
                node_image,
                ["python3", "-m", "cqkd_stack.resolver", "--json"],
                entrypoint=[],
                hostname=hostname,
                environment=environment,
                name=name,
                remove=True,
                **settings,
            )
        finally:
            # `remove=True` removes it once it exits; this covers a run that failed to start.
            with suppress(docker.errors.NotFound):
                docker_client.containers.get(name).remove(force=True)
        return json.loads(output)

    return run


@pytest.fixture(scope="session")
def cluster(docker_client: docker.DockerClient, node_image: str) -> Iterator[harness.Cluster]:
    """A 3-node Docker-in-Docker swarm, up once per session and always removed.

    What a crashed earlier run left behind goes first, and the cluster goes
    at the end whatever the tests did (``cluster_down`` works on a half-made
    cluster too). Building its image needs root, as the node image does.
    """
    if os.geteuid() != 0:
        if on_ci():
            pytest.fail("the DinD cluster needs root on CI", pytrace=False)
        pytest.skip("the DinD cluster needs root (debootstrap, a node's capabilities)")
    host = local_engine()  # the nodes are containers of this machine's engine
    if host is None:
        pytest.fail("the local engine stopped answering", pytrace=False)
    try:
        harness.cluster_down(host, CLUSTER_NAME)
        try:
            yield harness.cluster_up(host, CLUSTER_NODES, CLUSTER_NAME, node_image)
        except CqkdError as exc:
            pytest.fail(f"cluster up failed: {exc.message}", pytrace=False)
        finally:
            harness.cluster_down(host, CLUSTER_NAME)
    finally:
        host.close()
