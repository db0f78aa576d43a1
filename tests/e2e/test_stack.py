"""A real DHT stack on the real swarm: deploy, verify from inside, scale, tear down.

The verification does not trust our own code: expected ports are computed here
from the slot (7000 + slot - 1), addresses come straight from the Docker API,
and a probe container on the stack's overlay network sends each worker a real
Kademlia ping.
"""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

WORKERS = 50
SCALED = 60
STACK_LABEL = "com.docker.stack.namespace"


def cqkd(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The command exactly as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def leftovers(client: docker.DockerClient, stack: str) -> dict[str, list[str]]:
    flt = {"label": f"{STACK_LABEL}={stack}"}
    return {
        "services": [s.name for s in client.services.list(filters=flt)],
        "containers": [c["Id"] for c in client.api.containers(all=True, filters=flt)],
        "networks": [n.name for n in client.networks.list(filters=flt)],
    }


def worker_tasks(client: docker.DockerClient, stack: str) -> list[dict[str, Any]]:
    return client.api.tasks(filters={"service": f"{stack}_worker", "desired-state": "running"})


def dht_address(task: dict[str, Any], stack: str) -> str:
    for attachment in task["NetworksAttachments"]:
        if attachment["Network"]["Spec"]["Name"] == f"{stack}_dht":
            return attachment["Addresses"][0].split("/")[0]
    raise AssertionError(f"task {task['ID']} is not on {stack}_dht")


def probe(client: docker.DockerClient, image: str, network: str, targets: list[str]) -> dict:
    """Kademlia-ping every target from a container attached to the DHT network."""
    output = client.containers.run(
        image,
        ["python3", "-m", "cqkd_stack.probe", *targets],
        entrypoint=[],
        network=network,
        remove=True,
        stdout=True,
        stderr=False,
    )
    return json.loads(output)


def remove_quietly(stack: str) -> None:
    """Teardown of last resort: the tests' own teardown should already have run."""
    subprocess.run(["docker", "stack", "rm", stack], capture_output=True)


DEPLOYED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def stack(docker_client: docker.DockerClient, node_image: str) -> Iterator[str]:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd(
            "deploy",
            "--replicas",
            str(WORKERS),
            "--stack",
            name,
            "--timeout",
            "420",
            "--format",
            "json",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        DEPLOYED.update(json.loads(done.stdout))
        yield name
    finally:
        if any(leftovers(docker_client, name).values()):
            cqkd("teardown", "--stack", name, "--timeout", "300")
            remove_quietly(name)


def test_every_worker_answers_kademlia_at_its_slot_port(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    tasks = worker_tasks(docker_client, stack)
    assert sorted(t["Slot"] for t in tasks) == list(range(1, WORKERS + 1))
    targets = {f"{dht_address(t, stack)}:{7000 + t['Slot'] - 1}": t["Slot"] for t in tasks}
    answers = probe(docker_client, node_image, f"{stack}_dht", list(targets))
    silent = sorted(targets[t] for t, node_id in answers.items() if node_id is None)
    assert silent == [], f"slots that did not answer on their port: {silent}"
    assert len(set(answers.values())) == WORKERS, "every worker is a distinct Kademlia node"


def test_deploy_reports_running_and_joined_separately(stack: str) -> None:
    """deploy returns only once every task is in the DHT, which comes after running."""
    assert DEPLOYED["tasks"] == WORKERS + 3
    assert 0 < DEPLOYED["running_seconds"] <= DEPLOYED["joined_seconds"] <= DEPLOYED["seconds"]


def test_the_bootstrap_ran_before_any_other_task_was_created(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """Swarm starts tasks in any order; deploy puts the bootstrap first so nobody waits on it."""
    flt = {"label": f"{STACK_LABEL}={stack}"}
    tasks = docker_client.api.tasks(filters=flt)
    (first,) = [
        t for t in tasks if t["ServiceID"] in _service_ids(docker_client, stack, "bootstrap")
    ]
    container = docker_client.api.inspect_container(
        first["Status"]["ContainerStatus"]["ContainerID"]
    )
    started = _when(container["State"]["StartedAt"])
    others = [t for t in tasks if t["ID"] != first["ID"]]
    assert len(others) == WORKERS + 2
    assert all(_when(t["CreatedAt"]) > started for t in others), started


def _when(stamp: str) -> datetime.datetime:
    """Docker's RFC 3339 time with nanoseconds (Go drops trailing zeros) as a datetime."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    micro = (fraction + "000000")[:6]
    return datetime.datetime.fromisoformat(f"{whole}.{micro}")


def _service_ids(client: docker.DockerClient, stack: str, name: str) -> set[str]:
    return {s["ID"] for s in client.api.services(filters={"name": f"{stack}_{name}"})}


def test_no_task_runs_a_docker_health_check(stack: str, docker_client: docker.DockerClient) -> None:
    """Readiness is the probe's job: a check per task is an exec per task per interval."""
    for service in docker_client.services.list(filters={"label": f"{STACK_LABEL}={stack}"}):
        check = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Healthcheck")
        assert check == {"Test": ["NONE"]}, (service.name, check)


def test_every_node_runs_unprivileged_on_a_read_only_root(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """Not root, no capability, nothing writable but its /tmp tmpfs (and for Alice and
    Bob the stack's control volume, where dht-check's jobs reach their sockets, and
    their control key, a 0400 file)."""
    containers = docker_client.api.containers(filters={"label": f"{STACK_LABEL}={stack}"})
    assert len(containers) >= WORKERS + 3
    special = 0
    for summary in containers:
        attrs = docker_client.api.inspect_container(summary["Id"])
        name = attrs["Name"]
        assert attrs["Config"]["User"] == "10001:10001", name
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True, name
        assert not attrs["HostConfig"].get("CapAdd"), name
        assert attrs["HostConfig"]["CapDrop"] == ["ALL"], name
        mounts = sorted((m["Type"], m["Destination"], m.get("Name")) for m in attrs["Mounts"])
        service = attrs["Config"]["Labels"]["com.docker.swarm.service.name"]
        if service in (f"{stack}_alice", f"{stack}_bob"):
            special += 1
            control = ("volume", "/run/cqkd", f"{stack}_control")
            # Their control key (a Swarm config) is not a mount Docker lists;
            # tests/e2e/test_control_port.py checks its mode and owner.
            assert mounts == [("tmpfs", "/tmp", None), control], name
        else:
            assert mounts == [("tmpfs", "/tmp", None)], name
    assert special == 2
    sample = docker_client.containers.get(containers[0]["Id"])
    code, output = sample.exec_run(["python3", "-c", "import os; print(os.getuid())"])
    assert (code, output.strip()) == (0, b"10001")
    code, output = sample.exec_run(["touch", "/usr/written"])
    assert code != 0 and b"Read-only file system" in output
    code, status = sample.exec_run(["grep", "^CapEff", "/proc/1/status"])
    assert code == 0 and status.split()[-1] == b"0000000000000000", status


def test_probe_task_finds_every_task_in_the_dht(stack: str) -> None:
    done = cqkd("probe", "--stack", stack, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert (result["total"], result["answered"], result["joined"]) == (WORKERS + 3,) * 3
    assert result["silent"] == [] and result["not_joined"] == [] and result["ok"] is True
    assert 0 < result["round_seconds"] <= result["seconds"]
    # As root on an engine running the stack's tasks: from the task's namespace, no container.
    assert result["method"] == "in-process"


def test_probe_and_dht_check_all_name_a_silent_worker(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """A paused worker cannot answer: the probe must say which slot, and exit 1."""
    task = next(t for t in worker_tasks(docker_client, stack) if t["Slot"] == 3)
    container = docker_client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    container.pause()
    try:
        done = cqkd("probe", "--stack", stack, "--format", "json")
        assert done.returncode == 1, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["answered"] == WORKERS + 2
        assert [(r["service"], r["slot"], r["port"]) for r in result["silent"]] == [
            (f"{stack}_worker", 3, 7002)
        ]
        text = cqkd("dht-check", "--all", "--stack", stack)
        assert text.returncode == 1, text.stdout + text.stderr
        assert f"silent: {stack}_worker slots 3" in text.stdout
        assert "alice stored" in text.stdout, "the store/read check still ran"
    finally:
        container.unpause()


def test_a_node_that_exits_zero_is_started_again(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    """Alice once exited 0 and stayed 'Complete' for good under on-failure."""
    service = f"{stack}_alice"
    (old,) = docker_client.api.tasks(filters={"service": service, "desired-state": "running"})
    container = docker_client.containers.get(old["Status"]["ContainerStatus"]["ContainerID"])
    container.kill(signal="SIGTERM")  # the node stops cleanly: exit 0
    assert container.wait(timeout=60)["StatusCode"] == 0

    def restarted() -> dict[str, Any] | None:
        for task in docker_client.api.tasks(filters={"service": service}):
            if task["ID"] != old["ID"] and task["Status"]["State"] == "running":
                return task
        return None

    new = wait_for(restarted, 120, "a new Alice task running")
    assert new["Slot"] == old["Slot"]
    address = dht_address(new, stack)
    answers = probe(docker_client, node_image, f"{stack}_dht", [f"{address}:6000"])
    assert answers[f"{address}:6000"], "the restarted Alice does not answer on 6000"
    history = {t["ID"]: t for t in docker_client.api.tasks(filters={"service": service})}
    assert history[old["ID"]]["Status"]["State"] == "complete"
    done = cqkd("probe", "--stack", stack, "--format", "json")
    assert done.returncode == 0 or wait_for(
        lambda: cqkd("probe", "--stack", stack).returncode == 0, 60, "Alice back in the DHT"
    )


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "container"])
def test_the_probe_sits_beside_the_bootstrap_and_moves_as_tasks_come_and_go(
    stack: str, docker_client: docker.DockerClient, in_process: bool
) -> None:
    """No ARP flood, no attach through the manager: the probe sits in the bootstrap's netns.

    From this process by default (a socket made in the task's namespace),
    in a probe container sharing it where this process cannot.
    """
    from cqkd_stack.live.inspection import task_rows
    from cqkd_stack.live.readiness import PROBE_LABEL, Prober, targets_of

    def rows() -> list[Any]:
        flt = {"label": f"{STACK_LABEL}={stack}"}
        services = docker_client.api.services(filters=flt)
        tasks = docker_client.api.tasks(filters=flt)
        nodes = {n["ID"]: n for n in docker_client.api.nodes()}
        return task_rows(stack, services, tasks, nodes)

    def bootstrap_container() -> str:
        (task,) = docker_client.api.tasks(
            filters={"service": f"{stack}_bootstrap", "desired-state": "running"}
        )
        return task["Status"]["ContainerStatus"]["ContainerID"]

    def bootstrap_running() -> bool:
        tasks = docker_client.api.tasks(
            filters={"service": f"{stack}_bootstrap", "desired-state": "running"}
        )
        return any(t["Status"]["State"] == "running" for t in tasks)

    workers = [t for t in targets_of(rows()) if t.role == "worker"]
    subprocess.run(["docker", "service", "scale", "--detach", f"{stack}_bootstrap=0"], check=True)
    try:
        label = f"com.docker.swarm.service.name={stack}_bootstrap"
        wait_for(
            lambda: not docker_client.api.containers(filters={"label": label}),
            60,
            "the bootstrap's container to stop",
        )
        with Prober(docker_client, stack, allow_in_process=in_process) as prober:
            # No bootstrap here: the probe sits beside another node, and still reaches all.
            first = prober.round(workers, attach=False)
            assert first.method == ("in-process" if in_process else "container")
            assert prober.via_role in ("worker", "special")
            assert sum(1 for t in workers if first.answers.get(t.text)) == WORKERS
            beside_worker = prober.container.id if not in_process else prober.via
            if in_process:
                assert prober.container is None and prober.namespace is not None
            subprocess.run(
                ["docker", "service", "scale", "--detach", f"{stack}_bootstrap=1"], check=True
            )
            wait_for(bootstrap_running, 120, "the bootstrap to run again")
            # Once the bootstrap runs, the probe moves beside it.
            second = prober.round(workers, attach=False)
            assert prober.via == bootstrap_container() and prober.via_role == "bootstrap"
            if in_process:
                assert prober.via != beside_worker and second.method == "in-process"
            else:
                assert prober.container.id != beside_worker
                mode = docker_client.api.inspect_container(prober.container.id)["HostConfig"]
                assert mode["NetworkMode"] == f"container:{prober.via}"
            assert sum(1 for t in workers if second.answers.get(t.text)) == WORKERS
            # The task it sits beside stops: the next round starts it beside another.
            old_via = prober.via
            docker_client.containers.get(old_via).kill(signal="SIGTERM")
            docker_client.containers.get(old_via).wait(timeout=60)
            again = prober.round(workers, attach=False)
            assert prober.via not in (None, old_via)
            assert sum(1 for t in workers if again.answers.get(t.text)) == WORKERS
    finally:
        subprocess.run(["docker", "service", "scale", "--detach", f"{stack}_bootstrap=1"])
    wait_for(
        lambda: (
            not docker_client.api.containers(all=True, filters={"label": f"{PROBE_LABEL}={stack}"})
        ),
        30,
        "the probe containers to be removed",
    )
    wait_for(lambda: cqkd("probe", "--stack", stack).returncode == 0, 120, "the bootstrap back")


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll a real condition until it holds; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_wrong_port_does_not_answer(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    """The probe must be able to fail: slot 1's address on slot 2's port is silent."""
    task = next(t for t in worker_tasks(docker_client, stack) if t["Slot"] == 1)
    target = f"{dht_address(task, stack)}:7001"
    with pytest.raises(docker.errors.ContainerError):
        probe(docker_client, node_image, f"{stack}_dht", [target])


def test_dht_check_round_trip(stack: str) -> None:
    done = cqkd("dht-check", "--stack", stack, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["stored_by"] == "alice" and result["read_by"] == "bob"
    assert result["round_trip_seconds"] > 0


def test_dht_check_runs_swarm_jobs_not_execs(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """With --via job (the path of stacks without a control port), each request is
    a Swarm job on the task's node, created, read and removed; no exec into
    Alice's or Bob's container (which works on this engine only)."""
    hostname = docker_client.info()["Name"]
    nodes = {n["ID"]: n["Description"]["Hostname"] for n in docker_client.api.nodes()}
    began = time.time_ns()
    since = began // 10**9 - 1
    done = cqkd("dht-check", "--stack", stack, "--format", "json", "--via", "job")
    until = int(time.time()) + 1
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["via"] == "job"
    assert result["stored_on"] in nodes.values() and result["read_on"] in nodes.values()
    assert hostname in nodes.values()
    events = [  # this check's only: the events API counts whole seconds
        e
        for e in docker_client.events(
            since=since, until=until, decode=True, filters={"type": "service"}
        )
        if e["timeNano"] >= began
    ]
    jobs: dict[str, list[str]] = {}
    for event in events:
        name = event["Actor"]["Attributes"].get("name", "")
        if name.startswith(f"{stack}_dht-check-"):
            jobs.setdefault(name, []).append(event["Action"])
    assert sorted(name.rsplit("-", 1)[0] for name in jobs) == [
        f"{stack}_dht-check-alice",
        f"{stack}_dht-check-bob",
    ], events
    assert all(actions[0] == "create" and actions[-1] == "remove" for actions in jobs.values())
    # Swarm removes a removed job's container (a replicated-job service would leave it).
    wait_for(
        lambda: not docker_client.api.containers(all=True, filters={"name": f"{stack}_dht-check-"}),
        30,
        "the dht-check jobs' containers to be removed",
    )
    assert docker_client.api.services(filters={"label": f"org.cqkd.control.stack={stack}"}) == []
    specials = docker_client.api.containers(filters={"label": f"{STACK_LABEL}={stack}"})
    ids = {
        c["Id"]
        for c in specials
        if c["Labels"]["com.docker.swarm.service.name"] in (f"{stack}_alice", f"{stack}_bob")
    }
    assert len(ids) == 2
    execs = docker_client.events(
        since=since, until=until, decode=True, filters={"type": "container", "event": "exec_create"}
    )
    assert [e for e in execs if e["id"] in ids and e["timeNano"] >= began] == []


def test_ports_lists_exactly_the_expected_slots_and_ports(stack: str) -> None:
    done = cqkd("ports", "--stack", stack, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    workers = [t for t in result["tasks"] if t["service"] == f"{stack}_worker"]
    assert sorted((t["slot"], t["port"]) for t in workers) == [
        (slot, 7000 + slot - 1) for slot in range(1, WORKERS + 1)
    ]
    assert all(t["address"] and t["state"] == "running" for t in workers)
    special = {t["service"]: t["port"] for t in result["tasks"] if t["role"] != "worker"}
    assert special == {f"{stack}_bootstrap": 5678, f"{stack}_alice": 6000, f"{stack}_bob": 6001}
    assert result["duplicate_ports"] == [] and result["missing_slots"] == {}
    usage = {r["role"]: (r["used"], r["free"]) for r in result["roles"]}
    assert usage["worker"] == (WORKERS, 1000 - WORKERS)


def test_ports_as_prometheus_metrics_parse_and_count_the_live_stack(stack: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    done = cqkd("ports", "--stack", stack, "--format", "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(done.stdout):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            values.setdefault(sample.name, {})[key] = sample.value
    worker = (("range", "7000-7999"), ("role", "worker"), ("stack", stack))
    assert values["cqkd_port_range_used"][worker] == WORKERS
    assert values["cqkd_port_range_free"][worker] == 1000 - WORKERS
    assert sum(values["cqkd_tasks"].values()) == WORKERS + 3
    assert (
        sum(v for k, v in values["cqkd_node_ports_used"].items() if ("role", "worker") in k)
        == WORKERS
    )
    assert values["cqkd_duplicate_ports"] == {(("stack", stack),): 0}
    assert values["cqkd_port_map_healthy"] == {(("stack", stack),): 1}
    assert values.get("cqkd_missing_slots", {}) == {}


def _running_tasks(client: docker.DockerClient, stack: str) -> dict[str, tuple[str, int]]:
    tasks = client.api.tasks(
        filters={"label": f"{STACK_LABEL}={stack}", "desired-state": "running"}
    )
    return {t["ID"]: (t["ServiceID"], t.get("Slot", 0)) for t in tasks}


def test_the_same_deploy_twice_changes_nothing(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """A redeploy renders the same file (its network keeps its subnet): no task restarts."""
    before = _running_tasks(docker_client, stack)
    assert len(before) == WORKERS + 3
    done = cqkd("deploy", "--replicas", str(WORKERS), "--stack", stack, "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _running_tasks(docker_client, stack) == before
    states = {
        t["Status"]["State"]
        for t in docker_client.api.tasks(
            filters={"label": f"{STACK_LABEL}={stack}", "desired-state": "running"}
        )
    }
    assert states == {"running"}


def test_a_killed_worker_comes_back_in_its_slot_on_its_port(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    slot = 7
    (old,) = [t for t in worker_tasks(docker_client, stack) if t["Slot"] == slot]
    container = docker_client.containers.get(old["Status"]["ContainerStatus"]["ContainerID"])
    container.kill()  # SIGKILL: the node gets no say

    def replaced() -> dict[str, Any] | None:
        for task in worker_tasks(docker_client, stack):
            fresh = task["Slot"] == slot and task["ID"] != old["ID"]
            if fresh and task["Status"]["State"] == "running":
                return task
        return None

    new = wait_for(replaced, 120, f"a new task running in worker slot {slot}")
    address = dht_address(new, stack)
    answers = probe(docker_client, node_image, f"{stack}_dht", [f"{address}:{7000 + slot - 1}"])
    assert answers[f"{address}:{7000 + slot - 1}"], "the replacement is not on its slot's port"
    done = cqkd("ports", "--stack", stack, "--format", "json")
    rows = [r for r in json.loads(done.stdout)["tasks"] if r["service"] == f"{stack}_worker"]
    assert {r["slot"]: r["port"] for r in rows}[slot] == 7000 + slot - 1
    assert json.loads(done.stdout)["duplicate_ports"] == []


def test_scale_up_keeps_existing_ports(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    before = {t["Slot"]: t["ID"] for t in worker_tasks(docker_client, stack)}
    done = cqkd("scale", "--replicas", str(SCALED), "--stack", stack, "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    after = {t["Slot"]: t for t in worker_tasks(docker_client, stack)}
    assert sorted(after) == list(range(1, SCALED + 1))
    assert {slot: after[slot]["ID"] for slot in before} == before, "existing tasks were replaced"
    new = {f"{dht_address(after[s], stack)}:{7000 + s - 1}" for s in range(WORKERS + 1, SCALED + 1)}
    answers = probe(docker_client, node_image, f"{stack}_dht", sorted(new))
    assert all(answers.values()), answers


def test_scale_beyond_what_the_subnet_holds_is_refused(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """Past the range, scale makes worker groups; the stack's /24 still holds only 253.

    Every group is checked before anything changes: no group is created,
    the first one is not relabelled.
    """
    before = docker_client.services.get(f"{stack}_worker").attrs["Version"]["Index"]
    done = cqkd("scale", "--replicas", "1001", "--stack", stack)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1004 tasks join network" in done.stderr and "each needs an address" in done.stderr
    assert "nothing was changed" in done.stderr
    after = docker_client.services.get(f"{stack}_worker").attrs["Version"]["Index"]
    assert after == before, "the service was changed although the scale was refused"
    assert docker_client.services.list(filters={"name": f"{stack}_worker-2"}) == []


def test_invalid_stack_is_refused_and_nothing_is_created(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    # A port the policy blocks inside the workers' slots: no split into
    # worker groups renders around it (a count past the range alone is no
    # longer a refusal: it was, and CI deployed 1001 workers instead).
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "version: 1\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
        "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7999}\n"
        "control: {start: 6100, end: 6109}\nblocked_ports: [7500]\n"
    )
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd("deploy", "--replicas", "600", "--stack", name, "--policy", str(policy))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "slot 501 would get port 7500, which the policy blocks" in done.stderr
        assert "nothing was deployed" in done.stderr
        assert leftovers(docker_client, name) == {"services": [], "containers": [], "networks": []}
    finally:
        remove_quietly(name)


def test_a_subnet_taken_by_a_live_stack_is_refused(
    stack: str, docker_client: docker.DockerClient
) -> None:
    """Swarm would accept it and leave the new tasks in "new" for ever."""
    live = docker_client.networks.get(f"{stack}_dht").attrs["IPAM"]["Config"][0]["Subnet"]
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd("deploy", "--replicas", "3", "--stack", name, "--subnet", live)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"overlaps network '{stack}_dht'" in done.stderr
        assert leftovers(docker_client, name) == {"services": [], "containers": [], "networks": []}
    finally:
        remove_quietly(name)


def test_host_network_workers_answer_on_the_node_at_their_slot_port(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    """Host networking: no overlay, the slot port alone keeps workers apart.

    It shares no network with the overlay stack (same ports there are fine),
    but a second host stack on the same ports is a real collision: refused.
    """
    host, clash = (f"cqkdtest_{uuid.uuid4().hex[:8]}" for _ in range(2))
    try:
        done = cqkd("deploy", "--replicas", "5", "--network", "host", "--stack", host)
        assert done.returncode == 0, done.stdout + done.stderr
        nodes = {n.id: n.attrs["Status"]["Addr"] for n in docker_client.nodes.list()}
        tasks = worker_tasks(docker_client, host)
        targets = {f"{nodes[t['NodeID']]}:{7000 + t['Slot'] - 1}": t["Slot"] for t in tasks}
        assert sorted(targets.values()) == [1, 2, 3, 4, 5]
        answers = probe(docker_client, node_image, "host", list(targets))
        assert all(answers.values()), answers
        refused = cqkd("deploy", "--replicas", "5", "--network", "host", "--stack", clash)
        assert refused.returncode == 1
        assert f"overlap service '{host}_worker' in stack {host}" in refused.stderr
        assert leftovers(docker_client, clash) == {"services": [], "containers": [], "networks": []}
    finally:
        cqkd("teardown", "--stack", host, "--timeout", "300")
        remove_quietly(host)
        remove_quietly(clash)
    assert leftovers(docker_client, host)["containers"] == []


def test_a_host_port_already_taken_fails_that_worker_and_it_never_moves(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    """Host networking, port 7002 held by someone else: slot 3 fails, loudly, on 7002."""
    host = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("0.0.0.0", 7002))
    try:
        done = cqkd("deploy", "-r", "5", "-n", "host", "-s", host, "--no-wait")
        assert done.returncode == 0, done.stdout + done.stderr

        def failed_attempts() -> list[dict[str, Any]] | None:
            tasks = docker_client.api.tasks(filters={"service": f"{host}_worker"})
            failed = [t for t in tasks if t["Slot"] == 3 and t["Status"]["State"] == "failed"]
            return failed if len(failed) >= 2 else None

        failed = wait_for(failed_attempts, 180, "slot 3 failing twice on its taken port")
        container = failed[0]["Status"]["ContainerStatus"]["ContainerID"]
        log = docker_client.api.logs(container).decode()
        assert "cannot listen on UDP 0.0.0.0:7002" in log, log
        assert "never picks another port" in log
        shown = cqkd("ports", "-s", host, "-f", "json")
        assert shown.returncode in (0, 1), shown.stderr
        ports = json.loads(shown.stdout)
        rows = {r["slot"]: r for r in ports["tasks"] if r["service"] == f"{host}_worker"}
        assert {slot: r["port"] for slot, r in rows.items()} == {
            slot: 7000 + slot - 1 for slot in range(1, 6)
        }
        assert rows[3]["state"] != "running", rows[3]
        assert all(rows[slot]["state"] == "running" for slot in (1, 2, 4, 5)), rows
        nodes = {n.id: n.attrs["Status"]["Addr"] for n in docker_client.nodes.list()}
        others = [t for t in worker_tasks(docker_client, host) if t["Slot"] != 3]
        targets = [f"{nodes[t['NodeID']]}:{7000 + t['Slot'] - 1}" for t in others]
        answers = probe(docker_client, node_image, "host", targets)
        assert all(answers.values()), answers
    finally:
        squatter.close()
        cqkd("teardown", "--stack", host, "--timeout", "300")
        remove_quietly(host)


def test_teardown_leaves_no_service_container_or_network(
    stack: str, docker_client: docker.DockerClient
) -> None:
    done = cqkd("teardown", "--stack", stack, "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(docker_client, stack) == {"services": [], "containers": [], "networks": []}
    again = cqkd("teardown", "--stack", stack)
    assert again.returncode == 1 and "nothing to remove" in again.stderr
