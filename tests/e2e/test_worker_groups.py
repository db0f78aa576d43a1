"""More workers than the worker range: worker groups on a real swarm (issue 21).

A policy whose worker range holds 10 ports and 25 workers: three groups
(10, 10, 5), every task on the port its slot gives in its group, every one
answering a Kademlia probe and known to the crawl, one network. Then what
the nodes cannot hold is refused before anything is created. Once on this
machine's one-node swarm, once on the three-node cluster (its tasks spread
over the nodes). And a stack deployed within one range grows past it by
``scale``: its workers become the first group, new groups are created, and
no running task is replaced or moves off its port. On the host network
each group gets a node of its own (deploy labels it, teardown unlabels it),
and one node is refused for two groups.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import pytest

from cqkd_stack.targets.swarm import TASKS_PER_NODE

WORKERS = 25
GROUPS = {"worker": 10, "worker-2": 10, "worker-3": 5}
TASKS = WORKERS + 3  # the bootstrap, Alice and Bob
SMALL_RANGE = (
    "version: 1\nprotocol: udp\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
    "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7009}\n"
    "control: {start: 6100, end: 6109}\n"
)


def cqkd(host: list[str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *host, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def groups_deploy_and_answer(host: list[str], policy: Path, nodes: int) -> None:
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    p = ["--policy", str(policy)]
    try:
        ok(cqkd(host, "deploy", "-r", str(WORKERS), "--stack", stack, *p, "--format", "json"))
        ports = ok(cqkd(host, "ports", "--stack", stack, *p, "--format", "json"))
        assert ports["healthy"] is True and ports["duplicate_ports"] == []
        workers = [t for t in ports["tasks"] if t["role"] == "worker"]
        per_group = Counter(t["service"] for t in workers)
        assert per_group == Counter({f"{stack}_{g}": n for g, n in GROUPS.items()})
        for task in workers:
            assert task["port"] == 7000 + task["slot"] - 1, task
        endpoints = {(t["address"], t["port"]) for t in workers}
        assert len(endpoints) == WORKERS  # ports repeat, endpoints never do
        assert len({t["node"] for t in workers}) == nodes
        probe = ok(cqkd(host, "probe", "--stack", stack, "--format", "json"))
        assert (probe["joined"], probe["total"]) == (TASKS, TASKS), probe
        crawl = ok(cqkd(host, "crawl", "--stack", stack, "--format", "json"))
        assert crawl["components"] == [TASKS] and crawl["unknown"] == [] and crawl["ok"]
    finally:
        cqkd(host, "teardown", "--stack", stack, "--timeout", "300")


def too_many_are_refused(host: list[str], client: docker.DockerClient, nodes: int) -> None:
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    workers = nodes * TASKS_PER_NODE  # with the bootstrap, Alice and Bob: 3 too many
    done = cqkd(host, "deploy", "-r", str(workers), "--stack", stack, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        f"{workers + 3} tasks on network 'dht' need {nodes + 1} nodes" in done.stdout + done.stderr
    )
    assert f"the swarm has {nodes} node" in done.stdout + done.stderr
    assert client.services.list(filters={"label": f"com.docker.stack.namespace={stack}"}) == []


def worker_rows(host: list[str], stack: str, policy: Path) -> dict[str, dict[str, Any]]:
    ports = ok(cqkd(host, "ports", "--stack", stack, "--policy", str(policy), "--format", "json"))
    assert ports["healthy"] is True and ports["duplicate_ports"] == []
    return {t["task_id"]: t for t in ports["tasks"] if t["role"] == "worker"}


@pytest.fixture
def small_range(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(SMALL_RANGE)
    return path


def host_groups_on_nodes_of_their_own(
    host: list[str], client: docker.DockerClient, policy: Path, nodes: int
) -> None:
    """15 workers on the host network, a 10-port range: 2 groups, each on a node of its own."""
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    label = f"org.cqkd.group.{stack}"
    p = ["--policy", str(policy)]
    args = ["deploy", "-r", "15", "--network", "host", "--stack", stack, *p]
    if nodes < 2:
        done = cqkd(host, *args, timeout=120)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "2 worker groups on the host network each need a node" in done.stderr
        assert client.services.list(filters={"label": f"com.docker.stack.namespace={stack}"}) == []
        assert all(label not in n.attrs["Spec"].get("Labels", {}) for n in client.nodes.list())
        return
    try:
        ok(cqkd(host, *args, "--format", "json"))
        labelled = {
            n.attrs["Description"]["Hostname"]: n.attrs["Spec"]["Labels"][label]
            for n in client.nodes.list()
            if label in n.attrs["Spec"].get("Labels", {})
        }
        assert sorted(labelled.values()) == ["1", "2"], labelled
        workers = worker_rows(host, stack, policy).values()
        for group, node_of in (("worker", "1"), ("worker-2", "2")):
            mine = [t for t in workers if t["service"] == f"{stack}_{group}"]
            assert {labelled[t["node"]] for t in mine} == {node_of}, mine
            assert sorted(t["port"] for t in mine) == [7000 + i for i in range(len(mine))]
        probe = ok(cqkd(host, "probe", "--stack", stack, "--format", "json"))
        assert (probe["joined"], probe["total"]) == (18, 18), probe
        # A third group would need a node and the first group a new constraint.
        refused = cqkd(host, "scale", "-r", "25", "--stack", stack, *p)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "scale keeps host-network workers within one range" in refused.stderr
        assert len(worker_rows(host, stack, policy)) == 15
    finally:
        cqkd(host, "teardown", "--stack", stack, "--timeout", "300")
    assert all(label not in n.attrs["Spec"].get("Labels", {}) for n in client.nodes.list())


def test_groups_on_one_node(
    docker_client: docker.DockerClient, node_image: str, small_range: Path
) -> None:
    nodes = len([n for n in docker_client.nodes.list() if n.attrs["Status"]["State"] == "ready"])
    groups_deploy_and_answer([], small_range, nodes)
    too_many_are_refused([], docker_client, nodes)
    host_groups_on_nodes_of_their_own([], docker_client, small_range, nodes)


def test_groups_across_the_cluster(cluster: Any, small_range: Path) -> None:
    manager = docker.DockerClient(base_url=cluster.manager_url, timeout=120)
    ready = [n for n in manager.nodes.list() if n.attrs["Status"]["State"] == "ready"]
    host = ["--host", cluster.manager_url]
    groups_deploy_and_answer(host, small_range, len(ready))
    too_many_are_refused(host, manager, len(ready))
    host_groups_on_nodes_of_their_own(host, manager, small_range, len(ready))


def test_scaling_past_the_range_keeps_every_running_task(
    docker_client: docker.DockerClient, node_image: str, small_range: Path
) -> None:
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    p = ["--policy", str(small_range)]
    try:
        deployed = ok(
            cqkd([], "deploy", "-r", "8", "--stack", stack, *p, "--verify", "--format", "json")
        )
        assert deployed["crawl"]["components"] == [11] and deployed["crawl"]["ok"] is True
        before = worker_rows([], stack, small_range)
        assert len(before) == 8
        first = docker_client.api.inspect_service(f"{stack}_worker")["Spec"]
        assert "cqkd.group" not in first["Labels"]  # rendered within one range

        plan = ok(
            cqkd([], "scale", "-r", "25", "--stack", stack, *p, "--dry-run", "--format", "json")
        )
        actions = {s["service"]: (s["action"], s["replicas"]) for s in plan["services"]}
        assert actions == {
            f"{stack}_worker": ("scale", 10),
            f"{stack}_worker-2": ("create", 10),
            f"{stack}_worker-3": ("create", 5),
        }
        assert len(docker_client.api.services(filters={"name": f"{stack}_worker-"})) == 0

        grown = ok(
            cqkd([], "scale", "-r", "25", "--stack", stack, *p, "--verify", "--format", "json")
        )
        assert grown["groups"] == GROUPS
        assert grown["crawl"]["components"] == [TASKS] and grown["crawl"]["unknown"] == []
        after = worker_rows([], stack, small_range)
        assert Counter(t["service"] for t in after.values()) == Counter(
            {f"{stack}_{g}": n for g, n in GROUPS.items()}
        )
        # Every task that ran before runs on: same task, slot, address and port.
        for task_id, row in before.items():
            keep = ("service", "slot", "address", "port")
            assert {k: after[task_id][k] for k in keep} == {k: row[k] for k in keep}
        for row in after.values():
            assert row["port"] == 7000 + row["slot"] - 1, row
        labels = docker_client.api.inspect_service(f"{stack}_worker")["Spec"]["Labels"]
        assert labels["cqkd.group"] == "1"
        assert docker_client.api.inspect_service(f"{stack}_worker-2")["Spec"]["TaskTemplate"][
            "ContainerSpec"
        ]["Hostname"].startswith("worker-2-")
        probe = ok(cqkd([], "probe", "--stack", stack, "--format", "json"))
        assert (probe["joined"], probe["total"]) == (TASKS, TASKS), probe
        crawl = ok(cqkd([], "crawl", "--stack", stack, "--format", "json"))
        assert crawl["components"] == [TASKS] and crawl["unknown"] == [] and crawl["ok"]

        # Down again: the last groups empty first, and an empty one goes.
        shrunk = ok(cqkd([], "scale", "-r", "12", "--stack", stack, *p, "--format", "json"))
        assert shrunk["groups"] == {"worker": 10, "worker-2": 2}
        names = {s["Spec"]["Name"] for s in docker_client.api.services(filters={"name": stack})}
        assert f"{stack}_worker-3" not in names and f"{stack}_worker-2" in names
        left = worker_rows([], stack, small_range)
        assert Counter(t["service"] for t in left.values()) == Counter(
            {f"{stack}_worker": 10, f"{stack}_worker-2": 2}
        )
        assert all(after[t]["port"] == row["port"] for t, row in left.items())
    finally:
        cqkd([], "teardown", "--stack", stack, "--timeout", "300")


def worker_raises(client: docker.DockerClient, stack: str, since: float) -> list[tuple[str, int]]:
    """Each change of a worker group's replica count since ``since``, from the engine's events."""
    events = client.events(
        since=int(since), until=int(time.time()) + 1, decode=True,
        filters={"type": "service", "event": "update"},
    )  # fmt: skip
    raises = []
    for event in events:
        attributes = event["Actor"]["Attributes"]
        name = attributes.get("name", "")
        if name.startswith(f"{stack}_worker") and "replicas.new" in attributes:
            raises.append((name.removeprefix(f"{stack}_"), int(attributes["replicas.new"])))
    return raises


def test_a_paced_deploy_raises_the_workers_in_windows_and_ends_as_written(
    docker_client: docker.DockerClient, node_image: str, small_range: Path
) -> None:
    """--pace 4 on one node: 25 workers asked for at most 4 tasks on their way at once."""
    stack = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    p = ["--policy", str(small_range)]
    nodes = len([n for n in docker_client.nodes.list() if n.attrs["Status"]["State"] == "ready"])
    window = 4 * nodes
    since = time.time() - 1
    try:
        done = cqkd([], "deploy", "-r", str(WORKERS), "--stack", stack, *p, "--pace", "4",
                    "--verify", "--format", "json")  # fmt: skip
        deployed = ok(done)
        assert f"at most {window} on their way at once" in done.stderr
        assert deployed["crawl"]["components"] == [TASKS] and deployed["crawl"]["ok"] is True
        raises = worker_raises(docker_client, stack, since)
        # Group by group, each raise by at most the window, up to the file's counts.
        asked = {g: 0 for g in GROUPS}
        for group, count in raises:
            assert 0 < count - asked[group] <= window, raises
            asked[group] = count
        assert asked == GROUPS and len(raises) >= WORKERS // window, raises
        assert [g for g, _ in raises] == sorted((g for g, _ in raises), key=list(GROUPS).index)
        for task in worker_rows([], stack, small_range).values():
            assert task["port"] == 7000 + task["slot"] - 1, task
        # A deployed stack is not paced again: refused, nothing changed.
        again = cqkd([], "deploy", "-r", "30", "--stack", stack, *p, "--pace", "4")
        assert again.returncode == 2 and "is deployed already" in again.stderr, again.stderr
        assert docker_client.api.inspect_service(f"{stack}_worker-3")["Spec"]["Mode"] == {
            "Replicated": {"Replicas": 5}
        }
    finally:
        cqkd([], "teardown", "--stack", stack, "--timeout", "300")
