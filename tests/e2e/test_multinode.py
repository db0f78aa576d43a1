"""The toolkit on a real three-node swarm (Docker-in-Docker nodes on this machine).

Everything goes through ``cqkd-stack --host <manager>`` as an operator on
another machine would run it; what the tests check comes from the nodes'
own engines and from Kademlia pings, not from the toolkit's report. The
tests run in file order: the last one loses a node for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from cqkd_stack.host.cluster import Cluster, ClusterNode
from cqkd_stack.live import dhtcheck
from cqkd_stack.live.distribution import ENGINE_LABEL
from cqkd_stack.live.inspection import PortMap, port_map
from cqkd_stack.node.config import BOOTSTRAP_CHECK_ROUNDS, DEFAULT_HEALTH_INTERVAL

WORKERS = 12
STACK_LABEL = "com.docker.stack.namespace"


def cqkd(cluster: Cluster, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The installed command, pointed at the cluster's manager with ``--host``."""
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", "--host", cluster.manager_url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else done.stdout


def engine(node: ClusterNode) -> docker.DockerClient:
    return docker.DockerClient(base_url=node.engine_url, timeout=300)


def wait_for(condition: Any, timeout: float, what: str, every: float = 0.5) -> float:
    """Poll ``condition`` until true; the seconds it took, or fail saying what never happened."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start


def running_rows(ports: PortMap) -> dict[tuple[str, int], Any]:
    return {(r.service, r.slot): r for r in ports.tasks if r.state == "running"}


def all_running(manager: docker.DockerClient, stack: str, total: int) -> bool:
    try:
        ports = port_map(manager, stack)
    except docker.errors.APIError:
        return False
    return len(running_rows(ports)) == total and ports.healthy


def teardown(cluster: Cluster, manager: docker.DockerClient, stack: str) -> None:
    flt = {"label": f"{STACK_LABEL}={stack}"}
    if manager.api.services(filters=flt) or manager.api.networks(filters=flt):
        cqkd(cluster, "teardown", "-s", stack, "-t", "300")


@pytest.fixture(scope="module")
def manager(cluster: Cluster) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=cluster.manager_url, timeout=300)
    yield client
    client.close()


DEPLOYED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def overlay_stack(cluster: Cluster, manager: docker.DockerClient, node_image: str) -> Iterator[str]:
    """12 workers on the overlay, deployed after the image was taken off the last node."""
    name = f"mn_{uuid.uuid4().hex[:6]}"
    last = engine(cluster.nodes[-1])
    last.images.remove(node_image, force=True)
    DEPLOYED["image_removed_from"] = cluster.nodes[-1]
    try:
        DEPLOYED.update(ok(cqkd(cluster, "deploy", "-s", name, "-r", str(WORKERS), "-f", "json")))
        yield name
    finally:
        teardown(cluster, manager, name)


def test_a_node_that_lacked_the_image_got_a_copy(
    cluster: Cluster, overlay_stack: str, node_image: str, docker_client: docker.DockerClient
) -> None:
    lacked = DEPLOYED["image_removed_from"]
    actions = {row["node_id"]: row["action"] for row in DEPLOYED["images"]}
    assert actions[lacked.node_id] == "copied", DEPLOYED["images"]
    assert set(actions) == {n.node_id for n in cluster.nodes}
    wanted = docker_client.images.get(node_image).id
    assert {engine(n).images.get(node_image).id for n in cluster.nodes} == {wanted}


def test_tasks_spread_over_the_nodes_and_ports_names_each_task_s_node(
    cluster: Cluster, overlay_stack: str, manager: docker.DockerClient
) -> None:
    shown = ok(cqkd(cluster, "ports", "-s", overlay_stack, "-f", "json"))
    rows = shown["tasks"]
    assert len(rows) == WORKERS + 3 and shown["healthy"]
    # The node each row names is where the task's container really runs.
    for node in cluster.nodes:
        here = {
            c.id
            for c in engine(node).containers.list(
                filters={"label": f"{STACK_LABEL}={overlay_stack}"}
            )
        }
        shown_here = {r["container_id"] for r in rows if r["node"] == node.container}
        assert shown_here <= here, f"{node.container}: ports shows containers it does not run"
    workers = [r for r in rows if r["service"].endswith("_worker")]
    assert len({r["node"] for r in workers}) == len(cluster.nodes)
    assert sorted(r["port"] for r in workers) == list(range(7000, 7000 + WORKERS))
    for r in workers:
        assert r["port"] == 7000 + r["slot"] - 1


def test_workers_on_different_nodes_reach_each_other_over_the_overlay(
    cluster: Cluster, overlay_stack: str, manager: docker.DockerClient, node_image: str
) -> None:
    """From a container on each node, a Kademlia ping to every worker on the other nodes."""
    rows = port_map(manager, overlay_stack).tasks
    for node in cluster.nodes:
        others = [f"{r.address}:{r.port}" for r in rows if r.node != node.container]
        assert others
        out = engine(node).containers.run(
            node_image,
            ["python3", "-m", "cqkd_stack.probe", *others],
            entrypoint=[],
            network=f"{overlay_stack}_dht",
            remove=True,
            read_only=True,
            cap_drop=["ALL"],
        )
        answers = json.loads(out)
        assert all(answers.values()), f"silent from {node.container}: {answers}"


def test_probe_from_the_manager_finds_every_task_in_the_dht(
    cluster: Cluster, overlay_stack: str
) -> None:
    shown = ok(cqkd(cluster, "probe", "-s", overlay_stack, "-f", "json"))
    assert shown["ok"], shown


def test_the_same_deploy_twice_restarts_nothing_on_any_node(
    cluster: Cluster, overlay_stack: str, manager: docker.DockerClient
) -> None:
    def task_ids() -> dict[tuple[str, int], str]:
        return {k: r.task_id for k, r in running_rows(port_map(manager, overlay_stack)).items()}

    before = task_ids()
    again = ok(cqkd(cluster, "deploy", "-s", overlay_stack, "-r", str(WORKERS), "-f", "json"))
    assert {row["action"] for row in again["images"]} == {"present"}
    assert task_ids() == before


def test_dht_check_passes_with_alice_and_bob_on_different_nodes(
    cluster: Cluster, overlay_stack: str, manager: docker.DockerClient
) -> None:
    rows = {r.service: r for r in port_map(manager, overlay_stack).tasks}
    alice, bob = rows[f"{overlay_stack}_alice"], rows[f"{overlay_stack}_bob"]
    if alice.node == bob.node:
        # Move Bob: a constraint is how an operator places a service.
        service = manager.services.get(f"{overlay_stack}_bob")
        service.update(constraints=[f"node.hostname != {alice.node}"])
        wait_for(
            lambda: (
                (row := running_rows(port_map(manager, overlay_stack)).get((bob.service, 1)))
                is not None
                and row.node != alice.node
            ),
            120,
            "Bob moved to another node",
        )
        ok(cqkd(cluster, "probe", "-s", overlay_stack, "-f", "json"))
    checked = ok(cqkd(cluster, "dht-check", "-s", overlay_stack, "-f", "json"))
    nodes = {r.service: r.node for r in port_map(manager, overlay_stack).tasks}
    assert nodes[f"{overlay_stack}_alice"] != nodes[f"{overlay_stack}_bob"]
    assert checked["stored_on"] == nodes[f"{overlay_stack}_alice"], checked
    assert checked["read_on"] == nodes[f"{overlay_stack}_bob"], checked
    assert "exec" not in checked["via"], "the check went through an exec on this engine"
    # The sealed control ports from here, unless they could not be reached (then said why).
    assert checked["via"] == "network" or (checked["via"] == "job" and checked["fallback"])


def test_a_node_whose_engine_cannot_be_reached_is_named_and_nothing_is_deployed(
    cluster: Cluster, manager: docker.DockerClient
) -> None:
    node = cluster.nodes[1]
    name = f"mn_{uuid.uuid4().hex[:6]}"
    swarm_node = manager.nodes.get(node.node_id)
    spec = swarm_node.attrs["Spec"]
    labels = dict(spec.get("Labels") or {})
    try:
        swarm_node.update(
            {**spec, "Labels": {k: v for k, v in labels.items() if k != ENGINE_LABEL}}
        )
        refused = cqkd(cluster, "deploy", "-s", name, "-r", "3")
        assert refused.returncode != 0
        assert node.container in refused.stderr and ENGINE_LABEL in refused.stderr, refused.stderr
        assert manager.api.services(filters={"label": f"{STACK_LABEL}={name}"}) == []
    finally:
        manager.nodes.get(node.node_id).update(
            {**manager.nodes.get(node.node_id).attrs["Spec"], "Labels": labels}
        )
        teardown(cluster, manager, name)


# --- host networking across nodes --------------------------------------------------


@pytest.fixture(scope="module")
def host_stack(cluster: Cluster, manager: docker.DockerClient) -> Iterator[str]:
    name = f"hn_{uuid.uuid4().hex[:6]}"
    try:
        ok(cqkd(cluster, "deploy", "-s", name, "-r", "6", "-n", "host", "-f", "json"))
        yield name
    finally:
        teardown(cluster, manager, name)


def address_of(cluster: Cluster) -> dict[str, str]:
    return {n.container: n.address for n in cluster.nodes}


def probe_from_here(targets: list[str]) -> dict[str, Any]:
    """A Kademlia ping from this machine, outside the swarm."""
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack.probe", *targets],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def test_host_workers_bind_their_slot_port_on_their_node_s_address(
    cluster: Cluster, host_stack: str, manager: docker.DockerClient
) -> None:
    rows = [r for r in port_map(manager, host_stack).tasks if r.service.endswith("_worker")]
    assert sorted(r.port for r in rows) == list(range(7000, 7006))
    assert len({r.node for r in rows}) > 1, "the workers did not spread over the nodes"
    for r in rows:
        assert r.address == address_of(cluster)[r.node]
    answers = probe_from_here([f"{r.address}:{r.port}" for r in rows])
    assert all(answers.values()), answers
    # The bootstrap runs where its address says: on the manager.
    boot = next(r for r in port_map(manager, host_stack).tasks if r.role == "bootstrap")
    assert boot.address == cluster.nodes[0].address


def test_a_kademlia_client_outside_the_swarm_reads_alice_s_value(
    cluster: Cluster, host_stack: str, manager: docker.DockerClient
) -> None:
    from kademlia.network import Server

    key, value = f"outside-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    dhtcheck.store_value(manager, host_stack, "alice", key, value)
    rows = [r for r in port_map(manager, host_stack).tasks if r.service.endswith("_worker")]
    entry = max(rows, key=lambda r: r.slot)  # worker N

    async def read() -> Any:
        server = Server()
        await server.listen(0)
        try:
            await server.bootstrap([(entry.address, entry.port)])
            return await server.get(key)
        finally:
            server.stop()

    assert asyncio.run(read()) == value


def host_batch(
    cluster: Cluster, name: str, offset: int, joined: str, *more: str
) -> subprocess.CompletedProcess[str]:
    """Six host-network workers at ``offset``, joining the DHT of stack ``joined``."""
    return cqkd(
        cluster,
        "deploy",
        "-s",
        name,
        "-r",
        "6",
        "-n",
        "host",
        "--port-offset",
        str(offset),
        "--join-stack",
        joined,
        *more,
    )


def test_a_second_host_batch_at_another_offset_never_collides(
    cluster: Cluster, host_stack: str, manager: docker.DockerClient
) -> None:
    batch = f"hb_{uuid.uuid4().hex[:6]}"
    try:
        ok(host_batch(cluster, batch, 100, host_stack, "-f", "json"))
        first = port_map(manager, host_stack).tasks
        second = port_map(manager, batch).tasks
        assert sorted(r.port for r in second) == list(range(7100, 7106))
        claims = [(r.node, r.port) for r in first + second]
        assert len(claims) == len(set(claims)), "two tasks on one port of one node"
        answers = probe_from_here([f"{r.address}:{r.port}" for r in second])
        assert all(answers.values()), answers
    finally:
        teardown(cluster, manager, batch)


def test_a_host_deploy_that_would_collide_is_refused_naming_both(
    cluster: Cluster, host_stack: str, manager: docker.DockerClient
) -> None:
    batch = f"hc_{uuid.uuid4().hex[:6]}"
    try:
        refused = host_batch(cluster, batch, 3, host_stack)
        assert refused.returncode != 0
        assert host_stack in refused.stderr and batch in refused.stderr, refused.stderr
        assert manager.api.services(filters={"label": f"{STACK_LABEL}={batch}"}) == []
    finally:
        teardown(cluster, manager, batch)


# --- a registry instead of copies --------------------------------------------------


@pytest.fixture(scope="module")
def registry(
    cluster: Cluster, docker_client: docker.DockerClient, tmp_path_factory: Any
) -> Iterator[str]:
    """Debian's docker-registry on the cluster's bridge, over TLS with a CA made here.

    The CA goes where Docker looks for a registry's CA
    (``/etc/docker/certs.d/HOST:PORT/ca.crt``), on this machine and in every
    node: no engine restart, no insecure-registry setting.
    """
    import ipaddress
    import shutil
    import socket

    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-registry is not installed on CI (apt-get install docker-registry)")
        pytest.skip("docker-registry not installed")
    gateway = str(next(ipaddress.ip_network(cluster.subnet).hosts()))
    with socket.socket() as probe_socket:
        probe_socket.bind((gateway, 0))
        port = probe_socket.getsockname()[1]
    where = f"{gateway}:{port}"
    tmp = tmp_path_factory.mktemp("registry")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(tmp / "key.pem"),
            "-out",
            str(tmp / "cert.pem"),
            "-subj",
            "/CN=cqkd-test-registry",
            "-addext",
            f"subjectAltName=IP:{gateway}",
        ],
        check=True,
        capture_output=True,
    )
    config = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}},
        "http": {
            "addr": where,
            "tls": {"certificate": str(tmp / "cert.pem"), "key": str(tmp / "key.pem")},
        },
    }
    (tmp / "config.yml").write_text(yaml.safe_dump(config))
    certs = Path("/etc/docker/certs.d") / where
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp / "cert.pem", certs / "ca.crt")
    for node in cluster.nodes:
        box = docker_client.containers.get(node.container)
        box.exec_run(["mkdir", "-p", f"/etc/docker/certs.d/{where}"])
        box.put_archive(
            f"/etc/docker/certs.d/{where}", _tar("ca.crt", (tmp / "cert.pem").read_bytes())
        )
    server = subprocess.Popen(
        [binary, "serve", str(tmp / "config.yml")],
        stdout=(tmp / "registry.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        import requests

        def answers() -> bool:
            try:
                return requests.get(
                    f"https://{where}/v2/", verify=str(tmp / "cert.pem"), timeout=2
                ).ok
            except requests.RequestException:
                return False

        wait_for(answers, 30, f"the registry at {where} answers")
        yield where
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(certs, ignore_errors=True)


def _tar(name: str, data: bytes) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_with_a_registry_every_node_pulls_the_pushed_image_by_digest(
    cluster: Cluster, registry: str, manager: docker.DockerClient
) -> None:
    name = f"rg_{uuid.uuid4().hex[:6]}"
    repo = f"{registry}/cqkd/node"
    try:
        done = ok(cqkd(cluster, "deploy", "-s", name, "-r", "6", "--registry", repo, "-f", "json"))
        pushed = done["pushed"]
        assert pushed.startswith(f"{repo}:") and "@sha256:" in pushed
        digest = pushed.split("@", 1)[1]
        for service in manager.api.services(filters={"label": f"{STACK_LABEL}={name}"}):
            image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            assert image.endswith(f"@{digest}"), image
        rows = port_map(manager, name).tasks
        used = {r.node for r in rows}
        assert len(used) > 1
        for node in cluster.nodes:
            if node.container in used:
                digests = [
                    d for i in engine(node).images.list(repo) for d in i.attrs["RepoDigests"]
                ]
                assert f"{repo}@{digest}" in digests, (node.container, digests)
        assert probe_from_manager(cluster, name)["ok"]
    finally:
        teardown(cluster, manager, name)


# --- faults ------------------------------------------------------------------------


class PortWatch:
    """The port map read every half second from another thread while a fault plays out."""

    def __init__(self, manager: docker.DockerClient, stack: str) -> None:
        self.manager, self.stack = manager, stack
        self.duplicates: list[list[int]] = []
        self.wrong: list[tuple[str, int, int]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PortWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ports = port_map(self.manager, self.stack)
            except (docker.errors.APIError, OSError):
                continue  # the manager is busy electing or the engine restarts
            self.samples += 1
            if ports.duplicate_ports:
                self.duplicates.append(ports.duplicate_ports)
            for r in ports.tasks:
                if r.service.endswith("_worker") and r.port != 7000 + r.slot - 1:
                    self.wrong.append((r.task, r.slot, r.port))
            self._stop.wait(0.5)


def slots_on(manager: docker.DockerClient, stack: str, node: str) -> dict[tuple[str, int], int]:
    return {k: r.port for k, r in running_rows(port_map(manager, stack)).items() if r.node == node}


def test_a_killed_worker_container_on_another_node_comes_back_in_its_slot(
    cluster: Cluster, overlay_stack: str, manager: docker.DockerClient
) -> None:
    node = cluster.nodes[-1]
    rows = [
        r
        for r in running_rows(port_map(manager, overlay_stack)).values()
        if r.node == node.container and r.service.endswith("_worker")
    ]
    victim = rows[0]
    with PortWatch(manager, overlay_stack) as watch:
        engine(node).containers.get(victim.container_id).kill()
        wait_for(
            lambda: (
                (
                    row := running_rows(port_map(manager, overlay_stack)).get(
                        (victim.service, victim.slot)
                    )
                )
                is not None
                and row.task_id != victim.task_id
            ),
            120,
            f"slot {victim.slot} running again",
        )
    back = running_rows(port_map(manager, overlay_stack))[(victim.service, victim.slot)]
    assert back.port == victim.port == 7000 + victim.slot - 1
    assert watch.samples > 0 and watch.duplicates == [] and watch.wrong == []
    assert probe_from_manager(cluster, overlay_stack)["ok"]


def probe_from_manager(cluster: Cluster, stack: str, check: bool = True) -> dict[str, Any]:
    """``cqkd-stack probe`` through the manager; ``check=False`` returns a failed round too."""
    done = cqkd(cluster, "probe", "-s", stack, "-f", "json")
    if check:
        return ok(done)
    return json.loads(done.stdout) if done.stdout.strip() else {"ok": False}


def test_an_engine_restart_on_a_node_brings_its_tasks_back_on_their_ports(
    cluster: Cluster,
    overlay_stack: str,
    manager: docker.DockerClient,
    docker_client: docker.DockerClient,
) -> None:
    node = cluster.nodes[1]
    total = WORKERS + 3
    before = {
        k: r
        for k, r in running_rows(port_map(manager, overlay_stack)).items()
        if r.node == node.container
    }
    assert before, f"no task on {node.container} to restart"

    def replaced() -> bool:
        # The manager reports the old tasks running until the node's agent is
        # back and says otherwise: wait for new tasks, not for a stale "running".
        rows = running_rows(port_map(manager, overlay_stack))
        fresh = all(k in rows and rows[k].task_id != r.task_id for k, r in before.items())
        return fresh and all_running(manager, overlay_stack, total)

    with PortWatch(manager, overlay_stack) as watch:
        start = time.monotonic()
        docker_client.containers.get(node.container).exec_run(["pkill", "-x", "dockerd"])
        wait_for(lambda: not _answers(node), 30, "the node's engine stopped", every=0.1)
        wait_for(lambda: _answers(node), 120, "the node's engine answers again")
        wait_for(replaced, 180, "every task of the node replaced and running")
        seconds = time.monotonic() - start
        wait_for(
            lambda: probe_from_manager(cluster, overlay_stack, check=False)["ok"],
            90,
            "every task answering in the DHT",
            every=2,
        )
    after = running_rows(port_map(manager, overlay_stack))
    for key, row in before.items():
        assert after[key].port == row.port, f"{key} moved from port {row.port} to {after[key].port}"
    assert watch.samples > 0 and watch.duplicates == [] and watch.wrong == []
    print(f"engine restart on {node.container}: {len(before)} tasks back in {seconds:.1f} s")


def _answers(node: ClusterNode) -> bool:
    try:
        client = docker.DockerClient(base_url=node.engine_url, timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (docker.errors.DockerException, OSError):
        return False


def test_a_lost_node_s_tasks_move_with_their_slots_and_ports_and_the_value_survives(
    cluster: Cluster,
    overlay_stack: str,
    manager: docker.DockerClient,
    docker_client: docker.DockerClient,
) -> None:
    """Runs last: the node stays lost (the cluster fixture removes it at the end)."""
    key, value = f"survives-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    dhtcheck.store_value(manager, overlay_stack, "alice", key, value)
    total = WORKERS + 3
    victim = cluster.nodes[-1]
    before = slots_on(manager, overlay_stack, victim.container)
    assert before, f"no task on {victim.container} to lose"
    with PortWatch(manager, overlay_stack) as watch:
        start = time.monotonic()
        docker_client.containers.get(victim.container).kill()
        down = wait_for(
            lambda: manager.api.inspect_node(victim.node_id)["Status"]["State"] == "down",
            120,
            "Swarm marks the node down",
        )
        wait_for(
            lambda: (
                all_running(manager, overlay_stack, total)
                and not slots_on(manager, overlay_stack, victim.container)
            ),
            300,
            "every slot running on the other nodes",
        )
        recovered = time.monotonic() - start
    after = running_rows(port_map(manager, overlay_stack))
    moved = {key: after[key] for key in before}
    for k, row in moved.items():
        assert row.node != victim.container and row.port == before[k], (k, row)
    assert watch.samples > 0 and watch.duplicates == [] and watch.wrong == []
    wait_for(
        lambda: probe_from_manager(cluster, overlay_stack, check=False)["ok"],
        90,
        "every task answering in the DHT",
        every=2,
    )
    # The nodes that joined the bootstrap's replacement (if it was on the lost
    # node) meet the older ones at the older ones' next bootstrap check (every
    # BOOTSTRAP_CHECK_ROUNDS rounds of the default 10 s), plus an RPC timeout.
    readable = wait_for(
        lambda: dhtcheck.read_value(manager, overlay_stack, "bob", key) == value,
        BOOTSTRAP_CHECK_ROUNDS * DEFAULT_HEALTH_INTERVAL + 30,
        "Bob reads the value Alice stored before the loss",
        every=1,
    )
    print(
        f"node {victim.container} lost: marked down after {down:.1f} s, "
        f"{len(before)} tasks moved, all running again after {recovered:.1f} s, "
        f"Alice's value read {readable:.1f} s after that; "
        f"{watch.samples} port-map samples, no port ever held twice"
    )


def test_teardown_leaves_nothing_on_any_node(
    cluster: Cluster, overlay_stack: str, manager: docker.DockerClient
) -> None:
    """Containers, networks and the control volume, asked of each node's own engine."""
    done = ok(cqkd(cluster, "teardown", "-s", overlay_stack, "-f", "json"))
    assert done
    flt = {"label": f"{STACK_LABEL}={overlay_stack}"}
    for node in cluster.nodes:
        if not _answers(node):
            continue  # the node lost above
        here = engine(node)
        assert here.api.containers(all=True, filters=flt) == [], node.container
        assert [n["Name"] for n in here.api.networks(filters=flt)] == [], node.container
        volumes = here.api.volumes(filters=flt).get("Volumes") or []
        assert [v["Name"] for v in volumes] == [], node.container


def test_a_worker_node_s_engine_is_refused_as_not_a_manager(cluster: Cluster) -> None:
    """GET /swarm, which the manager check asks, answers 503 on a worker: said in our words."""
    worker = next((n for n in cluster.nodes if n.role == "worker"), None)
    assert worker is not None, f"no worker node in {[n.role for n in cluster.nodes]}"
    env = {**os.environ, "DOCKER_HOST": worker.engine_url}
    done = subprocess.run(
        [sys.executable, "-m", "cqkd_stack", "ports", "--stack", "anything"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    assert "this engine is not a swarm manager" in done.stderr
