"""The compose target: one service per worker, its port published, checked by the policy."""

from __future__ import annotations

import pytest
import yaml

from cqkd_stack.core.errors import InvalidInput, UsageError
from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.validate import validate_texts
from cqkd_stack.node.resolver import resolve
from cqkd_stack.targets import compose as compose_target
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.compose import (
    BRIDGE_MAX_CONTAINERS,
    MAX_COMPOSE_NODES,
    compose_problems,
    load_compose,
    render_compose,
    render_compose_document,
)

POLICY = load_policy()


def _doc(replicas: int) -> dict:
    return render_compose_document(POLICY, RenderOptions(replicas=replicas))


def test_each_worker_is_a_service_with_its_id_and_its_port_published_as_udp() -> None:
    services = _doc(25)["services"]
    workers = [n for n in services if n.startswith("worker-")]
    assert workers == [f"worker-{n}" for n in range(1, 26)]
    for n in (1, 13, 25):
        service = services[f"worker-{n}"]
        port = 7000 + n - 1
        assert service["environment"]["WORKER_ID"] == str(n)
        assert "TASK_SLOT" not in service["environment"]
        assert service["ports"] == [f"{port}:{port}/udp"]
        assert service["hostname"] == f"worker-{n}"
        # The resolver in the container computes the port the file publishes.
        assert resolve(service["environment"]).port == port
        assert service["depends_on"] == {"bootstrap": {"condition": "service_healthy"}}
        assert service["mem_limit"] == compose_target.WORKER_MEMORY
        assert service["labels"] == {"cqkd.role": "worker"}
        assert service["healthcheck"] == {"disable": True}


def test_bootstrap_and_special_nodes_have_their_own_ports_and_the_same_hardening() -> None:
    services = _doc(3)["services"]
    expected = {"bootstrap": 5678, "alice": 6000, "bob": 6001}
    for name, port in expected.items():
        service = services[name]
        assert service["ports"] == [f"{port}:{port}/udp"]
        assert resolve(service["environment"]).port == port
        assert service["mem_limit"] == compose_target.NODE_MEMORY
    assert services["bootstrap"]["healthcheck"] == {"interval": "2s"}
    assert "depends_on" not in services["bootstrap"]
    assert services["alice"]["environment"]["CQKD_CONTROL_SOCKET"] == "/run/cqkd/alice-1.sock"
    for service in services.values():
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["init"] is True
        assert {"type": "tmpfs", "target": "/tmp"} in service["volumes"]
        assert "deploy" not in service
        assert not any("{{" in str(v) for v in service["environment"].values())


def test_the_network_is_a_bridge_that_can_publish_ports() -> None:
    doc = _doc(2)
    assert doc["networks"] == {"dht": {"driver": "bridge"}}
    assert doc[compose_target.TARGET_KEY] == "compose"


def test_the_written_file_reads_back_as_the_document_through_merge_keys() -> None:
    for replicas in (1, 2, 40):
        text = render_compose(POLICY, RenderOptions(replicas=replicas))
        read = yaml.safe_load(text)
        anchors = {k: read.pop(k) for k in list(read) if k.startswith("x-worker")}
        assert read == _doc(replicas), replicas
        assert bool(anchors) == (replicas > 1)
    assert text.count("<<: *worker\n") == 40


def test_a_rendered_file_passes_validation_as_a_compose_file() -> None:
    text = render_compose(POLICY, RenderOptions(replicas=1000))
    results = validate_texts([("c.yml", text)], POLICY)
    assert results.ok, results.files
    assert "compose" in results.notes["c.yml"]
    # Read as a Swarm stack it is not one: Docker's v3 schema has no mem_limit.
    as_stack = validate_texts([("c.yml", text)], POLICY, target="swarm")
    assert not as_stack.ok


def test_host_networking_and_batches_are_swarm_options() -> None:
    with pytest.raises(UsageError, match="--network host is a Swarm option"):
        _doc_with(network="host")
    with pytest.raises(UsageError, match="--port-offset makes a Swarm batch"):
        _doc_with(port_offset=100)
    with pytest.raises(UsageError, match="--subnet sizes a Swarm overlay"):
        _doc_with(subnet="10.9.0.0/16")
    with pytest.raises(UsageError, match="--healthcheck: the compose target always checks"):
        _doc_with(healthcheck=True)


def _doc_with(**options: object) -> dict:
    return render_compose_document(POLICY, RenderOptions(**options))  # type: ignore[arg-type]


def test_more_workers_than_the_range_holds_are_refused_before_anything_is_written() -> None:
    with pytest.raises(InvalidInput, match=r"--replicas 1001: service worker-1001: .*7000-7999"):
        render_compose(POLICY, RenderOptions(replicas=1001))


def test_a_bridge_holds_at_most_1023_containers() -> None:
    doc = {
        "services": {f"s{i}": {"image": "x", "networks": ["n"]} for i in range(1024)},
        "networks": {"n": {}},
    }
    problems = compose_problems(doc, "f.yml")
    assert [p.path for p in problems] == ["$.networks.n"]
    assert f"at most {BRIDGE_MAX_CONTAINERS} containers" in problems[0].message
    doc["services"].pop("s0")
    assert compose_problems(doc, "f.yml") == []


def test_schema_problems_name_the_path_and_line() -> None:
    text = render_compose(POLICY, RenderOptions(replicas=3)).replace(
        "    read_only: true\n", "    read_only: maybe\n", 1
    )
    loaded = load_compose(text, "c.yml")
    assert loaded.doc is None
    [problem] = loaded.problems
    assert problem.path == "$.services.bootstrap.read_only"
    assert "'maybe' is not of type 'boolean'" in problem.message
    assert text.splitlines()[problem.line - 1].strip() == "read_only: maybe"


def test_a_repeated_bad_value_is_reported_in_every_service() -> None:
    # Values are validated once per distinct value; each service still gets its problem.
    text = render_compose(POLICY, RenderOptions(replicas=3)).replace(
        "  init: true\n", "  init: sometimes\n"
    )
    loaded = load_compose(text, "c.yml")
    paths = [p.path for p in loaded.problems]
    assert "$.services.worker-1.init" in paths
    assert "$.services.worker-3.init" in paths


def test_a_compose_file_past_the_node_bound_is_refused_before_it_is_built() -> None:
    # Its cost is measured in benchmarks/hostile.py; here, that it is refused.
    service = "  s{}: {{image: x, environment: {{A: '1', B: '2'}}}}\n"
    text = "services:\n" + "".join(service.format(i) for i in range(20_000))
    loaded = load_compose(text, "big.yml")
    assert loaded.doc is None
    assert f"more than {MAX_COMPOSE_NODES:,} YAML nodes" in loaded.problems[0].message
