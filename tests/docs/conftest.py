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


@pytest.fixture(autouse=True)
def docs_database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$DATABASE_URL`` for the examples: a real PostgreSQL when the server binaries are
    here (always under CI), else a loopback port nobody listens on (their fallback)."""
    try:
        server = request.getfixturevalue("postgres_server")
        url = server.dsn
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/postgres"
    monkeypatch.setenv("DATABASE_URL", url)
