"""Fixtures for the store tests: real redis-server processes (see tests/_redis_server.py)."""

from __future__ import annotations

from tests._redis_server import redis_cluster, redis_factory, redis_server  # noqa: F401
