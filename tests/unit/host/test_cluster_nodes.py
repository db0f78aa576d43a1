"""The cluster harness's pure decisions: subnet choice, node flags, command lines."""

from __future__ import annotations

import ipaddress

import pytest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.host import cluster
from cqkd_stack.host.images import BaseRelease

net = ipaddress.IPv4Network

# /proc/net/route of a host with Docker: default route, docker0, gwbridge, a /24.
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
docker_gwbridge\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
br-9d6fde5f5a1d\t00001DAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_routes_are_read_without_the_default_route() -> None:
    assert cluster.route_subnets(ROUTES) == [
        net("172.17.0.0/16"),
        net("172.18.0.0/16"),
        net("172.29.0.0/24"),
        net("192.0.2.0/24"),
    ]


def test_garbage_in_the_route_table_is_passed_over() -> None:
    assert cluster.route_subnets("header\nshort line\neth0 zz 0 0 0 0 0 zz\n") == []


def test_the_first_free_24_of_the_pool_is_chosen() -> None:
    assert cluster.choose_subnet([]) == net("172.29.0.0/24")
    taken = [*cluster.route_subnets(ROUTES), net("172.29.1.0/24")]
    assert cluster.choose_subnet(taken) == net("172.29.2.0/24")


def test_a_wide_network_over_the_pool_leaves_no_subnet() -> None:
    with pytest.raises(CqkdError, match=r"no free /24 left in 172\.29\.0\.0/16"):
        cluster.choose_subnet([net("172.16.0.0/12")])


def test_the_pool_stays_clear_of_what_inner_engines_take() -> None:
    # Inner swarms: overlays in 10.0.0.0/8 (stacks 10.213.0.0/16); inner
    # engines: docker0 and docker_gwbridge in 172.17/16 and 172.18/16.
    for inner in ("10.0.0.0/8", "172.17.0.0/16", "172.18.0.0/16"):
        assert not cluster.SUBNET_POOL.overlaps(net(inner))


def test_nodes_get_the_flags_that_work_here_and_never_privileged() -> None:
    config = cluster.node_host_config("c1")
    assert config == {
        "init": True,
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "device_cgroup_rules": ["a *:* rwm"],
        "binds": ["/sys/fs/cgroup:/sys/fs/cgroup:rw"],
        "tmpfs": {"/var/lib/docker": "exec"},
        "network_mode": "c1",
    }
    assert "privileged" not in config
    # systempaths=unconfined, as the docker CLI sends it.
    assert cluster.UNMASKED_PATHS == {"MaskedPaths": [], "ReadonlyPaths": []}


def test_the_inner_engine_listens_on_its_socket_and_tcp_and_trusts_the_bridge() -> None:
    subnet = net("172.29.3.0/24")
    assert cluster.dockerd_args(subnet) == [
        "--host=unix:///var/run/docker.sock",
        "--host=tcp://0.0.0.0:2375",
        "--tls=false",
        "--insecure-registry=172.29.3.0/24",
    ]
    env = cluster.node_environment(subnet)
    assert env["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] == "1"
    assert env["CQKD_DOCKERD_ARGS"].split() == cluster.dockerd_args(subnet)


def test_the_supervisor_starts_dockerd_again_whenever_it_exits() -> None:
    assert cluster.DIND_CMD[:2] == ("sh", "-c")
    assert cluster.SUPERVISOR.startswith("while :; do dockerd $CQKD_DOCKERD_ARGS;")


def test_node_names_and_engine_urls() -> None:
    assert cluster.node_names("c", 3) == ["c-1", "c-2", "c-3"]
    assert cluster.engine_url("172.29.0.2") == "tcp://172.29.0.2:2375"


def test_the_dind_image_hash_follows_its_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    bookworm = BaseRelease("debian", "bookworm")
    first = cluster.dind_inputs_hash(bookworm)
    assert first == cluster.dind_inputs_hash(bookworm)
    assert first != cluster.dind_inputs_hash(BaseRelease("debian", "trixie"))
    monkeypatch.setattr(cluster, "DIND_PACKAGES", (*cluster.DIND_PACKAGES, "strace"))
    assert first != cluster.dind_inputs_hash(bookworm)
