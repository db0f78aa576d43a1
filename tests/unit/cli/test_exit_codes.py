"""One exit code rule for every task and target (errors.EXIT_CODES).

Seen on f6d6f43: ``render -r 1001`` exited 1 for the Swarm target and 2 for
compose and Kubernetes; an undecodable file exited 2 and an empty one 1;
a policy file exited 1 among validate's files and 2 as --policy; standard
input that was not UTF-8 was a bug (exit 3).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "tests" / "cases" / "positive" / "plain-stack" / "stack.yml"
BROKEN_POLICY = "version: 1\nroles:\n  worker: {start: 7000, end: 6000}\n"


@pytest.mark.parametrize("target", ["swarm", "compose", "kubernetes"])
def test_a_policy_refusal_exits_1_for_every_target(cli, target: str, tmp_path: Path) -> None:
    # A blocked port inside the workers' slots: no target can render around it
    # (Swarm splits more workers than the range into groups, so a count alone
    # is no longer a refusal there).
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "version: 1\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
        "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7999}\n"
        "control: {start: 6100, end: 6109}\nblocked_ports: [7500]\n"
    )
    out = tmp_path / "stack.yml"
    done = cli("render", "--target", target, "-r", "600", "-p", str(policy), "-o", str(out))
    assert done.code == 1, (target, done.err)
    assert "7500" in done.out + done.err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", 1),  # empty
        (b"services: [\n", 1),  # unparsable
        (b"services:\n  w:\n    image: caf\xe9\n", 1),  # not UTF-8
        (b"#" * (1024 * 1024 + 1), 1),  # too large to be a stack
    ],
    ids=["empty", "unparsable", "undecodable", "too-large"],
)
def test_a_file_that_was_read_and_is_invalid_exits_1(
    cli, tmp_path: Path, content: bytes, code: int
) -> None:
    path = tmp_path / "stack.yml"
    path.write_bytes(content)
    assert cli("validate", str(path)).code == code
    policy = cli("validate", str(STACK), "--policy", str(path))
    assert policy.code == code, policy.err


def test_input_that_cannot_be_read_exits_2(cli, tmp_path: Path) -> None:
    assert cli("validate", str(tmp_path / "absent.yml")).code == 2
    assert cli("validate", str(tmp_path)).code == 2  # a directory given as a file
    assert cli("validate", str(STACK), "--policy", str(tmp_path / "absent.yml")).code == 2
    assert cli("render", "--policy", str(tmp_path)).code == 2


def test_a_policy_fails_alike_given_as_a_file_or_as_the_policy(cli, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text(BROKEN_POLICY)
    among_files = cli("validate", str(policy))
    as_policy = cli("validate", str(STACK), "--policy", str(policy))
    for_render = cli("render", "--policy", str(policy))
    assert among_files.code == as_policy.code == for_render.code == 1
    assert "policy.yml::$.roles: missing required key: 'special'" in as_policy.err


def test_standard_input_is_read_as_a_file_is() -> None:
    """Through the installed command: real bytes on a real pipe."""
    command = [str(Path(sys.executable).parent / "cqkd-stack"), "validate", "-"]
    bad = subprocess.run(command, input=b"services:\n  w: {image: caf\xe9}\n", capture_output=True)
    assert bad.returncode == 1, bad.stderr
    assert b"<stdin>: not UTF-8 text" in bad.stderr and b"Traceback" not in bad.stderr
    big = subprocess.run(command, input=b"#" * (1024 * 1024 + 1), capture_output=True)
    assert big.returncode == 1 and b"<stdin>: larger than 1 MiB" in big.stderr
    good = subprocess.run(command, input=STACK.read_bytes(), capture_output=True)
    assert good.returncode == 0, good.stderr


def test_an_output_that_cannot_be_written_exits_2(cli, tmp_path: Path) -> None:
    assert cli("render", "-o", str(tmp_path / "missing" / "stack.yml")).code == 2


def test_a_bug_exits_3_with_its_own_message(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from cqkd_stack.targets.registry import TARGETS

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("boom")

    monkeypatch.setitem(TARGETS, "swarm", dataclasses.replace(TARGETS["swarm"], render=broken))
    done = cli("render")
    assert done.code == 3
    assert "unexpected error (KeyError: 'boom'); this is a bug in cqkd-stack" in done.err


def test_standard_output_on_a_full_disk_exits_2(tmp_path: Path) -> None:
    device = tmp_path / "full"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with open(device, "w") as full:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "cqkd-stack"), "render", "-r", "3"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "cqkd-stack: error: standard output: cannot write: No space left on device"
    )


def test_the_error_type_the_container_raises_exits_invalid_by_default() -> None:
    """``node.errors.CqkdError`` writes INVALID out (it may import nothing): the same 1."""
    from cqkd_stack.core.errors import INVALID, CqkdError
    from cqkd_stack.node import errors

    assert errors.CqkdError is CqkdError
    assert CqkdError("x").exit_code == INVALID
