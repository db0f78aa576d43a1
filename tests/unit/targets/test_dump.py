"""render writes the same bytes whichever YAML emitter writes them.

``dump_documents`` hands a document to libyaml's emitter (~10x faster) only
when ``libyaml_writes_alike`` says that emitter writes it exactly as PyYAML's
own; everything else goes through PyYAML's. Held here on every rendering
below and on seeded random documents of the kinds the check lets through.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from cqkd_stack.core.policy import load_policy
from cqkd_stack.targets.base import (
    NoAliasDumper,
    RenderOptions,
    dump_documents,
    libyaml_writes_alike,
)
from cqkd_stack.targets.kubernetes import render_manifests
from cqkd_stack.targets.swarm import render_document

PLAIN = [chr(code) for code in range(32, 127)]
# Characters that decide a scalar's style: indicators, quotes, spaces, digits.
INDICATORS = [*":-#?,[]{}&*!|>'\"%@` ", *"ab01.eE+~"]


def pure(docs: list[Any]) -> str:
    """What PyYAML's own emitter writes (render's output before libyaml was used)."""
    return yaml.dump_all(docs, Dumper=NoAliasDumper, sort_keys=False, default_flow_style=False)


OPTIONS = [
    RenderOptions(replicas=1000),
    RenderOptions(replicas=1),
    RenderOptions(replicas=1000, network="host", healthcheck=True),
    RenderOptions(replicas=300, port_offset=100, join_stack="other"),
    RenderOptions(replicas=20, image="registry.example:5000/team/cqkd-dht-node:1.2.3"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o.replicas}-{o.network}")
def test_a_rendered_stack_is_written_by_libyaml_as_pyyaml_writes_it(options: RenderOptions) -> None:
    doc = render_document(load_policy(None), options)
    assert libyaml_writes_alike([doc])  # the fast emitter is the one that runs
    assert dump_documents([doc]) == pure([doc])


def test_kubernetes_manifests_are_written_alike() -> None:
    docs = list(render_manifests(load_policy(None), 50, namespace="dht"))
    assert dump_documents(docs) == pure(docs)


def _text(rng: random.Random, longest: int) -> str:
    pool = PLAIN if rng.random() < 0.5 else INDICATORS
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, longest)))


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 8 or roll < 0.4:
        return rng.choice([_text(rng, 100), _text(rng, 12), 1, -3, 1.5, 1e20, True, None])
    if roll < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_text(rng, 100): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_what_the_check_lets_through_both_emitters_write_alike() -> None:
    rng = random.Random(20)
    for _ in range(3000):
        docs = [{"services": _value(rng, 0), _text(rng, 100): _value(rng, 0)}]
        assert libyaml_writes_alike(docs)
        assert yaml.dump_all(docs, Dumper=yaml.CSafeDumper, sort_keys=False) == yaml.dump_all(
            docs, Dumper=yaml.SafeDumper, sort_keys=False
        ), docs


@pytest.mark.parametrize(
    "doc",
    [
        {"": 1},  # an empty key: libyaml writes it as a simple key, PyYAML as "? ''"
        {"k" * 130: 1},  # a key past 128 characters
        {"image": "caf\u00e9"},  # non-ASCII text
        {"command": "line one\nline two"},
        {"when": __import__("datetime").date(2026, 12, 2)},  # not a plain value
    ],
    ids=["empty-key", "long-key", "non-ascii", "line-break", "date"],
)
def test_what_the_emitters_may_write_otherwise_goes_through_pyyaml(doc: dict[str, Any]) -> None:
    assert not libyaml_writes_alike([doc])
    assert dump_documents([doc]) == pure([doc])
