"""Running the outside programs the toolkit drives (apt, pip, debootstrap, docker CLI).

One way to run them, so every failure reads the same: what was being done,
the exit code, and the last lines the program said.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import CqkdError

# What long work tells whoever shows it: a line of news ...
Say = Callable[[str], None]
# ... or where it stands: (done, total, what), as a progress bar draws it.
Progress = Callable[[int, int, str], None]


def tail(text: str, lines: int = 15) -> str:
    """The end of a program's output: where its reason for failing usually is."""
    return "\n".join(text.strip().splitlines()[-lines:])


def say(progress: Say | None, message: str) -> None:
    if progress is not None:
        progress(message)


def run(
    argv: Sequence[str],
    what: str,
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``check``, a non-zero exit becomes a CqkdError naming ``what``."""
    try:
        done = subprocess.run(
            list(argv),
            env=env,
            input=input,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise CqkdError(f"cannot run {what}: {exc}") from exc
    if check and done.returncode != 0:
        raise CqkdError(
            f"{what} failed (exit {done.returncode}):\n{tail(done.stderr or done.stdout)}"
        )
    return done
