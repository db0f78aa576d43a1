"""Swarm placeholders (``{{.Task.Slot}}``...) only in the fields Swarm fills them in.

Swarm renders them on each node as it starts a task (swarmkit's
``template.ExpandContainerSpec``): in the values of the task's environment,
its hostname, and its mounts' source and target, plus a named volume's
labels and driver options. Docker's stack converter fills those from a
service's ``environment`` (and env files), ``hostname`` and ``volumes``, and
from a top-level volume's ``name``, ``labels`` and ``driver_opts``.
Everywhere else the text reaches the engine as written: ``image:
"cqkd-dht-node:{{.Task.Slot}}"`` names no image, a label keeps its braces,
a command prints them. Docker accepts such a file, so the linter refuses it.

Only Swarm's own fields are looked for (``.Task``, ``.Service``, ``.Node``):
other ``{{...}}`` text belongs to something else (a log driver's ``tag``
template, a shell's braces) and is left alone. Published ports have their
own message (``validate``), and ``x-`` extension fields are Docker's to
ignore (anchors live there).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..core.results import PathParts

SWARM_PLACEHOLDER = re.compile(r"\{\{[^{}]*\.(?:Task|Service|Node)\b[^{}]*\}\}")
# Service keys whose whole value Swarm renders, and keys checked elsewhere.
_RENDERED = ("hostname",)
_ELSEWHERE = ("ports", "environment")
# A top-level volume's keys that reach a task's mount (its name is the mount's source).
_VOLUME_RENDERED = ("name", "labels", "driver_opts")
_HINTS = {
    "image": "every task of a service runs the same image: name one without a placeholder",
    "command": "read the slot from the environment instead (TASK_SLOT: '{{.Task.Slot}}', "
    "then $TASK_SLOT in the command)",
    "labels": "labels belong to the service or container, not to one task",
}
_HINTS["entrypoint"] = _HINTS["healthcheck"] = _HINTS["command"]
DEFAULT_HINT = (
    "pass it through the environment (TASK_SLOT: '{{.Task.Slot}}') and read it in the container"
)


def placeholder_problems(doc: dict[str, Any]) -> list[tuple[PathParts, str]]:
    """(path, message) for every Swarm placeholder Swarm would leave as written."""
    found: list[tuple[PathParts, str]] = []
    for key, value in doc.items():
        if key.startswith("x-"):
            continue
        if key == "services" and isinstance(value, dict):
            for name, service in value.items():
                if isinstance(service, dict):
                    found += _service(name, service)
        elif key == "volumes" and isinstance(value, dict):
            for name, volume in value.items():
                if isinstance(volume, dict):
                    skip = {k: v for k, v in volume.items() if k not in _VOLUME_RENDERED}
                    found += _refused(skip, ("volumes", name))
        else:
            found += _refused(value, (key,))
    return found


def _service(name: str, service: dict[str, Any]) -> list[tuple[PathParts, str]]:
    found: list[tuple[PathParts, str]] = []
    where: PathParts = ("services", name)
    for key, value in service.items():
        if key.startswith("x-") or key in _RENDERED or key in _ELSEWHERE:
            if key == "environment":
                found += _variable_names(value, (*where, key))
            continue
        if key == "volumes" and isinstance(value, list):
            for i, mount in enumerate(value):
                if isinstance(mount, dict):  # long syntax: source and target are rendered
                    rest = {k: v for k, v in mount.items() if k not in ("source", "target")}
                    found += _refused(rest, (*where, key, i))
            continue  # short syntax is source:target[:mode], all of it rendered
        found += _refused(value, (*where, key))
    return found


def _variable_names(environment: Any, path: PathParts) -> list[tuple[PathParts, str]]:
    """Only an environment variable's value is rendered; a placeholder in its name stays."""
    if isinstance(environment, dict):
        named: list[tuple[PathParts, str]] = [((*path, k), str(k)) for k in environment]
    elif isinstance(environment, list):
        named = [((*path, i), str(v).partition("=")[0]) for i, v in enumerate(environment)]
    else:
        return []
    out = []
    for at, text in named:
        match = SWARM_PLACEHOLDER.search(text)
        if match is not None:
            out.append((at, _message(text, match.group(0), DEFAULT_HINT, "a variable's name")))
    return out


def _refused(value: Any, path: PathParts) -> list[tuple[PathParts, str]]:
    out = []
    for at, text in _strings(value, path):
        match = SWARM_PLACEHOLDER.search(text)
        if match is not None:
            # The hint of the innermost field that has one (deploy.labels: labels').
            keys = [part for part in reversed(at) if isinstance(part, str) and part in _HINTS]
            hint = _HINTS[keys[0]] if keys else DEFAULT_HINT
            out.append((at, _message(text, match.group(0), hint)))
    return out


def _message(text: str, placeholder: str, hint: str, what: str = "") -> str:
    where = f" in {what}" if what else ""
    return (
        f"'{text}' holds {placeholder}{where}, but Swarm fills placeholders in only in "
        "environment values, hostname and volume mounts: here the text stays as written; "
        f"{hint}"
    )


def _strings(value: Any, path: PathParts) -> Iterator[tuple[PathParts, str]]:
    """Every string in ``value``, keys of mappings included, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield (*path, key), key
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))
