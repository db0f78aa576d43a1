"""The registry: every target the command line offers, each reading back what it renders."""

from __future__ import annotations

import pytest

from cqkd_stack.core.errors import UsageError
from cqkd_stack.core.policy import load_policy
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.registry import NAMES, TARGETS, declared_by, target_named

POLICY = load_policy()


def test_the_registry_holds_the_three_targets_swarm_first() -> None:
    assert NAMES == ("swarm", "compose", "kubernetes")
    assert all(TARGETS[name].name == name for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_rendered_file_declares_its_own_target_and_passes_its_own_rules(name: str) -> None:
    chosen = TARGETS[name]
    text = chosen.render(POLICY, RenderOptions(replicas=3))
    assert declared_by(text) is chosen
    if chosen.load is not None:
        loaded = chosen.load(text, "f.yml")
        assert loaded.problems == [] and loaded.doc is not None
        assert chosen.problems(loaded.doc, "f.yml", POLICY, ()) == []


def test_an_unknown_target_is_a_usage_error_naming_the_choices() -> None:
    with pytest.raises(UsageError, match="must be one of swarm, compose, kubernetes, got 'k8s'"):
        target_named("k8s")
    with pytest.raises(UsageError, match="must be one of swarm, compose, got 'kubernetes'"):
        target_named("kubernetes", ("swarm", "compose"))
