"""The reporters: one shape of problem, three outputs, the line where it is known."""

from __future__ import annotations

import json

from cqkd_stack.cli import report
from cqkd_stack.core.results import Problem, Results


def _results(*problems: Problem, valid: tuple[str, ...] = ()) -> Results:
    results = Results()
    for file in valid:
        results.checked(file)
    results.extend(problems)
    return results


def test_problem_without_a_line_keeps_the_old_positional_form() -> None:
    problem = Problem("stack.yml", "$.services", "missing")
    assert problem.line is None
    assert str(problem) == "stack.yml::$.services: missing"


def test_text_puts_the_line_after_the_file_where_editors_look_for_it() -> None:
    results = _results(
        Problem("stack.yml", "$.services.worker.deploy.replicas", "'x' is not an integer", line=7),
        Problem("b.yml", "$", "file is empty"),
    )
    assert report.text(results).splitlines() == [
        "stack.yml:7::$.services.worker.deploy.replicas: 'x' is not an integer",
        "b.yml::$: file is empty",
        "invalid: 2 of 2 files, 2 problems",
    ]


def test_json_always_carries_a_line_key() -> None:
    results = _results(
        Problem("a.yml", "$.services.a", "bad", line=3),
        Problem("a.yml", "$", "worse"),
        valid=("ok.yml",),
    )
    document = json.loads(report.as_json(results))
    assert document["valid"] is False
    assert document["files"][0] == {
        "file": "ok.yml",
        "kind": "stack",
        "valid": True,
        "problems": [],
    }
    assert document["files"][1]["problems"] == [
        {"path": "$.services.a", "line": 3, "message": "bad", "services": []},
        {"path": "$", "line": None, "message": "worse", "services": []},
    ]


def test_github_annotations_name_the_line_when_known() -> None:
    results = _results(
        Problem("stack.yml", "$.services.a", "bad", line=12),
        Problem("stack.yml", "$", "empty"),
    )
    assert report.github(results).splitlines() == [
        "::error file=stack.yml,line=12::$.services.a: bad",
        "::error file=stack.yml::$: empty",
        "invalid: 1 of 1 file, 2 problems",
    ]


def test_github_escapes_what_would_end_a_workflow_command_early() -> None:
    results = _results(Problem("a,b:c.yml", "$", "100% wrong\nsecond line", line=1))
    first = report.github(results).splitlines()[0]
    assert first == "::error file=a%2Cb%3Ac.yml,line=1::$: 100%25 wrong%0Asecond line"


def test_valid_results_say_ok_in_every_format() -> None:
    results = _results(valid=("a.yml", "b.yml"))
    assert report.text(results) == "ok: 2 files valid"
    assert report.github(results) == "ok: 2 files valid"
    assert json.loads(report.as_json(results))["valid"] is True
