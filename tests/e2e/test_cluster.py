"""The Docker-in-Docker swarm harness (``cqkd-stack cluster up/down``) on the real engine.

The session's ``cluster`` fixture (conftest) brings up three nodes once;
these tests check what the multi-node tests rely on: every node Ready and
labelled with its engine, tasks that really spread, the host's node image on
each node, an engine restart that keeps the node, a second ``up`` that
changes nothing, and a ``down`` that leaves nothing, also after an ``up``
that failed half-way.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest
from docker.types import Healthcheck, ServiceMode
from test_stack import wait_for

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.host import cluster as harness
from cqkd_stack.live.client import local_engine
from cqkd_stack.live.distribution import ENGINE_LABEL

pytestmark = pytest.mark.e2e


def engine(url: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=url, timeout=300)


@pytest.fixture
def manager(cluster: harness.Cluster) -> Iterator[docker.DockerClient]:
    client = engine(cluster.manager_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def host() -> Iterator[docker.DockerClient]:
    client = local_engine()
    assert client is not None, "the local engine stopped answering"
    try:
        yield client
    finally:
        client.close()


def ready_nodes(manager: docker.DockerClient) -> dict[str, dict]:
    return {n["ID"]: n for n in manager.api.nodes() if n["Status"]["State"] == "ready"}


def leftovers(client: docker.DockerClient, name: str) -> dict[str, list[str]]:
    """Everything labelled for cluster ``name``, and its docker context."""
    selector = {"label": f"{harness.CLUSTER_LABEL}={name}"}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=selector)],
        "networks": [n.name for n in client.networks.list(filters=selector)],
        "contexts": [name] if harness.context_exists(name) else [],
    }


NOTHING = {"containers": [], "networks": [], "contexts": []}


def test_three_nodes_are_ready_and_labelled_with_their_engine(
    cluster: harness.Cluster, manager: docker.DockerClient
) -> None:
    assert len(cluster.nodes) == 3
    nodes = ready_nodes(manager)
    assert set(nodes) == {n.node_id for n in cluster.nodes}
    for node in cluster.nodes:
        spec = nodes[node.node_id]["Spec"]
        assert spec["Labels"][ENGINE_LABEL] == node.engine_url == f"tcp://{node.address}:2375"
        assert nodes[node.node_id]["Description"]["Hostname"] == node.container
    assert [n.role for n in cluster.nodes] == ["manager", "worker", "worker"]
    assert cluster.manager_url == cluster.nodes[0].engine_url


def test_a_six_replica_service_spreads_over_the_nodes(
    cluster: harness.Cluster, manager: docker.DockerClient, node_image: str
) -> None:
    service = manager.services.create(
        node_image,
        command=["sleep", "infinity"],  # replaces the node's entrypoint
        healthcheck=Healthcheck(test=["NONE"]),  # the image's check wants a node
        name=f"cqkdtest_{uuid.uuid4().hex[:8]}",
        mode=ServiceMode("replicated", replicas=6),
    )
    try:

        def running() -> list[dict]:
            tasks = service.tasks(filters={"desired-state": "running"})
            up = [t for t in tasks if t["Status"]["State"] == "running"]
            return up if len(up) == 6 else []

        tasks = wait_for(running, 120, "6 running tasks")
        assert len({t["NodeID"] for t in tasks}) > 1, tasks
    finally:
        service.remove()


def test_every_node_has_the_node_image_with_the_host_s_id(
    cluster: harness.Cluster, host: docker.DockerClient, node_image: str
) -> None:
    wanted = host.images.get(node_image).id
    assert cluster.images == {node_image: wanted}
    for node in cluster.nodes:
        client = engine(node.engine_url)
        try:
            assert client.images.get(node_image).id == wanted, node.container
            assert client.info()["Swarm"]["NodeID"] == node.node_id
        finally:
            client.close()


def test_a_node_s_engine_restarts_without_the_node(
    cluster: harness.Cluster,
    host: docker.DockerClient,
    manager: docker.DockerClient,
    node_image: str,
) -> None:
    """``pkill dockerd`` in a node: its supervisor starts it again; swarm state and images stay."""
    node = cluster.nodes[-1]
    container = host.containers.get(node.container)
    started = container.attrs["State"]["StartedAt"]

    def dockerd_pid() -> str:
        code, out = container.exec_run(["pgrep", "-x", "dockerd"])
        return out.decode().strip() if code == 0 else ""

    before = dockerd_pid()
    code, out = container.exec_run(["pkill", "-x", "dockerd"])
    assert code == 0, out
    wait_for(lambda: dockerd_pid() not in ("", before), 60, "a new dockerd")
    wait_for(lambda: harness._answering(node.engine_url), 60, "the engine to answer again")
    client = engine(node.engine_url)
    try:
        wait_for(
            lambda: client.info()["Swarm"]["LocalNodeState"] == "active", 60, "swarm state back"
        )
        assert client.info()["Swarm"]["NodeID"] == node.node_id
        assert client.images.get(node_image).id == cluster.images[node_image]
    finally:
        client.close()
    wait_for(lambda: node.node_id in ready_nodes(manager), 120, "the node Ready again")
    container.reload()
    assert container.attrs["State"]["StartedAt"] == started


def test_up_twice_changes_nothing(cluster: harness.Cluster, host: docker.DockerClient) -> None:
    ids = {c.name: c.id for c in harness.cluster_containers(host, cluster.name)}
    again = harness.cluster_up(host, len(cluster.nodes), cluster.name, next(iter(cluster.images)))
    assert again.done == []
    assert again.nodes == cluster.nodes
    assert again.manager_url == cluster.manager_url and again.subnet == cluster.subnet
    assert {c.name: c.id for c in harness.cluster_containers(host, cluster.name)} == ids


def test_down_leaves_nothing_after_a_half_failed_and_after_a_full_up(
    host: docker.DockerClient, node_image: str, cli
) -> None:
    name = f"cqkdtest-{uuid.uuid4().hex[:6]}"
    try:
        # An engine given no time at all "never answers": up stops half-way,
        # its network and node left behind, with the node's log in the error.
        with pytest.raises(CqkdError, match=r"is not up: it did not answer within 0 s"):
            harness.cluster_up(host, 1, name, node_image, engine_timeout=0)
        assert leftovers(host, name)["containers"] == [f"{name}-1"]
        gone = cli("cluster", "down", "--name", name, "--format", "json")
        assert gone.code == 0, gone.err
        assert json.loads(gone.out)["containers"] == [f"{name}-1"]
        assert leftovers(host, name) == NOTHING

        up = cli("cluster", "up", "--nodes", "1", "--name", name, "--format", "json")
        assert up.code == 0, up.err
        made = json.loads(up.out)
        assert [n["container"] for n in made["nodes"]] == [f"{name}-1"]
        context = subprocess.run(
            ["docker", "context", "inspect", name, "--format", "{{.Endpoints.docker.Host}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert context.stdout.strip() == made["manager_url"]
        gone = cli("cluster", "down", "--name", name)
        assert gone.code == 0, gone.err
        assert leftovers(host, name) == NOTHING
        again = cli("cluster", "down", "--name", name, "--format", "json")
        assert again.code == 0 and json.loads(again.out)["containers"] == []
    finally:
        harness.cluster_down(host, name)
