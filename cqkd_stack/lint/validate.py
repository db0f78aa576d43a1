"""Stack files → problems: Docker's schema, then the port rules a schema cannot say.

A stack that fails here is never deployed. Each file is read by the reader
that suits it (a Swarm stack as ``docker stack deploy`` reads it, a target's
file by that target's loader; a policy and a template are told apart on the
text), its services judged by the port rules (``rules``) and then by its
target's own; ``--together`` judges several files as one deployment.

The port a DHT task will use is never computed here: the rules ask
``cqkd_stack.node.resolver`` (through ``contract.resolve_slot``) what slot 1
and slot N of each service resolve to, so whatever validates is exactly what
every task will resolve.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ..core.contract import TakenSubnet
from ..core.documents import MAX_BYTES, LoadedStack, decode_text, parse_yaml, read_text
from ..core.policy import Policy, policy_problems
from ..core.results import Problem, Results, json_path, one_per_location
from ..targets.base import Target
from ..targets.registry import TARGETS, declared_by
from .placeholders import placeholder_problems
from .rules import TEMPLATED_PORT_FIX, ServicePorts, check_services, collision_problems
from .stackfile import load_stack

# Parts of a file name that mark a stack template (rendered by `render`, not deployed).
TEMPLATE_SUFFIXES = (".tmpl.yml", ".tmpl.yaml")
TEMPLATE_PLACEHOLDER = "<<.Task.Slot>>"


_POLICY_KEYS = re.compile(r"^roles\s*:", re.MULTILINE)
_SERVICES_KEY = re.compile(r"^services\s*:", re.MULTILINE)


def _kind(file: str, text: str, target: str | None = None) -> Target | str:
    """What a file given to the linter is: a template, a policy, or a target's file.

    Templates are named ``*.tmpl.yml`` or carry the template's own slot
    spelling (``<<.Task.Slot>>``), which only ``render`` turns into Swarm's.
    A policy has top-level ``roles`` and no ``services``. Any other file is
    the file of the target ``target`` names, else of the one its text
    declares (``x-cqkd-target: compose``; top-level ``apiVersion`` and
    ``kind``: Kubernetes manifests), else a Swarm stack. Decided on the
    text, so a file is parsed once, by the reader that suits it.
    """
    if file.endswith(TEMPLATE_SUFFIXES) or TEMPLATE_PLACEHOLDER in text:
        return "template"
    if _POLICY_KEYS.search(text) and not _SERVICES_KEY.search(text):
        return "policy"
    return TARGETS[target] if target is not None else declared_by(text)


def _explain_template(problem: Problem) -> Problem:
    """Docker refuses a templated published port as "invalid"; say what to do instead."""
    if ".ports[" not in problem.path or "{{" not in problem.message:
        return problem
    return replace(problem, message=f"{problem.message}; {TEMPLATED_PORT_FIX}")


def _with_lines(problems: Iterable[Problem], loaded: LoadedStack) -> list[Problem]:
    """The project's problems name a path; the file's composed nodes give its line."""
    return [p if p.line is not None else replace(p, line=loaded.locate(p.path)) for p in problems]


def validate_texts(
    sources: Sequence[tuple[str, str]],
    policy: Policy,
    existing: Sequence[ServicePorts] = (),
    taken: Sequence[TakenSubnet] = (),
    together: bool = False,
    environ: Mapping[str, str] | None = None,
    loaded: Mapping[str, LoadedStack] | None = None,
    target: str | None = None,
) -> Results:
    """Validate (file name, text) pairs; each is its own stack unless ``together``.

    ``together`` judges the files as one deployment, so collisions across
    files are found. ``existing`` and ``taken`` describe a live swarm (ports
    other stacks hold, subnets other networks use); a linter run has neither.
    ``environ`` is what ``${VAR}`` is substituted from, as ``docker stack
    deploy`` would (default: this process's environment). Port policies
    given among the files are checked as policies; stack templates are
    skipped (render them, then lint the result). ``loaded`` are stacks the
    caller has already read with ``stackfile.load_stack``, by file name, so
    that nothing is parsed twice. ``target`` (a name in ``targets.registry``)
    says how to read the stack files; by default each file's text decides.
    """
    environ = os.environ if environ is None else environ
    results = Results()
    claims: list[ServicePorts] = []
    loaded_by_file: dict[str, LoadedStack] = {}
    for file, text in sources:
        results.checked(file)
        kind = _kind(file, text, target)
        if kind == "template":
            results.skip(file, "a stack template: lint what `cqkd-stack render` makes of it")
            continue
        if kind == "policy":
            results.note(file, "a port policy, checked as one")
            doc, problems = parse_yaml(text, file, "a port policy with roles")
            results.extend(problems if doc is None else policy_problems(doc, file))
            continue
        if not kind.services:
            results.note(file, kind.note, kind.name)
            results.extend(_object_problems(kind, text, file, policy, taken))
            continue
        stack = (loaded or {}).get(file) or _load(kind, text, file, environ)
        loaded_by_file[file] = stack
        # One line per source location: an anchor shared by 1000 services is one mistake.
        results.warn(one_per_location(stack.warnings))
        if stack.doc is None:
            results.extend(one_per_location([_explain_template(p) for p in stack.problems]))
            continue
        if kind.note:
            results.note(file, kind.note, kind.name)
        problems, found = check_services(stack.doc, file, policy, kind, taken, stack.env_origins)
        if kind.load is None:
            # A Swarm stack file: where Swarm would fill in its placeholders, and where not.
            shown = placeholder_problems(stack.doc)
            problems += [Problem(file, json_path(parts), message) for parts, message in shown]
        if together:
            claims += found
        else:
            problems += collision_problems(found, existing)
        results.extend(one_per_location(_with_lines(problems, stack)))
    if together:
        for problem in collision_problems(claims, existing):
            found_in = loaded_by_file.get(problem.file)
            results.extend(_with_lines([problem], found_in) if found_in else [problem])
    return results


def _load(target: Target, text: str, file: str, environ: Mapping[str, str]) -> LoadedStack:
    """A file as its target's tool reads it; a Swarm stack as ``docker stack deploy`` does."""
    return target.load(text, file) if target.load else load_stack(text, file, environ)


def _object_problems(
    target: Target, text: str, file: str, policy: Policy, taken: Sequence[TakenSubnet]
) -> list[Problem]:
    """A file of other objects than Docker services (Kubernetes manifests): its target's rules."""
    loaded = _load(target, text, file, {})
    return (
        loaded.problems if loaded.doc is None else target.problems(loaded.doc, file, policy, taken)
    )


STDIN = "-"


def read_sources(names: Sequence[str]) -> list[tuple[str, str]]:
    """(name, text) of every file, ``-`` being standard input, all read before judging.

    A missing or unreadable file is a usage error before any judgement; each
    read is bounded like a file's (MAX_BYTES), standard input's bytes too,
    and decoded as a file's are (not UTF-8: invalid input, exit 1).
    """
    sources = []
    for name in names:
        if name == STDIN:
            stream = getattr(sys.stdin, "buffer", None)
            raw = stream.read(MAX_BYTES + 1) if stream else sys.stdin.read(MAX_BYTES + 1).encode()
            sources.append(("<stdin>", decode_text(raw, "<stdin>")))
        else:
            sources.append((name, read_text(Path(name))))
    return sources
