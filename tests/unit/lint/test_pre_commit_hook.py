"""The pre-commit hook lints the files the docs tell users to write, and only those.

pre-commit matches ``files:`` and ``exclude:`` with Python's ``re.search``
on paths relative to the repository's top, so the same calls here say
which files the hook is given. The docs' ``.pre-commit-config.yaml``
examples must name this hook with the same patterns.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
HOOK = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())[0]


def given_to_the_hook(path: str, hook: dict = HOOK) -> bool:
    return bool(re.search(hook["files"], path)) and not re.search(hook.get("exclude", "^$"), path)


@pytest.mark.parametrize(
    "path",
    [
        "cqkd.yml",  # render -o cqkd.yml (README, docs)
        "cqkd.stack.yml",
        "cqkd.k8s.yaml",  # render --target kubernetes -o cqkd.k8s.yaml
        "docker-compose.yml",  # render --target compose -o docker-compose.yml
        "docker-compose.prod.yaml",
        "deploy/cqkd-prod.yml",
        "envs/prod.stack.yml",
        "stacks/port-policy.yml",
    ],
)
def test_the_names_the_docs_give_are_linted(path: str) -> None:
    assert given_to_the_hook(path)


@pytest.mark.parametrize(
    "path",
    [
        "stacks/cqkd.stack.tmpl.yml",  # a template: lint what render makes of it
        "cqkd.tmpl.yaml",
        "invoke.yaml",
        ".pre-commit-config.yaml",
        ".github/workflows/ci.yml",
        "helm/values.yaml",
        "README.md",
        "cqkd.yml.orig",
    ],
)
def test_other_files_are_left_alone(path: str) -> None:
    assert not given_to_the_hook(path)


def test_the_hook_runs_the_installed_command_once_for_all_files() -> None:
    assert HOOK["id"] == "cqkd-stack-validate"
    assert HOOK["entry"] == "cqkd-stack validate"
    assert HOOK["language"] == "python"
    assert HOOK["require_serial"] is True  # --together and collisions need every file at once


def config_examples() -> list[dict]:
    """The ```yaml blocks of docs/ports.md that are .pre-commit-config.yaml files."""
    text = (REPO / "docs" / "ports.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return [doc for doc in map(yaml.safe_load, blocks) if isinstance(doc, dict) and "repos" in doc]


def test_the_docs_examples_name_this_hook_with_its_patterns() -> None:
    examples = config_examples()
    assert len(examples) == 2  # the checkout as the hook's repository; a local hook
    for example in examples:
        (repo,) = example["repos"]
        (hook,) = repo["hooks"]
        assert hook["id"] == HOOK["id"]
        assert "://" not in repo["repo"]  # no address the project does not own
        if repo["repo"] == "local":
            assert hook["files"] == HOOK["files"] and hook["exclude"] == HOOK["exclude"]
            assert hook["entry"].endswith("/.venv/bin/cqkd-stack validate")
