"""Problems found in a file, kept per file so every reporter sees the same data.

Policy loading and stack validation both produce these; the reporters in
``report`` turn them into text or JSON. Keeping one shape is what lets a policy
error and a stack error read alike to the operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def json_path(parts: Iterable[str | int]) -> str:
    """Render a document path as ``$.services.worker.ports[0]``.

    List indices are kept (unlike compose v1) because "the second port entry"
    is what an operator needs to find the line; odd keys are quoted.
    """
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += "[" + repr(part) + "]"
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong, at one place in one file."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}::{self.path}: {self.message}"


@dataclass
class Results:
    """Problems per file, in the order the files were given.

    A file with an empty list was checked and is valid; that distinction is
    what the JSON reporter needs to say "ok" for it.
    """

    files: dict[str, list[Problem]] = field(default_factory=dict)

    def checked(self, file: str) -> None:
        self.files.setdefault(file, [])

    def add(self, problem: Problem) -> None:
        self.files.setdefault(problem.file, []).append(problem)

    def extend(self, problems: Sequence[Problem]) -> None:
        for problem in problems:
            self.add(problem)

    @property
    def problems(self) -> list[Problem]:
        return [p for found in self.files.values() for p in found]

    @property
    def ok(self) -> bool:
        return not self.problems
