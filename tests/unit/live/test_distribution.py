"""The image references that distribution and ``--registry`` produce (pure logic)."""

from __future__ import annotations

import pytest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.live.distribution import names_a_registry, registry_reference


@pytest.mark.parametrize(
    ("registry", "image", "expected"),
    [
        ("reg.example:5000/cqkd/node", "cqkd-dht-node:0.1.0", "reg.example:5000/cqkd/node:0.1.0"),
        ("10.0.0.1:5000/node", "cqkd-dht-node", "10.0.0.1:5000/node:latest"),
        # A port in the local name is not a tag: only after the last slash.
        ("reg/node", "localhost:5000/cqkd-dht-node", "reg/node:latest"),
        ("reg/node", "cqkd-dht-node:1@sha256:" + "0" * 64, "reg/node:1"),
    ],
)
def test_the_registry_reference_keeps_the_local_tag(
    registry: str, image: str, expected: str
) -> None:
    assert registry_reference(registry, image) == expected


@pytest.mark.parametrize(
    "registry", ["", "reg.example:5000/node:1.0", "reg/node@sha256:abc", "justaname"]
)
def test_a_registry_with_a_tag_digest_or_no_repository_is_refused(registry: str) -> None:
    with pytest.raises(CqkdError, match="--registry takes HOST/REPO"):
        registry_reference(registry, "cqkd-dht-node:0.1.0")


@pytest.mark.parametrize(
    ("image", "pullable"),
    [
        ("cqkd-dht-node:0.1.0", False),
        ("library/python:3", False),
        ("reg.example/cqkd/node:1", True),
        ("10.0.0.1:5000/node", True),
        ("localhost/node", True),
    ],
)
def test_only_names_with_a_registry_host_are_left_for_nodes_to_pull(
    image: str, pullable: bool
) -> None:
    assert names_a_registry(image) is pullable
