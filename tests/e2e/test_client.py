"""``connect`` against the real engine: the engine's own API version, no costly questions.

``ports`` at 1003 tasks spent part of its time in GET /version (the SDK's
version detection) and GET /info (the manager check): dockerd runs runc and
docker-init to answer both, and counts every container for /info. The ping
already says the API version, and GET /swarm answers only on a manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.live import client as live_client


@pytest.fixture
def requests_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every HTTP request the SDK's clients send while the test runs, as "METHOD /path".

    The requests still go to the engine: this only writes down their paths.
    """
    seen: list[str] = []
    session_send = docker.APIClient.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        seen.append(f"{request.method} {request.path_url.split('?')[0]}")
        return session_send(self, request, **kwargs)

    monkeypatch.setattr(docker.APIClient, "send", send)
    yield seen


def test_connect_speaks_the_engine_s_api_version_without_asking_version_or_info(
    docker_client: docker.DockerClient, requests_made: list[str]
) -> None:
    expected = docker_client.version()["ApiVersion"]
    requests_made.clear()
    client = live_client.connect()
    try:
        assert client.api.api_version == expected
        assert requests_made == ["GET /_ping", f"GET /v{expected}/swarm"]
        # And the client works at that version.
        assert client.api.services() is not None
    finally:
        client.close()


def test_an_engine_that_is_not_there_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(CqkdError, match="cannot reach the Docker engine at unix:///nonexistent"):
        live_client.connect()
