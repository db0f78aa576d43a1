"""Waiting on a dockerd that is already there: it may be starting, or going away.

Real processes stand in for the daemon; the engine address points at a socket
nobody listens on, so "answers" is honestly false.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.host import engine


@pytest.fixture(autouse=True)
def _no_engine_here(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")


def test_a_daemon_that_exits_is_not_waited_for() -> None:
    """Seen: setup waited 300 s on a dockerd that was shutting down."""
    proc = subprocess.Popen(["sleep", "0.3"])
    start = time.monotonic()
    try:
        assert engine.wait_for_existing([proc.pid], timeout=30) is False
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - start < 10


def test_an_unreaped_zombie_counts_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and engine._alive(proc.pid):
        time.sleep(0.05)
    try:
        assert not engine._alive(proc.pid), "a zombie is not a daemon"
    finally:
        proc.wait()


def test_a_living_daemon_that_never_answers_times_out() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(CqkdError, match="did not answer within 1 s"):
            engine.wait_for_existing([proc.pid], timeout=1)
    finally:
        proc.kill()
        proc.wait()
