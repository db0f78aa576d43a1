"""One command, one task: no word after the task's name can start another.

Seen on f6d6f43 (the installed command, as a new user runs it):
``cqkd-stack validate *`` in a folder that also held a directory named
``render`` validated the stack and then ran ``render``; ``cqkd-stack --dry
deploy`` deployed a real stack; ``cqkd-stack -f json validate x.yml`` was an
18-frame traceback; messages were Invoke's internals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "tests" / "cases" / "positive" / "plain-stack" / "stack.yml"
POLICY = REPO / "stacks" / "port-policy.yml"
INSTALLED = Path(sys.executable).parent / "cqkd-stack"
# Invoke's core options that do nothing for this command (or, like --dry,
# claim to do something they do not): each must be refused before any task runs.
NOT_OFFERED = [
    ["--dry"],
    ["-R"],
    ["--config", "x.yml"],
    ["-f", "json"],
    ["--pty"],
    ["-p"],
    ["--echo"],
    ["-e"],
    ["--hide", "both"],
    ["--warn-only"],
    ["-w"],
    ["--prompt-for-sudo-password"],
    ["--search-root", "."],
    ["-r", "."],
    ["--collection", "x"],
    ["-c", "x"],
    ["--debug"],
    ["-d"],
    ["--write-pyc"],
    ["--command-timeout", "5"],
    ["-T", "5"],
    ["--list-format", "json"],
    ["-F", "json"],
    ["--list-depth", "1"],
    ["-D", "1"],
    ["--no-dedupe"],
]


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A DOCKER_HOST nothing answers on: a task that reached the engine would exit 1."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")


def installed(command: str, cwd: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed command through a shell, so that ``*`` is the shell's glob."""
    env = {**os.environ, **environ}
    return subprocess.run(
        f"{INSTALLED} {command}", cwd=cwd, shell=True, env=env, capture_output=True, text=True
    )


def test_a_folder_named_like_a_task_is_a_file_argument_never_a_task(tmp_path: Path) -> None:
    """The shell's glob as CI runs it: ``render`` is one more file, and not readable as one.

    Only tasks that are harmless if this breaks again are named here (render
    prints; deploy and teardown find no engine at DOCKER_HOST): on f6d6f43
    this ran render, then deploy against whatever engine it found.
    """
    (tmp_path / "a-stack.yml").write_text(STACK.read_text())
    for name in ("deploy", "render", "teardown"):
        (tmp_path / name).mkdir()
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    done = installed("validate *", cwd=tmp_path, environ=nowhere)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "deploy: is a directory, expected a YAML file" in done.stderr
    assert "services:" not in done.stdout  # render did not run
    assert "Traceback" not in done.stderr and "engine" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-stack.yml",
        "deploy",
        "render",
        "teardown",
    ]


def test_a_file_named_like_a_task_is_validated_as_a_file(
    cli, tmp_path: Path, no_engine: None
) -> None:
    (tmp_path / "render").write_text(STACK.read_text())
    (tmp_path / "teardown").write_text(STACK.read_text())
    done = cli("validate", "render", "teardown", cwd=tmp_path)
    assert done.code == 0, done.out + done.err
    assert done.out.strip() == "ok: 2 files valid"


def test_words_after_a_task_without_arguments_are_refused(cli, no_engine: None) -> None:
    for args in (("render", "-r", "3", "validate"), ("deploy", "render"), ("teardown", "x")):
        done = cli(*args)
        assert done.code == 2, (args, done.err)
        assert f"{args[0]} takes no arguments, got '{args[-1]}'" in done.err
        assert "services:" not in done.out


def test_a_double_dash_ends_the_options(cli, tmp_path: Path) -> None:
    (tmp_path / "-odd.yml").write_text(STACK.read_text())
    done = cli("validate", "--", "-odd.yml", cwd=tmp_path)
    assert done.code == 0, done.err
    assert done.out.strip() == "ok: 1 file valid"


@pytest.mark.parametrize("option", NOT_OFFERED, ids=lambda a: a[0])
def test_invokes_options_are_refused_before_the_task_runs(
    cli, no_engine: None, option: list[str]
) -> None:
    done = cli(*option, "deploy", "--replicas", "3")
    assert done.code == 2, (option, done.code, done.err)
    assert f"unknown option {option[0]}" in done.err
    assert "Traceback" not in done.err


def test_the_help_offers_only_the_commands_own_options(cli) -> None:
    done = cli("--help")
    assert done.code == 0
    offered = done.out.split("Options (before the task):")[1].split("Tasks:")[0]
    for name in ("--help", "--version", "--list", "--host", "-H", "--print-completion-script"):
        assert name in offered
    for option in NOT_OFFERED:
        assert f"{option[0]}," not in offered and f"{option[0]}=" not in offered, option
        assert f" {option[0]} " not in offered, option


def test_a_task_option_before_the_task_is_refused_with_the_way_to_give_it(cli) -> None:
    """``-f json validate x.yml`` was Invoke's --config: a traceback."""
    done = cli("-f", "json", "validate", str(STACK))
    assert done.code == 2
    assert "unknown option -f" in done.err and "a task's options follow its name" in done.err


def test_the_commands_own_option_after_the_task_is_refused(cli, no_engine: None) -> None:
    for args in (("deploy", "--version"), ("validate", str(STACK), "--host", "tcp://x:1")):
        done = cli(*args)
        assert done.code == 2, (args, done.err)
        assert "is an option of cqkd-stack itself" in done.err
        assert "give it before the task" in done.err


def test_two_words_name_a_sub_collection_task(cli) -> None:
    for args in (("cluster", "up", "--help"), ("--help", "cluster", "up"), ("cluster.up", "-h")):
        done = cli(*args)
        assert done.code == 0, (args, done.err)
        assert done.out.startswith("Usage: cqkd-stack [--host HOST] cluster up [OPTIONS]\n")
    alone = cli("cluster")
    assert alone.code == 2 and "'cluster' needs one of its tasks: cluster up, cluster down" in (
        alone.err
    )
    sideways = cli("cluster", "upp")
    assert sideways.code == 2 and "did you mean 'cluster up'?" in sideways.err


def test_a_mistyped_task_or_option_gets_a_suggestion(cli) -> None:
    for args, message in (
        (("deplo",), "no task named 'deplo' (did you mean 'deploy'?)"),
        (("valdate", "x.yml"), "no task named 'valdate' (did you mean 'validate'?)"),
        (("render", "--replica", "5"), "render has no option --replica (did you mean --replicas?)"),
        (("render", "--ouput", "x"), "(did you mean --output?)"),
        (("--verison",), "unknown option --verison (did you mean --version?)"),
        (("validate", str(STACK), "--formt", "json"), "(did you mean --format?)"),
    ):
        done = cli(*args)
        assert done.code == 2, (args, done.err)
        assert message in done.err, (args, done.err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("render", "--replicas", "1e3"), "--replicas needs a whole number, got '1e3'"),
        (("render", "-r", "abc"), "--replicas needs a whole number, got 'abc'"),
        (("render", "--replicas=2.5"), "--replicas needs a whole number, got '2.5'"),
        (("render", "-r2x"), "--replicas needs a whole number, got '2x'"),
        (("render", "--replicas"), "--replicas needs a value (a whole number)"),
        (("render", "--replicas", "--image", "x"), "--replicas needs a value"),
        (("render", "-o"), "--output needs a value"),
        (("render", "--healthcheck=yes"), "--healthcheck takes no value, got 'yes'"),
        (("render", "-r", "3", "--replicas", "4"), "--replicas given twice"),
        (("-H",), "--host needs a value"),
        (("--print-completion-script", "tcsh"), "takes bash, zsh or fish, got 'tcsh'"),
        # --verify crawls a ready Swarm stack: refused where there would be none.
        (("deploy", "--verify", "--dry-run"), "--dry-run deploys nothing"),
        (("deploy", "--verify", "--no-wait"), "--no-wait does not wait"),
        (("deploy", "--verify", "--target", "compose"), "--verify crawls a Swarm stack"),
        (("scale", "-r", "3", "--verify", "--dry-run"), "--dry-run deploys nothing"),
        # --pace raises a new Swarm stack's workers as their tasks start.
        (("deploy", "--pace", "-1"), "1 or more (0: off); got -1"),
        (("deploy", "--pace", "8", "--no-wait"), "--no-wait does not wait"),
        (("deploy", "--pace", "8", "--target", "compose"), "the compose target has no Swarm"),
    ],
)
def test_a_bad_option_value_names_the_option_and_the_value(
    cli, args: tuple[str, ...], message: str
) -> None:
    done = cli(*args)
    assert done.code == 2, (args, done.err)
    assert message in done.err
    assert (
        "<Argument" not in done.err
        and "Flag " not in done.err
        and "invalid literal" not in done.err
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--"],
        ["-"],
        ["---"],
        ["--="],
        ["-="],
        ["--help="],
        ["-H", ""],
        ["render", "-o", ""],
        ["render", "--replicas="],
        ["render", "-r="],
        ["render", "-rx"],
        ["render", "--", "x"],
        ["render", "-r", "-5"],
        ["validate", ""],
        ["validate", "-"],
        ["validate", "--", "--"],
        ["cluster", "up", "extra"],
        ["cluster.nothing"],
        ["--list", "x"],
        ["--complete"],
        ["-h", "nosuchtask"],
        ["deploy", "--no-wait=1"],
        ["validate", "--target", "swarm", "--target", "compose", "x"],
        ["\x00"],
        # Tracebacks on f6d6f43: Invoke's -f (--config), -T and -D took these.
        ["-f", "json", "validate", "x.yml"],
        ["--config", "x.json", "validate"],
        ["-T", "abc", "validate"],
        ["-D", "x", "--list"],
    ],
    ids=repr,
)
def test_no_input_is_a_traceback_or_a_bug(cli, no_engine: None, args: list[str]) -> None:
    done = cli(*args)
    assert done.code in (0, 1, 2), (args, done.code, done.err)
    assert "Traceback" not in done.err and "bug in cqkd-stack" not in done.err, done.err


def _option_rows(help_text: str) -> dict[str, str]:
    """``{"-r INT, --replicas=INT": "number of worker tasks (default: 50)"}`` of a task's help."""
    options = help_text.split("Options:\n")[1].split("Exit codes")[0]
    rows: dict[str, str] = {}
    spec = ""
    for line in options.splitlines():
        found = re.match(r"^  (-\S.*?)( {3,}(.*))?$", line)
        if found:
            spec = found.group(1)
            rows[spec] = found.group(3) or ""
        elif line.strip() and spec:
            rows[spec] += " " + line.strip()
    return rows


def test_help_shows_every_options_default(cli) -> None:
    from cqkd_stack.cli.tasks import ns

    for name in ns.task_names:
        done = cli(*name.split("."), "--help")
        assert done.code == 0, (name, done.err)
        rows = _option_rows(done.out)
        assert len(rows) > 1, name
        for spec, text in rows.items():
            assert spec == "-h, --help" or "default" in text, (name, spec, text)
    deploy = _option_rows(cli("deploy", "--help").out)
    assert deploy["-r INT, --replicas=INT"] == "number of worker tasks (default: 50)"
    assert deploy["-t INT, --timeout=INT"].endswith("(default: 600)")
    assert deploy["-i STRING, --image=STRING"].endswith("(default: cqkd-dht-node:0.1.0)")
    cluster = _option_rows(cli("cluster", "up", "--help").out)
    assert cluster["--nodes=INT"].endswith("(default: 3)")
    assert cluster["--name=STRING"].endswith("(default: cqkd-cluster)")


def test_validate_help_shows_files_as_arguments_not_options(cli) -> None:
    done = cli("validate", "--help")
    assert done.code == 0
    assert done.out.startswith("Usage: cqkd-stack [--host HOST] validate [OPTIONS] FILE...\n")
    assert "--files" not in done.out
    assert "--file" not in done.out
    assert cli("validate", "--file", str(STACK)).code == 2  # not an option of the command


def test_exit_codes_are_in_the_programs_help_and_every_tasks(cli) -> None:
    from cqkd_stack.cli.tasks import ns
    from cqkd_stack.core.errors import EXIT_CODES

    for args in (["--help"], *([*name.split("."), "--help"] for name in ns.task_names)):
        text = " ".join(cli(*args).out.split())
        assert "Exit codes (every task, every target):" in text, args
        for code, meaning in EXIT_CODES:
            assert f"{code} {' '.join(meaning.split())}" in text, (args, code)


def test_the_task_list_names_tasks_as_they_are_typed(cli) -> None:
    done = cli("--list")
    assert done.code == 0
    names = [line.strip().split("  ")[0] for line in done.out.splitlines()[2:] if line[2:3] != " "]
    assert "cluster up" in names and "cluster down" in names and "deploy" in names
    assert not any("." in name for name in names if name)


def test_completion_offers_tasks_then_the_tasks_options(cli) -> None:
    tasks = cli("--complete", "--", "cqkd-stack", "dep").out.split()
    assert "deploy" in tasks and "cluster" in tasks and "cluster.up" not in tasks
    assert cli("--complete", "--", "cqkd-stack", "cluster", "u").out.split() == ["up", "down"]
    options = cli("--complete", "--", "cqkd-stack", "deploy", "--rep").out.split()
    assert "--replicas" in options and "--dry" not in options
    core = cli("--complete", "--", "cqkd-stack", "--").out.split()
    assert "--host" in core and "--dry" not in core
    assert "complete -F" in cli("--print-completion-script", "bash").out


class TestProjectSettings:
    """invoke.yaml where the command runs: checked, named when wrong, never executed."""

    def test_a_typo_under_cqkd_is_refused_with_a_suggestion(self, cli, tmp_path: Path) -> None:
        (tmp_path / "invoke.yaml").write_text("cqkd:\n  stack: prod\n  polcy: strict.yml\n")
        done = cli("validate", str(STACK), cwd=tmp_path)
        assert done.code == 2
        assert (
            "invoke.yaml:3: unknown setting 'cqkd.polcy' (did you mean 'cqkd.policy'?)" in done.err
        )
        assert done.out == ""

    def test_a_broken_file_names_the_file_and_the_line(self, cli, tmp_path: Path) -> None:
        (tmp_path / "invoke.yaml").write_text("cqkd:\n  stack: prod\n  policy: [unclosed\n")
        done = cli("validate", str(STACK), cwd=tmp_path)
        assert done.code == 2, done.err
        assert "invoke.yaml:" in done.err and "line 4" in done.err
        assert "Traceback" not in done.err

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("cqkd: strict\n", "invoke.yaml:1: 'cqkd' must be a mapping of settings"),
            ("cqdk:\n  stack: prod\n", "unknown setting 'cqdk' (did you mean 'cqkd'?)"),
            ("cqkd:\n  stack: 5\n", "'cqkd.stack' must be a string, got int 5"),
            ("- cqkd\n", "expected a mapping"),
            ("cqkd: {stack: a}\ncqkd: {stack: b}\n", "duplicate key 'cqkd'"),
        ],
    )
    def test_what_the_command_would_not_use_is_refused(
        self, cli, tmp_path: Path, text: str, message: str
    ) -> None:
        (tmp_path / "invoke.yaml").write_text(text)
        done = cli("validate", str(STACK), cwd=tmp_path)
        assert done.code == 2, done.err
        assert message in done.err

    def test_every_setting_a_task_reads_may_be_set(self, cli, tmp_path: Path) -> None:
        """setup reads cqkd.mirror and cqkd.suite: refusing them broke a documented setting."""
        import ast

        from cqkd_stack.cli import tasks

        tree = ast.parse(Path(tasks.__file__).read_text())
        read = {
            node.args[1].value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "_setting"
            and isinstance(node.args[1], ast.Constant)
        }
        assert {"stack", "policy", "mirror", "suite"} <= read
        values = {"policy": str(POLICY)}
        text = "cqkd:\n" + "".join(f"  {key}: {values.get(key, 'x')}\n" for key in sorted(read))
        (tmp_path / "invoke.yaml").write_text(text)
        done = cli("validate", str(STACK), cwd=tmp_path)
        assert done.code == 0, done.err

    def test_an_empty_file_and_invokes_own_sections_are_fine(self, cli, tmp_path: Path) -> None:
        settings = tmp_path / "invoke.yaml"
        for text in ("", "# nothing yet\n", "run:\n  echo: true\ncqkd:\n  stack: prod\n"):
            settings.write_text(text)
            done = cli("validate", str(STACK), cwd=tmp_path)
            assert done.code == 0, (text, done.err)

    def test_an_invoke_py_is_never_executed(self, cli, tmp_path: Path) -> None:
        marker = tmp_path / "ran"
        (tmp_path / "invoke.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        home = tmp_path / "home"
        home.mkdir()
        (home / ".invoke.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        old = os.environ.get("HOME")
        os.environ["HOME"] = str(home)
        try:
            done = cli("validate", str(STACK), cwd=tmp_path)
        finally:
            if old is None:
                del os.environ["HOME"]
            else:
                os.environ["HOME"] = old
        assert done.code == 0, done.err
        assert not marker.exists()
