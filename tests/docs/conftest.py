"""Fixtures for running the documentation's examples."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def closed_redis_url() -> str:
    """A Redis URL on a loopback port nobody listens on (examples take their fallback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"
