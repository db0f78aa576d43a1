"""Results → text for people, JSON for programs, annotations for GitHub.

Each reporter is a function of the results alone, so adding a format never
touches the checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..core.results import NOTHING_CHECKED, Results


def text(results: Results) -> str:
    """One line per problem (``file:LINE::path: message``), then a one-line verdict."""
    lines = [str(p) for p in results.problems]
    lines += [f"warning: {w}" for w in results.warnings]
    lines += [f"skipped: {file}: {reason}" for file, reason in results.skipped.items()]
    bad = sum(1 for found in results.files.values() if found)
    total = len(results.files)
    skipped = f" ({len(results.skipped)} skipped)" if results.skipped else ""
    if results.nothing_checked:
        lines.append(f"invalid: {NOTHING_CHECKED}")
    elif results.ok:
        lines.append(f"ok: {total} file{'s' if total != 1 else ''} valid{skipped}")
    else:
        count = len(results.problems)
        lines.append(
            f"invalid: {bad} of {total} file{'s' if total != 1 else ''}, "
            f"{count} problem{'s' if count != 1 else ''}{skipped}"
        )
    return "\n".join(lines)


def as_json(results: Results) -> str:
    document = {
        "valid": results.ok,
        # 0 files checked is invalid: the run proved nothing (see Results.nothing_checked).
        "checked": len(results.files),
        "error": NOTHING_CHECKED if results.nothing_checked else None,
        "files": [
            {
                "file": file,
                "kind": results.kinds.get(file, "stack"),
                "valid": not problems,
                # "line" is always present (null when unknown): a program reading
                # the report should not have to test for the key.
                # "services": those one problem at one source line (an anchor) stands for.
                "problems": [
                    {
                        "path": p.path,
                        "line": p.line,
                        "message": p.message,
                        "services": [*p.services],
                    }
                    for p in problems
                ],
            }
            for file, problems in results.files.items()
        ],
        "skipped": [{"file": f, "reason": r} for f, r in results.skipped.items()],
        "warnings": [
            {"file": w.file, "path": w.path, "line": w.line, "message": w.message}
            for w in results.warnings
        ],
    }
    return json.dumps(document, indent=2)


def github(results: Results) -> str:
    """Workflow commands, so CI shows each problem on the line it concerns.

    Without ``line=`` GitHub pins the annotation to the top of the file.
    """
    lines = []
    for p in results.problems:
        where = f"file={_property(p.file)}"
        if p.line is not None:
            where += f",line={p.line}"
        lines.append(f"::error {where}::{_data(f'{p.path}: {p.message}')}")
    for w in results.warnings:
        where = f"file={_property(w.file)}" + (f",line={w.line}" if w.line is not None else "")
        lines.append(f"::warning {where}::{_data(f'{w.path}: {w.message}')}")
    for file, reason in results.skipped.items():
        lines.append(f"::notice file={_property(file)}::{_data(f'skipped: {reason}')}")
    if results.nothing_checked:
        lines.append(f"::error::{_data(NOTHING_CHECKED)}")
    return "\n".join([*lines, text(results).splitlines()[-1]])


def _data(value: str) -> str:
    """Escape a workflow command's message: a newline would end the command early."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(value: str) -> str:
    """Escape a property value: ',' and ':' would end it (a file named 'a,b.yml')."""
    return _data(value).replace(":", "%3A").replace(",", "%2C")


FORMATS: dict[str, Callable[[Results], str]] = {"text": text, "json": as_json, "github": github}
