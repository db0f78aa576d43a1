"""The node image's inputs hash: what the containers run and the recipe, nothing else.

A --help text or a linter rule does not run in any container, so changing one
must not rebuild the node image (and copy it again to every node); a change
to the node, the resolver or the Dockerfile must.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cqkd_stack.host import images

REPO = Path(__file__).resolve().parents[3]
BASE_ID = "sha256:" + "0" * 64


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what a wheel build reads, to edit freely."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "cqkd_stack", tmp_path / "cqkd_stack", ignore=ignore)
    return tmp_path


def edit(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\n# edited\n")


@pytest.mark.parametrize(
    "outside",
    [
        "cqkd_stack/cli/tasks.py",
        "cqkd_stack/lint/validate.py",
        "cqkd_stack/__main__.py",
        "pyproject.toml",
    ],
)
def test_a_change_outside_what_the_containers_run_keeps_the_hash(
    project: Path, outside: str
) -> None:
    before = images.build_inputs_hash(project, BASE_ID)
    edit(project / outside)
    assert images.build_inputs_hash(project, BASE_ID) == before


@pytest.mark.parametrize(
    "inside",
    [
        "cqkd_stack/node/daemon.py",
        "cqkd_stack/node/resolver.py",
        "cqkd_stack/resolver.py",
        "cqkd_stack/__init__.py",
        "cqkd_stack/image/Dockerfile",
    ],
)
def test_a_change_to_what_the_containers_run_changes_the_hash(project: Path, inside: str) -> None:
    before = images.build_inputs_hash(project, BASE_ID)
    edit(project / inside)
    assert images.build_inputs_hash(project, BASE_ID) != before


def test_a_new_module_of_the_node_changes_the_hash_and_the_base_image_too(project: Path) -> None:
    before = images.build_inputs_hash(project, BASE_ID)
    (project / "cqkd_stack" / "node" / "extra.py").write_text("X = 1\n")
    after = images.build_inputs_hash(project, BASE_ID)
    assert after != before
    assert images.build_inputs_hash(project, "sha256:" + "1" * 64) != after


def test_every_module_at_the_top_that_a_container_runs_is_an_input() -> None:
    """The short names the images call live at the top of the package: each must count."""
    top = {p.relative_to(REPO).as_posix() for p in (REPO / "cqkd_stack").glob("*.py")}
    assert top - {"cqkd_stack/__main__.py"} <= set(images.IMAGE_SOURCES)


def test_the_image_is_built_from_the_tree_s_own_dockerfile(project: Path) -> None:
    """An older revision's image (benchmarks/node_cost.py) must use its own recipe.

    The build copied this package's Dockerfile whatever tree it built, so a
    baseline image had the old code under the new recipe.
    """
    edit(project / "cqkd_stack/image/Dockerfile")
    found = images.node_dockerfile(project)
    assert found == project / "cqkd_stack/image/Dockerfile"
    assert found.read_bytes() != images.DOCKERFILE.read_bytes()
