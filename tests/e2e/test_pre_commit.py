"""The docs' .pre-commit-config.yaml examples, run by pre-commit itself in a fresh git repository.

Not a mock of pre-commit's matching: the real tool (from PyPI, in a venv of
this test's own) clones the hook's repository, installs it as it would for
a user, and is handed the files of a repository like a user's (rendered
cqkd.yml, docker-compose.yml and cqkd.k8s.yaml, a template, a README). The
hook's repository is a copy of this source tree committed afresh, so the
test judges the files as they are, committed or not. Needs git and PyPI,
not the engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a source archive would not hold: environments, caches, build output.
NOT_SOURCE = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
DOCS_CHECKOUT = "/srv/cqkd-stack"


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def new_repository(path: Path) -> None:
    path.mkdir(exist_ok=True)
    git("init", "-q", cwd=path)
    git("config", "user.email", "test@cqkd.invalid", cwd=path)
    git("config", "user.name", "cqkd test", cwd=path)
    git("config", "commit.gpgsign", "false", cwd=path)


def config_examples() -> list[str]:
    text = (REPO / "docs" / "ports.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return [b for b in blocks if b.startswith("# .pre-commit-config.yaml")]


@pytest.fixture(scope="module")
def pre_commit(tmp_path_factory: pytest.TempPathFactory, git_cli: str) -> Iterator[list[str]]:
    """pre-commit from PyPI in a venv of its own (not one of the project's dependencies)."""
    home = tmp_path_factory.mktemp("pre-commit")
    venv.create(home / "venv", with_pip=True)
    installed = subprocess.run(
        [str(home / "venv" / "bin" / "pip"), "install", "--quiet", "pre-commit>=3,<5"],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    os.environ["PRE_COMMIT_HOME"] = str(home / "cache")
    try:
        yield [str(home / "venv" / "bin" / "pre-commit")]
    finally:
        os.environ.pop("PRE_COMMIT_HOME", None)


@pytest.fixture(scope="module")
def hook_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This source tree as a git repository of one commit: (path, commit)."""
    path = tmp_path_factory.mktemp("hook") / "cqkd-stack"
    shutil.copytree(REPO, path, ignore=lambda _d, names: [n for n in names if n in NOT_SOURCE])
    new_repository(path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "source", cwd=path)
    return path, git("rev-parse", "HEAD", cwd=path)


def user_repository(path: Path, config: str) -> None:
    """A repository like a user's: what render writes, a template, other files."""
    new_repository(path)
    cqkd = [sys.executable, "-m", "cqkd_stack"]
    for args in (
        ["--output", "cqkd.yml"],
        ["--target", "compose", "--output", "docker-compose.yml"],
        ["--target", "kubernetes", "--output", "cqkd.k8s.yaml"],
    ):
        subprocess.run([*cqkd, "render", "--replicas", "5", *args], cwd=path, check=True)
    (path / "stacks").mkdir()
    shutil.copy(REPO / "stacks" / "cqkd.stack.tmpl.yml", path / "stacks")
    (path / "README.md").write_text("a repository of stacks\n")
    (path / ".pre-commit-config.yaml").write_text(config)
    git("add", "-A", cwd=path)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def configurations(hook: tuple[Path, str]) -> list[tuple[str, str]]:
    path, commit = hook
    command = Path(sys.executable).parent / "cqkd-stack"
    found = []
    for example in config_examples():
        kind = "local" if "repo: local" in example else "checkout"
        text = example.replace(f"{DOCS_CHECKOUT}/.venv/bin/cqkd-stack", str(command))
        text = text.replace(DOCS_CHECKOUT, str(path))
        text = re.sub(r"rev: \S+", f"rev: {commit}", text)
        found.append((kind, text))
    assert sorted(kind for kind, _ in found) == ["checkout", "local"]
    return found


@pytest.mark.parametrize("kind", ["checkout", "local"])
def test_the_docs_config_lints_the_user_s_files_and_stops_a_bad_commit(
    kind: str, pre_commit: list[str], hook_repository: tuple[Path, str], tmp_path: Path
) -> None:
    config = dict(configurations(hook_repository))[kind]
    repo = tmp_path / "user"
    user_repository(repo, config)

    done = run([*pre_commit, "run", "--all-files", "--verbose"], repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 3 files valid" in done.stdout  # cqkd.yml, docker-compose.yml, cqkd.k8s.yaml
    assert "tmpl" not in done.stdout  # the template is not handed to the hook

    assert run([*pre_commit, "install"], repo).returncode == 0
    git("commit", "-q", "-m", "stacks", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    stack = repo / "cqkd.yml"
    stack.write_text(stack.read_text().replace("replicas: 5\n", "replicas: 1001\n"))
    git("add", "cqkd.yml", cwd=repo)
    refused = run(["git", "commit", "-m", "scale"], repo)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "cqkd.yml:" in said and "1001 workers" in said
    assert git("rev-parse", "HEAD", cwd=repo) == head
