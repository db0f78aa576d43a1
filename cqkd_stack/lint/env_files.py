"""``env_file:`` + ``environment:`` → the environment every task of a service gets.

As docker/cli v28.2.2 builds it (``loader.resolveEnvironment`` and
``pkg/kvfile``), because a port set in an env file is a port all the same:
a worker with ``TASK_SLOT`` in ``environment`` and ``DHT_PORT=7000`` in its
env file starts every task on 7000, and ``docker stack config`` shows it.

- Each env file is named relative to the stack file's directory (the
  directory of the path given, a link not followed; standard input: the
  current directory), one file or a list; a missing one makes Docker refuse
  the stack.
- A line is ``KEY=VALUE`` taken as written (no quotes, no ``${}``, trailing
  blanks kept); leading blanks, empty lines and ``#`` comments are skipped;
  a ``KEY`` alone takes the value of this process's variable, or is left out.
- Later files win over earlier ones, ``environment`` over every file, and a
  variable left empty (or null) in either takes this process's value when it
  has one.

Env files are read only when regular files, within a budget for the whole
stack: a stack under review may name ``/dev/zero``, a FIFO or a thousand
large files, and the linter must still answer within a second.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.documents import EnvOrigin
from ..core.results import PathParts

# bufio.Scanner's MaxScanTokenSize: Docker fails on a longer line.
MAX_LINE = 64 * 1024
# All env files of one stack, together: real ones are a few hundred bytes.
MAX_ENV_BYTES = 1024 * 1024
# Variables given to all services together: the YAML bound on nodes, for the
# same reason (one env file shared by 2,000 services is 2,000 copies of it).
MAX_VARIABLES = 30_000
# Go's unicode.IsSpace, which strips a line's start (Python's str.isspace
# also takes the ASCII separators 0x1c-0x1f, which Go keeps).
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


@dataclass
class Environments:
    """Each service's environment as its tasks will get it, and what went wrong reading it.

    ``variables`` maps a service to its variables (None: set without a value,
    as Docker passes it); ``origins`` says which came from an env file;
    ``problems`` are (path in the stack, message).
    """

    variables: dict[str, dict[str, str | None]] = field(default_factory=dict)
    origins: dict[str, dict[str, EnvOrigin]] = field(default_factory=dict)
    problems: list[tuple[PathParts, str]] = field(default_factory=list)


def working_dir_of(file: str) -> Path:
    """The directory Docker resolves env files from: the stack file's, as given."""
    if file.startswith("<"):  # <stdin>, <rendered>: no file, so the current directory
        return Path.cwd()
    return Path(os.path.abspath(file)).parent


def go_string(value: Any) -> str | None:
    """An environment value as Docker's loader turns it into a string (fmt.Sprint)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _own(environment: Any) -> dict[str, str | None]:
    """``environment:`` as a mapping or a ``KEY[=VALUE]`` list (docker/cli's transform)."""
    if isinstance(environment, dict):
        return {str(k): go_string(v) for k, v in environment.items()}
    found: dict[str, str | None] = {}
    for item in environment if isinstance(environment, list) else []:
        key, eq, value = str(item).partition("=")
        found[key] = value if eq else None
    return found


def _env_file_entries(value: Any) -> list[tuple[int | None, str]] | None:
    """The env files a service names, with their index; None if the schema must refuse it."""
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(enumerate(value))
    return None


class _Refused(Exception):
    """Why Docker will not read an env file, or (``bound``) why the linter does not."""

    def __init__(self, reason: str, bound: bool = False) -> None:
        super().__init__(reason)
        self.bound = bound


class _Reader:
    """Reads each env file once per stack, within the stack's budget."""

    def __init__(self, working_dir: Path, environ: Mapping[str, str]) -> None:
        self.working_dir, self.environ = working_dir, environ
        self.budget = MAX_ENV_BYTES
        self.read: dict[Path, list[tuple[str, str, int]] | _Refused] = {}

    def path_of(self, name: str) -> Path:
        """As Go's filepath.Join: an absolute name stays absolute, ``..`` is folded."""
        return Path(os.path.normpath(self.working_dir / name))

    @property
    def exhausted(self) -> bool:
        """The budget is spent: one problem said so, and no further file is read."""
        return self.budget < 0

    def variables(self, name: str) -> list[tuple[str, str, int]]:
        path = self.path_of(name)
        if path not in self.read:
            try:
                self.read[path] = parse(self._bytes(path), self.environ)
            except _Refused as exc:
                self.read[path] = exc
        found = self.read[path]
        if isinstance(found, _Refused):
            raise found
        return found

    def _bytes(self, path: Path) -> bytes:
        try:
            # Non-blocking: a FIFO must not hang the linter before fstat says what it is.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _Refused("no such file") from None
        except OSError as exc:
            raise _Refused(f"cannot open it: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise _Refused("a directory, not an env file")
            if not stat.S_ISREG(info.st_mode):
                raise _Refused(
                    "not a regular file (a device, FIFO or socket): not read, since it may "
                    "never end",
                    bound=True,
                )
            data = os.read(fd, self.budget + 1) if info.st_size <= self.budget else b""
        finally:
            os.close(fd)
        self.budget -= max(len(data), info.st_size)
        if self.budget < 0:
            raise _Refused(
                f"the stack's env files hold more than {MAX_ENV_BYTES // 1024} KiB together: "
                "refused as too large to judge (no other env file is read)",
                bound=True,
            )
        return data


def parse(data: bytes, environ: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """``KEY=VALUE`` lines → (key, value, line), as docker/cli's kvfile.Parse reads them.

    Raises _Refused with kvfile's reason for a file Docker refuses.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # bufio.Scanner gives no empty token after the last newline
    found = []
    for number, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")
        if len(raw) >= MAX_LINE:
            raise _Refused(f"line {number} is longer than 64 KiB (Docker: token too long)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(f"invalid utf8 bytes at line {number}") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        line = text.lstrip(_GO_SPACE)
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not key:
            raise _Refused(f"line {number} has no variable name: '{line}'")
        if " " in key or "\t" in key:
            raise _Refused(f"line {number}: variable '{key}' contains whitespace")
        if eq:
            found.append((key, value, number))
        elif key in environ:
            found.append((key, environ[key], number))
    return found


def resolve_environments(
    services: Mapping[str, dict[str, Any]], working_dir: Path, environ: Mapping[str, str]
) -> Environments:
    """Every service's environment, merged from its env files and ``environment:``.

    Services whose ``environment`` or ``env_file`` the schema refuses are
    left out (their problem is the schema's).
    """
    reader = _Reader(working_dir, environ)
    done = Environments()
    total = 0
    for name, service in services.items():
        if "env_file" not in service and "environment" not in service:
            continue
        environment = service.get("environment")
        entries = _env_file_entries(service.get("env_file", []))
        if entries is None or not isinstance(environment, dict | list | None):
            continue
        variables, origins = _merge(name, entries, _own(environment), reader, environ, done)
        if reader.exhausted:
            return done
        total += len(variables)
        if total > MAX_VARIABLES:
            done.problems.append(
                (
                    ("services", name),
                    f"the services' environments hold more than {MAX_VARIABLES:,} variables "
                    "together (env files shared by many services count for each); refused "
                    "as too large to judge",
                )
            )
            return done
        done.variables[name] = variables
        if origins:
            done.origins[name] = origins
    return done


def _merge(
    service: str,
    entries: Iterable[tuple[int | None, str]],
    own: dict[str, str | None],
    reader: _Reader,
    environ: Mapping[str, str],
    done: Environments,
) -> tuple[dict[str, str | None], dict[str, EnvOrigin]]:
    from_files: dict[str, tuple[str, EnvOrigin]] = {}
    for entry, name in entries:
        if reader.exhausted:
            break
        where = ("services", service, "env_file") + (() if entry is None else (entry,))
        try:
            for key, value, line in reader.variables(name):
                from_files[key] = (value, EnvOrigin(entry, name, line))
        except _Refused as exc:
            path = reader.path_of(name)
            tail = "" if exc.bound else "; docker stack deploy refuses the stack"
            done.problems.append((where, f"env file '{name}' ({path}): {exc}{tail}"))
    variables: dict[str, str | None] = {}
    origins: dict[str, EnvOrigin] = {}
    for key, (value, origin) in from_files.items():
        if value == "" and key in environ:
            variables[key] = environ[key]  # an empty value takes this process's
        else:
            variables[key], origins[key] = value, origin
    for key, own_value in own.items():  # environment: wins over every env file
        origins.pop(key, None)
        if own_value in (None, "") and key in environ:
            variables[key] = environ[key]
        else:
            variables[key] = own_value
    return variables, origins
