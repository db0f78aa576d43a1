"""What a crawl of the routing tables proves: one network, every task known, lookups that agree.

"Joined" (the probe) means a task has a contact; the two halves of a split
DHT both pass that (issue 10: after a bootstrap was replaced, 9 nodes held a
value meant for 14). The tables the crawler read (node/crawler.py) are a
directed graph, "A lists B"; this module turns them into the facts an
operator acts on, with no engine and no socket, so each rule is unit-tested
on synthetic tables:

* the tasks no other task lists (by service and slot), and the ids listed at
  addresses that are no task of the stack (dead or foreign contacts, which
  the crawler reported and never contacted);
* the weakly connected components over the running tasks (one is healthy),
  and whether every task is reachable from the bootstrap along "lists";
* the spread of table sizes;
* lookups replayed over the crawled tables, as node/routing.py's ``Lookup``
  runs them (alpha in flight, the k closest, at most LOOKUP_MAX_QUERIES
  asked): from M random nodes for K random keys, whether the lookups for a
  key agree, how many found the true k closest among all crawled ids, and
  in how many rounds of alpha RPCs (the hops).

Exit 1 (see :attr:`DhtMap.ok`) when the graph is split or a running task is
listed by nobody.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from ..node.config import ALPHA, ID_BYTES, LOOKUP_MAX_QUERIES, K
from ..node.routing import as_int, contacts_from

Contact = tuple[bytes, str, int]
Address = tuple[str, int]


@dataclass(frozen=True)
class CrawlTarget:
    """A running DHT task the crawler asked, with what the operator needs to find it."""

    service: str
    role: str | None
    slot: int | None
    address: str
    port: int

    @property
    def text(self) -> str:
        return f"{self.address}:{self.port}"

    def row(self) -> dict[str, Any]:
        return {"service": self.service, "slot": self.slot, "address": self.address,
                "port": self.port}


@dataclass(frozen=True)
class Table:
    """One node's answer to the crawl: its id and the contacts it listed."""

    node_id: bytes
    contacts: tuple[Contact, ...]
    complete: bool = True


def table_from(answer: object) -> Table | None:
    """A crawler answer (JSON: ``{"id": hex, "contacts": [[hex, ip, port], ...]}``) checked.

    The crawler checked every contact already; checked again here because the
    JSON may come out of a container, and a bad entry must cost nothing.
    """
    if not isinstance(answer, dict):
        return None
    node_id = _id(answer.get("id"))
    raw = answer.get("contacts")
    if node_id is None or not isinstance(raw, list):
        return None
    items = [[_id(c[0]), c[1], c[2]] for c in raw if isinstance(c, list) and len(c) == 3]
    contacts = tuple(c for c in contacts_from(items) if c[0] != node_id)
    return Table(node_id, contacts, bool(answer.get("complete", True)))


def _id(text: object) -> bytes | None:
    if not isinstance(text, str) or len(text) != 2 * ID_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


@dataclass
class LookupStats:
    """M nodes x K keys of replayed lookups."""

    starts: int = 0
    keys: int = 0
    lookups: int = 0
    succeeded: int = 0
    keys_agreeing: int = 0
    hops_median: float = 0.0
    hops_max: int = 0
    queries_median: float = 0.0
    per_key: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.lookups if self.lookups else 0.0


@dataclass
class DhtMap:
    """The crawl's result: the `crawl` task's report."""

    stack: str
    running: int
    answered: int
    # The crawl itself, and everything (the probe's start, the analysis) included.
    seconds: float = 0.0
    total_seconds: float = 0.0
    method: str = ""
    silent: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    ids_found: int = 0
    # Contacts at addresses that are no running task: listed, never contacted.
    foreign: list[dict[str, Any]] = field(default_factory=list)
    # Contacts at a task's address under another id than the task answered with.
    stale: int = 0
    components: list[int] = field(default_factory=list)
    # The tasks outside the largest component, by component.
    apart: list[list[dict[str, Any]]] = field(default_factory=list)
    reachable_from_bootstrap: bool | None = None
    unreachable: list[dict[str, Any]] = field(default_factory=list)
    table_min: int = 0
    table_median: float = 0.0
    table_max: int = 0
    incomplete_tables: int = 0
    lookups: LookupStats = field(default_factory=LookupStats)

    @property
    def split(self) -> bool:
        return len(self.components) > 1

    @property
    def ok(self) -> bool:
        return not self.split and not self.unknown

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lookups"]["success_rate"] = self.lookups.success_rate
        return data | {"split": self.split, "ok": self.ok}


def analyse(
    stack: str,
    targets: list[CrawlTarget],
    answers: dict[str, Any],
    lookups: int = 10,
    keys: int = 10,
    rng: random.Random | None = None,
) -> DhtMap:
    """The facts of one crawl; ``answers`` maps a target's text to the crawler's answer."""
    rng = rng or random.Random()
    at: dict[Address, CrawlTarget] = {(t.address, t.port): t for t in targets}
    tables: dict[Address, Table] = {}
    for target in targets:
        table = table_from(answers.get(target.text))
        if table is not None:
            tables[(target.address, target.port)] = table
    result = DhtMap(stack, running=len(targets), answered=len(tables))
    result.silent = [t.row() for t in targets if (t.address, t.port) not in tables]

    # "A lists B": a contact at B's address, with B's id when B answered.
    edges: dict[Address, set[Address]] = {a: set() for a in at}
    listed_by: dict[Address, int] = dict.fromkeys(at, 0)
    foreign: dict[Contact, int] = {}
    ids: set[bytes] = {t.node_id for t in tables.values()}
    for source, table in tables.items():
        for contact in table.contacts:
            ids.add(contact[0])
            place = (contact[1], contact[2])
            if place not in at:
                foreign[contact] = foreign.get(contact, 0) + 1
                continue
            known = tables.get(place)
            if known is not None and known.node_id != contact[0]:
                result.stale += 1
                continue
            if place != source and place not in edges[source]:
                edges[source].add(place)
                listed_by[place] += 1
    result.ids_found = len(ids)
    result.foreign = [
        {"id": c[0].hex(), "address": c[1], "port": c[2], "listed_by": n}
        for c, n in sorted(foreign.items(), key=lambda item: (-item[1], item[0][1:]))
    ]
    if len(targets) > 1:
        result.unknown = [at[a].row() for a, n in listed_by.items() if n == 0]

    groups = components(edges)
    result.components = [len(g) for g in groups]
    result.apart = [sorted((at[a].row() for a in g), key=_order) for g in groups[1:]]
    boots = [a for a, t in at.items() if t.role == "bootstrap"]
    if boots:
        seen = reachable(edges, boots)
        result.unreachable = sorted((at[a].row() for a in at if a not in seen), key=_order)
        result.reachable_from_bootstrap = not result.unreachable

    sizes = [len(t.contacts) for t in tables.values()]
    if sizes:
        result.table_min, result.table_max = min(sizes), max(sizes)
        result.table_median = statistics.median(sizes)
    result.incomplete_tables = sum(1 for t in tables.values() if not t.complete)
    result.lookups = replay_lookups(tables, lookups, keys, rng)
    return result


def _order(row: dict[str, Any]) -> tuple[str, int]:
    return row["service"], row["slot"] or 0


def components(edges: dict[Address, set[Address]]) -> list[set[Address]]:
    """The weakly connected components of a directed graph, largest first."""
    parent = {a: a for a in edges}

    def root(a: Address) -> Address:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for source, targets in edges.items():
        for target in targets:
            parent[root(source)] = root(target)
    groups: dict[Address, set[Address]] = {}
    for a in edges:
        groups.setdefault(root(a), set()).add(a)
    return sorted(groups.values(), key=lambda g: (-len(g), min(g)))


def reachable(edges: dict[Address, set[Address]], starts: list[Address]) -> set[Address]:
    """Every vertex reached from ``starts`` along the edges' direction."""
    seen = set(starts)
    todo = list(starts)
    while todo:
        for other in edges.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def nearest(contacts: tuple[Contact, ...], key: bytes, exclude: Address | None) -> list[Contact]:
    """As ``RoutingTable.nearest``: the k closest to ``key`` but ``key`` and the asker."""
    goal = as_int(key)
    found = [c for c in contacts if c[0] != key and (c[1], c[2]) != exclude]
    found.sort(key=lambda c: as_int(c[0]) ^ goal)
    return found[:K]


@dataclass
class Replayed:
    """One replayed lookup: the k closest it ended with, the rounds and RPCs it took."""

    closest: list[bytes]
    hops: int
    queries: int


def replay_lookup(tables: dict[Address, Table], start: Address, key: bytes) -> Replayed:
    """routing.Lookup over the crawled tables, in rounds of up to alpha RPCs (one hop each).

    A contact answers if the crawl read a table at its address under its id;
    it answers what that table's ``nearest`` gives (the asker excluded, as
    the node does). Any other contact fails and is dropped, as a timeout
    would drop it. The starting node counts itself among the candidates:
    ``Lookup`` never asks itself, but it is one of the k closest when it is.
    """
    own = tables[start]
    goal = as_int(key)

    def distance(node_id: bytes) -> int:
        return as_int(node_id) ^ goal

    known: dict[bytes, Contact] = {c[0]: c for c in nearest(own.contacts, key, None)}
    asked: set[bytes] = set()
    answered: set[bytes] = set()
    hops = 0
    while len(asked) < LOOKUP_MAX_QUERIES:
        closest = sorted(known.values(), key=lambda c: distance(c[0]))[:K]
        batch = [c for c in closest if c[0] not in asked][:ALPHA]
        if not batch:
            break
        hops += 1
        for contact in batch:
            asked.add(contact[0])
            table = tables.get((contact[1], contact[2]))
            if table is None or table.node_id != contact[0]:
                known.pop(contact[0], None)
                continue
            answered.add(contact[0])
            for other in nearest(table.contacts, key, start):
                if other[0] not in known and other[0] not in asked and other[0] != own.node_id:
                    known[other[0]] = other
    found = sorted([*answered, own.node_id], key=distance)[:K]
    return Replayed(found, hops, len(asked))


def replay_lookups(
    tables: dict[Address, Table], starts: int, keys: int, rng: random.Random
) -> LookupStats:
    """``starts`` random nodes each look up ``keys`` random keys; agreement, success, hops."""
    stats = LookupStats()
    if not tables or starts <= 0 or keys <= 0:
        return stats
    places = sorted(tables)
    chosen = rng.sample(places, min(starts, len(places)))
    every = [t.node_id for t in tables.values()]
    hops: list[int] = []
    queries: list[int] = []
    stats.starts, stats.keys = len(chosen), keys
    for _ in range(keys):
        key = rng.getrandbits(8 * ID_BYTES).to_bytes(ID_BYTES, "big")
        goal = as_int(key)
        truth = sorted(every, key=lambda node_id: as_int(node_id) ^ goal)[:K]
        results = [replay_lookup(tables, start, key) for start in chosen]
        found = sum(1 for r in results if set(r.closest) == set(truth))
        agree = len({frozenset(r.closest) for r in results}) == 1
        stats.lookups += len(results)
        stats.succeeded += found
        stats.keys_agreeing += int(agree)
        hops += [r.hops for r in results]
        queries += [r.queries for r in results]
        stats.per_key.append(
            {
                "key": key.hex(),
                "agree": agree,
                "succeeded": found,
                "closest": truth[0].hex(),
                "hops_max": max(r.hops for r in results),
            }
        )
    stats.hops_median = statistics.median(hops)
    stats.hops_max = max(hops)
    stats.queries_median = statistics.median(queries)
    return stats
