"""Worker groups on a live swarm, as the API lists them: which services are groups,
and the spec a new group is created from (tests/e2e/test_worker_groups.py scales
a real stack past its range and back)."""

from __future__ import annotations

from typing import Any

from cqkd_stack.live.groups import (
    GroupResize,
    live_groups,
    new_group,
    pinned_groups,
    plain_number,
)
from cqkd_stack.live.plan import scale_plan

from .test_plan import STACK, deployed, rendered


def service(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "ID": f"id-{name}",
        "Spec": {
            "Name": f"{STACK}_{name}",
            "Labels": {"com.docker.stack.namespace": STACK, **(labels or {})},
            "Mode": {"Replicated": {"Replicas": 10}},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "cqkd-dht-node:0.1.0",
                    "Hostname": "worker-{{.Task.Slot}}",
                },
                "Networks": [{"Target": "net-id", "Aliases": ["worker"]}],
            },
        },
    }


def test_a_group_is_named_and_labelled_as_one() -> None:
    services = [
        service("worker"),
        service("worker-2", {"cqkd.group": "2"}),
        service("worker-3", {"cqkd.group": "3"}),
        # Named like groups, but not labelled as the number its name says.
        service("worker-4", {"cqkd.group": "5"}),
        service("worker-6"),
        service("worker-x", {"cqkd.group": "x"}),
        service("bob"),
    ]
    assert sorted(live_groups(services, STACK, "worker")) == [1, 2, 3]
    assert live_groups(services, STACK, "alice") == {}
    assert list(live_groups(services, "other", "worker")) == []


def test_a_new_group_is_the_first_with_its_own_name_label_host_name_and_alias() -> None:
    first = service("worker", {"cqkd.role": "worker"})
    made = new_group(first, STACK, "worker", 3, 4)["Spec"]
    assert made["Name"] == f"{STACK}_worker-3"
    assert made["Labels"]["cqkd.group"] == "3" and made["Labels"]["cqkd.role"] == "worker"
    assert made["Mode"] == {"Replicated": {"Replicas": 4}}
    assert made["TaskTemplate"]["ContainerSpec"]["Hostname"] == "worker-3-{{.Task.Slot}}"
    assert made["TaskTemplate"]["Networks"] == [{"Target": "net-id", "Aliases": ["worker-3"]}]
    # The first group's spec is left as it was.
    assert (
        first["Spec"]["Name"] == f"{STACK}_worker" and "cqkd.group" not in first["Spec"]["Labels"]
    )


def test_a_scale_across_groups_plans_each_group() -> None:
    state = deployed(rendered(1500))  # worker (1000) and worker-2 (500)
    groups = {s["Spec"]["Name"]: s for s in state.services}
    third = new_group(groups[f"{STACK}_worker"], STACK, "worker", 3, 200)
    up = GroupResize(
        STACK,
        "worker",
        1000,
        {"worker": 1000, "worker-2": 1000, "worker-3": 200},
        {"worker": 1000, "worker-2": 500, "worker-3": 0},
        {"worker-3": third},
        ("worker-3",),
    )
    plan = scale_plan(STACK, "worker", 2200, state, [], up)
    rows = {s.service: (s.action, s.current, s.replicas, s.starting) for s in plan.services}
    assert rows == {
        f"{STACK}_worker": ("unchanged", 1000, 1000, 0),
        f"{STACK}_worker-2": ("scale", 500, 1000, 500),
        f"{STACK}_worker-3": ("create", None, 200, 200),
    }
    assert plan.services[2].ports == ["7000-7199/udp"] and plan.ok
    down = GroupResize(
        STACK, "worker", 1000, {"worker": 600, "worker-2": 0}, {"worker": 1000, "worker-2": 500}
    )
    assert down.remove == ("worker-2",) and down.kept == {"worker": 600}
    plan = scale_plan(STACK, "worker", 600, state, [], down)
    assert [(s.action, s.stopping) for s in plan.services] == [("scale", 400), ("remove", 500)]


def test_the_groups_a_host_stack_holds_to_nodes_are_read_from_its_constraints() -> None:
    doc = rendered(2500, network="host", join_stack="mine")
    assert pinned_groups(doc, "mine") == ["1", "2", "3"]
    # Another stack's label, or an overlay stack, pins nothing of this one.
    assert pinned_groups(doc, "other") == []
    assert pinned_groups(rendered(2500), STACK) == []
    many = {
        "services": {
            f"w{g}": {
                "deploy": {"placement": {"constraints": [f"node.labels.org.cqkd.group.s == {g}"]}}
            }
            for g in (10, 2, 1)
        }
    }
    assert pinned_groups(many, "s") == ["1", "2", "10"]


def test_a_hostile_group_label_is_no_group_and_no_crash() -> None:
    # "²" passes str.isdigit and int() refuses it; int() of 5000 digits raises too.
    services = [
        service("worker"),
        *(service("worker-2", {"cqkd.group": v}) for v in ("²", "9" * 5000)),
    ]
    assert sorted(live_groups(services, STACK, "worker")) == [1]
    assert [plain_number(v) for v in ("7000", "²", "٣", "9" * 7, "", None)] == [
        True, False, False, False, False, False,
    ]  # fmt: skip
