"""``invoke.yaml`` where the command runs: its ``cqkd:`` settings, checked before use.

Invoke reads a project file as it is: a YAML error escaped as a traceback,
a ``cqkd: x`` (not a mapping) failed later inside a task, and a typo
(``cqkd: {polcy: strict.yml}``) was ignored, so the shipped policy judged
every stack while the operator believed their own did. Here the file is
parsed first with the bounded reader every other file goes through, and
anything the command would not use is refused, naming the file, the line
and the key it resembles (exit 2, before any task runs).

Only ``invoke.yaml``, ``invoke.yml`` and ``invoke.json`` are read: Invoke
would also *execute* an ``invoke.py``, and an installed linter run in a
checkout must never run code that lies there.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core.documents import line_of, parse_yaml_nodes, read_text
from ..core.errors import CqkdError, UsageError

PROJECT_FILES = ("invoke.yaml", "invoke.yml", "invoke.json")
SECTION = "cqkd"


def project_file(folder: Path) -> Path | None:
    """The project file Invoke would load from ``folder`` (first of PROJECT_FILES), if any."""
    return next((folder / name for name in PROJECT_FILES if (folder / name).exists()), None)


def check_project_file(path: Path, known: Mapping[str, Any], invoke_keys: Iterable[str]) -> bool:
    """Refuse a project file the command could not use as written; False when it is empty.

    ``known`` holds the ``cqkd:`` settings and their defaults; ``invoke_keys``
    the sections Invoke itself reads (``run``, ``tasks``...), left to it.
    """
    try:
        text = read_text(path)
    except CqkdError as exc:
        raise UsageError(exc.message) from None
    name = str(path)
    parsed = parse_yaml_nodes(text, name, f"a mapping of settings, e.g. {SECTION}: {{stack: prod}}")
    lines = [line.strip() for line in text.splitlines()]
    if all(not line or line.startswith("#") for line in lines):
        return False  # nothing set; Invoke would fail to merge an empty document
    if parsed.problems:
        raise UsageError(str(parsed.problems[0]))
    data: dict[str, Any] = parsed.data

    def where(*parts: str) -> str:
        line = line_of(parsed.root, parts)
        return f"{name}:{line}" if line else name

    sections = {SECTION, *invoke_keys}
    for key in data:
        if key not in sections:
            raise UsageError(f"{where(str(key))}: unknown setting '{key}'{_hint(key, sections)}")
    section = data.get(SECTION)
    if section is None:
        return True
    if not isinstance(section, dict):
        raise UsageError(
            f"{where(SECTION)}: '{SECTION}' must be a mapping of settings "
            f"({', '.join(known)}), got {type(section).__name__}"
        )
    for key, value in section.items():
        if key not in known:
            raise UsageError(
                f"{where(SECTION, str(key))}: unknown setting '{SECTION}.{key}'"
                f"{_hint(str(key), known, SECTION + '.')}; known: {', '.join(known)}"
            )
        if value is not None and not isinstance(value, str):
            raise UsageError(
                f"{where(SECTION, key)}: '{SECTION}.{key}' must be a string, "
                f"got {type(value).__name__} {value!r}"
            )
    return True


def _hint(key: str, known: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""
