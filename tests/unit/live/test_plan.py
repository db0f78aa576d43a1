"""The dry run's plan is a pure function of what was read from the swarm once.

Live services here are made from the same rendered document, shaped as the
Engine API returns them, so a plan over "the stack as deployed" must be
empty; tests/e2e/test_dry_run.py checks the same against a real swarm.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from cqkd_stack.cli.console import plan_text
from cqkd_stack.core.contract import key_values
from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.stackfile import load_stack
from cqkd_stack.live.distribution import NodeImageId
from cqkd_stack.live.inspection import StackState
from cqkd_stack.live.plan import deploy_plan, image_plans, scale_plan, teardown_plan
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render

POLICY = load_policy()
STACK = "cqkd"
IMAGE = "cqkd-dht-node:0.1.0"


def rendered(replicas: int, **options: Any) -> dict[str, Any]:
    text = render(POLICY, RenderOptions(replicas=replicas, subnet="10.213.0.0/24", **options))
    doc = load_stack(text, "<rendered>", os.environ).doc
    assert doc is not None
    return doc


def live_services(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The doc's services as ``GET /services`` lists them after ``docker stack deploy``."""
    services = []
    for name, service in doc["services"].items():
        deploy = service.get("deploy") or {}
        env = key_values(service.get("environment"))
        services.append(
            {
                "ID": f"id-{name}",
                "Spec": {
                    "Name": f"{STACK}_{name}",
                    "Labels": {
                        "com.docker.stack.namespace": STACK,
                        **key_values(deploy.get("labels")),
                    },
                    "Mode": {"Replicated": {"Replicas": deploy.get("replicas", 1)}},
                    "TaskTemplate": {
                        "ContainerSpec": {
                            "Image": f"{service['image']}@sha256:{'0' * 64}",
                            "Env": [f"{k}={v}" for k, v in env.items()],
                        }
                    },
                },
            }
        )
    return services


def running_tasks(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tasks = []
    for service in services:
        for slot in range(1, service["Spec"]["Mode"]["Replicated"]["Replicas"] + 1):
            tasks.append(
                {
                    "ID": f"{service['ID']}.{slot}",
                    "ServiceID": service["ID"],
                    "Slot": slot,
                    "DesiredState": "running",
                    "Status": {"State": "running"},
                }
            )
    return tasks


def deployed(doc: dict[str, Any]) -> StackState:
    services = live_services(doc)
    return StackState(
        STACK,
        services,
        running_tasks(services),
        networks=[{"Name": f"{STACK}_{n}"} for n in ("dht", "control", "default")],
        volumes=[f"{STACK}_control"],
        containers=[f"c{i}" for i in range(len(running_tasks(services)))],
    )


EMPTY = StackState(STACK, [], [], [], [], [])


def images(*states: tuple[str, str | None], source: str | None = "sha256:a") -> list[NodeImageId]:
    """(node, id on it) pairs; ``"-"`` as the id: a node without the engine label."""
    out = []
    for index, (node, found) in enumerate(states):
        if found == "-":
            out.append(NodeImageId(IMAGE, node, node, False, source, None, False, "no label"))
        else:
            out.append(NodeImageId(IMAGE, node, node, index == 0, source, found, True))
    return out


def test_a_new_stack_creates_every_service_network_and_task() -> None:
    plan = deploy_plan(STACK, rendered(5), EMPTY, POLICY, images(("n1", "sha256:a")))
    actions = {s.service: (s.action, s.replicas, s.ports) for s in plan.services}
    assert actions[f"{STACK}_worker"] == ("create", 5, ["7000-7004/udp"])
    assert actions[f"{STACK}_bootstrap"] == ("create", 1, ["5678/udp"])
    assert actions[f"{STACK}_alice"] == ("create", 1, ["6000/udp"])
    assert plan.totals() == {"starting": 8, "stopping": 0, "replaced": 0}
    assert f"{STACK}_dht 10.213.0.0/24" in plan.networks_created
    assert plan.bootstrap_first and plan.ok


def test_the_stack_as_it_runs_changes_nothing() -> None:
    doc = rendered(5)
    plan = deploy_plan(STACK, doc, deployed(doc), POLICY, images(("n1", "sha256:a")))
    assert {s.action for s in plan.services} == {"unchanged"}
    assert plan.totals() == {"starting": 0, "stopping": 0, "replaced": 0}
    assert plan.networks_created == [] and not plan.bootstrap_first


def test_more_or_fewer_replicas_start_or_stop_only_those_tasks() -> None:
    state = deployed(rendered(5))
    up = deploy_plan(STACK, rendered(8), state, POLICY, [])
    worker = next(s for s in up.services if s.service == f"{STACK}_worker")
    assert (worker.action, worker.current, worker.replicas) == ("scale", 5, 8)
    assert (worker.starting, worker.stopping, worker.replaced) == (3, 0, 0)
    assert worker.ports == ["7000-7007/udp"]
    down = deploy_plan(STACK, rendered(3), state, POLICY, [])
    assert down.totals() == {"starting": 0, "stopping": 2, "replaced": 0}


def test_a_new_image_or_environment_replaces_the_running_tasks() -> None:
    doc = rendered(5)
    state = deployed(doc)
    plan = deploy_plan(STACK, rendered(5, image="cqkd-dht-node:0.2.0"), state, POLICY, [])
    assert {s.action for s in plan.services} == {"update"}
    assert all(s.changed == ["image"] for s in plan.services)
    assert plan.totals()["replaced"] == 8
    changed = copy.deepcopy(doc)
    changed["services"]["worker"]["environment"]["BOOTSTRAP_RETRY_SECONDS"] = "9"
    worker = next(
        s for s in deploy_plan(STACK, changed, state, POLICY, []).services if "worker" in s.service
    )
    assert (worker.action, worker.changed, worker.replaced) == ("update", ["environment"], 5)


def test_environment_values_are_compared_as_docker_stores_them() -> None:
    doc = rendered(2)
    state = deployed(doc)
    typed = copy.deepcopy(doc)
    env = typed["services"]["worker"]["environment"]
    env["FLAG"] = True
    state.services[-1]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].append("FLAG=true")
    worker = next(s for s in state.services if s["Spec"]["Name"] == f"{STACK}_worker")
    assert worker is state.services[-1]
    plan = deploy_plan(STACK, typed, state, POLICY, [])
    assert {s.action for s in plan.services} == {"unchanged"}


def test_a_live_service_the_file_no_longer_has_is_kept() -> None:
    doc = rendered(2)
    state = deployed(doc)
    smaller = copy.deepcopy(doc)
    del smaller["services"]["bob"]
    plan = deploy_plan(STACK, smaller, state, POLICY, [])
    bob = next(s for s in plan.services if s.service == f"{STACK}_bob")
    assert (bob.action, bob.stopping) == ("kept", 0)


def test_images_are_copied_where_they_differ_and_a_node_out_of_reach_refuses() -> None:
    found = images(("n1", "sha256:a"), ("n2", None), ("n3", "sha256:old"), ("n4", "-"))
    assert [(p.node, p.action) for p in image_plans(found)] == [
        ("n1", "present"),
        ("n2", "copy"),
        ("n3", "copy"),
        ("n4", "cannot"),
    ]
    plan = deploy_plan(STACK, rendered(2), EMPTY, POLICY, found)
    assert not plan.ok and plan.problems == [f"{IMAGE} on n4: no label"]
    assert "would refuse: cqkd-dht-node:0.1.0 on n4: no label" in plan_text(plan)


def test_an_image_nobody_here_has_is_pulled_if_it_names_a_registry() -> None:
    missing = images(("n1", None), source=None)
    assert [p.action for p in image_plans(missing)] == ["cannot"]
    pulled = [
        NodeImageId("registry.example:5000/x:1", "n1", "n1", True, None, None, True),
    ]
    assert [p.action for p in image_plans(pulled)] == ["pull"]
    pushed = images(("n1", "sha256:a"), ("n2", "-"))
    assert [p.action for p in image_plans(pushed, registry="r.example/cqkd")] == [
        "pull",
        "left to swarm",
    ]


def test_scaling_plans_the_new_ports_and_the_tasks_that_start_or_stop() -> None:
    state = deployed(rendered(5))
    up = scale_plan(STACK, "worker", 12, state, images(("n1", "sha256:a")))
    (worker,) = up.services
    assert (worker.action, worker.current, worker.replicas, worker.starting) == ("scale", 5, 12, 7)
    assert worker.ports == ["7000-7011/udp"] and up.ok
    down = scale_plan(STACK, "worker", 2, state, [])
    assert down.totals() == {"starting": 0, "stopping": 3, "replaced": 0}
    assert not scale_plan(STACK, "nothere", 2, state, []).ok


def test_teardown_removes_every_service_task_network_and_volume() -> None:
    doc = rendered(150)
    plan = teardown_plan(STACK, deployed(doc))
    assert {s.action for s in plan.services} == {"remove"}
    assert plan.totals()["stopping"] == 153
    worker = next(s for s in plan.services if s.service == f"{STACK}_worker")
    assert worker.stepped and worker.current == 150
    assert plan.networks_removed == [f"{STACK}_control", f"{STACK}_default", f"{STACK}_dht"]
    assert plan.volumes_removed == [f"{STACK}_control"] and plan.containers_removed == 153
    nothing = teardown_plan(STACK, EMPTY)
    assert nothing.problems == [f"no stack named '{STACK}' is deployed; nothing to remove"]


def test_the_text_and_the_json_say_the_same_plan() -> None:
    state = deployed(rendered(5))
    plan = deploy_plan(STACK, rendered(7), state, POLICY, images(("n1", "sha256:a")))
    data = json.loads(json.dumps(plan.as_dict()))
    assert data["dry_run"] is True and data["ok"] is True
    assert data["tasks"] == {"starting": 2, "stopping": 0, "replaced": 0}
    worker = next(s for s in data["services"] if s["service"] == f"{STACK}_worker")
    assert (worker["action"], worker["current"], worker["replicas"]) == ("scale", 5, 7)
    text = plan_text(plan)
    assert text.startswith(f"dry run: deploy of stack '{STACK}' (nothing was deployed)")
    assert f"scale      {STACK}_worker     5 -> 7 replicas  ports 7000-7006/udp  2 tasks start" in (
        text
    )
    assert "image cqkd-dht-node:0.1.0: present on n1" in text
    assert text.endswith("tasks: 2 start, 0 stop, 0 replaced")


def test_the_compose_target_refuses_a_dry_run_before_anything_is_asked(cli) -> None:
    for args in (("deploy", "--target", "compose"), ("teardown", "--target", "compose")):
        done = cli(*args, "-s", "cqkdtestdry", "--dry-run")
        assert done.code == 2, (args, done.err)
        assert "--dry-run plans a Swarm stack" in done.err
