"""The installed ``cqkd-stack`` command: one task per run, as docker, kubectl and git.

Invoke's ``Program`` runs every word that names a task as one more task:
``cqkd-stack validate *`` in a folder holding a directory called ``render``
validated the stacks and then ran ``render``; a folder named ``deploy`` or
``teardown`` would have run that from CI. Here the first word after the
command's own options names the one task, and every later word is that
task's: an option of it, an option's value, or (for ``validate``) a file.

The command's own options are only those that mean something for it
(``--help``, ``--version``, ``--list``, ``--host``, completion); Invoke's
others (``--dry``, which echoed nothing and deployed anyway, ``-f``/``--config``,
``--pty``, ``--echo``...) are unknown options here. ``invoke`` in a checkout
uses the same tasks with Invoke's own habits.

Every word is checked before Invoke's parser assigns it, so each refusal
names the option and the value and suggests what was probably meant, with
exit 2 (``errors.EXIT_CODES``); a failure of this code itself exits 3.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import shlex
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Argument, Config, Exit, ParseError, Program
from invoke.completion.complete import print_completion_script
from invoke.parser import Parser, ParserContext
from invoke.parser.context import flag_key, to_flag
from invoke.terminals import pty_size
from invoke.util import helpline

from .. import __version__
from ..core.errors import BUG, EXIT_CODES, USAGE, CqkdError, UsageError
from .settings import SECTION, check_project_file, project_file
from .tasks import ns

WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
HELP_FLAGS = ("--help", "-h")


@dataclass
class TaskWords:
    """One task's words, sorted: option tokens for Invoke's parser, and the arguments."""

    flags: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    help: bool = False


class CqkdProgram(Program):
    """Invoke's Program with one task per run and no option that does nothing."""

    def core_args(self) -> list[Argument]:
        """The command's own options; Invoke's run-time ones have nothing to act on here."""
        return [
            Argument(
                names=("help", "h"),
                optional=True,
                help="show this help, or a task's (cqkd-stack TASK --help), and exit",
            ),
            Argument(names=("version", "V"), kind=bool, default=False, help="show the version"),
            Argument(names=("list", "l"), kind=bool, default=False, help="list the tasks"),
            Argument(
                names=("host", "H"),
                help="Docker engine (a swarm manager) to talk to, e.g. tcp://10.0.0.2:2375; "
                "sets DOCKER_HOST for this run and for the docker CLI it calls "
                "(default: DOCKER_HOST, else the docker CLI's current context)",
            ),
            Argument(
                names=("print-completion-script",),
                default="",
                help="print the shell completion script (bash, zsh or fish) and exit "
                "(default: none)",
            ),
            Argument(
                names=("complete",),
                kind=bool,
                default=False,
                help="print completions for the words after -- (the completion script's "
                "call) (default: off)",
            ),
        ]

    def create_config(self) -> None:
        """A config without Invoke's /etc/invoke.* and ~/.invoke.* files.

        Invoke would read (and for a ``.py``, execute) them for every run; the
        command's settings are ``invoke.yaml`` where it runs, and the environment.
        """
        self.config = self.config_class(lazy=True)

    def run(self, argv: list[str] | str | None = None, exit: bool = True) -> None:
        """Invoke's run, with every failure of parsing or of this code given an exit code."""
        try:
            super().run(argv, exit=exit)
        except BrokenPipeError:
            # The reader went away (`cqkd-stack --help | head`): nothing to say to it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if exit:
                sys.exit(USAGE)
        except CqkdError as exc:
            self._fail(exc.message, exc.exit_code, exit)
        except Exception as exc:  # the boundary: report, never swallow
            self._fail(
                f"unexpected error ({type(exc).__name__}: {exc}); "
                "this is a bug in cqkd-stack, please report it",
                BUG,
                exit,
            )

    def _fail(self, message: str, code: int, exit: bool) -> None:
        print(f"{self.binary}: error: {message}", file=sys.stderr)
        if exit:
            sys.exit(code)

    def parse_core(self, argv: list[str] | None) -> None:
        """The command's own options, then ``--version`` and the completion script at once."""
        self.normalize_argv(argv)
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit
        shell = self.args["print-completion-script"].value
        if shell:
            try:
                print_completion_script(shell=shell, names=self.binary_names)
            except ParseError:
                raise UsageError(
                    f"--print-completion-script takes bash, zsh or fish, got {shell!r}"
                ) from None
            raise Exit
        host = self.args.host.value
        if host:
            os.environ["DOCKER_HOST"] = host

    def parse_core_args(self) -> None:
        """Options before the task name; the task's words are kept whole in ``core.unparsed``.

        Invoke would split the command line at ``--`` and keep what follows as
        one joined string; that is kept only for ``--complete``, whose caller
        sends the words being completed that way.
        """
        words = self.argv[1:]
        context = self.initial_context
        flags, rest = _core_words(words, context)
        self.core = Parser(initial=context).parse_argv(flags)
        if rest[:1] == ["--"]:
            if self.args.complete.value:
                self.core.remainder = " ".join(rest[1:])
                return
            rest = rest[1:]
        self.core.unparsed = rest

    def parse_collection(self) -> None:
        """The bundled tasks, and ``invoke.yaml`` in the current directory once it is checked.

        Invoke loads project settings from the directory of a tasks file it
        finds; the installed command brings its tasks along, so it looks where
        the operator runs it.
        """
        super().parse_collection()
        found = project_file(Path.cwd())
        if found is None:
            return
        known = self.collection.configuration().get(SECTION, {})
        if check_project_file(found, known, Config.global_defaults()):
            self.config.set_project_location(os.getcwd())
            self.config.load_project()

    def parse_tasks(self) -> None:
        """The one task the first word names; every later word is its own.

        ``cluster up`` names the sub-collection's task in two words, as the
        docker CLI reads ``docker swarm init`` (Invoke's ``cluster.up`` works
        too). A word that is not an option or a value goes to the task's
        arguments (``validate``'s files) or is refused: it never starts a task.
        """
        self.tasks = []
        words = list(self.core.unparsed)
        asked = self.args.help.value
        if isinstance(asked, str):
            words = [asked, *words]  # --help TASK
        if self.args.complete.value or not words:
            return
        name, rest = self._task_name(words)
        task = self.collection[name]
        context = self.task_context(name)
        given = _task_words(rest, context, self.initial_context, _display(name))
        if given.help or asked:
            self.args.help.value = name
            return
        variadic = getattr(task, "variadic", None)
        if given.arguments and variadic is None:
            raise UsageError(
                f"{_display(name)} takes no arguments, got {given.arguments[0]!r} "
                f"(its options: {self.binary} {_display(name)} --help)"
            )
        try:
            parsed = Parser(initial=ParserContext(), contexts=[context]).parse_argv(
                [name, *given.flags]
            )
        except ParseError as exc:  # every word was checked above; this would be a bug
            raise RuntimeError(f"Invoke's parser refused checked words: {exc}") from None
        parsed_task = next(c for c in parsed if c.name == name)
        if variadic is not None:
            parsed_task.add_arg(Argument(name=variadic, kind=list))
            for word in given.arguments:
                parsed_task.args[variadic].value = word
        self.tasks = [parsed_task]

    def _task_name(self, words: list[str]) -> tuple[str, list[str]]:
        first = words[0]
        names = self.collection.task_names
        if first in self.collection.collections:
            tasks = list(self.collection.collections[first].tasks)
            second = words[1] if len(words) > 1 else ""
            if f"{first}.{second}" in names:
                return f"{first}.{second}", words[2:]
            close = difflib.get_close_matches(second, tasks, n=1) if second else []
            hint = f" (did you mean '{first} {close[0]}'?)" if close else ""
            raise UsageError(
                f"'{first}' needs one of its tasks: "
                + ", ".join(f"{first} {t}" for t in tasks)
                + (f"; got {second!r}{hint}" if second else "")
            )
        if first in names:
            return first, words[1:]
        shown = self._task_display_names()
        close = difflib.get_close_matches(first, [*shown, *self.collection.collections], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(f"no task named {first!r}{hint}; {self.binary} --list shows them")

    def _task_display_names(self) -> list[str]:
        """Task names as typed: ``setup``, ``cluster up``, in the collection's own order."""
        shown = list(self.collection.tasks)
        for sub, collection in self.collection.collections.items():
            shown += [f"{sub} {name}" for name in collection.tasks]
        return shown

    def task_context(self, name: str) -> ParserContext:
        """A task's options as this command offers them: without its hidden arguments.

        A task's positional argument and its ``variadic`` list are filled from
        the words after its options, so they are not options here (``validate``
        shows no ``--files`` and no ``--file``).
        """
        task = self.collection[name]
        hidden = {*task.positional, getattr(task, "variadic", None)}
        arguments = [a for a in task.get_arguments() if a.name not in hidden]
        return ParserContext(name=name, args=arguments)

    def update_config(self, merge: bool = True) -> None:
        """No run-time overrides: the options Invoke derives them from are not offered."""
        if merge:
            self.config.merge()

    def parse_cleanup(self) -> None:
        """Help, the task list and completion end the run; no task means the help."""
        asked = self.args.help.value
        if asked is True:
            self.print_help()
            raise Exit
        if asked:
            known = asked in self.collection.task_names
            self.print_task_help(asked if known else self._task_name([asked])[0])
            raise Exit
        if self.args.list.value:
            self.list_tasks()
            raise Exit
        if self.args.complete.value:
            self.print_completions()
            raise Exit
        if not self.tasks:
            self.print_help()
            raise Exit

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--host HOST] TASK [TASK OPTIONS] [ARGUMENTS]")
        print(f"       {self.binary} --help | --version | --list")
        print("")
        print("One task per run: every word after the task's name is that task's own")
        print(f"(an option, its value, or for validate a file). '{self.binary} TASK --help'")
        print("shows a task's options and their defaults.")
        print("")
        print("Options (before the task):")
        print("")
        self.print_columns(self.initial_context.help_tuples())
        self.list_tasks()
        self.print_exit_codes()

    def print_task_help(self, name: str) -> None:
        """Usage, the task's docstring, every option with its default, the exit codes."""
        task = self.collection[name]
        context = self.task_context(name)
        variadic = getattr(task, "variadic", None)
        arguments = f" {variadic.upper()}..." if variadic else ""
        print(f"Usage: {self.binary} [--host HOST] {_display(name)} [OPTIONS]{arguments}")
        print("")
        for line in (inspect.getdoc(task) or "").splitlines():
            print(f"{self.leading_indent}{line}" if line.strip() else "")
        print("")
        print("Options:")
        print("")
        rows = [
            (context.help_for(to_flag(arg.name))[0], _with_default(arg))
            for arg in sorted(context.flags.values(), key=flag_key)
        ]
        self.print_columns([*rows, ("-h, --help", "show this help")])
        self.print_exit_codes()

    def print_columns(self, tuples: Sequence[tuple[str, str | None]]) -> None:
        """Invoke's two columns, without breaking a word at its hyphens.

        ``cqkd-dht-node:0.1.0`` split over two lines cannot be copied back.
        """
        width = max(len(name) for name, _ in tuples)
        indent = self.leading_indent_width + width + self.col_padding
        wrapper = textwrap.TextWrapper(
            width=max(pty_size()[0] - 1, indent + 20),
            initial_indent=" " * indent,
            subsequent_indent=" " * indent,
            break_on_hyphens=False,
            break_long_words=False,
        )
        for name, text in tuples:
            lines = wrapper.wrap(text or "") or [""]
            padded = self.leading_indent + name.ljust(width) + " " * self.col_padding
            print((padded + lines[0][indent:]).rstrip())
            for line in lines[1:]:
                print(line)
        print("")

    def print_exit_codes(self) -> None:
        print("Exit codes (every task, every target):")
        print("")
        self.print_columns([(str(code), meaning) for code, meaning in EXIT_CODES])

    def list_tasks(self) -> None:
        print("Tasks:")
        print("")
        pairs = [
            (shown, helpline(self.collection[shown.replace(" ", ".")]))
            for shown in self._task_display_names()
        ]
        self.print_columns(pairs)

    def print_completions(self) -> None:
        """Candidates for the word being typed: a task, a task's option, else the shell's files.

        The completion script (``--print-completion-script``) sends the whole
        line after ``--``; the last word is the one being completed.
        """
        try:
            words = shlex.split(self.core.remainder)
        except ValueError:  # an open quote while typing
            words = self.core.remainder.split()
        if words and os.path.basename(words[0]) in self.binary_names:
            words = words[1:]
        typed = words[-1] if words else ""
        before = _after_core_options(words[:-1] if words else [], self.initial_context)
        collections = self.collection.collections
        if typed.startswith("-"):
            flags = self.initial_context.flag_names()
            if before:
                name = ".".join(before[:2]) if before[0] in collections else before[0]
                if name not in self.collection.task_names:
                    return
                flags = (*self.task_context(name).flag_names(), *HELP_FLAGS)
            print("\n".join(flags))
        elif not before:
            print("\n".join([*self.collection.tasks, *collections]))
        elif before[0] in collections and len(before) == 1:
            print("\n".join(collections[before[0]].tasks))


def _after_core_options(words: list[str], core: ParserContext) -> list[str]:
    """The words from the task's name on, skipping the command's own options and values."""
    index = 0
    while index < len(words) and _looks_like_option(words[index]):
        arg = core.flags.get(words[index])
        index += 2 if arg is not None and arg.takes_value and not arg.optional else 1
    return words[index:]


def _display(name: str) -> str:
    return name.replace(".", " ")


def _with_default(arg: Argument) -> str:
    """An option's help, ending with its default unless the help already says it."""
    text = arg.help or ""
    if "default" in text:
        return text
    if arg.kind is bool:
        return f"{text} (default: {'on' if arg.default else 'off'})"
    if arg.default in (None, ""):
        return text
    return f"{text} (default: {arg.default})"


def _core_words(words: list[str], context: ParserContext) -> tuple[list[str], list[str]]:
    """(option tokens, the words from the task's name on) of a command line.

    A task's option before the task (``cqkd-stack -f json validate``) is an
    unknown option here, never a command-wide one.
    """
    flags: list[str] = []
    seen: set[str] = set()
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--" or not _looks_like_option(word):
            return flags, words[index:]
        index = _take_option(words, index, context, flags, seen, where="")
    return flags, []


def _task_words(
    words: list[str], context: ParserContext, core: ParserContext, task: str
) -> TaskWords:
    """Sort a task's words; refuse an unknown option or a value it cannot take.

    ``--`` ends the options: every word after it is an argument, even ``-x.yml``.
    """
    given = TaskWords()
    seen: set[str] = set()
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            given.arguments += words[index + 1 :]
            break
        if not _looks_like_option(word):
            given.arguments.append(word)
            index += 1
            continue
        if word in HELP_FLAGS:
            given.help = True
            index += 1
            continue
        flag = _split_option(word, context)[0][0]
        if flag not in context.flags and flag not in context.inverse_flags and flag in core.flags:
            raise UsageError(
                f"{flag} is an option of cqkd-stack itself, not of {task}: "
                f"give it before the task (cqkd-stack {flag} ... {task})"
            )
        index = _take_option(words, index, context, given.flags, seen, where=task)
    return given


def _looks_like_option(word: str) -> bool:
    """``-x``, ``--x``; a lone ``-`` is standard input, and ``-5`` a number."""
    return word.startswith("-") and word != "-" and not WHOLE_NUMBER.fullmatch(word)


def _split_option(word: str, context: ParserContext) -> list[tuple[str, str | None]]:
    """(option, value written in the same word) pairs of one word: ``--x=1``, ``-x1``, ``-xy``.

    The forms Invoke's parser accepts, read the way it reads them.
    """
    if word.startswith("--") or "=" in word:
        flag, equals, value = word.partition("=")
        return [(flag, value if equals else None)]
    if len(word) == 2:
        return [(word, None)]
    head = word[:2]
    if head in context.flags and context.flags[head].takes_value:
        return [(head, word[2:])]
    return [(f"-{letter}", None) for letter in word[1:]]


def _take_option(
    words: list[str],
    index: int,
    context: ParserContext,
    out: list[str],
    seen: set[str],
    where: str,
) -> int:
    """Check the option at ``words[index]`` (and its value); append its tokens; the next index."""
    pairs = _split_option(words[index], context)
    index += 1
    for position, (flag, value) in enumerate(pairs):
        if flag in context.inverse_flags:
            arg = context.flags[context.inverse_flags[flag]]
            takes_value = False
        elif flag in context.flags:
            arg = context.flags[flag]
            takes_value = arg.takes_value
        else:
            raise UsageError(_unknown_option(flag, context, where))
        if arg.name in seen:
            raise UsageError(f"{_named(arg)} given twice")
        seen.add(arg.name)
        if not takes_value:
            if value is not None:
                raise UsageError(f"{flag} takes no value, got {value!r}")
            out.append(flag)
            continue
        last = position == len(pairs) - 1
        if (
            value is None
            and last
            and index < len(words)
            and not _is_option_of(words[index], context)
        ):
            value = words[index]
            index += 1
        if value is None:
            if arg.optional:
                out.append(flag)
                continue
            raise UsageError(f"{_named(arg)} needs a value{_value_hint(arg)}")
        if arg.kind is int and not WHOLE_NUMBER.fullmatch(value.strip()):
            raise UsageError(f"{_named(arg)} needs a whole number, got {value!r}")
        out += [flag, value]
    return index


def _is_option_of(word: str, context: ParserContext) -> bool:
    """Whether ``word`` is one of the context's options, so not a value for the one before."""
    if word == "--" or word in HELP_FLAGS:
        return True
    if not _looks_like_option(word):
        return False
    flag = word.partition("=")[0] if word.startswith("--") else word[:2]
    return flag in context.flags or flag in context.inverse_flags


def _named(arg: Argument) -> str:
    return to_flag(arg.names[0])


def _value_hint(arg: Argument) -> str:
    if arg.kind is int:
        return " (a whole number)"
    return f" (e.g. {to_flag(arg.names[0])}=VALUE)"


def _unknown_option(flag: str, context: ParserContext, where: str) -> str:
    offered = [*context.flags.keys(), *context.inverse_flags]
    close = difflib.get_close_matches(flag, [f for f in offered if f.startswith("--")], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if where:
        return f"{where} has no option {flag}{hint}; its options: cqkd-stack {where} --help"
    return (
        f"unknown option {flag}{hint}; cqkd-stack's own options are --help, --version, "
        "--list, --host/-H, and a task's options follow its name (cqkd-stack TASK --help)"
    )


program = CqkdProgram(namespace=ns, version=__version__, name="cqkd-stack", binary="cqkd-stack")
