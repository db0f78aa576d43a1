"""Reading YAML documents and checking them against our JSON Schemas.

Policy files and stack files fail in the same ways (unreadable, not YAML,
empty, wrong shape), so both go through here and report alike: file, path in
the document, what was expected.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from .errors import UsageError
from .results import Problem, json_path

_PACKAGE = Path(__file__).resolve().parent


def data_file(kind: str, name: str) -> Path:
    """Locate a shipped file (``stacks/`` or ``schemas/``).

    A wheel carries them under ``cqkd_stack/data``; a source checkout (and an
    editable install) has them at the repository root. Both must work so the
    installed ``cqkd-stack`` command runs outside the repository.
    """
    for candidate in (_PACKAGE / "data" / kind / name, _PACKAGE.parent / kind / name):
        if candidate.is_file():
            return candidate
    raise UsageError(f"cannot find the shipped file {kind}/{name}; is cqkd-stack installed whole?")


@cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads(data_file("schemas", name).read_text())


def read_text(path: Path) -> str:
    """Read a file or raise a usage error: a missing file says nothing about stacks."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None


def parse_yaml(text: str, file: str, expected: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; problems instead of exceptions.

    ``expected`` names what the file should hold ("a stack with services") so
    an empty file's message tells the operator what was wanted.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        reason = exc.problem or str(exc)
        return None, [Problem(file, "$", f"YAML does not parse at {where}: {reason}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, "$", f"YAML does not parse: {exc}")]
    if data is None:
        return None, [Problem(file, "$", f"file is empty; expected {expected}")]
    if not isinstance(data, dict):
        found = type(data).__name__
        return None, [Problem(file, "$", f"expected a mapping ({expected}), found a {found}")]
    return data, []


def schema_problems(data: Any, schema_name: str, file: str) -> list[Problem]:
    """Every schema error of a document, each rewritten for a human.

    All errors, not the first: CI wants the whole list in one run.
    """
    validator = Draft202012Validator(load_schema(schema_name))
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        if error.context:
            error = _closest_branch(error)
        problems.append(Problem(file, json_path(error.absolute_path), _humanise(error)))
    return problems


def _closest_branch(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf, the error of the branch the author most likely meant.

    Branches that fail on the value's type alone (a mapping given where the
    branch wants a string) are not what was meant; among the rest,
    ``best_match`` picks. A wall of sub-errors helps nobody.
    """
    wrong_type = {
        e.schema_path[0] for e in error.context if e.validator == "type" and not e.relative_path
    }
    meant = [e for e in error.context if e.schema_path[0] not in wrong_type]
    chosen = best_match(meant or error.context)
    return chosen if chosen is not None else error


def _humanise(error: ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        extra = [k for k in extra if not _matches_pattern(error.schema, k)]
        parts = []
        for key in extra:
            hint = difflib.get_close_matches(key, allowed, n=1)
            parts.append((f"'{key}'", f"did you mean '{hint[0]}'?" if hint else ""))
        if parts:
            keys = ", ".join(key for key, _ in parts)
            hints = "; ".join(hint for _, hint in parts if hint)
            if hints:
                return f"unknown key {keys} ({hints})"
            return f"unknown key {keys}; expected one of: {', '.join(allowed)}"
    if error.validator == "required":
        return f"missing required key: {error.message.split(' is a required')[0]}"
    if error.validator in ("minimum", "maximum") and error.schema.get("maximum") == 65535:
        return f"{error.instance} is not a usable port: expected 1024-65535"
    return error.message


def _matches_pattern(schema: dict[str, Any], key: str) -> bool:
    return any(re.search(p, key) for p in schema.get("patternProperties", {}))
