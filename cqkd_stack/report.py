"""Results → text for people, JSON for programs, annotations for GitHub.

Each reporter is a function of the results alone, so adding a format never
touches the checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .results import Results


def text(results: Results) -> str:
    """One line per problem (file::path: message), then a one-line verdict."""
    lines = [str(p) for p in results.problems]
    bad = sum(1 for found in results.files.values() if found)
    total = len(results.files)
    if results.ok:
        lines.append(f"ok: {total} file{'s' if total != 1 else ''} valid")
    else:
        count = len(results.problems)
        lines.append(
            f"invalid: {bad} of {total} file{'s' if total != 1 else ''}, "
            f"{count} problem{'s' if count != 1 else ''}"
        )
    return "\n".join(lines)


def as_json(results: Results) -> str:
    document = {
        "valid": results.ok,
        "files": [
            {
                "file": file,
                "valid": not problems,
                "problems": [{"path": p.path, "message": p.message} for p in problems],
            }
            for file, problems in results.files.items()
        ],
    }
    return json.dumps(document, indent=2)


def github(results: Results) -> str:
    """Workflow commands, so CI shows each problem on the file it concerns."""
    lines = [f"::error file={p.file}::{p.path}: {p.message}" for p in results.problems]
    return "\n".join([*lines, text(results).splitlines()[-1]])


FORMATS: dict[str, Callable[[Results], str]] = {"text": text, "json": as_json, "github": github}
