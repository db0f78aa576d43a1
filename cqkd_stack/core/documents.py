"""Reading YAML documents and checking them against our JSON Schemas.

Policy files and stack files fail in the same ways (unreadable, not YAML,
empty, wrong shape), so both go through here and report alike: file, path in
the document, what was expected.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from .errors import InvalidInput, UsageError
from .results import PathParts, Problem, json_path, parse_json_path

# The package folder (this file is cqkd_stack/core/documents.py).
_PACKAGE = Path(__file__).resolve().parent.parent


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


# Hostile input must be refused quickly and cheaply: within a second and a
# few tens of MB, whatever the file. A rendered stack of 1000 workers is
# ~30 kB and ~300 YAML nodes (one service, replicas). Checking costs ~27
# microseconds a node (60% of it jsonschema), so 30,000 nodes take ~0.8 s
# plus start-up; a compose file with one service per worker reaches that at
# 1000-1700 services, depending on its keys. Measured before these limits:
# a 4 MiB file of 95,000 one-line services took 28 s and 520 MB to refuse.
MAX_BYTES = 1024 * 1024
# Nodes the document would have with every alias expanded (so also the
# plain node count). A "billion laughs" file is a few hundred bytes whose
# aliases expand to ~10^9 nodes: PyYAML builds it as shared objects, but
# every walk over it (schema checks, rendering) visits each copy, which ran
# to 2.7 GB before being killed.
MAX_EXPANDED_NODES = 30_000
# libyaml composes nesting in C, and Python code after it recurses: refuse
# a document nested deeper than any stack file is.
MAX_DEPTH = 64


def read_text(path: Path) -> str:
    """Read a file: a usage error if it cannot be read, invalid input if it is no text file.

    A missing or unreadable file says nothing about stacks (exit 2); one that
    was read and is not UTF-8 text, or is too large to be one, fails its
    checks like an empty or unparsable one (exit 1). At most MAX_BYTES are
    read: ``/dev/zero`` given as a file is refused, not read until memory runs out.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a YAML file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_text(raw, str(path))


def decode_text(raw: bytes, name: str) -> str:
    """A file's bytes as text, or InvalidInput naming it (too large, not UTF-8)."""
    if len(raw) > MAX_BYTES:
        raise InvalidInput(
            f"{name}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a stack or policy file"
        )
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{name}: not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "stack and policy files are YAML in UTF-8"
        ) from None


def parse_yaml(text: str, file: str, expected: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; problems instead of exceptions.

    ``expected`` names what the file should hold ("a stack with services") so
    an empty file's message tells the operator what was wanted. The problems
    carry no line: their messages say where, and callers that print lines use
    ``parse_yaml_nodes``.
    """
    parsed = parse_yaml_nodes(text, file, expected)
    return parsed.data, [replace(p, line=None) for p in parsed.problems]


@dataclass(frozen=True)
class ParsedYaml:
    """A document, the node graph it was built from (for line numbers), its problems."""

    data: Any
    root: yaml.Node | None
    problems: list[Problem]


def parse_yaml_nodes(
    text: str,
    file: str,
    expected: str,
    loader: type[BoundedLoader] | None = None,
    max_nodes: int = MAX_EXPANDED_NODES,
    max_expanded: int | None = None,
) -> ParsedYaml:
    """``parse_yaml`` keeping the composed nodes, one pass: no second parse for lines.

    ``loader`` may be a subclass of the bounded loader (a stack file is read
    with Docker's scalar rules); every limit of the bounded loader still holds.
    ``max_nodes`` bounds the nodes written in the file (each costs ~10 us to
    read), ``max_expanded`` (default: the same) the nodes once aliases are
    expanded; a kind of file that is large by design (a compose file with
    one service per worker, its shared keys merged from an anchor) sets its
    own. Each problem has the line where it was found, when there is one.
    """
    bounded = (loader or BoundedLoader)(text)
    bounded.max_nodes = max_nodes if max_expanded is None else max_expanded
    try:
        _check_events(text, max_nodes)
        root = bounded.get_single_node()
        data = None if root is None else bounded.construct_document(root)
    except _TooLarge as exc:
        return ParsedYaml(None, None, [Problem(file, "$", str(exc), exc.line)])
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        reason = exc.problem or str(exc)
        message = f"YAML does not parse at {where}: {reason}"
        line = mark.line + 1 if mark else None
        return ParsedYaml(None, None, [Problem(file, "$", message, line)])
    except yaml.YAMLError as exc:
        return ParsedYaml(None, None, [Problem(file, "$", f"YAML does not parse: {exc}")])
    except RecursionError:
        # PyYAML composes recursively: ~1000 nested brackets would crash the
        # command instead of refusing the file.
        return ParsedYaml(None, None, [Problem(file, "$", "YAML nested too deeply; refused")])
    finally:
        bounded.dispose()
    if data is None:
        return ParsedYaml(None, root, [Problem(file, "$", f"file is empty; expected {expected}")])
    if not isinstance(data, dict):
        found = type(data).__name__
        line = root.start_mark.line + 1 if root is not None else None
        message = f"expected a mapping ({expected}), found a {found}"
        return ParsedYaml(None, root, [Problem(file, "$", message, line)])
    return ParsedYaml(data, root, [])


class _TooLarge(Exception):
    """A document refused before it is built (too large once expanded, or ambiguous)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


# libyaml's parser (PyYAML's C extension) composes ~10x faster than the pure
# Python one: 2000 services took 4.9 s to compose in Python, 0.2 s in C.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BoundedLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader that refuses a document whose aliases expand too far.

    The expanded size is counted on the composed node graph, where each alias
    is a shared node, before any object is built: linear in the file's size.
    """

    max_nodes = MAX_EXPANDED_NODES

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node, self.max_nodes)
        return super().construct_document(node)


_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
_NODES = (yaml.ScalarEvent, yaml.AliasEvent, *_OPENS)


def _check_events(text: str, max_nodes: int) -> None:
    """Refuse a document too deep or too large before anything is composed.

    libyaml's composer recurses in C: 100,000 nested brackets crashed the
    process (SIGSEGV) before any Python check could run. Its parser does
    not recurse, so the events are counted first, stopping at the first
    limit crossed: a hostile file costs ~2 microseconds an event, at most
    ``max_nodes`` of them.
    """
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, _NODES):
            nodes += 1
            if nodes > max_nodes:
                line = event.start_mark.line + 1
                raise _TooLarge(
                    f"more than {max_nodes:,} YAML nodes (at line {line}); "
                    "refused as too large to check",
                    line,
                )
        if isinstance(event, _OPENS):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise _TooLarge(
                    f"YAML nested more than {MAX_DEPTH} levels (line {line}); refused", line
                )
        elif isinstance(event, _CLOSES):
            depth -= 1


def _check_expansion(root: yaml.Node, max_nodes: int) -> None:
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool, int]] = [(root, False, 1)]
    while stack:
        node, children_done, depth = stack.pop()
        key = id(node)
        if depth > MAX_DEPTH:
            line = node.start_mark.line + 1
            raise _TooLarge(
                f"YAML nested more than {MAX_DEPTH} levels (line {line}); refused", line
            )
        if children_done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            if total > max_nodes:
                line = node.start_mark.line + 1
                raise _TooLarge(
                    f"aliases expand to more than {max_nodes:,} YAML nodes "
                    f"(from line {line}); refused as a YAML bomb",
                    line,
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            line = node.start_mark.line + 1
            raise _TooLarge(f"an alias refers to itself (line {line})", line)
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        on_path.add(key)
        stack.append((node, True, depth))
        stack.extend(
            (child, False, depth + 1) for child in _children(node) if id(child) not in sizes
        )


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    """YAML keeps the last of two equal keys without a word; Docker's loader refuses them.

    Keys brought in by a merge (``<<: *base``) may be overridden; that is not
    a duplicate.
    """
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        first = seen.get((key.tag, key.value))
        if first is not None:
            raise _TooLarge(
                f"duplicate key '{key.value}' at line {line} (first at line {first}); "
                "YAML would keep only the last one",
                line,
            )
        seen[(key.tag, key.value)] = line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def schema_problems(data: Any, schema_name: str, file: str) -> list[Problem]:
    """Every schema error of a document, each rewritten for a human.

    All errors, not the first: CI wants the whole list in one run.
    """
    validator = Draft202012Validator(load_schema(schema_name))
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        if error.context:
            error = closest_branch(error)
        problems.append(Problem(file, json_path(error.absolute_path), humanise(error)))
    return problems


def closest_branch(error: ValidationError) -> ValidationError:
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


def humanise(error: ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        extra = [k for k in extra if not matches_pattern(error.schema, k)]
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


def matches_pattern(schema: dict[str, Any], key: str) -> bool:
    return any(re.search(p, key) for p in schema.get("patternProperties", {}))


# --- a file of services as its runtime reads it, with its lines -----------------


@dataclass(frozen=True)
class EnvOrigin:
    """The env file line a variable of a service came from."""

    entry: int | None  # its index in a list of env files; None: env_file is one string
    file: str  # as the stack names it
    line: int

    @property
    def parts(self) -> PathParts:
        """Where the env file is named in the service (for the stack file's line)."""
        return ("env_file",) if self.entry is None else ("env_file", self.entry)

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}"


@dataclass
class LoadedStack:
    """One stack file as Docker's loader sees it.

    ``doc`` is the interpolated, cast document, or None when Docker would
    refuse the file (then ``problems`` says why; it is never empty then).
    ``warnings`` are things Docker accepts silently but that are probably
    mistakes (an unset variable becoming ""). ``version`` is the schema
    version used, None when the file was not read that far.
    """

    doc: dict[str, Any] | None
    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)
    version: str | None = None
    # Per service, the variables its env files set (and where), for messages.
    env_origins: dict[str, dict[str, EnvOrigin]] = field(default_factory=dict)
    _root: yaml.Node | None = field(default=None, repr=False)

    def locate(self, path: str) -> int | None:
        """The line of a ``json_path`` (``$.services.worker.ports[0]``) in the file.

        A path that does not exist (a missing key is reported on its parent)
        gets the line of its nearest existing ancestor; None without a document.
        """
        return line_of(self._root, parse_json_path(path))


def line_of(root: yaml.Node | None, parts: Iterable[str | int]) -> int | None:
    """The line of the key (or list item) at ``parts``, or of its deepest existing ancestor.

    Merged keys (``<<: *base``) were moved into each mapping's node while it
    was built, so they are found where they are written: at the anchor.
    """
    if root is None:
        return None
    node, line = root, root.start_mark.line + 1
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
            found = [pair for pair in pairs if pair[0].value == part]
            if not found:
                break
            key, node = found[-1]  # the last of equal keys is the one kept
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def non_string_keys(value: Any, path: PathParts) -> Iterable[tuple[PathParts, str]]:
    """yaml.v3 gives Docker non-string keys as a map it cannot turn into JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield (
                    path,
                    f"key {key!r} is not a string; Docker's loader refuses the file "
                    f"(quote it: '{key}')",
                )
            else:
                yield from non_string_keys(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from non_string_keys(item, (*path, i))
