"""Hostile input is refused quickly and cheaply, with the file named."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from cqkd_stack.core.documents import MAX_BYTES, parse_yaml, read_text
from cqkd_stack.core.errors import InvalidInput

CASES = Path(__file__).resolve().parents[2] / "cases"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_an_endless_file_is_refused_not_read_to_the_end() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=r"/dev/zero: larger than 1 MiB"):
            read_text(Path("/dev/zero"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_BYTES


def test_a_file_just_within_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    path.write_bytes(b"#" * MAX_BYTES)
    assert len(read_text(path)) == MAX_BYTES
    path.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(InvalidInput, match=r"big\.yml: larger than"):
        read_text(path)


def test_a_yaml_bomb_is_refused_before_it_is_built() -> None:
    """Nine levels of nine aliases: 387 million nodes once expanded."""
    text = (CASES / "negative" / "yaml-bomb-stack" / "stack.yml").read_text()
    tracemalloc.start()
    try:
        data, problems = parse_yaml(text, "stack.yml", "a stack")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data is None
    assert [p.message for p in problems] == [
        "aliases expand to more than 30,000 YAML nodes (from line 6); refused as a YAML bomb"
    ]
    assert peak < 10 * 1024 * 1024


def test_shared_anchors_within_the_limit_still_load() -> None:
    text = "base: &b {image: x, init: true}\none: *b\ntwo: {<<: *b, init: false}\n"
    data, problems = parse_yaml(text, "f.yml", "a mapping")
    assert problems == []
    assert data == {
        "base": {"image": "x", "init": True},
        "one": {"image": "x", "init": True},
        "two": {"image": "x", "init": False},
    }
