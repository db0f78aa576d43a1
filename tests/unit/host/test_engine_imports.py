"""The engine code runs where only the standard library and the Docker SDK are installed.

tests/e2e/test_systemd_dropin.py runs ``engine.ensure_docker_unit`` inside a
booted systemd machine that has python3 and Debian's python3-docker, nothing
of the linter's (YAML, JSON Schema) nor of the command line's: importing the
engine must not reach for them. Checked here in a fresh interpreter that
refuses those imports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# What the systemd test machine lacks, of what this project installs.
ABSENT = ("yaml", "jsonschema", "invoke", "rich", "prometheus_client", "kubernetes_validate")

CODE = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Absent())
from cqkd_stack.host import engine
print(engine.ensure_docker_unit.__name__)
"""


def test_the_engine_imports_without_the_linter_s_or_the_cli_s_libraries() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ensure_docker_unit"
