"""Variables in stack files are replaced and cast exactly as docker stack does (v28.2.2).

Every expectation here was checked against ``docker stack config`` (client
28.2.2), quirks included: the linter must not disagree with Docker.
"""

from __future__ import annotations

import pytest

from cqkd_stack.lint.interpolation import cast_for, interpolate, substitute

ENV = {"HOME": "/root", "EMPTY": "", "N": "7"}


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("$HOME", "/root"),
        ("${HOME}", "/root"),
        ("$home and ${Home}", " and "),  # matched in any case, looked up as written
        ("a-$HOME-b", "a-/root"),  # unbraced, '-b' is read as a default: Docker's quirk
        ("$${HOME} costs $$5", "${HOME} costs $5"),
        ("${MISSING:-50}", "50"),
        ("${EMPTY:-50}", "50"),
        ("${N:-50}", "7"),
        ("${MISSING-50}", "50"),
        ("${EMPTY-50}", ""),
        ("${N:?must be set}", "7"),
        ("${EMPTY?only unset fails}", ""),
        ("${MISSING:-a:b/c}", "a:b/c"),
        ("$MISSING:-x}", "x}"),  # the unbraced form takes operators too, up to a '}'
        ("$HOME-x y}z", "/root}z"),
        ("{{.Task.Slot}}", "{{.Task.Slot}}"),
    ],
)
def test_every_form_docker_knows(template: str, value: str) -> None:
    done = substitute(template, ENV)
    assert done.error is None
    assert done.value == value


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("${MISSING:?set WORKERS first}", "required variable MISSING is missing a value: set"),
        ("${EMPTY:?cannot be empty}", "required variable EMPTY is missing a value: cannot"),
        ("${MISSING?needed}", "required variable MISSING is missing a value: needed"),
        ("${N:+alt}", "'${N:+alt}' is not a variable"),
        ("${N+alt}", "'${N+alt}' is not a variable"),
        ("echo $1", "'$1' is not a variable"),
        ("cost: 5 $", "'$' is not a variable"),
        ("${}", "'${}' is not a variable"),
        ("${MISSING:?x} $$", "required variable MISSING"),  # an escape clears nothing
    ],
)
def test_what_docker_refuses(template: str, error: str) -> None:
    done = substitute(template, ENV)
    assert done.error is not None
    assert done.error.startswith(error)


def test_an_unset_variable_becomes_empty_with_a_warning() -> None:
    done = substitute("x${MISSING}y", ENV)
    assert (done.value, done.error) == ("xy", None)
    assert done.warnings == ["variable MISSING is not set; Docker substitutes an empty string"]


def test_a_later_good_variable_clears_an_earlier_error_as_in_docker() -> None:
    done = substitute("${MISSING:?x} ${HOME}", ENV)
    assert (done.value, done.error) == (" /root", None)
    assert "Docker lets it pass" in done.warnings[0]


def test_a_dash_in_a_required_message_makes_it_a_default_as_in_docker() -> None:
    """Docker tries '-' before ':?': ${VAR:?must-be-set} is 'be-set' for a variable 'VAR:?must'."""
    done = substitute("${MISSING:?must-be-set}", ENV)
    assert (done.value, done.error) == ("be-set", None)
    assert "as the variable 'MISSING:?must'" in done.warnings[0]


def _doc(**service: object) -> dict:
    return {"version": "3.8", "services": {"worker": service}}


def test_casts_where_docker_casts() -> None:
    doc = _doc(
        deploy={
            "replicas": "${WORKERS:-50}",
            "update_config": {"parallelism": "${P:-2}", "max_failure_ratio": "${R:-0.5}"},
            "placement": {"max_replicas_per_node": "${M:-3}"},
        },
        ports=[{"target": "${T:-7000}", "published": "${T:-7000}"}],
        privileged="${PRIV:-on}",
        read_only="${RO:-No}",
        ulimits={"nofile": "${NOFILE:-1024}", "nproc": {"soft": "${S:-1}", "hard": "${H:-2}"}},
        volumes=[{"type": "volume", "read_only": "${RO:-y}", "volume": {"nocopy": "${NC:-off}"}}],
    )
    doc["networks"] = {"dht": {"external": "${EXT:-true}", "attachable": "${A:-false}"}}
    done = interpolate(doc, {})
    assert done.errors == [] and done.warnings == []
    worker = done.doc["services"]["worker"]
    assert worker["deploy"] == {
        "replicas": 50,
        "update_config": {"parallelism": 2, "max_failure_ratio": 0.5},
        "placement": {"max_replicas_per_node": 3},
    }
    assert worker["ports"] == [{"target": 7000, "published": 7000}]
    assert (worker["privileged"], worker["read_only"]) == (True, False)
    assert worker["ulimits"] == {"nofile": 1024, "nproc": {"soft": 1, "hard": 2}}
    assert worker["volumes"] == [{"type": "volume", "read_only": True, "volume": {"nocopy": False}}]
    assert done.doc["networks"] == {"dht": {"external": True, "attachable": False}}


def test_a_value_without_a_variable_is_not_cast() -> None:
    """Docker casts only what substitution changed: a quoted "3" stays a string."""
    done = interpolate(_doc(deploy={"replicas": "3"}, tty="true"), {})
    assert done.doc["services"]["worker"] == {"deploy": {"replicas": "3"}, "tty": "true"}


def test_strings_elsewhere_stay_strings() -> None:
    done = interpolate(_doc(environment={"BASE_PORT": "${BASE:-7000}"}, command="${N}"), ENV)
    assert done.doc["services"]["worker"] == {"environment": {"BASE_PORT": "7000"}, "command": "7"}


def test_keys_and_non_strings_are_left_alone() -> None:
    doc = {"services": {"${HOME}": {"deploy": {"replicas": 3}, "init": True, "x": None}}}
    assert interpolate(doc, ENV).doc == doc


def test_a_service_name_with_a_dot_escapes_the_cast_as_in_docker() -> None:
    assert cast_for(("services", "worker", "deploy", "replicas")) is not None
    assert cast_for(("services", "a.b", "deploy", "replicas")) is None
    doc = {"services": {"a.b": {"deploy": {"replicas": "${R:-3}"}}}}
    assert interpolate(doc, {}).doc["services"]["a.b"]["deploy"]["replicas"] == "3"


def test_a_required_variable_is_an_error_at_its_path() -> None:
    done = interpolate(_doc(deploy={"replicas": "${WORKERS:?set WORKERS}"}), {})
    assert [(e.path, e.message) for e in done.errors] == [
        (
            ("services", "worker", "deploy", "replicas"),
            "required variable WORKERS is missing a value: set WORKERS",
        )
    ]
    assert done.doc["services"]["worker"]["deploy"]["replicas"] == "${WORKERS:?set WORKERS}"


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ({"deploy": {"replicas": "${R:-3.0}"}}, "'3.0' is not an integer"),
        ({"deploy": {"replicas": "${R:- 3}"}}, "' 3' is not an integer"),
        ({"deploy": {"replicas": "${R:-\u0663}"}}, "is not an integer"),  # an Arabic-Indic 3
        ({"tty": "${T:-maybe}"}, "'maybe' is not a boolean"),
        ({"deploy": {"update_config": {"max_failure_ratio": "${R:-half}"}}}, "not a number"),
        ({"deploy": {"update_config": {"max_failure_ratio": "${R:-1e999}"}}}, "out of range"),
    ],
)
def test_a_failed_cast_is_an_error_naming_the_value(field: dict, reason: str) -> None:
    done = interpolate(_doc(**field), {})
    assert len(done.errors) == 1
    assert reason in done.errors[0].message
    assert "Docker casts this field" in done.errors[0].message


def test_go_number_syntax_is_accepted_in_casts() -> None:
    doc = _doc(
        deploy={
            "replicas": "${R:-+3}",
            "update_config": {"max_failure_ratio": "${F:-.5e1}"},
            "rollback_config": {"max_failure_ratio": "${F:-0x1p-2}"},
        }
    )
    deploy = interpolate(doc, {}).doc["services"]["worker"]["deploy"]
    assert deploy["replicas"] == 3
    assert deploy["update_config"]["max_failure_ratio"] == 5.0
    assert deploy["rollback_config"]["max_failure_ratio"] == 0.25


def test_every_error_is_collected_with_its_list_index() -> None:
    doc = _doc(ports=[{"target": "${A:?a}"}, {"target": "${B:?b}"}], command=["echo", "$1"])
    done = interpolate(doc, {})
    assert [e.path for e in done.errors] == [
        ("services", "worker", "ports", 0, "target"),
        ("services", "worker", "ports", 1, "target"),
        ("services", "worker", "command", 1),
    ]
