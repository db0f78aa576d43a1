"""The installed ``cqkd-stack`` command: Invoke's Program over our task collection."""

from __future__ import annotations

import os
import sys

from invoke import Argument, Exit, ParseError, Program

from . import __version__
from .tasks import ns

TASKS_WITH_FILES = {"validate"}
# validate's options that take a value: the word after one is not a file.
VALUE_FLAGS = ("--policy", "-p", "--format", "-f", "--file", "--target")


class CqkdProgram(Program):
    """Lets ``cqkd-stack validate a.yml b.yml`` (a shell glob) mean several files.

    Invoke would read ``b.yml`` as a second task; a linter run from CI is
    called with a glob, so after ``validate`` every further bare word that is
    not a task name is taken as ``--file WORD``.
    """

    def run(self, argv: list[str] | str | None = None, exit: bool = True) -> None:
        args = list(sys.argv if argv is None else argv.split() if isinstance(argv, str) else argv)
        names = set(ns.task_names)
        super().run(_help_first(_files_as_flags(_dotted(args, names), names)), exit=exit)

    def core_args(self) -> list[Argument]:
        """Invoke's own flags plus ``--host``/``-H``, as on the docker CLI."""
        return [
            *super().core_args(),
            Argument(
                names=("host", "H"),
                help="Docker engine (a swarm manager) to talk to, e.g. tcp://10.0.0.2:2375; "
                "sets DOCKER_HOST for this run and for the docker CLI it calls",
            ),
        ]

    def parse_core(self, argv: list[str] | None) -> None:
        """Apply ``--host`` before any task connects: the SDK and the CLI both read DOCKER_HOST."""
        super().parse_core(argv)
        host = self.args.host.value
        if host:
            os.environ["DOCKER_HOST"] = host

    def parse_collection(self) -> None:
        """Read ``invoke.yaml`` in the current directory, as ``invoke`` does in a checkout.

        Invoke loads project configuration from the directory of a tasks file
        it finds; the installed command brings its tasks along, so it looks
        where the operator runs it.
        """
        super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def parse_tasks(self) -> None:
        """A malformed command line is a usage error: exit 2, as linters do, not 1.

        A value of the wrong type (``--replicas abc``) is one too: Invoke lets
        the conversion's ValueError escape as a traceback.
        """
        try:
            super().parse_tasks()
        except ParseError as exc:
            raise Exit(f"cqkd-stack: error: {exc}", code=2) from None
        except ValueError as exc:
            raise Exit(f"cqkd-stack: error: a flag's value is not valid: {exc}", code=2) from None


def _help_first(argv: list[str]) -> list[str]:
    """``TASK --help`` as ``--help TASK`` for tasks that take files.

    ``validate`` takes its files positionally, and Invoke hands a positional
    argument the next word even when it is ``--help``: "--help: no such file".
    """
    for index, word in enumerate(argv[1:-1], start=1):
        if word in TASKS_WITH_FILES and argv[index + 1] in ("--help", "-h"):
            return [*argv[:index], "--help", word, *argv[index + 2 :]]
    return argv


def _dotted(argv: list[str], task_names: set[str]) -> list[str]:
    """``cluster up`` as ``cluster.up``: a sub-collection's task in two words.

    Invoke names such a task with a dot; the two-word form is how the docker
    CLI reads (``docker swarm init``). Two words join only when the joined
    name is a task, so no other command line changes.
    """
    out: list[str] = []
    for word in argv:
        if out and f"{out[-1]}.{word}" in task_names and out[-1] not in task_names:
            out[-1] = f"{out[-1]}.{word}"
        else:
            out.append(word)
    return out


def _files_as_flags(argv: list[str], task_names: set[str]) -> list[str]:
    out: list[str] = []
    in_files_task = False
    seen_positional = False
    expects_value = False
    for word in argv:
        if word in TASKS_WITH_FILES:
            in_files_task, seen_positional = True, False
            out.append(word)
            continue
        is_flag = word.startswith("-") and word != "-"  # a lone "-" is standard input
        if in_files_task and not expects_value and not is_flag:
            if word in task_names:
                in_files_task = False
            elif seen_positional:
                out += ["--file", word]
                continue
            else:
                seen_positional = True
        expects_value = in_files_task and word in VALUE_FLAGS
        out.append(word)
    return out


program = CqkdProgram(namespace=ns, version=__version__, name="cqkd-stack", binary="cqkd-stack")
