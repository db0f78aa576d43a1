"""Swarm placeholders are refused where Swarm leaves them as written, accepted where it renders.

Where Swarm renders them is swarmkit's template.ExpandContainerSpec: a task's
environment values, hostname, and mounts (source, target, a named volume's
labels and driver options), which Docker's converter fills from a service's
environment, hostname and volumes and a top-level volume's name, labels and
driver_opts.
"""

from __future__ import annotations

import pytest

from cqkd_stack.lint.placeholders import placeholder_problems


def paths(doc: dict) -> list[tuple]:
    return [path for path, _ in placeholder_problems(doc)]


def test_rendered_fields_pass() -> None:
    doc = {
        "services": {
            "web": {
                "image": "nginx",
                "hostname": "web-{{.Task.Slot}}",
                "environment": {"TASK_SLOT": "{{.Task.Slot}}", "NODE": "{{ .Node.Hostname }}"},
                "volumes": [
                    "data-{{.Task.Slot}}:/data/{{.Task.Slot}}",
                    {"type": "volume", "source": "v-{{.Task.Slot}}", "target": "/{{.Task.ID}}"},
                ],
                "logging": {"options": {"tag": "{{.Name}}/{{.ID}}"}},  # Docker's log template
                "x-cqkd": {"note": "{{.Task.Slot}}"},
            }
        },
        "volumes": {"v": {"name": "v-{{.Task.Slot}}", "labels": {"s": "{{.Task.Slot}}"}}},
        "x-anchor": {"image": "x:{{.Task.Slot}}"},  # Docker ignores x- fields
    }
    assert paths(doc) == []


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ({"image": "cqkd-dht-node:{{.Task.Slot}}"}, ("image",)),
        ({"command": ["echo", "{{.Task.Slot}}"]}, ("command", 1)),
        ({"entrypoint": "run {{.Task.Name}}"}, ("entrypoint",)),
        ({"labels": {"a": "{{.Service.Name}}"}}, ("labels", "a")),
        ({"deploy": {"labels": ["slot={{.Task.Slot}}"]}}, ("deploy", "labels", 0)),
        ({"environment": {"{{.Node.ID}}": "x"}}, ("environment", "{{.Node.ID}}")),
        ({"environment": ["{{.Task.Slot}}=x"]}, ("environment", 0)),
        (
            {"volumes": [{"type": "tmpfs", "target": "/t", "tmpfs": {"size": "{{.Task.Slot}}"}}]},
            ("volumes", 0, "tmpfs", "size"),
        ),
        ({"healthcheck": {"test": ["CMD", "ping", "{{.Task.Slot}}"]}}, ("healthcheck", "test", 2)),
    ],
)
def test_fields_swarm_does_not_render_are_refused(service: dict, path: tuple) -> None:
    found = placeholder_problems({"services": {"web": {"image": "nginx", **service}}})
    assert [p for p, _ in found] == [("services", "web", *path)]
    (message,) = [m for _, m in found]
    assert "Swarm fills placeholders in only in environment values, hostname and volume" in message


def test_top_level_sections_other_than_a_volume_s_rendered_keys_are_refused() -> None:
    doc = {
        "services": {"web": {"image": "nginx"}},
        "networks": {"n": {"labels": {"s": "{{.Task.Slot}}"}}},
        "volumes": {"v": {"driver": "local-{{.Node.ID}}"}},
        "configs": {"c": {"file": "./{{.Task.Slot}}.conf"}},
    }
    assert sorted(paths(doc)) == [
        ("configs", "c", "file"),
        ("networks", "n", "labels", "s"),
        ("volumes", "v", "driver"),
    ]


def test_other_braces_are_not_swarm_s() -> None:
    doc = {"services": {"web": {"image": "nginx", "command": ["sh", "-c", "echo {{x}} ${A}"]}}}
    assert paths(doc) == []
