"""env_file as docker/cli reads it: the file format, the merge, and the bounds.

``tests/e2e/test_docker_loader.py`` compares the merged environments with
``docker stack config``; these tests pin each rule and the bounds a hostile
stack meets (a FIFO, /dev/zero, one big file shared by thousands of services).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cqkd_stack.lint.env_files import MAX_ENV_BYTES, MAX_VARIABLES, parse, working_dir_of
from cqkd_stack.lint.stackfile import load_stack


def variables(data: bytes, environ: dict[str, str] | None = None) -> dict[str, str]:
    return {key: value for key, value, _ in parse(data, environ or {})}


def test_lines_are_taken_as_written() -> None:
    data = b'\xef\xbb\xbfA=1\n  B=two words \n# C=3\n\nD="quoted"\r\nE=${X}\nF=a=b'
    assert variables(data) == {
        "A": "1",
        "B": "two words ",
        "D": '"quoted"',
        "E": "${X}",
        "F": "a=b",
    }


def test_a_name_alone_takes_this_process_s_value_or_is_left_out() -> None:
    assert variables(b"SET\nUNSET\n", {"SET": "yes"}) == {"SET": "yes"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"A B=1\n", "variable 'A B' contains whitespace"),
        (b"=1\n", "line 1 has no variable name"),
        (b"A=1\nB=\xff\n", "invalid utf8 bytes at line 2"),
        (b"A=" + b"x" * (64 * 1024) + b"\n", "longer than 64 KiB"),
    ],
)
def test_what_docker_refuses_in_an_env_file(data: bytes, reason: str) -> None:
    with pytest.raises(Exception, match=reason):
        parse(data, {})


def stack(env_file: str, environment: str = "{TASK_SLOT: '{{.Task.Slot}}'}") -> str:
    return (
        "services:\n  worker:\n    image: x\n"
        f"    env_file: {env_file}\n    environment: {environment}\n"
    )


def test_relative_to_the_stack_file_s_directory_not_the_current_one(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.env").write_text("DHT_PORT=7000\n")
    (tmp_path / "sub" / "stack.yml").write_text(stack("w.env"))
    loaded = load_stack(stack("w.env"), str(tmp_path / "sub" / "stack.yml"), {})
    assert loaded.doc is not None, loaded.problems
    assert loaded.doc["services"]["worker"]["environment"] == {
        "DHT_PORT": "7000",
        "TASK_SLOT": "{{.Task.Slot}}",
    }
    assert str(loaded.env_origins["worker"]["DHT_PORT"]) == "w.env, line 1"
    assert working_dir_of("<stdin>") == Path.cwd()


def test_environment_wins_and_an_empty_value_takes_the_process_s(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("PORT_OFFSET=5\nBASE_PORT=7000\nBLANK=\n")
    (tmp_path / "b.env").write_text("BASE_PORT=7100\n")
    text = stack("[a.env, b.env]", "{PORT_OFFSET: '0', EMPTY: '', NIL: null}")
    environ = {"BLANK": "shell", "EMPTY": "shell too"}
    loaded = load_stack(text, str(tmp_path / "stack.yml"), environ)
    assert loaded.doc is not None, loaded.problems
    assert loaded.doc["services"]["worker"]["environment"] == {
        "PORT_OFFSET": "0",  # environment: wins over the file
        "BASE_PORT": "7100",  # the later file wins
        "BLANK": "shell",
        "EMPTY": "shell too",
        "NIL": None,
    }
    assert set(loaded.env_origins["worker"]) == {"BASE_PORT"}


def refusal(tmp_path: Path, entry: str) -> str:
    start = time.monotonic()
    loaded = load_stack(stack(entry), str(tmp_path / "stack.yml"), {})
    assert time.monotonic() - start < 1
    assert loaded.doc is None
    (problem,) = loaded.problems
    assert problem.path.startswith("$.services.worker.env_file") and problem.line == 4
    return problem.message


def test_a_missing_env_file_is_a_problem_as_docker_makes_it(tmp_path: Path) -> None:
    message = refusal(tmp_path, "missing.env")
    assert message == (
        f"env file 'missing.env' ({tmp_path / 'missing.env'}): no such file; "
        "docker stack deploy refuses the stack"
    )


def test_a_fifo_a_device_or_a_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.env")
    assert "not a regular file" in refusal(tmp_path, "fifo.env")
    assert "not a regular file" in refusal(tmp_path, "/dev/zero")
    assert "a directory" in refusal(tmp_path, str(tmp_path))


def test_env_files_are_bounded_together(tmp_path: Path) -> None:
    line = b"A=" + b"x" * 98 + b"\n"
    (tmp_path / "big.env").write_bytes(line * (MAX_ENV_BYTES // 100 + 1))
    assert f"more than {MAX_ENV_BYTES // 1024} KiB" in refusal(tmp_path, "big.env")
    for half in ("a.env", "b.env", "c.env"):  # each under the bound, not together
        (tmp_path / half).write_bytes(line * (MAX_ENV_BYTES // 200 + 1))
    # One problem, then nothing more is read.
    message = refusal(tmp_path, "[a.env, b.env, c.env]")
    assert f"more than {MAX_ENV_BYTES // 1024} KiB together" in message
    assert "docker stack deploy refuses" not in message  # the linter's bound, not Docker's


def test_one_env_file_shared_by_thousands_of_services_is_bounded(tmp_path: Path) -> None:
    """Read once, but each service gets its copy: the copies are what is bounded."""
    (tmp_path / "w.env").write_text("".join(f"V{i}=1\n" for i in range(100)))
    services = "".join(f"  w{i}: *w\n" for i in range(MAX_VARIABLES // 100 + 1))
    text = f"x-w: &w {{image: x, env_file: w.env}}\nservices:\n{services}"
    start = time.monotonic()
    loaded = load_stack(text, str(tmp_path / "stack.yml"), {})
    assert time.monotonic() - start < 1
    assert loaded.doc is None
    assert any(f"more than {MAX_VARIABLES:,} variables" in p.message for p in loaded.problems)
