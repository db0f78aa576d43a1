"""Shared test helpers: run the real CLI in-process and capture what it says."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cqkd_stack.cli.main import program

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """``cli("validate", "a.yml")`` runs the installed command's code path."""

    def run(*args: str, cwd: Path | None = None, stdin: str = "") -> CliResult:
        old, old_stdin = Path.cwd(), sys.stdin
        sys.stdin = io.StringIO(stdin)
        if cwd is not None:
            os.chdir(cwd)
        try:
            program.run(["cqkd-stack", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.chdir(old)
            sys.stdin = old_stdin
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
