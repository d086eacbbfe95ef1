"""Fixtures for running the documentation's examples."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests._fake_openai import FakeOpenAI


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def docs_redis(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """``(url, real)``: a real redis-server's URL, so the examples' Redis code runs.

    Without the fixture (or, outside CI, without a redis-server binary) a loopback port
    nobody listens on (``real`` false): the examples then take their documented fallback.
    """
    try:
        server = request.getfixturevalue("redis_server")
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        return _closed_url(), False
    url: str = server.url
    return url, True


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A loopback OpenAI-compatible server, for the examples' "with a key" path."""
    with FakeOpenAI() as server:
        yield server
