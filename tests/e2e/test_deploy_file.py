"""deploy --file deploys what the linter judged: env files where Docker reads them, no template.

Docker resolves a stack's env files from the folder of the file it is
given. deploy hands Docker a temporary copy, so it must run Docker from the
original file's folder, or Docker reads (or misses) other env files than
the linter did. A template (or any run that checked nothing) deploys nothing.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import docker
import yaml

REPO = Path(__file__).resolve().parents[2]
STACK_LABEL = "com.docker.stack.namespace"
# The worker's port rule, moved from the stack into its env file.
MOVED = ("BASE_PORT", "PORT_RANGE_END", "PORT_OFFSET", "PORT_PROTOCOL")


def cqkd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cqkd_stack", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def services_of(client: docker.DockerClient, stack: str) -> list[dict]:
    return client.api.services(filters={"label": f"{STACK_LABEL}={stack}"})


def test_a_worker_s_env_file_beside_the_stack_reaches_its_tasks(
    docker_client: docker.DockerClient, node_image: str, tmp_path: Path, free_subnet: str
) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    stack_file = folder / "cqkd.yml"
    assert cqkd(
        "render", "--replicas", "3", "--subnet", free_subnet, "--output", str(stack_file)
    ).returncode == 0
    doc = yaml.safe_load(stack_file.read_text())
    worker = doc["services"]["worker"]
    lines = [f"{name}={worker['environment'].pop(name)}" for name in MOVED]
    (folder / "worker.env").write_text("\n".join(lines) + "\n")
    worker["env_file"] = "worker.env"
    stack_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    try:
        done = cqkd(
            "deploy", "--file", str(stack_file), "--stack", name, "--timeout", "300", cwd=elsewhere
        )
        assert done.returncode == 0, done.stdout + done.stderr
        (spec,) = [
            s["Spec"]
            for s in services_of(docker_client, name)
            if s["Spec"]["Name"].endswith("_worker")
        ]
        env = spec["TaskTemplate"]["ContainerSpec"]["Env"]
        assert set(lines) <= set(env), env
    finally:
        cqkd("teardown", "--stack", name, "--timeout", "300")
        subprocess.run(["docker", "stack", "rm", name], capture_output=True)


def test_a_template_is_refused_and_nothing_is_deployed(
    docker_client: docker.DockerClient, node_image: str
) -> None:
    name = f"cqkdtest_{uuid.uuid4().hex[:8]}"
    template = REPO / "stacks" / "cqkd.stack.tmpl.yml"
    try:
        done = cqkd("deploy", "--file", str(template), "--stack", name, "--no-wait")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "no stack, port policy or manifest was checked" in done.stdout + done.stderr
        assert services_of(docker_client, name) == []
    finally:
        subprocess.run(["docker", "stack", "rm", name], capture_output=True)
