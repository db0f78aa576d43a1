"""The design's own compatibility test, as the design writes it (imports aside).

Its body sets ``os.environ`` directly, so the fixture below gives it an
environment without the contract's variables and puts the real one back
afterwards; the body itself is not changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cqkd_stack.resolver import ResolverError, get_dynamic_port, main

# Every variable the resolver reads: none may leak in from the shell running the tests.
RESOLVER_INPUTS = (
    "CQKD_ROLE",
    "DHT_PORT",
    "TASK_SLOT",
    "WORKER_ID",
    "BASE_PORT",
    "PORT_RANGE_END",
    "PORT_OFFSET",
    "LEGACY_PORT_MODE",
    "PORT_PROTOCOL",
    "BIND_HOST",
    "POD_INDEX",
    "STATEFULSET_NAME",
    "ORDINALS_START",
)


@pytest.fixture
def design_environ() -> Iterator[None]:
    """os.environ without the resolver's inputs; restored whole, whatever the test set."""
    saved = dict(os.environ)
    for name in RESOLVER_INPUTS:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.usefixtures("design_environ")
def test_compatibility_mode():
    os.environ["LEGACY_PORT_MODE"] = "true"
    port = get_dynamic_port()
    assert port == 7000

    os.environ["LEGACY_PORT_MODE"] = "false"
    os.environ["WORKER_ID"] = "5"
    port = get_dynamic_port()
    assert port == 7004  # 7000 + (5-1)


@pytest.mark.usefixtures("design_environ")
def test_the_environment_is_read_at_each_call_not_at_import() -> None:
    os.environ["TASK_SLOT"] = "3"
    assert get_dynamic_port() == 7002
    os.environ["TASK_SLOT"] = "4"
    assert get_dynamic_port() == 7003
    os.environ["DHT_PORT"] = "7500"
    assert get_dynamic_port() == 7500  # an explicit port wins over the slot


@pytest.mark.usefixtures("design_environ")
@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "neither TASK_SLOT nor WORKER_ID is set"),
        ({"WORKER_ID": "{{.Task.Slot}}"}, "is an unrendered template"),
        ({"TASK_SLOT": "7_000"}, "TASK_SLOT='7_000' is not an integer"),
        ({"TASK_SLOT": "1001"}, "gives port 8000, outside the range 7000-7999"),
        ({"LEGACY_PORT_MODE": "on"}, "LEGACY_PORT_MODE='on' is not a boolean"),
        ({"DHT_PORT": "3", "TASK_SLOT": "3"}, "looks like a raw {{.Task.Slot}}"),
    ],
)
def test_refusals_are_the_command_line_s(
    env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One parser: the same ResolverError (a ValueError) `python -m cqkd_stack.resolver` prints."""
    os.environ.update(env)
    with pytest.raises(ResolverError) as info:
        get_dynamic_port()
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert main(["--no-bind-check"]) == 1
    assert capsys.readouterr().err == f"cqkd-resolver: error: {info.value}\n"


def test_a_mapping_of_the_caller_s_replaces_os_environ() -> None:
    assert get_dynamic_port({"WORKER_ID": "5"}) == 7004
