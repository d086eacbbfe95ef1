"""PostgresStateStore beyond the shared contract: round trips, schema, TTL purge, pools, errors.

Everything runs against a real PostgreSQL server (``tests/_postgres_server.py``); each
test uses its own schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from promptkit_async import (
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
)
from promptkit_async.statestore import PostgresStateStore
from promptkit_async.statestore.postgres import LAYOUT_VERSION
from tests._postgres_server import PostgresServer, unique_schema
from tests._redis_server import free_port
from tests.contract._harness import shift_postgres_ttls
from tests.contract.test_store_contract import bot, contents, user
from tests.statestore._proxy import CountingProxy

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def raw(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection beside the store, to look at (and tamper with) the tables."""
    conn = await asyncpg.connect(postgres_server.dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def counted(
    postgres_server: PostgresServer,
) -> AsyncIterator[tuple[PostgresStateStore, CountingProxy]]:
    """A store whose connection goes through a round-trip counting proxy.

    One connection, so that once warm it has prepared every statement (each new pooled
    connection prepares its statements on first use: a few more round trips, once).
    """
    proxy = await CountingProxy(postgres_server.port).start()
    store = await PostgresStateStore.connect(
        f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres",
        schema=unique_schema(),
        max_size=1,
    )
    yield store, proxy
    await store.aclose()
    await proxy.aclose()


async def test_a_turn_costs_two_round_trips_with_a_warm_pool(
    counted: tuple[PostgresStateStore, CountingProxy],
) -> None:
    store, proxy = counted
    provider = MockProvider(handler=lambda r: f"reply to {r.messages[-1].content}")
    pipeline = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    await pipeline.execute("warm", "user", "hi")  # prepares the statements
    await asyncio.gather(*store._tasks)  # the first write's background purge
    for turn in range(3):
        before = proxy.round_trips
        await pipeline.execute("s", "user", f"q{turn}")
        assert proxy.round_trips - before == 2  # load, append
    await pipeline.shutdown()
    assert contents(await store.load("s")) == [
        "q0",
        "reply to q0",
        "q1",
        "reply to q1",
        "q2",
        "reply to q2",
    ]


async def test_every_operation_is_one_statement(
    counted: tuple[PostgresStateStore, CountingProxy],
) -> None:
    store, proxy = counted
    operations = [
        lambda: store.append("a", [user("1"), bot("2")]),
        lambda: store.load("a", 1),
        lambda: store.save("a", [user("3")]),
        lambda: store.fork("a", "b"),
        lambda: store.fork("nobody", "b"),
        lambda: store.merge_metadata("a", {"k": 1}),
        lambda: store.get_metadata("a"),
        lambda: store.count("a"),
        lambda: store.list_sessions(limit=1),
        lambda: store.delete("a"),
    ]
    for operation in operations:
        await operation()  # the first call of each prepares its statement
    await asyncio.gather(*store._tasks)  # the first write's background purge
    for operation in operations:
        before = proxy.round_trips
        await operation()
        assert proxy.round_trips - before == 1, operation


async def test_concurrent_operations_share_statements(
    counted: tuple[PostgresStateStore, CountingProxy],
) -> None:
    store, proxy = counted
    await store.append("warm", [user("x")])
    await store.load("warm")
    before = proxy.round_trips
    await asyncio.gather(*(store.append(f"s{i}", [user(f"{i}")]) for i in range(200)))
    await asyncio.gather(*(store.load(f"s{i}") for i in range(200)))
    assert proxy.round_trips - before <= 8  # at most max_in_flight batches of each
    loaded = await asyncio.gather(*(store.load(f"s{i}") for i in range(200)))
    assert [contents(m) for m in loaded] == [[f"{i}"] for i in range(200)]


async def test_load_last_n_reads_only_the_rows_it_returns(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        await store.append("s", [user(f"m{i}") for i in range(500)])
        assert contents(await store.load("s", 3)) == ["m497", "m498", "m499"]
        plan = await raw.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + store._sql.load_many, ["s"], [3]
        )
    nodes = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", ()):
            walk(child)

    walk(json.loads(plan)[0]["Plan"])
    scans = [n for n in nodes if n.get("Relation Name") == "promptkit_messages"]
    assert scans, nodes
    assert all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in scans)
    assert sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in scans) == 3


async def test_schema_is_versioned_and_a_newer_one_is_refused(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    pool = await asyncpg.create_pool(postgres_server.dsn, min_size=1, max_size=2)
    try:
        store = PostgresStateStore(pool, schema=schema, auto_migrate=False)
        with pytest.raises(StoreError, match=r"run 'await store\.migrate\(\)'"):
            await store.load("s")
        # Two migrations at once (two processes deploying): one creates, one sees it done.
        assert await asyncio.gather(store.migrate(), store.migrate()) == [LAYOUT_VERSION] * 2
        await store.append("s", [user("x")])
        versions = await raw.fetch(f'SELECT version FROM "{schema}".promptkit_schema_version')
        assert [r[0] for r in versions] == list(range(1, LAYOUT_VERSION + 1))

        await raw.execute(f'INSERT INTO "{schema}".promptkit_schema_version VALUES (99)')
        newer = PostgresStateStore(pool, schema=schema)
        with pytest.raises(StoreDataError, match="newer promptkit_async"):
            await newer.load("s")
        with pytest.raises(StoreDataError, match="layout 99"):
            await PostgresStateStore(pool, schema=schema, auto_migrate=False).count("s")
        await store.aclose()
        await newer.aclose()
    finally:
        await pool.close()


async def test_schemas_and_prefixes_keep_applications_apart(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    dsn = postgres_server.dsn
    async with (
        await PostgresStateStore.connect(dsn, schema=schema) as a,
        await PostgresStateStore.connect(dsn, schema=schema, table_prefix="other_") as b,
    ):
        await a.append("s", [user("from a")])
        await b.append("s", [user("from b")])
        assert contents(await a.load("s")) == ["from a"]
        assert contents(await b.load("s")) == ["from b"]
    tables = await raw.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
    )
    assert [r[0] for r in tables] == [
        "other_messages",
        "other_schema_version",
        "other_sessions",
        "other_turns",
        "promptkit_messages",
        "promptkit_schema_version",
        "promptkit_sessions",
        "promptkit_turns",
    ]
    with pytest.raises(ValueError, match="schema"):  # checked before any connection
        await PostgresStateStore.connect(dsn, schema='x"; DROP TABLE y; --')


async def test_metadata_is_jsonb_and_any_text_round_trips(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    awkward = {
        "summary": "the user likes trains",
        "nul\x00key": "a\x00b",
        "%00": "%25",
        "surrogate": "lone \ud800 half",
        "wrapper": {"$promptkit.json": "[1]"},
        "emoji 😀": ["ü", 1.5, None, {"deep": True}],
    }
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        assert await store.merge_metadata("s", awkward) == {
            k: v for k, v in awkward.items() if v is not None
        }
        assert await store.get_metadata("s") == awkward
        assert await store.merge_metadata("s", {"nul\x00key": None, "%00": None}) == {
            k: v for k, v in awkward.items() if k not in ("nul\x00key", "%00")
        }
    # Plain values stay queryable with PostgreSQL's JSON operators.
    summary = await raw.fetchval(
        f"SELECT metadata->>'summary' FROM \"{schema}\".promptkit_sessions WHERE id = 's'"
    )
    assert summary == "the user likes trains"


async def test_expired_sessions_are_purged_in_the_background(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    store = await PostgresStateStore.connect(postgres_server.dsn, schema=schema, ttl=10)
    await store.append("old0", [user("x"), bot("y")])
    await asyncio.gather(*store._tasks)  # a store's first write purges (nothing yet)
    for i in range(1, 5):
        await store.append(f"old{i}", [user("x"), bot("y")])
    for i in range(5):
        await store.merge_metadata(f"old{i}", {"k": i})
    await store.save("emptied", [])  # a row with nothing in it
    await shift_postgres_ttls(postgres_server.dsn, [schema], 11)
    assert await store.load("old0") == []  # invisible at once
    await store.aclose()

    async def table_sizes() -> tuple[int, int]:
        sessions = await raw.fetchval(f'SELECT count(*) FROM "{schema}".promptkit_sessions')
        messages = await raw.fetchval(f'SELECT count(*) FROM "{schema}".promptkit_messages')
        return sessions, messages

    assert await table_sizes() == (6, 10)
    # Another process (a new store) writes: its first write starts a background purge.
    store = await PostgresStateStore.connect(postgres_server.dsn, schema=schema, ttl=10)
    await store.append("new", [user("z")])
    await store.aclose()  # waits for the purge
    assert await table_sizes() == (1, 1)


async def test_purge_expired_on_demand(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    async with await PostgresStateStore.connect(
        postgres_server.dsn, schema=schema, ttl=10, sweep_interval=3600
    ) as store:
        await store.append("a", [user("x")])
        await store.append("b", [user("x")])
        await shift_postgres_ttls(postgres_server.dsn, [schema], 11)
        await store.append("c", [user("x")])
        assert await store.purge_expired() == 2
        assert await store.purge_expired() == 0
        assert contents(await store.load("c")) == ["x"]


async def test_a_pool_we_are_given_is_never_closed_one_we_create_is(
    postgres_server: PostgresServer,
) -> None:
    pool = await asyncpg.create_pool(postgres_server.dsn, min_size=1, max_size=2)
    store = PostgresStateStore(pool, schema=unique_schema())
    await store.append("s", [user("x")])
    await store.aclose()
    await store.aclose()  # idempotent
    assert not pool._closed
    assert await pool.fetchval("SELECT 1") == 1
    with pytest.raises(StoreError, match="closed"):
        await store.load("s")
    await pool.close()

    owned = await PostgresStateStore.connect(postgres_server.dsn, schema=unique_schema())
    await owned.aclose()
    assert owned.pool._closed


async def test_connect_fails_fast_and_clearly_when_nobody_listens() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        await PostgresStateStore.connect(
            f"postgresql://app:s3cret@127.0.0.1:{port}/chat", connect_timeout=1
        )
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert f"pg_isready -h 127.0.0.1 -p {port}" in message
    assert "s3cret" not in message
    assert caught.value.__cause__ is None  # asyncpg's own message may quote the DSN


async def test_connect_never_hangs_on_a_server_that_does_not_answer() -> None:
    # A listening socket that accepts and then says nothing (a stuck server).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            await PostgresStateStore.connect(
                f"postgresql://app@127.0.0.1:{port}/chat", connect_timeout=0.5
            )
        assert time.monotonic() - started < 3
    finally:
        silent.close()


async def test_wrong_database_and_repr_without_password(postgres_server: PostgresServer) -> None:
    dsn = f"postgresql://postgres:pw-secret@127.0.0.1:{postgres_server.port}/nodb"
    with pytest.raises(StoreError, match="create the database or fix the DSN") as caught:
        await PostgresStateStore.connect(dsn)
    assert "pw-secret" not in str(caught.value)
    dsn = f"postgresql://postgres:pw-secret@127.0.0.1:{postgres_server.port}/postgres"
    async with await PostgresStateStore.connect(dsn, schema=unique_schema()) as store:
        assert "pw-secret" not in repr(store)
        assert f"127.0.0.1:{postgres_server.port}" in repr(store)


async def test_read_only_server_is_a_clear_unavailable_error(
    postgres_server: PostgresServer,
) -> None:
    schema = unique_schema()
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as writer:
        await writer.append("s", [user("kept")])
    # A replica refuses writes the same way: read-only transactions.
    async with await PostgresStateStore.connect(
        postgres_server.dsn,
        schema=schema,
        server_settings={"default_transaction_read_only": "on"},
    ) as replica:
        with pytest.raises(StoreUnavailableError, match=r"read-only.*primary"):
            await replica.append("s", [user("lost")])
        with pytest.raises(StoreUnavailableError, match="read-only"):
            await replica.merge_metadata("s", {"k": 1})
        assert contents(await replica.load("s")) == ["kept"]  # reads still work


async def test_tables_dropped_behind_the_store_are_recreated(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        await store.append("s", [user("x")])
        await raw.execute(f'DROP SCHEMA "{schema}" CASCADE')
        with pytest.raises(StoreError, match="tables are missing"):
            await store.count("s")
        await store.append("s", [user("again")])  # checked and created again
        assert contents(await store.load("s")) == ["again"]


async def test_a_write_after_expiry_starts_an_empty_session(
    postgres_server: PostgresServer,
) -> None:
    schema = unique_schema()
    async with await PostgresStateStore.connect(
        postgres_server.dsn, schema=schema, ttl=10, sweep_interval=3600
    ) as store:
        for session in ("a", "m", "f"):
            await store.append(session, [user("old"), bot("old reply")])
            await store.merge_metadata(session, {"old": True})
        await shift_postgres_ttls(postgres_server.dsn, [schema], 11)
        # Expired rows are still in the tables (no purge ran): the writes must not
        # bring back the old history or metadata.
        await store.append("a", [user("new")])
        assert contents(await store.load("a")) == ["new"]
        assert await store.count("a") == 1
        assert await store.get_metadata("a") == {}
        assert await store.merge_metadata("m", {"new": 1}) == {"new": 1}
        assert await store.load("m") == []
        assert await store.fork("f", "a") == 0  # an expired source is unknown
        assert await store.load("a") == []


def test_importing_the_library_without_asyncpg_costs_nothing_and_fails_nothing() -> None:
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None  # as if it were not installed\n"
        "import promptkit_async, promptkit_async.statestore as s\n"
        "assert 'asyncpg' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    s.PostgresStateStore\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "pip install 'promptkit_async[postgres]'" in done.stdout
