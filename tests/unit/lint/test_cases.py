"""The bad-input corpus: every case directory under tests/cases is one test.

negative/<case>/ holds one or more stack files, an optional policy.yml and
expected.yml (exit code, message fragments that must all appear, and
optional extra ``args`` such as ``--together``).
positive/<case>/ must validate cleanly (that Docker's own loader accepts its
stacks too is checked in tests/e2e/test_docker_loader.py: it runs docker;
docker-compose reads the compose-* cases in tests/e2e/test_compose_up.py).
negative/<case>/fixed*/ hold the case's files after doing what its messages
advise (one folder per way out): each must validate, so no advice leads to
a new refusal. Other files beside a stack (env files) belong to it.
A bug found later becomes a new directory here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CASES = Path(__file__).resolve().parents[2] / "cases"


def _case_dirs(kind: str) -> list[Path]:
    return sorted(p for p in (CASES / kind).iterdir() if p.is_dir())


def _stacks(case: Path) -> list[str]:
    names = sorted(
        p.name for p in case.glob("*.yml") if p.name not in ("policy.yml", "expected.yml")
    )
    assert names, f"{case} has no stack file"
    return names


def _args(case: Path, expected: Path | None = None) -> list[str]:
    """The files, the case's own policy if any, and extra flags from expected.yml."""
    args = ["validate", *_stacks(case)]
    if (case / "policy.yml").exists():
        args += ["--policy", "policy.yml"]
    expected = expected or case / "expected.yml"
    if expected.exists():
        args += yaml.safe_load(expected.read_text()).get("args", [])
    return args


def _fixes() -> list[Path]:
    return sorted(p for case in _case_dirs("negative") for p in case.glob("fixed*") if p.is_dir())


@pytest.mark.parametrize("case", _case_dirs("negative"), ids=lambda p: p.name)
def test_negative_case_is_refused_with_its_message(case: Path, cli) -> None:
    expected = yaml.safe_load((case / "expected.yml").read_text())
    result = cli(*_args(case), cwd=case)
    said = result.out + result.err
    assert result.code == expected["exit"], said
    for fragment in expected["messages"]:
        assert fragment in said


@pytest.mark.parametrize("case", _case_dirs("positive"), ids=lambda p: p.name)
def test_positive_case_is_valid(case: Path, cli) -> None:
    result = cli(*_args(case), cwd=case)
    assert result.code == 0, result.out + result.err
    assert result.out.strip().endswith("valid")


def test_every_negative_case_names_an_exit_code_and_messages() -> None:
    for case in _case_dirs("negative"):
        expected = yaml.safe_load((case / "expected.yml").read_text())
        assert expected["exit"] in (1, 2), case
        assert expected["messages"], case


@pytest.mark.parametrize("fixed", _fixes(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_following_a_negative_case_s_advice_gives_a_valid_file(fixed: Path, cli) -> None:
    """The case's files after doing what its messages say: valid, with the case's flags."""
    result = cli(*_args(fixed, fixed.parent / "expected.yml"), cwd=fixed)
    assert result.code == 0, result.out + result.err
    assert result.out.strip().endswith("valid")
