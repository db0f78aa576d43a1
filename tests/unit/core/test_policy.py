from __future__ import annotations

from pathlib import Path

import pytest

from cqkd_stack.core.contract import env_for_slot, is_slot_template, resolve_slot
from cqkd_stack.core.errors import InvalidInput, UsageError
from cqkd_stack.core.policy import Policy, PolicyError, PortRange, load_policy


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(text)
    return path


def test_default_policy_has_the_design_ranges() -> None:
    policy = load_policy()
    assert policy.roles == {
        "bootstrap": PortRange(5678, 5699),
        "special": PortRange(6000, 6099),
        "worker": PortRange(7000, 7999),
    }
    assert policy.protocol == "udp"
    assert policy.one_port_per_worker and not policy.legacy_mode


@pytest.mark.parametrize(
    ("slot", "offset", "port"), [(1, 0, 7000), (1000, 0, 7999), (3, 500, 7502)]
)
def test_the_slot_template_resolves_as_the_task_will(slot: int, offset: int, port: int) -> None:
    env = {"TASK_SLOT": "{{.Task.Slot}}", "BASE_PORT": "7000", "PORT_OFFSET": str(offset)}
    assert resolve_slot(env, slot).port == port


def test_slot_template_must_stand_alone() -> None:
    assert is_slot_template("{{.Task.Slot}}") and is_slot_template("{{ .Task.Slot }}")
    assert not is_slot_template("1{{.Task.Slot}}")
    assert env_for_slot({"A": "{{ .Task.Slot }}", "B": "x"}, 7) == {"A": "7", "B": "x"}


def test_role_of_port() -> None:
    policy = load_policy()
    assert policy.role_of_port(5678) == "bootstrap"
    assert policy.role_of_port(7999) == "worker"
    assert policy.role_of_port(8000) is None


def test_a_role_the_policy_lacks_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no role 'observer'; the policy defines") as info:
        load_policy().role_range("observer")
    assert info.value.exit_code == 1


def test_blocked_ports_inside_a_range() -> None:
    policy = Policy(roles={"worker": PortRange(7000, 7999)}, blocked_ports=frozenset({7004, 9000}))
    assert policy.blocked_in(PortRange(7000, 7009)) == [7004]


def test_every_policy_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\nroles:\n  bootstrap: {start: 80, end: 99}\n"
        "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 70000}\nextra: 1\n",
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    paths = sorted(p.path for p in caught.value.problems)
    assert paths == ["$", "$.roles.bootstrap.end", "$.roles.bootstrap.start", "$.roles.worker.end"]
    assert caught.value.exit_code == 1  # read, and invalid: as among validate's files


def test_missing_policy_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_policy(tmp_path / "absent.yml")


def test_extra_roles_are_allowed_if_disjoint(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "version: 1\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
        "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7999}\n"
        "  observer: {start: 9000, end: 9009}\n",
    )
    assert load_policy(path).role_range("observer") == PortRange(9000, 9009)


ROLES = (
    "version: 1\nroles:\n  bootstrap: {start: 5678, end: 5699}\n"
    "  special: {start: 6000, end: 6099}\n  worker: {start: 7000, end: 7999}\n"
)


def test_the_shipped_policy_has_a_control_range_outside_every_role() -> None:
    policy = load_policy()
    assert policy.control == PortRange(6100, 6109)
    assert all(not policy.control.overlaps(rng) for rng in policy.roles.values())


def test_a_policy_without_control_ports_has_none(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, ROLES)).control is None


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ("{start: 6050, end: 6150}", "overlaps role 'special'"),
        ("{start: 6200, end: 6100}", "start 6200 is after end 6100"),
        ("{start: 6100.0, end: 6101}", "write ports as whole numbers"),
        ("{start: 6100}", "missing required key: 'end'"),
    ],
)
def test_bad_control_ranges_are_refused(tmp_path: Path, control: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(write(tmp_path, f"{ROLES}control: {control}\n"))
    assert any(p.path.startswith("$.control") for p in caught.value.problems)
    assert message in str(caught.value)
