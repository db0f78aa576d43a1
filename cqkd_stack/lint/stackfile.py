"""A stack file → the document ``docker stack deploy`` would build, or why it would refuse.

The linter must not disagree with Docker: a file Docker deploys is valid, a
file Docker refuses is not. So a stack is read the way docker/cli v28.2.2
reads it (the tag of the schemas vendored in ``schemas/compose``): YAML with
Docker's scalar rules, variables substituted and cast (``interpolation``), the
compose v3 schema its ``version:`` selects, and the few loader rules that sit
outside the schema. Every problem carries the line it concerns.

Project rules (ports per slot, subnets...) are not here: ``validate`` adds
them on top of a document this module accepts.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError

from ..core.documents import (
    BoundedLoader,
    LoadedStack,
    closest_branch,
    humanise,
    line_of,
    load_schema,
    non_string_keys,
    parse_yaml_nodes,
)
from ..core.results import PathParts, Problem, json_path
from .env_files import resolve_environments, working_dir_of
from .interpolation import interpolate

EXPECTED = "a stack with services"
DOCKER_CLI_TAG = "v28.2.2"
# The schema files vendored in schemas/compose, one per version Docker knows.
DOCKER_SCHEMA_VERSIONS = tuple(f"3.{minor}" for minor in range(14))
DEFAULT_VERSION = "3.13"  # what docker/cli v28 uses without a version (or with "3")


def load_stack(
    text: str, file: str, environ: Mapping[str, str], working_dir: Path | None = None
) -> LoadedStack:
    """Read one stack file (its text) as ``docker stack deploy`` would.

    ``environ`` is the environment Docker would substitute from (the caller
    passes ``os.environ``). All problems are collected, where Docker stops at
    the first; each has its line. Env files are read from ``working_dir``
    (default: the directory of ``file``, as Docker does), and each service's
    ``environment`` in ``doc`` is what its tasks get (``env_files``).
    """
    parsed = parse_yaml_nodes(text, file, EXPECTED, loader=_DockerYamlLoader)
    if parsed.data is None:
        return LoadedStack(None, parsed.problems, _root=parsed.root)
    raw, root = parsed.data, parsed.root
    stack = LoadedStack(None, [], _root=root)

    def problem(parts: PathParts, message: str) -> Problem:
        return Problem(file, json_path(parts), message, line_of(root, parts))

    keys = list(non_string_keys(raw, ()))
    stack.problems += [problem(*found) for found in keys]
    if keys:  # Docker cannot even hand such a document to its schema
        return stack
    version = _docker_version(raw)
    stack.problems += [problem(*found) for found in _forbidden(raw)]
    done = interpolate(raw, environ)
    stack.problems += [problem(f.path, f.message) for f in done.errors]
    stack.warnings += [problem(f.path, f.message) for f in done.warnings]
    doc = done.doc
    stack.problems += [problem(*found) for found in _not_json(doc, ())]
    if version not in DOCKER_SCHEMA_VERSIONS:
        known = f"{DOCKER_SCHEMA_VERSIONS[0]} to {DOCKER_SCHEMA_VERSIONS[-1]}"
        stack.problems.append(
            problem(
                ("version",),
                f"unsupported Compose file version: {version}; docker stack "
                f"(docker/cli {DOCKER_CLI_TAG}) knows {known}, or no version for {DEFAULT_VERSION}",
            )
        )
    else:
        stack.version = version
        refused = [f.path for f in done.errors]  # Docker never sees these values
        for error in _schema_errors(_without_forbidden(doc), version):
            path, message, where = _explain(error)
            if not any(path[: len(r)] == r for r in refused):
                stack.problems.append(Problem(file, json_path(path), message, line_of(root, where)))
        stack.problems += [problem(*found) for found in _loader_rules(doc)]
        where = working_dir if working_dir is not None else working_dir_of(file)
        environments = resolve_environments(_services(doc), where, environ)
        stack.problems += [problem(*found) for found in environments.problems]
        for name, variables in environments.variables.items():
            doc["services"][name]["environment"] = variables
        stack.env_origins = environments.origins
    stack.problems.sort(key=lambda p: p.line or 0)
    stack.warnings.sort(key=lambda p: p.line or 0)
    if not stack.problems:
        stack.doc = doc
    return stack


# --- YAML as Docker reads it (gopkg.in/yaml.v3, decoding into interface{}) ---


class _DockerYamlLoader(BoundedLoader):
    """The bounded loader with yaml.v3's idea of what a plain scalar is.

    PyYAML follows YAML 1.1, Docker's yaml.v3 mostly 1.2: ``yes``/``on`` are
    strings (so ``init: yes`` is refused by Docker's schema), ``7000:50`` is a
    string not the base-60 number 420050, dates stay strings, ``0o17`` and
    ``1e3`` are numbers. Reading with PyYAML's rules would judge another file.
    """

    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _TAG + _go_scalar(value)[0]
        return super().resolve(kind, value, implicit)


_TAG = "tag:yaml.org,2002:"
_WORDS: dict[str, tuple[str, Any]] = {
    **dict.fromkeys(("true", "True", "TRUE"), ("bool", True)),
    **dict.fromkeys(("false", "False", "FALSE"), ("bool", False)),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), ("null", None)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), ("float", math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), ("float", math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), ("float", -math.inf)),
    "<<": ("merge", "<<"),
}
_GO_INT = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_BASES = {"x": 16, "o": 8, "b": 2}


def _go_scalar(text: str) -> tuple[str, Any]:
    """yaml.v3's resolve() for a plain scalar: (tag name, value)."""
    if text in _WORDS:
        return _WORDS[text]
    first = text[:1]
    if first == "." and re.fullmatch(r"\.[0-9]+([eE][-+]?[0-9]+)?", text):
        return "float", float(text)
    if not first or first not in "0123456789+-":
        return "str", text  # yes, no, on, off, y, n... are strings for yaml.v3
    plain = text.replace("_", "")
    match = _GO_INT.fullmatch(plain)  # Go's strconv.ParseInt(plain, 0, 64)
    if match:
        sign, digits = match.groups()
        if digits[:2].lower() in ("0x", "0o", "0b"):
            number = int(digits[2:], _BASES[digits[1].lower()])
        else:
            number = int(digits, 8 if digits[0] == "0" else 10)  # Go: a leading 0 is octal
        number = -number if sign == "-" else number
        # an int64, or a uint64 written without a sign; else yaml.v3 tries a float
        if -(2**63) <= number < 2**63 or (not sign and number < 2**64):
            return "int", number
    if _YAML_FLOAT.fullmatch(plain) and not math.isinf(float(plain)):
        return "float", float(plain)
    return "str", text


def _constructor(kind: str) -> Callable[[yaml.SafeLoader, yaml.ScalarNode], Any]:
    """Build explicit and implicit !!int/!!float/!!bool/!!null values as yaml.v3 does."""

    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = loader.construct_scalar(node)
        found, result = _go_scalar(value)
        if found == kind or (kind == "float" and found == "int"):
            return float(result) if kind == "float" else result
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot read '{value}' as !!{kind}", node.start_mark
        )

    return construct


for _kind in ("int", "float", "bool", "null"):
    _DockerYamlLoader.add_constructor(_TAG + _kind, _constructor(_kind))
# yaml.v3 hands Docker a date as the text written, never a time value.
_DockerYamlLoader.add_constructor(_TAG + "timestamp", yaml.SafeLoader.construct_yaml_str)


# --- line numbers from the composed nodes ---


# --- what Docker checks besides the schema ---


def _docker_version(doc: dict[Any, Any]) -> str:
    """The schema version Docker picks: the raw ``version`` as Go's %v prints it."""
    if "version" not in doc:
        return DEFAULT_VERSION
    value = doc["version"]
    if value is None:
        text = "<nil>"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        text = str(int(value))  # Go prints 3.0 as 3
    else:
        text = str(value)
    return DEFAULT_VERSION if text in ("", "3") else text


def _not_json(value: Any, path: PathParts) -> Iterable[tuple[PathParts, str]]:
    """.nan and .inf: Docker turns the document into JSON, which has neither, and fails."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value} cannot be written as JSON; Docker's loader refuses the file"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _not_json(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _not_json(item, (*path, i))


# Service keys docker stack refuses outright, before its schema (docker/cli's
# ForbiddenProperties), with what to do instead.
FORBIDDEN = {
    "extends": "docker stack does not implement extends",
    "volume_driver": "give the driver to a top-level volume and mount that",
    "volumes_from": "declare a top-level volume and mount it in each service",
    "cpu_quota": "set CPU limits under deploy.resources",
    "cpu_shares": "set CPU limits under deploy.resources",
    "cpuset": "set CPU limits under deploy.resources",
    "mem_limit": "set memory limits under deploy.resources",
    "memswap_limit": "set memory limits under deploy.resources",
}


def _services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = doc.get("services")
    if not isinstance(services, dict):
        return {}
    return {name: s for name, s in services.items() if isinstance(s, dict)}


def _forbidden(doc: dict[str, Any]) -> Iterable[tuple[PathParts, str]]:
    for name, service in _services(doc).items():
        for key in service:
            if key in FORBIDDEN:
                yield (
                    ("services", name, key),
                    f"'{key}' is refused by docker stack: {FORBIDDEN[key]}",
                )


def _without_forbidden(doc: dict[str, Any]) -> dict[str, Any]:
    """The document minus forbidden keys, so the schema does not report them twice."""
    services = _services(doc)
    if not any(key in FORBIDDEN for s in services.values() for key in s):
        return doc
    trimmed = dict(doc["services"])
    for name, service in services.items():
        trimmed[name] = {k: v for k, v in service.items() if k not in FORBIDDEN}
    return {**doc, "services": trimmed}


# Fields Docker's loader decodes into unsigned integers (cli/compose/types):
# the schema says "integer" and the decoder (mapstructure) refuses a negative
# one. It does not check the size: a number too big wraps around silently.
_UNSIGNED = (
    ("deploy", "replicas"),
    ("deploy", "update_config", "parallelism"),
    ("deploy", "rollback_config", "parallelism"),
    ("deploy", "restart_policy", "max_attempts"),
    ("deploy", "placement", "max_replicas_per_node"),
    ("healthcheck", "retries"),
    ("ports", "[]", "target"),
    ("ports", "[]", "published"),
    ("configs", "[]", "mode"),
    ("secrets", "[]", "mode"),
)


def _loader_rules(doc: dict[str, Any]) -> Iterable[tuple[PathParts, str]]:
    """What Docker refuses after its schema passed: negative counts, ports
    written as fractional numbers, services without an image.
    """
    for name, service in _services(doc).items():
        for pattern in _UNSIGNED:
            for path, value in _values_at(service, pattern, ("services", name)):
                if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                    yield (
                        path,
                        f"{value} is negative; Docker's loader reads this field as an unsigned "
                        "integer and refuses the file",
                    )
        for path, value in _values_at(service, ("ports", "[]"), ("services", name)):
            if isinstance(value, float):
                yield (
                    path,
                    f"port {value} is written with a decimal point; Docker's loader takes an "
                    "integer or a string here and refuses the file",
                )
        image = service.get("image")
        if image is None or image == "":
            yield (
                ("services", name),
                "no image: docker stack deploy refuses a service without one",
            )


def _values_at(
    value: Any, pattern: tuple[str, ...], path: PathParts
) -> Iterable[tuple[PathParts, Any]]:
    if not pattern:
        yield path, value
    elif pattern[0] == "[]" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _values_at(item, pattern[1:], (*path, i))
    elif isinstance(value, dict) and pattern[0] in value:
        yield from _values_at(value[pattern[0]], pattern[1:], (*path, pattern[0]))


# --- Docker's schema, with the format checks its loader registers ---


@dataclass(frozen=True)
class PortSpec:
    """A short-syntax ``ports:`` entry as Docker reads it (inclusive ranges)."""

    host: tuple[int, int] | None
    container: tuple[int, int]
    protocol: str


def parse_port_spec(spec: str) -> PortSpec | str:
    """go-connections' nat.ParsePortSpec: the entry, or why Docker refuses it.

    Docker registers it as the "ports" format: ``[[ip:]host:]container[/proto]``
    with ranges (``7000-7010``) on either port.
    """
    parts = spec.split(":")
    container = parts[-1]
    host = parts[-2] if len(parts) > 1 else ""
    ip = ":".join(parts[:-2])
    proto_parts = container.split("/")
    if not proto_parts[0]:
        return "no port specified"
    container = proto_parts[0]
    proto = proto_parts[1] if len(proto_parts) > 1 and proto_parts[1] else "tcp"
    if ip.startswith("["):
        if not re.fullmatch(r"\[[^\[\]]*\]", ip):
            return f"invalid IP address {ip}"
        ip = ip[1:-1]
    if ip and not _is_ip(ip):
        return f"invalid IP address: {ip}"
    ports = _port_range(container)
    if ports is None:
        return f"invalid container port: {container}"
    hosts = None
    if host:
        hosts = _port_range(host)
        if hosts is None:
            return f"invalid host port: {host}"
        if ports[1] - ports[0] != hosts[1] - hosts[0] and ports[1] != ports[0]:
            return f"container ports {container} and host ports {host} differ in length"
    if proto.lower() not in ("tcp", "udp", "sctp"):
        return f"invalid protocol: {proto}"
    return PortSpec(hosts, ports, proto.lower())


def _port_spec_error(spec: str) -> str | None:
    """Why Docker refuses a short-syntax entry, None if it accepts it."""
    parsed = parse_port_spec(spec)
    return parsed if isinstance(parsed, str) else None


def _port_range(text: str) -> tuple[int, int] | None:
    """nat.ParsePortRange: one port or ``start-end``, each 0-65535 in decimal."""
    pieces = text.split("-") if "-" in text else [text, text]
    if not all(re.fullmatch(r"[0-9]+", p) and int(p) <= 65535 for p in pieces[:2]):
        return None
    start, end = int(pieces[0]), int(pieces[1])
    return (start, end) if end >= start else None


def _is_ip(text: str) -> bool:
    if "%" in text:  # Go's net.ParseIP takes no IPv6 zone
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_DURATION = re.compile(
    r"[-+]?(?:0|(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)"
)
_UNIT_NS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6}
_UNIT_NS |= {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def _duration_error(text: str) -> str | None:
    """Why Go's time.ParseDuration refuses ``text`` (Docker's "duration" format)."""
    if not _DURATION.fullmatch(text):
        return "expected a Go duration such as 10s, 1m30s, 500ms or 1h"
    total = sum(
        Fraction(number) * _UNIT_NS[unit]
        for number, unit in re.findall(r"([0-9.]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)", text)
    )
    if total > 2**63 - 1:
        return "longer than Go's largest duration (about 292 years)"
    return None


def _format_checker() -> FormatChecker:
    """The formats docker/cli registers with gojsonschema: "ports" and "duration".

    Other formats in the schemas ("expose") are unknown to gojsonschema and
    pass; jsonschema ignores an unregistered format the same way. Wrong types
    pass here: the schema's "type" already reports them.
    """
    checker = FormatChecker(formats=())

    @checker.checks("ports", raises=ValueError)
    def ports(instance: object) -> bool:
        if isinstance(instance, bool) or not isinstance(instance, str | int | float):
            return True
        # gojsonschema hands a number over as a fraction and Docker takes its numerator.
        spec = instance if isinstance(instance, str) else str(Fraction(repr(instance)).numerator)
        reason = _port_spec_error(spec)
        if reason:
            raise ValueError(reason)
        return True

    @checker.checks("duration", raises=ValueError)
    def duration(instance: object) -> bool:
        reason = _duration_error(instance) if isinstance(instance, str) else None
        if reason:
            raise ValueError(reason)
        return True

    return checker


def _is_integer(checker: object, instance: object) -> bool:
    """gojsonschema's integer: any number without a fraction (1.0 passes)."""
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())


@cache
def _validator(version: str) -> Any:
    """The validator of the draft the schema declares (draft-04 for all of Docker's).

    Its "integer" is gojsonschema's, and its formats Docker's.
    """
    schema = load_schema(f"compose/config_schema_v{version}.json")
    draft = validators.validator_for(schema, default=Draft4Validator)
    docker = validators.extend(
        draft, type_checker=draft.TYPE_CHECKER.redefine("integer", _is_integer)
    )
    return docker(schema, format_checker=_format_checker())


def _schema_errors(doc: dict[str, Any], version: str) -> list[ValidationError]:
    return sorted(_validator(version).iter_errors(doc), key=lambda e: list(e.absolute_path))


# --- messages ---

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _found(instance: Any) -> str:
    if instance is None:
        return "null"
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kinds |= {dict: "a mapping", list: "a list"}
    return kinds.get(type(instance), type(instance).__name__)


def _expected(types: Iterable[str]) -> str:
    names = list(dict.fromkeys(_TYPE_NAMES.get(t, t) for t in types))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _explain(error: ValidationError) -> tuple[PathParts, str, PathParts]:
    """One schema error: its path, today's wording (``documents``) with Docker's cases
    added, and the path whose line to show (an unknown key's own line, not its parent's).
    """
    if error.validator in ("oneOf", "anyOf") and error.context:
        types = _branch_types(error)
        if types is not None:
            path = tuple(error.absolute_path)
            return path, f"expected {_expected(types)}, found {_found(error.instance)}", path
        error = closest_branch(error)
    path = tuple(error.absolute_path)
    if error.validator == "type":
        return path, _type_message(error), path
    if error.validator == "format":
        reason = f": {error.cause}" if error.cause else ""
        what = "port mapping" if error.validator_value == "ports" else error.validator_value
        return path, f"'{error.instance}' is not a valid {what}{reason}", path
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        patterns = list(error.schema.get("patternProperties", {}))
        extra = [
            k
            for k in error.instance
            if k not in allowed and not any(re.search(p, k) for p in patterns)
        ]
        where = (*path, extra[0]) if extra else path
        if extra and patterns and not allowed:
            names = ", ".join(f"'{k}'" for k in extra)
            return path, f"invalid name {names}: Docker allows names matching {patterns[0]}", where
        return path, humanise(error), where
    return path, humanise(error), path


def _branch_types(error: ValidationError) -> list[str] | None:
    """The types the branches want, when every branch failed on the type alone."""
    types: list[str] = []
    for branch in error.context or ():
        if branch.validator != "type" or branch.relative_path:
            return None
        wanted = branch.validator_value
        types += wanted if isinstance(wanted, list) else [wanted]
    return types or None


def _type_message(error: ValidationError) -> str:
    wanted = error.validator_value
    wanted = wanted if isinstance(wanted, list) else [wanted]
    instance = error.instance
    if isinstance(instance, str):
        kind, _ = _go_scalar(instance)
        if kind in ("int", "float", "bool") and set(wanted) & {"integer", "number", "boolean"}:
            return (
                f"'{instance}' is a string (quoted); Docker wants {_expected(wanted)} here: "
                "write it without quotes"
            )
    scalar = isinstance(instance, str | int | float | bool)
    found = f"{_found(instance)} {instance!r}" if scalar else _found(instance)
    hint = f" (quote it: '{instance}')" if scalar and wanted == ["string"] else ""
    return f"expected {_expected(wanted)}, found {found}{hint}"
