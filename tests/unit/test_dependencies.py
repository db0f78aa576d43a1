"""Nothing is imported that pyproject.toml does not declare."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import requires
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# Distribution name → the module it installs, where they differ.
MODULES = {
    "pyyaml": "yaml",
    "u-msgpack-python": "umsgpack",
    "prometheus-client": "prometheus_client",
    "kubernetes-validate": "kubernetes_validate",
}


def _specs(groups: list[str]) -> list[str]:
    """Requirements of the installed project (its metadata is pyproject.toml's)."""
    out = []
    for line in requires("cqkd-stack") or []:
        spec, _, marker = line.partition(";")
        extra = re.search(r"extra == \"([^\"]+)\"", marker)
        if extra is None or extra.group(1) in groups:
            out.append(spec.strip())
    return out


def _declared(groups: list[str]) -> set[str]:
    names = {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower() for spec in _specs(groups)}
    return {MODULES.get(name, name) for name in names}


def _imported(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    local = {path.stem for path in folder.rglob("*.py")}  # test modules importing each other
    return found - set(sys.stdlib_module_names) - local - {"cqkd_stack", "__future__"}


def test_the_package_imports_only_declared_dependencies() -> None:
    # kubernetes_validate is imported only where Kubernetes manifests are checked.
    assert _imported(REPO / "cqkd_stack") <= _declared(["node", "kubernetes"])


def test_tests_and_benchmarks_import_only_declared_dependencies() -> None:
    assert _imported(REPO / "tests") <= _declared(["node", "test"])
    # The benchmarks may also draw (matplotlib, the extra `bench`); the tests never need it.
    assert _imported(REPO / "benchmarks") <= _declared(["node", "test", "bench"])


def test_every_dependency_has_an_upper_bound_or_a_pin() -> None:
    specs = _specs(["test", "bench"])
    assert any(spec.startswith("docker") for spec in specs), specs
    for spec in specs:
        assert "<" in spec or "==" in spec, spec


def test_engine_setup_needs_only_the_standard_library_and_the_docker_sdk() -> None:
    """``engine`` runs where only the Docker SDK may be installed (the systemd test
    machine has Debian's python3-docker): importing it pulled in PyYAML once it
    wrote through ``documents``, and that end-to-end test failed on
    ``No module named 'yaml'``."""
    import subprocess

    third_party = sorted(_declared(["node", "kubernetes", "test"]) - {"docker", "requests"})
    script = (
        "import sys\n"
        f"for name in {third_party!r}: sys.modules[name] = None\n"
        "import cqkd_stack.host.engine, cqkd_stack.host.sysctls, cqkd_stack.core.files\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
