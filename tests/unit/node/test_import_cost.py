"""Every module that runs in the container imports the standard library and little else.

1000+ containers each pay for what the node, the resolver, nodectl and the
probe import, and the resolver also runs in images that are not ours. So each
module of ``cqkd_stack/node/`` (and each short name at the top that stands
for one) is imported alone in a fresh interpreter, and what it loaded is
held against what it may load: nothing else of ``cqkd_stack``, and of what
is not the standard library only ``umsgpack`` (the node) and ``rpcudp`` (the
probe, which speaks Kademlia through it). Modules that need neither are
imported with ``-S``, without site-packages, as in a bare image.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE = REPO_ROOT / "cqkd_stack" / "node"
# What a module may load besides the standard library, by module; others: nothing.
ALLOWED = {
    "cqkd_stack.node.daemon": {"umsgpack"},
    "cqkd_stack.node.__main__": {"umsgpack"},
    "cqkd_stack.node.routing": {"umsgpack"},
    # The control socket's lookups and value checks are the routing module's.
    "cqkd_stack.node.control": {"umsgpack"},
    # rpcudp imports umsgpack itself.
    "cqkd_stack.node.probe": {"rpcudp", "umsgpack"},
    "cqkd_stack.probe": {"rpcudp", "umsgpack"},
    # The crawler speaks Kademlia through the probe's protocol.
    "cqkd_stack.node.crawler": {"rpcudp", "umsgpack"},
}
# The short names at the top of the package, each standing for one module of node/.
ALIASES = {
    "cqkd_stack.resolver": "cqkd_stack.node.resolver",
    "cqkd_stack.nodectl": "cqkd_stack.node.nodectl",
    "cqkd_stack.probe": "cqkd_stack.node.probe",
}
MODULES = sorted(
    {f"cqkd_stack.node.{path.stem}" for path in NODE.glob("*.py") if path.stem != "__init__"}
    | set(ALIASES)
)


def loaded_by(module: str, bare: bool) -> set[str]:
    """The modules ``import module`` adds to a fresh interpreter (``__main__``: found, not run)."""
    statement = (
        f"import importlib.util; importlib.util.find_spec({module!r})"
        if module.endswith("__main__")
        else f"import {module}"
    )
    code = (
        f"import sys; before = set(sys.modules); {statement}; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    # cwd puts the repo first on sys.path; -S: no site-packages, as in a bare image.
    proc = subprocess.run(
        [sys.executable, *(["-S"] if bare else []), "-c", code],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def outside_stdlib(names: set[str]) -> set[str]:
    tops = {name.split(".")[0] for name in names}
    return {top for top in tops if top.lstrip("_") not in sys.stdlib_module_names} - {
        top for top in tops if top in sys.stdlib_module_names
    }


@pytest.mark.parametrize("module", MODULES)
def test_a_container_module_loads_nothing_of_ours_outside_node(module: str) -> None:
    if module.endswith("__main__"):
        # Running it runs the node; what it imports is the daemon's.
        module = "cqkd_stack.node.daemon"
    allowed = ALLOWED.get(module, set())
    loaded = loaded_by(module, bare=not allowed)
    ours = {name for name in loaded if name.split(".")[0] == "cqkd_stack"}
    assert ALIASES.get(module, module) in ours
    node = {name for name in ours if name.startswith("cqkd_stack.node.")}
    assert ours <= {"cqkd_stack", "cqkd_stack.node", module, *node}
    assert outside_stdlib(loaded) - {"cqkd_stack"} <= allowed


def test_the_short_names_stand_for_the_node_modules_and_add_nothing() -> None:
    """``import cqkd_stack.resolver`` costs the resolver and one tiny module more."""
    for alias, real in ALIASES.items():
        bare = not ALLOWED.get(alias)
        assert loaded_by(alias, bare) - loaded_by(real, bare) == {alias}


def test_the_resolver_stays_light_under_its_short_name_too() -> None:
    loaded = loaded_by("cqkd_stack.resolver", bare=True)
    assert not loaded & {"argparse", "dataclasses", "typing", "json"}


# What the node's entry point must not load, with the private memory each
# cost per container in the node image (python3 -S, measured 2026-12-02):
# ``socket`` and ``signal`` wrap their constants in enum classes (0.52 and
# 0.18 MiB; the node uses ``_socket`` and ``_signal``), ``contextlib`` brings
# ``functools`` (0.18 MiB); the rest are imported on first use only.
NOT_AT_START = {
    "socket",
    "signal",
    "enum",
    "contextlib",
    "functools",
    "typing",
    "json",
    "hashlib",
    "ctypes",
    "stat",
}


def test_the_node_s_entry_point_loads_no_enum_wrapper_and_nothing_it_uses_later() -> None:
    """1000 containers each pay for these; a new top-level import brings them back."""
    loaded = loaded_by("cqkd_stack.node.daemon", bare=False)
    assert "umsgpack" in loaded and "cqkd_stack.node.control" in loaded
    assert loaded & NOT_AT_START == set()


def test_the_node_s_help_says_something_under_minus_oo() -> None:
    """The image runs the node with -OO, which drops the docstring --help prints."""
    proc = subprocess.run(
        [sys.executable, "-OO", "-m", "cqkd_stack.node", "--help"],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != "None"
    assert "environment" in proc.stdout
