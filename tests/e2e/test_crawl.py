"""`crawl` on a real stack: one component, every task known, from this process and a container."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cqkd_stack.live.crawl import crawl_stack
from cqkd_stack.live.inspection import port_map

WORKERS = 10
TASKS = WORKERS + 3  # the bootstrap, Alice and Bob


def cqkd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def stack(docker_client: docker.DockerClient, node_image: str) -> Iterator[str]:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd("deploy", "--replicas", str(WORKERS), "--stack", name, "--timeout", "300")
        assert done.returncode == 0, done.stdout + done.stderr
        yield name
    finally:
        cqkd("teardown", "--stack", name, "--timeout", "300")
        subprocess.run(["docker", "stack", "rm", name], capture_output=True)


def test_crawl_finds_one_network_and_every_task(stack: str) -> None:
    done = cqkd("crawl", "--stack", stack, "--format", "json", "--lookups", "5", "--keys", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert (result["running"], result["answered"]) == (TASKS, TASKS)
    assert result["components"] == [TASKS] and result["split"] is False
    assert result["unknown"] == [] and result["silent"] == [] and result["ok"] is True
    assert result["reachable_from_bootstrap"] is True
    # 12 others, all within one bucket's reach: every table is whole.
    assert result["incomplete_tables"] == 0 and result["table_max"] <= TASKS - 1
    assert result["table_min"] >= 1
    look = result["lookups"]
    assert look["lookups"] == 25 and look["succeeded"] == 25 and look["keys_agreeing"] == 5
    print(f"crawl of {TASKS} tasks: {result['seconds']:.3f} s ({result['method']})")


def test_crawl_text_and_prometheus(stack: str) -> None:
    text = cqkd("crawl", "--stack", stack)
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"{TASKS}/{TASKS}" in text.stdout and "FAIL" not in text.stdout
    metrics = cqkd("crawl", "--stack", stack, "--format", "prometheus")
    assert metrics.returncode == 0, metrics.stderr
    values = {
        (s.name, s.labels.get("stat")): s.value
        for family in text_string_to_metric_families(metrics.stdout)
        for s in family.samples
    }
    assert values[("cqkd_crawl_components", None)] == 1
    assert values[("cqkd_crawl_tasks_unknown", None)] == 0
    assert values[("cqkd_crawl_healthy", None)] == 1


def test_crawl_from_a_probe_container_says_the_same(
    stack: str, docker_client: docker.DockerClient, node_image: str
) -> None:
    rows = port_map(docker_client, stack).tasks
    result = crawl_stack(docker_client, stack, rows, node_image, 3, 3, allow_in_process=False)
    assert result.method == "container"
    assert (result.answered, result.components, result.unknown) == (TASKS, [TASKS], [])
    assert result.ok


def test_crawl_of_no_stack_is_an_error() -> None:
    done = cqkd("crawl", "--stack", f"cqkdtest_{uuid.uuid4().hex[:8]}")
    assert done.returncode == 1 and "no stack named" in done.stderr
