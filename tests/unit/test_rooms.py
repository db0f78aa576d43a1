"""The package's rooms and the one direction imports run between them.

``cqkd_stack/`` is seven folders, each a room with one kind of code, and a
module imports only from its own room and the rooms to its right:

    cli -> host -> live -> lint -> targets -> core -> node

so the code that runs in every container (``node/``) needs nothing else,
the vocabulary (``core/``) knows no engine and no terminal, and only
``cli/`` prints and exits. Every import counts: at the top of a module,
inside a function, or for type checking only. Read from the sources with
``ast``, so nothing here imports the package.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cqkd_stack"
ROOMS = ("cli", "host", "live", "lint", "targets", "core", "node")
# The modules at the top of the package and the room each belongs to: the
# short names the images call (python -m cqkd_stack.resolver) stand for node/.
TOP = {
    "cqkd_stack.__main__": "cli",
    "cqkd_stack.resolver": "node",
    "cqkd_stack.nodectl": "node",
    "cqkd_stack.probe": "node",
}
# Besides the standard library, what node/ may import (the probe speaks Kademlia through rpcudp).
NODE_MAY_IMPORT = {"umsgpack"}
PROBE_MAY_IMPORT = {"rpcudp"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (for ``from X import name``: X, or X.name if a module)
    names: tuple[str, ...]  # the names taken (empty for ``import X``)
    line: int
    bound: str = ""  # the local name a module of ours is bound to, if it is one


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno, alias.asname or "")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            taken = []
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    bound = alias.asname or alias.name
                    yield Import(module, f"{source}.{alias.name}", (), node.lineno, bound)
                else:
                    taken.append(alias.name)
            if taken:
                yield Import(module, source, tuple(taken), node.lineno)


ALL = [found for module in MODULES for found in imports_of(module)]
OURS = [found for found in ALL if found.target.split(".")[0] == "cqkd_stack"]


def room_of(module: str) -> str | None:
    """The room a module of ours is in; None for the package itself (it imports nothing)."""
    if module == "cqkd_stack":
        return None
    if module in TOP:
        return TOP[module]
    room = module.split(".")[1]
    assert room in ROOMS, f"{module} is in no room: put it in one of {', '.join(ROOMS)}"
    return room


def test_every_module_is_in_a_room_and_the_package_itself_imports_nothing() -> None:
    for module in MODULES:
        room_of(module)
    assert [found for found in ALL if found.module == "cqkd_stack"] == []


@pytest.mark.parametrize("room", ROOMS)
def test_a_room_imports_only_itself_and_the_rooms_to_its_right(room: str) -> None:
    allowed = set(ROOMS[ROOMS.index(room) :])
    wrong = [
        f"{found.module} (line {found.line}) imports {found.target} ({room_of(found.target)})"
        for found in OURS
        if room_of(found.module) == room and room_of(found.target) not in allowed | {None}
    ]
    assert wrong == []


def test_no_module_imports_itself_back_through_others() -> None:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for found in OURS:
        if found.target in MODULES and found.target != found.module:
            edges[found.module].add(found.target)
    circles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            circle = []
            while not circle or circle[-1] != module:
                circle.append(stack.pop())
            if len(circle) > 1:
                circles.append(sorted(circle))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert circles == []


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_crosses_a_module() -> None:
    taken = [
        f"{found.module} (line {found.line}) takes {name} from {found.target}"
        for found in OURS
        for name in found.names
        if _private(name)
    ]
    # A module imported whole, then one of its private names used: module._name.
    for module, path in MODULES.items():
        aliases = {found.bound for found in imports_of(module) if found.bound}
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                taken.append(f"{module} (line {node.lineno}) uses {node.value.id}.{node.attr}")
    assert taken == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room_of(m) == "node"))
def test_node_imports_only_the_standard_library_and_umsgpack(module: str) -> None:
    may = NODE_MAY_IMPORT | (PROBE_MAY_IMPORT if module.endswith(".probe") else set())
    outside = {
        found.target.split(".")[0]
        for found in imports_of(module)
        if found.target.split(".")[0] != "cqkd_stack"
    } - set(sys.stdlib_module_names)
    assert outside <= may
