"""Which workers a new stack's deploy paces, and how the counts are raised (live/pacing.py)."""

from __future__ import annotations

import yaml

from cqkd_stack.core.policy import load_policy
from cqkd_stack.live.pacing import next_step, worker_counts
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render


def test_only_workers_with_a_plain_count_are_paced() -> None:
    doc = yaml.safe_load(render(load_policy(), RenderOptions(replicas=1500)))
    assert worker_counts(doc) == {"worker": 1000, "worker-2": 500}
    doc["services"]["worker-2"]["deploy"]["replicas"] = "${N}"  # left to interpolation
    assert worker_counts(doc) == {"worker": 1000}


def test_each_step_fills_the_groups_in_order_within_the_room() -> None:
    wanted = {"worker": 1000, "worker-2": 500}
    first = next_step({}, wanted, 144)
    assert first == {"worker": 144, "worker-2": 0}
    assert next_step({"worker": 990, "worker-2": 0}, wanted, 30) == {"worker": 1000, "worker-2": 20}
    # No room, or nothing left to ask: the counts stay; never past what is wanted.
    assert next_step(first, wanted, 0) == first
    assert next_step(wanted, wanted, 100) == wanted
    assert next_step({}, {"worker": 5}, 48) == {"worker": 5}
