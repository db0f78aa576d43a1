"""Which stacks are deployed bootstrap first, and what the first step holds (no engine)."""

from __future__ import annotations

from typing import Any

import yaml

from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.deploy import bootstrap_only
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render


def rendered(**options: Any) -> dict[str, Any]:
    return yaml.safe_load(render(load_policy(), RenderOptions(**options)))


def replicas(doc: dict[str, Any]) -> dict[str, int]:
    return {name: s["deploy"]["replicas"] for name, s in doc["services"].items()}


def test_the_first_step_runs_only_the_bootstrap_and_the_full_stack_is_untouched() -> None:
    doc = rendered(replicas=1000)
    first = bootstrap_only(doc)
    assert first is not None
    assert replicas(first) == {"bootstrap": 1, "alice": 0, "bob": 0, "worker": 0}
    assert replicas(doc) == {"bootstrap": 1, "alice": 1, "bob": 1, "worker": 1000}
    # Only the replica counts differ: the second deploy restarts nothing.
    for name, service in first["services"].items():
        full = dict(doc["services"][name], deploy=dict(doc["services"][name]["deploy"]))
        full["deploy"].pop("replicas")
        mine = dict(service, deploy=dict(service["deploy"]))
        mine["deploy"].pop("replicas")
        assert mine == full


def test_a_batch_without_a_bootstrap_is_deployed_as_it_is() -> None:
    doc = {"services": {"worker": {"environment": {"CQKD_ROLE": "worker"}}}}
    assert bootstrap_only(doc) is None


def test_a_stack_of_bootstrap_nodes_only_needs_no_first_step() -> None:
    doc = {"services": {"b": {"deploy": {"labels": {"cqkd.role": "bootstrap"}}}}}
    assert bootstrap_only(doc) is None


def test_not_a_stack_is_left_to_validation() -> None:
    assert bootstrap_only({"services": ["not", "a", "mapping"]}) is None
