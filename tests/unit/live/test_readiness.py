"""Readiness verdicts and the port rows they are computed from (pure data, no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from cqkd_stack.live.inspection import build_port_map, last_attempts, task_rows
from cqkd_stack.live.readiness import ProbedTask
from cqkd_stack.node.probe import count_neighbours
from cqkd_stack.node.wire import PROBE_NODE_ID

OTHER = bytes(20)


def target(
    role: str = "worker", state: str = "running", address: str | None = "10.0.0.5"
) -> ProbedTask:
    return ProbedTask("s_worker", role, 1, address, 7000, state)


@pytest.mark.parametrize(
    ("answer", "role", "ready"),
    [
        ({"id": "ab", "neighbours": 3}, "worker", True),
        ({"id": "ab", "neighbours": 0}, "worker", False),  # listening, not in the DHT
        ({"id": "ab", "neighbours": None}, "special", False),  # find_node unanswered
        ({"id": "ab", "neighbours": 0}, "bootstrap", True),  # the DHT's first member
        (None, "bootstrap", False),
        ("ab", "worker", False),  # a plain ping answer says nothing about contacts
    ],
)
def test_ready_means_answering_and_joined(answer: Any, role: str, ready: bool) -> None:
    assert target(role).ready(answer) is ready


def test_only_running_tasks_with_an_address_are_asked() -> None:
    assert target().askable
    assert not target(state="starting").askable
    assert not target(address=None).askable


def test_the_probe_itself_is_no_neighbour() -> None:
    """A stock node keeps the probe as a contact; it must not make that node look joined."""
    assert count_neighbours([(PROBE_NODE_ID, "10.0.0.9", 40000)]) == 0
    assert count_neighbours([(PROBE_NODE_ID, "10.0.0.9", 1), (OTHER, "10.0.0.7", 7001)]) == 1
    assert count_neighbours([]) == 0
    assert count_neighbours({"value": 1}) is None
    assert count_neighbours([("short",)]) is None


def service(sid: str, name: str, env: list[str], replicas: int = 2) -> dict[str, Any]:
    return {
        "ID": sid,
        "Spec": {
            "Name": name,
            "Labels": {},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "TaskTemplate": {"ContainerSpec": {"Env": env}},
        },
    }


def task(tid: str, sid: str, slot: int, networks: list[tuple[str, str]], **status: Any) -> dict:
    return {
        "ID": tid,
        "Version": {"Index": status.pop("version", 1)},
        "ServiceID": sid,
        "Slot": slot,
        "NodeID": "n1",
        "DesiredState": status.pop("desired", "running"),
        "Status": {"State": status.pop("state", "running")},
        "NetworksAttachments": [
            {
                "Network": {"Spec": {"Name": net, "Ingress": net == "ingress"}},
                "Addresses": [addr] if addr else [],
            }
            for net, addr in networks
        ],
    }


NODES = {"n1": {"Description": {"Hostname": "node-1"}, "Status": {"Addr": "192.0.2.2"}}}
WORKER_ENV = ["CQKD_ROLE=worker", "BASE_PORT=7000", "TASK_SLOT={{.Task.Slot}}"]


def test_rows_use_the_stack_network_then_any_other_but_ingress() -> None:
    services = [service("w", "b_worker", WORKER_ENV)]
    tasks = [
        task("t1", "w", 1, [("ingress", "10.255.0.4/16"), ("b_dht", "10.9.0.3/20")]),
        # A batch on another stack's network: its address is there, not on the node.
        task("t2", "w", 2, [("ingress", "10.255.0.5/16"), ("cqkd_dht", "10.8.0.7/20")]),
        task("t3", "w", 3, []),  # host networking: the node's address
        task("t4", "w", 4, [("host", "")]),  # the same, as Swarm lists it
    ]
    rows = {r.slot: (r.address, r.port) for r in task_rows("b", services, tasks, NODES)}
    assert rows == {
        1: ("10.9.0.3", 7000),
        2: ("10.8.0.7", 7001),
        3: ("192.0.2.2", 7002),
        4: ("192.0.2.2", 7003),
    }


def test_rows_skip_tasks_swarm_is_shutting_down_and_non_dht_services() -> None:
    services = [service("w", "s_worker", WORKER_ENV), service("v", "s_viz", ["X=1"], 1)]
    tasks = [
        task("t1", "w", 1, [("s_dht", "10.9.0.3/20")]),
        task("t0", "w", 1, [("s_dht", "10.9.0.2/20")], desired="shutdown", state="shutdown"),
        task("tv", "v", 1, [("s_dht", "10.9.0.9/20")]),
    ]
    assert [r.task_id for r in task_rows("s", services, tasks, NODES)] == ["t1"]


def test_port_map_without_a_policy_still_flags_duplicates_and_gaps() -> None:
    services = [service("w", "s_worker", WORKER_ENV, replicas=3)]
    tasks = [
        task("t1", "w", 1, [("s_dht", "10.9.0.3/20")]),
        task("t1b", "w", 1, [("s_dht", "10.9.0.4/20")]),
    ]
    result = build_port_map("s", services, tasks, NODES)
    assert result.duplicate_ports == [7000]
    assert result.missing_slots == {"s_worker": [2, 3]}
    assert result.roles == []


def test_a_role_without_base_port_gets_the_resolvers_default_range() -> None:
    services = [service("w", "s_worker", ["CQKD_ROLE=worker", "TASK_SLOT={{.Task.Slot}}"], 1)]
    tasks = [task("t5", "w", 5, [("s_dht", "10.9.0.3/20")])]
    (row,) = task_rows("s", services, tasks, NODES)
    assert row.port == 7004


def test_rounds_are_spaced_by_stack_size_until_every_task_runs() -> None:
    """Polling 1003 tasks every 2 s slowed Swarm's own task starts on 2 cores."""
    from cqkd_stack.live.waits import MAX_POLL_SECONDS, POLL_SECONDS, poll_interval

    assert poll_interval(53, 10) == POLL_SECONDS
    assert poll_interval(303, 100) == 303 / 200
    assert poll_interval(1003, 500) == MAX_POLL_SECONDS
    assert poll_interval(1003, 1003) == POLL_SECONDS  # all running: joins come fast


def test_a_missing_slot_shows_its_last_attempt_and_why_it_ended() -> None:
    services = [service("w", "s_worker", WORKER_ENV, replicas=3)]
    ended = [
        task("old", "w", 3, [], desired="shutdown", state="failed", version=5),
        task("new", "w", 3, [], desired="shutdown", state="failed", version=9),
        task("gone", "w", 2, [], desired="shutdown", state="shutdown", version=7),
        task("live", "w", 1, [("s_dht", "10.9.0.3/20")], version=3),
    ]
    ended[1]["Status"]["Err"] = "task: non-zero exit (1)"
    rows = last_attempts("s", services, ended, NODES, {"s_worker": [3]})
    assert [(r.task_id, r.slot, r.port, r.state, r.error) for r in rows] == [
        ("new", 3, 7002, "failed", "task: non-zero exit (1)")
    ]
