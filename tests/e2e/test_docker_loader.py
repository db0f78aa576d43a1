"""Docker's own stack loader accepts every positive case of the corpus and rendered stacks.

``docker stack config`` needs the docker CLI but no daemon. It lives here,
not with the unit tests, because it runs Docker: on CI a missing CLI fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from cqkd_stack.core.policy import load_policy
from cqkd_stack.lint.stackfile import load_stack
from cqkd_stack.targets.base import RenderOptions
from cqkd_stack.targets.swarm import render

CASES = Path(__file__).resolve().parent.parent / "cases"
# compose-* cases are docker-compose files: docker-compose reads them in test_compose_up.py.
POSITIVE = sorted(
    p for p in (CASES / "positive").iterdir() if p.is_dir() and not p.name.startswith("compose-")
)
NEGATIVE = sorted(p for p in (CASES / "negative").iterdir() if p.is_dir())
# What following a negative case's advice gives (tests/unit/lint/test_cases.py):
# Docker loads it too.
FIXED = sorted(
    p for case in NEGATIVE if not case.name.startswith("compose-") for p in case.glob("fixed*")
)
# Negative cases whose expected.yml says Docker's loader refuses them as well.
DOCKER_REFUSES = [
    case
    for case in NEGATIVE
    if yaml.safe_load((case / "expected.yml").read_text()).get("docker") == "refuses"
]


def stacks_of(case: Path) -> list[str]:
    names = sorted(
        p.name for p in case.glob("*.yml") if p.name not in ("policy.yml", "expected.yml")
    )
    assert names, f"{case} has no stack file"
    return names


def stack_config(docker_cli: str, case: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``docker stack config`` run as a user runs it: in the file's folder, this environment."""
    return subprocess.run(
        [docker_cli, "stack", "config", "-c", name], cwd=case, capture_output=True, text=True
    )


@pytest.mark.parametrize("case", POSITIVE + FIXED, ids=lambda p: str(p.relative_to(CASES)))
def test_positive_case_loads_with_dockers_own_loader(case: Path, docker_cli: str) -> None:
    for name in stacks_of(case):
        done = stack_config(docker_cli, case, name)
        assert done.returncode == 0, f"{name}: {done.stderr}"


@pytest.mark.parametrize("case", POSITIVE + FIXED, ids=lambda p: str(p.relative_to(CASES)))
def test_every_task_s_environment_is_the_one_docker_builds(
    case: Path, docker_cli: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """env_file read and merged under environment (which wins) exactly as docker/cli does it.

    The linter judges these variables; if they were not Docker's, it would
    judge another stack than the one deployed.
    """
    monkeypatch.setenv("CQKD_TEST_FROM_SHELL", "from the shell")
    for name in stacks_of(case):
        done = stack_config(docker_cli, case, name)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        docker = yaml.safe_load(done.stdout)["services"]
        ours = load_stack((case / name).read_text(), str(case / name), os.environ)
        assert ours.doc is not None, ours.problems
        for service, config in ours.doc["services"].items():
            assert config.get("environment", {}) == docker[service].get("environment", {}), service


@pytest.mark.parametrize("case", DOCKER_REFUSES, ids=lambda p: p.name)
def test_what_docker_refuses_is_refused_by_docker_too(case: Path, docker_cli: str) -> None:
    for name in stacks_of(case):
        done = stack_config(docker_cli, case, name)
        assert done.returncode != 0, f"{name}: docker stack config accepted it"


@pytest.mark.parametrize(
    "options",
    [{"replicas": 1000}, {"replicas": 5, "network": "host"}, {"replicas": 10, "port_offset": 100}],
    ids=["thousand", "host", "batch"],
)
def test_rendered_stacks_load_with_dockers_own_loader(
    options: dict, tmp_path: Path, docker_cli: str
) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(render(load_policy(), RenderOptions(**options)))
    done = subprocess.run(
        [docker_cli, "stack", "config", "-c", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "{{.Task.Slot}}" in done.stdout
