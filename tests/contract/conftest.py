"""One harness per store kind, so the contract suite runs unchanged against each."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from promptkit_async.statestore import (
    InMemoryStateStore,
    PostgresStateStore,
    RedisStateStore,
    SQLiteStateStore,
    StateStore,
)
from tests._postgres_server import unique_schema
from tests.contract._harness import FakeClock, StoreHarness, shift_postgres_ttls, shift_redis_ttls

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreHarness]:
    """A :class:`StoreHarness` for each store kind."""
    kind: str = request.param
    stores: list[StateStore] = []
    clock = FakeClock(1_700_000_000.0)
    raw: Any = None
    prefixes: list[str] = []

    async def advance_clock(seconds: float) -> None:
        clock.now += seconds

    async def advance_redis(seconds: float) -> None:
        await shift_redis_ttls(raw, prefixes, seconds)

    if kind == "memory":

        async def make(ttl: float | None = None, refresh_ttl_on_read: bool = False) -> StateStore:
            return InMemoryStateStore(ttl=ttl, refresh_ttl_on_read=refresh_ttl_on_read, clock=clock)

        advance = advance_clock
    elif kind == "sqlite":

        async def make(ttl: float | None = None, refresh_ttl_on_read: bool = False) -> StateStore:
            path = tmp_path / f"store{len(stores)}.sqlite3"
            return SQLiteStateStore(
                path, ttl=ttl, refresh_ttl_on_read=refresh_ttl_on_read, clock=clock
            )

        advance = advance_clock
    elif kind == "postgres":
        server = request.getfixturevalue("postgres_server")
        schemas: list[str] = []

        async def make(ttl: float | None = None, refresh_ttl_on_read: bool = False) -> StateStore:
            schemas.append(unique_schema())
            return await PostgresStateStore.connect(
                server.dsn, schema=schemas[-1], ttl=ttl, refresh_ttl_on_read=refresh_ttl_on_read
            )

        async def advance_postgres(seconds: float) -> None:
            await shift_postgres_ttls(server.dsn, schemas, seconds)

        advance = advance_postgres
    else:
        cluster = kind == "redis-cluster"
        server = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
        if cluster:
            raw = RedisCluster(host="127.0.0.1", port=server.port)
            await raw.initialize()
        else:
            raw = aioredis.Redis(host="127.0.0.1", port=server.port)

        async def make(ttl: float | None = None, refresh_ttl_on_read: bool = False) -> StateStore:
            prefix = f"contract-{uuid.uuid4().hex[:12]}"
            prefixes.append(prefix)
            return await RedisStateStore.connect(
                server.url,
                prefix=prefix,
                ttl=ttl,
                refresh_ttl_on_read=refresh_ttl_on_read,
                cluster=cluster,
            )

        advance = advance_redis

    async def tracked_make(**options: Any) -> StateStore:
        store = await make(**options)
        stores.append(store)
        return store

    yield StoreHarness(kind, tracked_make, advance, stores)
    for store in stores:
        await store.aclose()
    if raw is not None:
        await raw.aclose()


@pytest.fixture
async def store(harness: StoreHarness) -> StateStore:
    """A fresh, empty store of each kind, without TTL."""
    return await harness.make()
