"""The README's two commands: what a new user runs as root, so nothing in them may surprise.

They run in the project's top directory, from a checkout or an unpacked
source archive, and name no repository address: run as root, a clone of an
address nobody showed to be the project's would fetch and execute whatever
lives there. CI (.ci/run) runs the second one exactly as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"


def commands() -> list[str]:
    """The README's first ```sh block, a command a line."""
    text = README.read_text()
    block = re.search(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert block, "README.md has no ```sh block"
    return block.group(1).splitlines()


def steps(command: str) -> list[str]:
    return [step.strip() for step in command.split("&&")]


def test_two_commands_that_name_no_address_and_fetch_no_source() -> None:
    lines = commands()
    assert len(lines) == 2
    for line in lines:
        assert "://" not in line, line
        assert not re.search(r"\bgit\b", line), f"git is not needed: {line}"
        assert not re.search(r"\b(curl|wget|cd)\b", line), line


def test_both_start_in_the_top_directory_with_the_same_install() -> None:
    deploy, test = (steps(line) for line in commands())
    install = [
        "apt-get update",
        "apt-get install -y python3-venv",
        "python3 -m venv .venv",
        ".venv/bin/pip install -e '.[node,test]'",
    ]
    assert deploy[:4] == install and test[:4] == install
    # One task per invocation of the installed command: no chaining of tasks.
    assert deploy[4:] == [".venv/bin/cqkd-stack setup", ".venv/bin/cqkd-stack deploy --replicas 50"]
    assert test[4:] == [".venv/bin/invoke test"]
    for step in deploy + test:
        shlex.split(step)  # each step is one well-formed shell command


def test_no_address_of_a_repository_anywhere_in_the_docs() -> None:
    for path in [README, *sorted((REPO / "docs").rglob("*.md"))]:
        text = path.read_text()
        assert "github.com/cqkd" not in text, path
        assert "git clone" not in text, path


def test_ci_runs_the_readme_s_test_command_in_the_checkout_itself() -> None:
    """.ci/run extracts the second line and runs it where the clone is: no link, no cd elsewhere."""
    script = CI_RUN.read_text()
    assert "ln -s" not in script and "mktemp" not in script
    extract = re.search(r"test_command=\$\((.*)\)\n", script)
    assert extract, "no test_command=$(...) line in .ci/run"
    found = subprocess.run(
        ["bash", "-c", extract.group(1)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == commands()[1]
    assert script.rstrip().endswith('exec bash -c "$test_command"')
