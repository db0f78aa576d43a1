"""``${VAR}`` in stack files, replaced the way ``docker stack deploy`` replaces it.

A linter that reads ``replicas: ${WORKERS:-50}`` as the text ``${WORKERS:-50}``
refuses a file Docker deploys; one that reads it as ``50`` where Docker would
fail lets a broken file through. So this follows docker/cli v28.2.2 (the
vendored schemas' tag) in its details, quirks included, and says so where a
quirk is surprising. Behaviour was read from ``cli/compose/template``,
``cli/compose/interpolation`` and ``cli/compose/loader/interpolate.go``:

- Only string values are substituted; keys never are.
- ``$$`` is a literal ``$``; ``$VAR`` and ``${VAR}`` are the variable or ``""``
  when unset (Docker says nothing; we return a warning); ``${VAR:-d}`` (unset
  or empty) and ``${VAR-d}`` (unset) give defaults; ``${VAR:?msg}`` (unset or
  empty) and ``${VAR?msg}`` (unset) refuse the file. There is no ``:+``/``+``
  in this Docker: ``${VAR:+x}`` is an invalid interpolation, like any ``$``
  that starts no variable (``$1``, a lone ``$``).
- A value whose text changed is then cast for the paths Docker casts
  (``deploy.replicas`` to an integer, ``privileged`` to a boolean...). A value
  that did not change is not cast: ``replicas: "3"`` stays the string "3",
  which Docker's schema then refuses.

Pure logic: the environment is a mapping passed in, nothing is printed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.results import PathParts

# Docker's pattern, case-insensitive like Go's (?i:...): the unbraced form also
# takes the ``:-``/``-``/``:?``/``?`` operators, up to the next ``}``.
_SUBST = r"[_a-z][_a-z0-9]*(?::?[-?][^}]*)?"
_PATTERN = re.compile(
    rf"\$(?i:(?P<escaped>\$)|(?P<named>{_SUBST})|\{{(?P<braced>{_SUBST})\}}|(?P<invalid>))"
)
_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


class _Refused(Exception):
    """Docker's InvalidTemplateError for one ``$...``: the value is refused."""


@dataclass
class Substituted:
    """One string after substitution: its value, Docker's refusal if any, warnings."""

    value: str
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def substitute(template: str, environ: Mapping[str, str]) -> Substituted:
    """Replace every variable of ``template`` as Docker does.

    Docker keeps one error slot for the whole string and every variable after
    a failed one overwrites it: ``${A:?unset} ${HOME}`` is accepted (``A``
    becomes ``""``). We accept it too, and warn.
    """
    out = Substituted(template)
    pending: list[str] = []  # errors a later, successful variable would clear
    pieces: list[str] = []
    end = 0
    for match in _PATTERN.finditer(template):
        pieces.append(template[end : match.start()])
        end = match.end()
        if match["escaped"]:
            pieces.append("$")
            continue
        try:
            pieces.append(_one(match, template, environ, out.warnings))
        except _Refused as exc:
            pieces.append("")
            pending.append(str(exc))
            continue
        out.warnings += [
            f"{reason}; Docker lets it pass (with '') only because a later variable in "
            "the same value substitutes fine"
            for reason in pending
        ]
        pending = []
    pieces.append(template[end:])
    out.value = "".join(pieces)
    if pending:
        out.error = pending[-1]
    return out


def _one(
    match: re.Match[str], template: str, environ: Mapping[str, str], warnings: list[str]
) -> str:
    """The replacement of one ``$...``: Docker's four operators, tried in its order."""
    body = match["named"] or match["braced"]
    if not body:
        shown = re.match(r"\$(?:\{[^}]*\}?|[^\s$]*)", template[match.start() :])
        raise _Refused(
            f"'{shown.group() if shown else '$'}' is not a variable (write $$ for a "
            "literal $; docker stack has no ${VAR:+alt})"
        )
    # Docker's order, which matters: '-' is tried before ':?' and '?', so
    # ${VAR:?must-be-set} is the default 'be-set' of a variable 'VAR:?must'.
    for operator in (":-", "-", ":?", "?"):
        if operator not in body:
            continue
        name, _, rest = body.partition(operator)
        value = _lookup(name, match.group(), environ, warnings)
        if operator == ":-":
            return value or rest
        if operator == "-":
            return rest if value is None else value
        if value is None or (operator == ":?" and value == ""):
            raise _Refused(f"required variable {name} is missing a value: {rest}")
        return value
    value = _lookup(body, match.group(), environ, warnings)
    if value is None:
        warnings.append(f"variable {body} is not set; Docker substitutes an empty string")
        return ""
    return value


def _lookup(name: str, written: str, environ: Mapping[str, str], warnings: list[str]) -> str | None:
    if not _NAME.fullmatch(name):
        warnings.append(
            f"Docker reads '{written}' as the variable '{name}' (it tries ':-', '-', ':?', "
            "'?' in that order); that is probably not what was meant"
        )
    return environ.get(name)


# --- Docker's casts after substitution (cli/compose/loader/interpolate.go) ---


def _to_int(text: str) -> int:
    """Go's strconv.Atoi: optional sign, ASCII digits, 64 bits."""
    if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**63) <= int(text) < 2**63:
        raise ValueError(f"'{text}' is not an integer")
    return int(text)


_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+)",
    re.IGNORECASE,
)


def _to_float(text: str) -> float:
    """Go's strconv.ParseFloat(s, 64): decimal, hex with p exponent, inf, nan."""
    if not _GO_FLOAT.fullmatch(text):
        raise ValueError(f"'{text}' is not a number")
    number = float.fromhex(text) if "x" in text.lower() else float(text)
    if math.isinf(number) and "inf" not in text.lower():
        raise ValueError(f"'{text}' is out of range for a number")
    return number


def _to_bool(text: str) -> bool:
    """Docker's toBoolean: YAML 1.1's words, any case."""
    word = text.lower()
    if word in ("y", "yes", "true", "on"):
        return True
    if word in ("n", "no", "false", "off"):
        return False
    raise ValueError(f"'{text}' is not a boolean (true/false, yes/no, on/off, y/n)")


_S = ("services", "*")
CASTS: dict[tuple[str, ...], Callable[[str], Any]] = {
    (*_S, "configs", "[]", "mode"): _to_int,
    (*_S, "secrets", "[]", "mode"): _to_int,
    (*_S, "healthcheck", "retries"): _to_int,
    (*_S, "healthcheck", "disable"): _to_bool,
    (*_S, "deploy", "replicas"): _to_int,
    (*_S, "deploy", "update_config", "parallelism"): _to_int,
    (*_S, "deploy", "update_config", "max_failure_ratio"): _to_float,
    (*_S, "deploy", "rollback_config", "parallelism"): _to_int,
    (*_S, "deploy", "rollback_config", "max_failure_ratio"): _to_float,
    (*_S, "deploy", "restart_policy", "max_attempts"): _to_int,
    (*_S, "deploy", "placement", "max_replicas_per_node"): _to_int,
    (*_S, "ports", "[]", "target"): _to_int,
    (*_S, "ports", "[]", "published"): _to_int,
    (*_S, "ulimits", "*"): _to_int,
    (*_S, "ulimits", "*", "hard"): _to_int,
    (*_S, "ulimits", "*", "soft"): _to_int,
    (*_S, "privileged"): _to_bool,
    (*_S, "oom_score_adj"): _to_int,
    (*_S, "read_only"): _to_bool,
    (*_S, "stdin_open"): _to_bool,
    (*_S, "tty"): _to_bool,
    (*_S, "volumes", "[]", "read_only"): _to_bool,
    (*_S, "volumes", "[]", "volume", "nocopy"): _to_bool,
    ("networks", "*", "external"): _to_bool,
    ("networks", "*", "internal"): _to_bool,
    ("networks", "*", "attachable"): _to_bool,
    ("volumes", "*", "external"): _to_bool,
    ("secrets", "*", "external"): _to_bool,
    ("configs", "*", "external"): _to_bool,
}


def cast_for(path: PathParts) -> Callable[[str], Any] | None:
    """The cast Docker applies at ``path``, if any.

    Docker matches on a dotted string with ``[]`` for list items, so a key
    holding a dot (a service named ``a.b``) shifts the parts and matches no
    pattern: such a service's ``replicas: ${N}`` is not cast, and neither here.
    """
    dotted = ".".join("[]" if isinstance(part, int) else part for part in path).split(".")
    for pattern, cast in CASTS.items():
        if len(pattern) == len(dotted) and all(
            p in ("*", part) for p, part in zip(pattern, dotted, strict=True)
        ):
            return cast
    return None


@dataclass(frozen=True)
class Finding:
    """Something about one value: where (document path) and what."""

    path: PathParts
    message: str


@dataclass
class Interpolated:
    """The document as Docker's schema will see it, and what was found on the way."""

    doc: Any
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)


def interpolate(doc: Any, environ: Mapping[str, str]) -> Interpolated:
    """Substitute every string value of ``doc`` and cast where Docker casts.

    Docker stops at the first error; every one is collected here, and the
    value of a refused string is kept as written.
    """
    result = Interpolated(None)
    result.doc = _walk(doc, (), environ, result)
    return result


def _walk(value: Any, path: PathParts, environ: Mapping[str, str], out: Interpolated) -> Any:
    if isinstance(value, dict):
        return {key: _walk(item, (*path, key), environ, out) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, (*path, i), environ, out) for i, item in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    done = substitute(value, environ)
    out.warnings += [Finding(path, warning) for warning in done.warnings]
    if done.error is not None:
        out.errors.append(Finding(path, done.error))
        return value
    cast = cast_for(path) if done.value != value else None
    if cast is None:
        return done.value
    try:
        return cast(done.value)
    except ValueError as exc:
        out.errors.append(
            Finding(path, f"'{value}' becomes '{done.value}' and Docker casts this field: {exc}")
        )
        return value
