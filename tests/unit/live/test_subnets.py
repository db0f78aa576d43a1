"""Subnet choice and overlap checks: pure functions over a list of taken subnets."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.validate import validate_texts
from cqkd_stack.live.inspection import free_subnet
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import dht_tasks, render

POLICY = load_policy()
net = ipaddress.IPv4Network


def test_free_subnet_skips_every_taken_range() -> None:
    taken = [("ingress", net("10.0.0.0/24")), ("cqkd_dht", net("10.213.0.0/24"))]
    assert free_subnet(taken, 53) == net("10.213.1.0/24")
    # A /21 may not straddle the taken /24 either.
    assert free_subnet(taken, 1003) == net("10.213.8.0/21")
    assert free_subnet([], 1003) == net("10.213.0.0/21")


def test_free_subnet_says_so_when_the_pool_is_full() -> None:
    with pytest.raises(CqkdError, match="pass --subnet"):
        free_subnet([("everything", net("10.213.0.0/16"))], 10)


def test_dht_tasks_counts_every_service_on_the_dht_network() -> None:
    assert dht_tasks(POLICY, RenderOptions(replicas=50)) == 53


def test_a_subnet_overlapping_a_live_network_is_refused() -> None:
    text = render(POLICY, RenderOptions(replicas=5, subnet="10.213.0.0/24"))
    taken = [("other_dht", net("10.213.0.0/22"))]
    results = validate_texts([("s.yml", text)], POLICY, taken=taken)
    assert [p.path for p in results.problems] == ["$.networks.dht.ipam.config[0].subnet"]
    assert "overlaps network 'other_dht' (10.213.0.0/22)" in results.problems[0].message
    assert validate_texts([("s.yml", text)], POLICY).ok


def test_stack_network_names_follow_docker_stack_naming() -> None:
    from cqkd_stack.live.inspection import stack_network_names

    overlay = yaml.safe_load(render(POLICY, RenderOptions(replicas=3)))
    assert stack_network_names(overlay, "prod") == {"prod_dht", "prod_control"}
    host = yaml.safe_load(render(POLICY, RenderOptions(replicas=3, network="host")))
    assert stack_network_names(host, "prod") == {"host"}
    batch = yaml.safe_load(render(POLICY, RenderOptions(replicas=3, port_offset=100)))
    assert stack_network_names(batch, "more") == {"cqkd_dht"}
    bare = {"services": {"web": {"image": "x"}}}
    assert stack_network_names(bare, "s") == {"s_default"}
