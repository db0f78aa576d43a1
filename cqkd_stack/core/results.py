"""Problems found in a file, kept per file so every reporter sees the same data.

Policy loading and stack validation both produce these; the reporters in
``report`` turn them into text or JSON. Keeping one shape is what lets a policy
error and a stack error read alike to the operator.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

# A path into a document: keys and list indices, as json_path writes them.
PathParts = tuple[str | int, ...]
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


_STEP = re.compile(
    r"\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)|\[(?P<index>[0-9]+)\]"
    r"|\[(?P<quoted>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]"
)


def parse_json_path(path: str) -> list[str | int]:
    """``json_path`` read back into parts; stops where it cannot read on."""
    parts: list[str | int] = []
    if not path.startswith("$"):
        return parts
    at = 1
    while at < len(path):
        step = _STEP.match(path, at)
        if step is None:
            break
        if step["name"] is not None:
            parts.append(step["name"])
        elif step["index"] is not None:
            parts.append(int(step["index"]))
        else:
            parts.append(ast.literal_eval(step["quoted"]))
        at = step.end()
    return parts


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
    # The services this one problem stands for, when one source line (a YAML
    # anchor or merge) gives it to several; empty for an ordinary problem.
    services: tuple[str, ...] = ()

    def __str__(self) -> str:
        """``file:LINE::path: message``, or ``file::path: message`` without a line.

        ``file:LINE:`` is the prefix editors and CI log viewers already turn
        into a link to the line (the compiler convention); the ``::path`` after
        it keeps check-jsonschema's shape, so a line never hides the path.
        """
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}::{self.path}: {self.message}"


# How many service names a shared problem's message lists before "and N more".
SHOWN_SERVICES = 3
_Location = tuple[str, int, str]  # file, line, message


def _service_of(path: str) -> str | None:
    parts = parse_json_path(path)
    return str(parts[1]) if len(parts) >= 2 and parts[0] == "services" else None


def one_per_location(problems: Sequence[Problem]) -> list[Problem]:
    """One problem per source location, with the services it affects.

    A bad value in a YAML anchor shared by 1000 services is one mistake on
    one line: reported 1000 times it would bury everything else. Problems
    with the same file, line and message in several services become one,
    at the first one's path, naming how many services it affects; the rest
    stay as they are, in order.
    """
    keyed: list[tuple[Problem, _Location | None]] = []
    services: dict[_Location, dict[str, None]] = {}  # ordered sets of service names
    for problem in problems:
        service = _service_of(problem.path) if problem.line is not None else None
        key = (problem.file, problem.line, problem.message) if service is not None else None
        keyed.append((problem, key))
        if key is not None:
            services.setdefault(key, {})[str(service)] = None
    out = []
    done: set[_Location] = set()
    for problem, key in keyed:
        names = tuple(services[key]) if key is not None else ()
        if len(names) < 2:
            out.append(problem)
        elif key not in done:
            done.add(key)
            more = len(names) - SHOWN_SERVICES
            shown = ", ".join(names[:SHOWN_SERVICES]) + (f" and {more} more" if more > 0 else "")
            note = f" [the same line gives this to {len(names)} services: {shown}]"
            out.append(replace(problem, message=problem.message + note, services=names))
    return out


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


def compact(numbers: list[int]) -> str:
    """1,2,3,7 → 1-3, 7: a thousand missing slots must fit on a line."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
