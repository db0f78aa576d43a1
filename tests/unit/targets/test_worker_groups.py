"""More workers than the worker range holds: worker groups (issue 21, item 1).

Each group is a service with slots 1..range size, so every worker still
listens on the port its slot gives; on an overlay the groups repeat each
other's ports at addresses of their own, on the host network each group is
held to its own nodes.
"""

from __future__ import annotations

import pytest
import yaml

from cqkd_stack.core.contract import GROUP_LABEL, resolve_slot, worker_groups
from cqkd_stack.core.errors import InvalidInput
from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.validate import validate_texts
from cqkd_stack.live.inspection import TaskPort, held_twice
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import TASKS_PER_NODE, render, room_problems

POLICY = load_policy()


def test_groups_fill_one_at_a_time_so_growing_changes_only_the_last() -> None:
    assert worker_groups(1000, 1000) == [1000]
    assert worker_groups(1001, 1000) == [1000, 1]
    assert worker_groups(2500, 1000) == [1000, 1000, 500]
    grown, before = worker_groups(2600, 1000), worker_groups(2500, 1000)
    assert grown[:-1] == before[:-1] and grown[-1] != before[-1]


def test_a_stack_within_one_range_renders_as_before_without_groups() -> None:
    doc = yaml.safe_load(render(POLICY, RenderOptions(replicas=1000)))
    workers = [n for n in doc["services"] if n.startswith("worker")]
    assert workers == ["worker"]
    assert GROUP_LABEL not in doc["services"]["worker"]["deploy"]["labels"]


def test_2500_workers_are_three_groups_on_the_ports_their_slots_give() -> None:
    text = render(POLICY, RenderOptions(replicas=2500))
    doc = yaml.safe_load(text)
    services = doc["services"]
    groups = {n: s for n, s in services.items() if n.startswith("worker")}
    assert list(groups) == ["worker", "worker-2", "worker-3"]
    assert [g["deploy"]["replicas"] for g in groups.values()] == [1000, 1000, 500]
    assert [g["deploy"]["labels"][GROUP_LABEL] for g in groups.values()] == ["1", "2", "3"]
    assert [g["hostname"] for g in groups.values()] == [
        "worker-{{.Task.Slot}}",
        "worker-2-{{.Task.Slot}}",
        "worker-3-{{.Task.Slot}}",
    ]
    for group in groups.values():
        env = {k: str(v) for k, v in group["environment"].items()}
        assert resolve_slot(env, 1).port == 7000
        assert resolve_slot(env, group["deploy"]["replicas"]).port <= 7999
        assert "placement" not in group["deploy"]  # an overlay: groups may share nodes
    # Every task of the stack has an address in the subnet, twice over (replacements).
    assert doc["networks"]["dht"]["ipam"]["config"][0]["subnet"].endswith("/19")
    assert validate_texts([("s.yml", text)], POLICY).ok


def test_on_the_host_network_each_group_is_held_to_its_own_nodes() -> None:
    doc = yaml.safe_load(render(POLICY, RenderOptions(replicas=1500, network="host")))
    constraints = [
        doc["services"][n]["deploy"]["placement"]["constraints"] for n in ("worker", "worker-2")
    ]
    assert constraints == [
        ["node.labels.org.cqkd.group.cqkd == 1"],
        ["node.labels.org.cqkd.group.cqkd == 2"],
    ]


def _stack(worker2: dict, network: str = "overlay") -> str:
    host = network == "host"
    net = {"hostnet": {"external": True, "name": "host"}} if host else {"dht": {}}
    joined = ["hostnet"] if host else ["dht"]

    def worker(labels: dict, extra: dict) -> dict:
        env = {
            "CQKD_ROLE": "worker",
            "TASK_SLOT": "{{.Task.Slot}}",
            "BASE_PORT": "7000",
            "PORT_RANGE_END": "7999",
        }
        deploy = {"endpoint_mode": "dnsrr", "replicas": 10, "labels": labels} | extra
        return {"image": "n", "environment": env, "networks": joined, "deploy": deploy}

    doc = {
        "version": "3.8",
        "services": {
            "worker": worker({"cqkd.role": "worker", GROUP_LABEL: "1"}, {}),
            "worker-2": worker(
                {"cqkd.role": "worker", **worker2.get("labels", {})}, worker2.get("deploy", {})
            ),
        },
        "networks": net,
    }
    return yaml.safe_dump(doc)


def test_only_groups_may_repeat_ports_on_an_overlay() -> None:
    assert validate_texts([("s.yml", _stack({"labels": {GROUP_LABEL: "2"}}))], POLICY).ok
    same = validate_texts([("s.yml", _stack({"labels": {GROUP_LABEL: "1"}}))], POLICY)
    plain = validate_texts([("s.yml", _stack({}))], POLICY)
    for results in (same, plain):
        assert not results.ok
        assert "overlap service 'worker'" in results.problems[0].message


def test_groups_on_the_host_network_must_be_on_different_nodes() -> None:
    unpinned = _stack({"labels": {GROUP_LABEL: "2"}}, network="host")
    assert not validate_texts([("s.yml", unpinned)], POLICY).ok
    doc = yaml.safe_load(unpinned)
    for name, value in (("worker", "a"), ("worker-2", "b")):
        doc["services"][name]["deploy"]["placement"] = {
            "constraints": [f"node.hostname == {value}"]
        }
    assert validate_texts([("s.yml", yaml.safe_dump(doc))], POLICY).ok
    doc["services"]["worker-2"]["deploy"]["placement"]["constraints"] = ["node.hostname == a"]
    assert not validate_texts([("s.yml", yaml.safe_dump(doc))], POLICY).ok


def test_the_nodes_bridges_bound_the_overlay_before_anything_is_created() -> None:
    doc = yaml.safe_load(render(POLICY, RenderOptions(replicas=2500)))
    assert room_problems(doc, "s.yml", "cqkd", 3) == []
    (problem,) = room_problems(doc, "s.yml", "cqkd", 2)
    assert problem.path == "$.networks.dht"
    assert "2503 tasks on network 'dht' need 3 nodes" in problem.message
    assert f"holds {TASKS_PER_NODE} tasks" in problem.message
    # On the host network a group needs a node of its own: 2 groups, 2 nodes.
    host = yaml.safe_load(render(POLICY, RenderOptions(replicas=1500, network="host")))
    assert room_problems(host, "s.yml", "cqkd", 2) == []
    (refused,) = room_problems(host, "s.yml", "cqkd", 1)
    assert "2 worker groups on the host network each need a node" in refused.message
    assert "the swarm has 1 node that run" in refused.message
    assert refused.path == "$.services.worker-2"


def _row(service: str, slot: int, address: str | None) -> TaskPort:
    return TaskPort(
        service,
        "worker",
        slot,
        f"{service}.{slot}",
        "t",
        "n",
        address,
        6999 + slot,
        "running",
        "",
        None,
    )


def test_a_port_is_held_twice_only_at_one_address_or_by_one_service() -> None:
    groups = [_row("worker", 1, "10.0.0.2"), _row("worker-2", 1, "10.0.0.3")]
    assert held_twice(groups) == []
    assert held_twice([*groups, _row("worker-2", 1, "10.0.0.9")]) == [7000]  # a slot twice
    assert held_twice([_row("a", 1, "192.0.2.1"), _row("b", 1, "192.0.2.1")]) == [7000]
    assert held_twice([_row("worker", 1, None), _row("worker-2", 1, None)]) == []


def test_a_long_constraint_is_read_in_linear_time() -> None:
    # Bad input is bounded: a 800 kB constraint is read at once and pins nothing.
    from cqkd_stack.lint.rules import node_pin

    hostile = "node.labels." + "a=" * 400_000
    assert node_pin({"placement": {"constraints": [hostile]}}) is None
    assert node_pin({"placement": {"constraints": ["node.labels.x == 2"]}}) == (
        "node.labels.x",
        "2",
    )


def test_a_count_no_stack_holds_is_refused_before_any_group_is_made() -> None:
    """Found in review: `render -r 1000000000` split a million services, 43 s to refuse."""
    with pytest.raises(InvalidInput, match="at most 65533 fit one stack"):
        worker_groups(10**9, 1000)
    with pytest.raises(InvalidInput, match="need 3200 worker groups, more than 256"):
        worker_groups(32000, 10)
    assert len(worker_groups(2560, 10)) == 256
    with pytest.raises(InvalidInput, match="at most 65533"):
        render(POLICY, RenderOptions(replicas=10**9))
