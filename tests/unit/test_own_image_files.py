"""docs/ports.md shows the own-image files as they are, and the resolver works as one copied file.

tests/e2e/test_own_image.py builds and deploys these very files; this keeps
the page equal to them, so neither can drift from the other.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "own-image"
PORTS_MD = (REPO / "docs" / "ports.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", PORTS_MD, re.MULTILINE | re.DOTALL)


def test_the_page_shows_the_dockerfile_and_build_script_verbatim() -> None:
    assert (EXAMPLE / "Dockerfile").read_text() in blocks("dockerfile")
    assert (EXAMPLE / "build.sh").read_text() in blocks("sh")


def test_the_dockerfile_fetches_nothing_and_starts_from_the_project_s_base() -> None:
    text = (EXAMPLE / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=cqkd-base:bookworm\nFROM ${BASE_IMAGE}" in text
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("--no-index --find-links /wheels" in line for line in installs)
    install = text[text.index("pip install") : text.index("rm -rf /wheels")]
    assert "kademlia==2.2.3" in install and "cqkd" not in install  # no package of ours
    assert "USER 10001:10001" in text


def test_the_node_uses_the_stock_kademlia_package_and_the_copied_resolver() -> None:
    tree = ast.parse((EXAMPLE / "node.py").read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported - set(sys.stdlib_module_names) == {"kademlia", "cqkd_resolver"}


def test_the_resolver_runs_as_one_copied_file(tmp_path: Path) -> None:
    """As in the image: the file alone, no site-packages, no cqkd_stack anywhere."""
    shutil.copy(REPO / "cqkd_stack" / "node" / "resolver.py", tmp_path / "cqkd_resolver.py")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TASK_SLOT": "3"}
    run = [sys.executable, "-S", "-I"]
    printed = subprocess.run(
        [*run, "cqkd_resolver.py", "--json", "--no-bind-check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(printed.stdout)["port"] == 7002
    code = (
        "import sys; sys.path.insert(0, '.'); from cqkd_resolver import get_dynamic_port; "
        "print(get_dynamic_port()); print('cqkd_stack' in sys.modules)"
    )
    imported = subprocess.run(
        [*run, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert imported.stdout.split() == ["7002", "False"]
