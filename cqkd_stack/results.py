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
    """One thing wrong, at one place in one file.

    ``line`` (1-based) is where the path's key or item is written, when the
    document was parsed with node positions kept; None when unknown. The path
    stays the identity of the problem: a line alone is ambiguous once anchors
    and merges share nodes.
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        """``file:LINE::path: message``, or ``file::path: message`` without a line.

        ``file:LINE:`` is the prefix editors and CI log viewers already turn
        into a link to the line (the compiler convention); the ``::path`` after
        it keeps check-jsonschema's shape, so a line never hides the path.
        """
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}::{self.path}: {self.message}"


@dataclass
class Results:
    """Problems per file, in the order the files were given.

    A file with an empty list was checked and is valid; that distinction is
    what the JSON reporter needs to say "ok" for it.
    """

    files: dict[str, list[Problem]] = field(default_factory=dict)
    # Files recognised as something other than a stack, and what they were taken for.
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    # What each noted file was read as: policy, compose or kubernetes (default: stack).
    kinds: dict[str, str] = field(default_factory=dict)
    # What Docker accepts silently but is probably a mistake (an unset ${VAR}).
    warnings: list[Problem] = field(default_factory=list)

    def checked(self, file: str) -> None:
        self.files.setdefault(file, [])

    def skip(self, file: str, reason: str) -> None:
        """Not judged at all (a template): reported so nobody mistakes it for valid."""
        self.files.pop(file, None)
        self.skipped[file] = reason

    def warn(self, problems: Sequence[Problem]) -> None:
        """Reported, never failing: the file is still valid."""
        self.warnings.extend(problems)

    def note(self, file: str, what: str, kind: str = "policy") -> None:
        """Judged, but as something other than a Swarm stack (a port policy, a compose file...)."""
        self.notes[file] = what
        self.kinds[file] = kind

    def add(self, problem: Problem) -> None:
        self.files.setdefault(problem.file, []).append(problem)

    def extend(self, problems: Sequence[Problem]) -> None:
        for problem in problems:
            self.add(problem)

    @property
    def problems(self) -> list[Problem]:
        return [p for found in self.files.values() for p in found]

    @property
    def nothing_checked(self) -> bool:
        """No file was judged (only templates, say): such a run proves nothing.

        A linter that says "ok" about files it skipped would pass a CI job
        whose glob matches no stack; so this is a failure, not a success.
        """
        return not self.files

    @property
    def ok(self) -> bool:
        return not self.nothing_checked and not self.problems


NOTHING_CHECKED = (
    "no stack, port policy or manifest was checked: give the files you deploy "
    "(a template is linted once rendered: cqkd-stack render -o cqkd.yml)"
)
