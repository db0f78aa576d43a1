"""One problem per source location: an anchor shared by many services is one mistake."""

from __future__ import annotations

import json

from cqkd_stack.core.results import Problem, one_per_location


def test_same_line_and_message_in_several_services_become_one() -> None:
    problems = [
        Problem("s.yml", f"$.services.w{i}.image", "bad image", line=3) for i in range(1, 6)
    ]
    problems.append(Problem("s.yml", "$.services.w1.deploy", "other", line=9))
    (shared, other) = one_per_location(problems)
    assert shared.path == "$.services.w1.image" and shared.line == 3
    assert shared.services == ("w1", "w2", "w3", "w4", "w5")
    assert shared.message == (
        "bad image [the same line gives this to 5 services: w1, w2, w3 and 2 more]"
    )
    assert other == problems[-1]


def test_problems_of_one_service_or_without_a_line_stay_apart() -> None:
    problems = [
        Problem("s.yml", "$.services.w.ports[0]", "same", line=4),
        Problem("s.yml", "$.services.w.ports[1]", "same", line=4),  # one service: two entries
        Problem("s.yml", "$.services.a.image", "no line"),
        Problem("s.yml", "$.services.b.image", "no line"),
        Problem("s.yml", "$.networks.dht", "same", line=4),  # not a service's
    ]
    assert one_per_location(problems) == problems


def test_an_anchor_shared_by_1000_services_prints_one_line(cli) -> None:
    services = "".join(f"  w{i}: *w\n" for i in range(1000))
    text = (
        'x-w: &w {image: "nginx:{{.Task.Slot}}", networks: [n]}\n'
        f"services:\n{services}"
        "networks: {n: {driver: overlay, ipam: {config: [{subnet: 10.9.0.0/20}]}}}\n"
    )
    result = cli("validate", "-", stdin=text)
    assert result.code == 1
    lines = result.out.strip().splitlines()
    assert len(lines) == 2, lines[:5]
    assert lines[0].startswith("<stdin>:1::$.services.w0.image: 'nginx:{{.Task.Slot}}' holds")
    assert lines[0].endswith("[the same line gives this to 1000 services: w0, w1, w2 and 997 more]")
    data = json.loads(cli("validate", "-", "--format", "json", stdin=text).out)
    (problem,) = data["files"][0]["problems"]
    assert len(problem["services"]) == 1000
