"""The store harness of the contract suite: fresh stores of one kind, and time travel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster

from promptkit_async.statestore import StateStore


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class StoreHarness:
    """Makes stores of one kind and moves their time forward.

    ``make(ttl=..., refresh_ttl_on_read=...)`` returns a fresh, empty store (its own
    SQLite file or Redis key prefix); ``advance(seconds)`` lets that much time pass for
    every store made: a fake clock for memory and SQLite, for Redis every key's
    remaining TTL is shortened by the same amount (keys whose TTL runs out are deleted,
    as Redis would), and for PostgreSQL every session's expiry time moves that much
    earlier (the server's clock decides), so no test sleeps.
    """

    kind: str
    make: Callable[..., Awaitable[StateStore]]
    advance: Callable[[float], Awaitable[None]]
    stores: list[StateStore] = field(default_factory=list)


async def _scan(client: Any, pattern: str) -> list[bytes]:
    nodes = client.get_primaries() if isinstance(client, RedisCluster) else [None]
    keys: list[bytes] = []
    for node in nodes:
        cursor = 0
        while True:
            if node is None:
                cursor, batch = await client.scan(cursor, match=pattern, count=500)
            else:
                cursor, batch = await node.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", 500
                )
                cursor = int(cursor)
            keys += batch
            if not cursor:
                break
    return keys


async def shift_redis_ttls(client: Any, prefixes: list[str], seconds: float) -> None:
    """Let ``seconds`` pass for the TTLs of every key under ``prefixes``."""
    step = int(seconds * 1000)
    for prefix in prefixes:
        for key in await _scan(client, prefix + ":*"):
            left = await client.pttl(key)
            if left < 0:
                continue  # no TTL (or gone)
            if left - step <= 0:
                await client.delete(key)
            else:
                await client.pexpire(key, left - step)


async def shift_postgres_ttls(dsn: str, schemas: list[str], seconds: float) -> None:
    """Let ``seconds`` pass for the expiry times of every session in ``schemas``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas:
            # Session expiry and (layout 2) lease expiry alike.
            await conn.execute(
                f'UPDATE "{schema}".promptkit_sessions '
                "SET expires_at = expires_at - $1 * interval '1 second', "
                "lease_expires_at = lease_expires_at - $1 * interval '1 second' "
                "WHERE expires_at IS NOT NULL OR lease_expires_at IS NOT NULL",
                float(seconds),
            )
    finally:
        await conn.close()
