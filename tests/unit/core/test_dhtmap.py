"""The crawl's facts from synthetic tables: components, unknown tasks, foreign ids, lookups."""

from __future__ import annotations

import hashlib
import random

import pytest
from invoke import Exit
from prometheus_client.parser import text_string_to_metric_families

from cqkd_stack.cli.metrics import crawl_exposition
from cqkd_stack.cli.tasks import report_crawl
from cqkd_stack.core.dhtmap import CrawlTarget, analyse, components, replay_lookup, table_from
from cqkd_stack.node.routing import RoutingTable


def node_id(n: int) -> bytes:
    return hashlib.sha1(f"node {n}".encode()).digest()


def target(n: int, role: str = "worker") -> CrawlTarget:
    service = "s_bootstrap" if role == "bootstrap" else "s_worker"
    return CrawlTarget(service, role, n, f"10.0.{n // 200}.{n % 200 + 2}", 7000 + n)


def answer(n: int, lists: list[int], extra: list[list[object]] | None = None) -> dict:
    contacts = [[node_id(m).hex(), target(m).address, target(m).port] for m in lists]
    return {"id": node_id(n).hex(), "contacts": contacts + (extra or []), "complete": True}


def kademlia_answers(count: int, halves: int = 1) -> tuple[list[CrawlTarget], dict]:
    """Real routing tables (k-buckets) of ``count`` nodes that each met every node of its part."""
    targets = [target(0, "bootstrap")] + [target(n) for n in range(1, count)]
    rng = random.Random(7)
    answers = {}
    for n, t in enumerate(targets):
        table = RoutingTable(node_id(n))
        others = [m for m in range(count) if m != n and m % halves == n % halves]
        rng.shuffle(others)
        for m in others:
            table.touch((node_id(m), targets[m].address, targets[m].port))
        answers[t.text] = {
            "id": node_id(n).hex(),
            "contacts": [[c[0].hex(), c[1], c[2]] for c in table.contacts()],
        }
    return targets, answers


def test_one_network_of_kademlia_tables_is_one_component_and_its_lookups_succeed() -> None:
    targets, answers = kademlia_answers(200)
    result = analyse("s", targets, answers, lookups=10, keys=10, rng=random.Random(1))
    assert (result.running, result.answered) == (200, 200)
    assert result.components == [200] and not result.split
    assert result.unknown == [] and result.silent == [] and result.foreign == []
    assert result.reachable_from_bootstrap is True
    # k-buckets: a node keeps at most 20 of the 100 ids that differ in the first bit.
    assert 20 < result.table_min <= result.table_max < 199
    look = result.lookups
    assert (look.lookups, look.starts, look.keys) == (100, 10, 10)
    assert look.succeeded == 100 and look.keys_agreeing == 10
    assert 1 <= look.hops_median <= look.hops_max
    assert result.ok


def test_a_split_network_is_two_components_lookups_disagree_and_the_task_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    targets, answers = kademlia_answers(60, halves=2)
    result = analyse("s", targets, answers, lookups=60, keys=5, rng=random.Random(2))
    assert result.components == [30, 30] and result.split and not result.ok
    assert [row["slot"] for row in result.apart[0]] == list(range(1, 60, 2))
    assert result.reachable_from_bootstrap is False
    assert len(result.unreachable) == 30 and result.unknown == []
    # Each half's lookups find only its own half's ids.
    assert result.lookups.keys_agreeing == 0
    assert result.lookups.succeeded == 0
    with pytest.raises(Exit) as raised:
        report_crawl(result, "json")
    assert raised.value.code == 1
    assert '"split": true' in capsys.readouterr().out
    metrics = {
        s.name: s.value
        for family in text_string_to_metric_families(crawl_exposition(result))
        for s in family.samples
    }
    assert metrics["cqkd_crawl_components"] == 2 and metrics["cqkd_crawl_healthy"] == 0


def test_one_network_exits_0_and_says_so_in_text(capsys: pytest.CaptureFixture[str]) -> None:
    targets, answers = kademlia_answers(20)
    report_crawl(analyse("s", targets, answers, 3, 3, random.Random(3)), "text")
    out = capsys.readouterr().out
    assert "20/20" in out and "FAIL" not in out


def test_a_task_nobody_lists_is_unknown_by_service_and_slot_though_it_lists_others() -> None:
    targets = [target(0, "bootstrap"), target(1), target(2), target(3)]
    answers = {
        targets[0].text: answer(0, [1, 2]),
        targets[1].text: answer(1, [0, 2]),
        targets[2].text: answer(2, [0, 1]),
        targets[3].text: answer(3, [0, 1, 2]),  # nobody lists slot 3
    }
    result = analyse("s", targets, answers, 0, 0)
    assert result.components == [4]  # weakly connected through its own contacts
    assert result.unknown == [
        {"service": "s_worker", "slot": 3, "address": targets[3].address, "port": 7003}
    ]
    assert not result.ok


def test_a_silent_task_others_list_is_known_and_one_nobody_lists_splits_the_graph() -> None:
    targets = [target(0, "bootstrap"), target(1), target(2), target(3)]
    answers = {
        targets[0].text: answer(0, [1, 2]),
        targets[1].text: answer(1, [0, 2]),
        targets[2].text: None,
        targets[3].text: None,
    }
    result = analyse("s", targets, answers, 0, 0)
    assert [row["slot"] for row in result.silent] == [2, 3]
    assert [row["slot"] for row in result.unknown] == [3]
    assert result.components == [3, 1]
    assert result.apart == [[targets[3].row()]]


def test_contacts_at_no_task_address_are_reported_and_stale_ids_make_no_edge() -> None:
    targets = [target(0, "bootstrap"), target(1), target(2)]
    dead = hashlib.sha1(b"gone").digest().hex()
    answers = {
        targets[0].text: answer(0, [1, 2], [[dead, "10.0.9.9", 7050]]),
        targets[1].text: answer(1, [0, 2], [[dead, "10.0.9.9", 7050]]),
        # Slot 2 listed under an id that is not the one slot 2 answered with.
        targets[2].text: answer(2, [0], [[dead, targets[1].address, targets[1].port]]),
    }
    result = analyse("s", targets, answers, 0, 0)
    assert result.foreign == [{"id": dead, "address": "10.0.9.9", "port": 7050, "listed_by": 2}]
    assert result.stale == 1
    assert result.ids_found == 4
    assert result.ok  # slot 1 is still listed by the bootstrap


def test_every_task_reachable_from_the_bootstrap_or_named() -> None:
    targets = [target(0, "bootstrap"), target(1), target(2), target(3)]
    answers = {
        targets[0].text: answer(0, [1]),
        targets[1].text: answer(1, [0]),
        targets[2].text: answer(2, [1, 3]),
        targets[3].text: answer(3, [2]),
    }
    result = analyse("s", targets, answers, 0, 0)
    assert result.components == [4] and result.unknown == []
    assert result.reachable_from_bootstrap is False
    assert [row["slot"] for row in result.unreachable] == [2, 3]


def test_junk_in_an_answer_costs_nothing_and_counts_for_nothing() -> None:
    table = table_from(
        {
            "id": node_id(1).hex(),
            "contacts": [
                [node_id(2).hex(), "10.0.0.4", 7002],
                ["zz" * 20, "10.0.0.5", 7003],
                [node_id(3).hex(), "not-an-ip", 7003],
                [node_id(4).hex(), "10.0.0.6", 70000],
                [node_id(1).hex(), "10.0.0.3", 7001],  # itself
                "junk",
            ],
        }
    )
    assert table is not None and [c[0] for c in table.contacts] == [node_id(2)]
    assert table_from({"id": "00", "contacts": []}) is None
    assert table_from(None) is None


def test_a_lookup_counts_rounds_of_alpha_and_drops_contacts_that_cannot_answer() -> None:
    # A chain: each node knows only the next, so a lookup takes one hop per node.
    targets = [target(n) for n in range(5)]
    answers = {t.text: answer(n, [n + 1] if n < 4 else []) for n, t in enumerate(targets)}
    answers[targets[3].text]["contacts"].append([node_id(99).hex(), "10.0.9.9", 7099])
    result = analyse("s", targets, answers, 0, 0)
    tables = {(t.address, t.port): table_from(answers[t.text]) for t in targets}
    replayed = replay_lookup(tables, (targets[0].address, targets[0].port), node_id(50))
    assert replayed.hops == 4
    assert replayed.queries == 5  # nodes 1-4 and the id at no task, which failed
    assert sorted(replayed.closest) == sorted(node_id(n) for n in range(5))
    assert result.components == [5]


def test_components_of_a_directed_graph_are_weak() -> None:
    a, b, c, d = ("a", 1), ("b", 1), ("c", 1), ("d", 1)
    assert components({a: {b}, b: set(), c: {b}, d: set()}) == [{a, b, c}, {d}]
