from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from cqkd_stack.core.contract import subnet_capacity, subnet_for
from cqkd_stack.core.errors import UsageError
from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.validate import validate_texts
from cqkd_stack.node.config import DEFAULT_STORE_BYTES
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render, swarm_placeholders

POLICY = load_policy()


def rendered(**options: object) -> dict:
    return yaml.safe_load(render(POLICY, RenderOptions(**options)))


def test_placeholders_become_swarm_templates() -> None:
    assert swarm_placeholders("worker-<<.Task.Slot>>") == "worker-{{.Task.Slot}}"
    assert (
        swarm_placeholders("<<.Node.Hostname>>/<<.Task.Slot>>")
        == "{{.Node.Hostname}}/{{.Task.Slot}}"
    )


def test_stack_has_the_cqkd_roles_and_worker_replicas() -> None:
    doc = rendered(replicas=1000)
    assert set(doc["services"]) == {"bootstrap", "alice", "bob", "worker"}
    worker = doc["services"]["worker"]
    assert worker["deploy"]["replicas"] == 1000
    assert worker["environment"]["TASK_SLOT"] == "{{.Task.Slot}}"
    assert worker["hostname"] == "worker-{{.Task.Slot}}"
    assert "<<" not in render(POLICY, RenderOptions(replicas=3))


def test_every_dht_service_gets_its_role_range_and_swarm_safety_settings() -> None:
    doc = rendered(replicas=5)
    expected = {
        "bootstrap": ("5678", "0"),
        "alice": ("6000", "0"),
        "bob": ("6000", "1"),
        "worker": ("7000", "0"),
    }
    for name, (base, offset) in expected.items():
        service = doc["services"][name]
        env = service["environment"]
        assert (env["BASE_PORT"], env["PORT_OFFSET"]) == (base, offset), name
        assert service["deploy"]["endpoint_mode"] == "dnsrr"
        assert service["deploy"]["update_config"]["order"] == "stop-first"
        assert service["init"] is True
        if name in ("alice", "bob"):
            # The sealed control port, on a host port Docker picks (see _add_control_port).
            port = 6100 + int(offset)
            assert service["ports"] == [{"target": port, "protocol": "tcp", "mode": "host"}]
            assert env["CQKD_CONTROL_PORT"] == str(port)
            assert service["networks"] == ["dht", "control"]
            assert service["configs"][0]["mode"] == 0o400
        else:
            assert "ports" not in service and "configs" not in service
            assert service["networks"] == ["dht"]
            assert "CQKD_CONTROL_PORT" not in env
    assert doc["services"]["alice"]["environment"]["BOOTSTRAP_NODES"] == "bootstrap:5678"
    assert "BOOTSTRAP_NODES" not in doc["services"]["bootstrap"]["environment"]


@pytest.mark.parametrize(
    ("replicas", "prefix"), [(1, 24), (100, 24), (200, 23), (250, 23), (1000, 21), (4000, 19)]
)
def test_overlay_subnet_is_sized_for_the_tasks(replicas: int, prefix: int) -> None:
    """Twice the tasks: a lost node's tasks hold their addresses while replaced."""
    doc = rendered(replicas=replicas) if replicas <= 1000 else None
    network = subnet_for(replicas + 3)
    assert network.prefixlen == prefix
    if doc is not None:
        subnet = doc["networks"]["dht"]["ipam"]["config"][0]["subnet"]
        assert ipaddress.IPv4Network(subnet).prefixlen == prefix
        assert subnet_capacity(ipaddress.IPv4Network(subnet)) >= 2 * (replicas + 3)


def test_explicit_subnet_is_kept_and_bad_subnet_refused() -> None:
    doc = rendered(replicas=10, subnet="10.50.0.0/20")
    assert doc["networks"]["dht"]["ipam"]["config"][0]["subnet"] == "10.50.0.0/20"
    with pytest.raises(UsageError, match="--subnet"):
        rendered(subnet="10.50.0.1/33")


def test_host_network_puts_every_service_on_the_host() -> None:
    doc = rendered(replicas=5, network="host", bootstrap_host="192.0.2.10")
    assert doc["networks"] == {"hostnet": {"external": True, "name": "host"}}
    assert all(s["networks"] == ["hostnet"] for s in doc["services"].values())
    assert doc["services"]["worker"]["environment"]["BOOTSTRAP_NODES"] == "192.0.2.10:5678"


@pytest.mark.parametrize("batch", [False, True], ids=["stack", "batch"])
def test_host_network_raises_the_contacts_per_ip_caps_of_every_dht_service(batch: bool) -> None:
    """All tasks of a machine share its address there: 10 per IP would starve each table."""
    extra = {"port_offset": 100} if batch else {}
    doc = rendered(replicas=5, network="host", bootstrap_host="192.0.2.10", **extra)
    envs = [s["environment"] for s in doc["services"].values()]
    assert envs and all(env["CQKD_MAX_PER_IP"] == "160" for env in envs)
    assert all(env["CQKD_MAX_PER_NET24"] == "160" for env in envs)
    overlay = rendered(replicas=5)
    assert all("CQKD_MAX_PER_IP" not in s["environment"] for s in overlay["services"].values())


def test_host_network_places_the_bootstrap_on_the_node_its_address_names() -> None:
    doc = rendered(replicas=5, network="host", bootstrap_host="192.0.2.10", bootstrap_node="n0de1d")
    services = doc["services"]
    placement = services["bootstrap"]["deploy"]["placement"]
    assert placement == {"constraints": ["node.id == n0de1d"]}
    assert all("placement" not in services[n]["deploy"] for n in ("alice", "bob", "worker"))
    results = validate_texts(
        [
            (
                "host.yml",
                render(
                    POLICY,
                    RenderOptions(
                        replicas=5,
                        network="host",
                        bootstrap_host="192.0.2.10",
                        bootstrap_node="n0de1d",
                    ),
                ),
            )
        ],
        POLICY,
    )
    assert results.ok, results
    # On an overlay the bootstrap is found by name wherever it runs.
    overlay = rendered(replicas=5, bootstrap_node="n0de1d")["services"]["bootstrap"]["deploy"]
    assert "placement" not in overlay


def test_a_port_offset_renders_a_worker_batch_joining_the_first_stack() -> None:
    doc = rendered(replicas=200, port_offset=500, join_stack="prod")
    assert set(doc["services"]) == {"worker"}
    env = doc["services"]["worker"]["environment"]
    assert env["PORT_OFFSET"] == "500"
    assert env["BOOTSTRAP_NODES"] == "prod_bootstrap:5678"
    assert doc["networks"]["dht"] == {"external": True, "name": "prod_dht"}


@pytest.mark.parametrize(
    "options",
    [
        {"replicas": 1},
        {"replicas": 1000},
        {"replicas": 5, "network": "host"},
        {"replicas": 500, "port_offset": 500},
    ],
    ids=["one", "thousand", "host", "batch"],
)
def test_rendered_stacks_pass_our_validation(options: dict) -> None:
    results = validate_texts([("r.yml", render(POLICY, RenderOptions(**options)))], POLICY)
    assert results.ok, results.problems


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"replicas": 0}, "--replicas must be at least 1"),
        ({"port_offset": -1}, "--port-offset must be 0 or more"),
        ({"network": "bridge"}, "--network must be overlay or host"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        render(POLICY, RenderOptions(**options))


def test_render_task_refuses_a_stack_that_would_not_validate(cli, tmp_path: Path) -> None:
    out = tmp_path / "cqkd.stack.yml"
    # A batch beside a running stack stays in the range's ports after its offset.
    result = cli("render", "--replicas", "2", "--port-offset", "999", "--output", str(out))
    assert result.code == 1
    assert "2 workers: slot 2 (TASK_SLOT) with PORT_OFFSET=999 gives port 8000" in result.err
    assert not out.exists()


def test_render_task_writes_a_valid_file(cli, tmp_path: Path) -> None:
    out = tmp_path / "cqkd.stack.yml"
    assert cli("render", "--replicas", "7", "--output", str(out)).code == 0
    result = cli("validate", str(out), "--format", "json")
    assert result.code == 0
    assert '"valid": true' in result.out


@pytest.mark.parametrize(
    ("replicas", "interval"), [(1, "5s"), (47, "5s"), (200, "21s"), (1000, "101s")]
)
def test_health_interval_keeps_the_stack_within_its_check_budget(
    replicas: int, interval: str
) -> None:
    doc = rendered(replicas=replicas, healthcheck=True)
    intervals = {s["healthcheck"]["interval"] for s in doc["services"].values()}
    assert intervals == {interval}
    # Only the interval: the test command stays the image's own.
    assert all(set(s["healthcheck"]) == {"interval"} for s in doc["services"].values())


def test_health_checks_are_off_by_default() -> None:
    """Readiness is the probe's job; a check per task costs an exec each interval."""
    doc = rendered(replicas=1000)
    assert all(s["healthcheck"] == {"disable": True} for s in doc["services"].values())


def test_every_dht_node_is_restarted_whatever_its_exit() -> None:
    """on-failure left a node that exited 0 'Complete' for good (Alice, at 1000 tasks)."""
    doc = rendered(replicas=3)
    policies = {s["deploy"]["restart_policy"]["condition"] for s in doc["services"].values()}
    assert policies == {"any"}


# The node's memory once joined, measured (docs/operations.md): 4.55 MiB of
# anonymous memory, 9.10 MiB of host memory per task with everything counted.
NODE_BASELINE_BYTES = int(9.1 * 1024 * 1024)
MEMORY_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(text: str) -> int:
    """Docker's memory notation (``64M``, ``128m``, ``1g``, bytes) as bytes."""
    text = str(text).strip().lower().removesuffix("b") or "0"
    if text[-1] in MEMORY_UNITS:
        return int(float(text[:-1]) * MEMORY_UNITS[text[-1]])
    return int(text)


@pytest.mark.parametrize("options", [{"replicas": 3}, {"replicas": 5, "network": "host"}])
def test_every_dht_service_has_a_memory_limit_holding_the_store_budget(options: dict) -> None:
    services = rendered(**options)["services"]
    assert set(services) == {"bootstrap", "alice", "bob", "worker"}
    for name, service in services.items():
        limit = service["deploy"]["resources"]["limits"]["memory"]
        assert memory_bytes(limit) >= NODE_BASELINE_BYTES + DEFAULT_STORE_BYTES, (name, limit)


def test_memory_notation_is_read_as_docker_reads_it() -> None:
    assert memory_bytes("64M") == 64 * 1024 * 1024
    assert memory_bytes("128mb") == 128 * 1024 * 1024
    assert memory_bytes("1g") == 1024**3
    assert memory_bytes("4096") == 4096
