"""Docker's own stack loader accepts every positive case of the corpus and rendered stacks.

``docker stack config`` needs the docker CLI but no daemon. It lives here,
not with the unit tests, because it runs Docker: on CI a missing CLI fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cqkd_stack.policy import load_policy
from cqkd_stack.render import RenderOptions, render

CASES = Path(__file__).resolve().parent.parent / "cases"
# compose-* cases are docker-compose files: docker-compose reads them in test_compose_up.py.
POSITIVE = sorted(
    p for p in (CASES / "positive").iterdir() if p.is_dir() and not p.name.startswith("compose-")
)


@pytest.mark.parametrize("case", POSITIVE, ids=lambda p: p.name)
def test_positive_case_loads_with_dockers_own_loader(case: Path, docker_cli: str) -> None:
    stacks = sorted(
        p.name for p in case.glob("*.yml") if p.name not in ("policy.yml", "expected.yml")
    )
    assert stacks, f"{case} has no stack file"
    for name in stacks:
        done = subprocess.run(
            [docker_cli, "stack", "config", "-c", name], cwd=case, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"


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
