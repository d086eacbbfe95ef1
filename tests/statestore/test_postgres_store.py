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
from promptkit_async._concurrency import finish_sent_writes
from promptkit_async.statestore import Ledger, PostgresStateStore
from promptkit_async.statestore.postgres import LAYOUT_VERSION, channel_name
from promptkit_async.statestore.records import encode_messages
from promptkit_async.types import Cost, Usage
from tests._pg_proxy import AmbiguousProxy
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
        assert proxy.round_trips - before == 2  # begin_turn (lease + history), end_turn
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


# --- session leases, turn ids and the ledger (layout 2, issue 15) -------------------------

OWNER = "test:1:abc"

# The tables as layout 1 (the library before issue 15) created them, frozen here.
_LAYOUT_1 = [
    "CREATE SCHEMA {s}",
    "CREATE TABLE {s}.promptkit_schema_version ("
    "version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    'CREATE TABLE {s}.promptkit_sessions (id TEXT COLLATE "C" PRIMARY KEY, '
    "metadata JSONB NOT NULL DEFAULT '{{}}', start_seq BIGINT NOT NULL DEFAULT 0, "
    "next_seq BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ)",
    'CREATE INDEX "promptkit_sessions_expiry" ON {s}.promptkit_sessions (expires_at) '
    "WHERE expires_at IS NOT NULL",
    'CREATE TABLE {s}.promptkit_messages (session_id TEXT COLLATE "C" NOT NULL, '
    "seq BIGINT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (session_id, seq))",
    "INSERT INTO {s}.promptkit_schema_version (version) VALUES (1)",
]


async def test_tables_of_layout_1_are_migrated_and_keep_their_data(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    for statement in _LAYOUT_1:
        await raw.execute(statement.format(s=f'"{schema}"'))
    records = encode_messages([user("old q"), bot("old a")])
    await raw.execute(
        f'INSERT INTO "{schema}".promptkit_sessions (id, metadata, next_seq) '
        "VALUES ('old', '{\"k\": 1}', 2)"
    )
    await raw.executemany(
        f'INSERT INTO "{schema}".promptkit_messages VALUES ($1, $2, $3)',
        [("old", i, r) for i, r in enumerate(records)],
    )
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        assert contents(await store.load("old")) == ["old q", "old a"]
        assert await store.get_metadata("old") == {"k": 1}
        assert await store.get_ledger("old") == Ledger()
        claim = await store.begin_turn("old", owner=OWNER, lease_ttl=30)
        assert claim.token is not None
        assert contents(claim.messages) == ["old q", "old a"]
        await store.end_turn(
            "old", claim.token, [user("q"), bot("a")], turn_id="t1", usage=Usage(3, 2, 5)
        )
        assert contents(await store.load("old")) == ["old q", "old a", "q", "a"]
        assert await store.has_turn("old", "t1")
        assert (await store.get_ledger("old")).total_tokens == 5
    versions = await raw.fetch(f'SELECT version FROM "{schema}".promptkit_schema_version')
    assert sorted(r[0] for r in versions) == [1, 2]


async def test_begin_and_end_turn_are_one_round_trip_each(
    counted: tuple[PostgresStateStore, CountingProxy],
) -> None:
    store, proxy = counted
    warm = await store.begin_turn("warm", owner=OWNER, lease_ttl=30, turn_id="w")
    assert warm.token is not None
    await store.end_turn("warm", warm.token, [user("w")], turn_id="w")
    await store.begin_turn("warm", owner=OWNER, lease_ttl=30, turn_id="w")  # stored: replay
    await asyncio.gather(*store._tasks)  # the first write's background purge
    trips = []
    for n in range(3):
        before = proxy.round_trips
        claim = await store.begin_turn("s", owner=OWNER, lease_ttl=30, turn_id=f"t{n}")
        assert claim.token is not None
        busy = await store.begin_turn("s", owner="other", lease_ttl=30)
        assert busy.token is None
        middle = proxy.round_trips
        await store.end_turn(
            "s",
            claim.token,
            [user(f"q{n}"), bot(f"a{n}")],
            turn_id=f"t{n}",
            cost=Cost(total_cost=0.5),
        )
        replay = await store.begin_turn("s", owner=OWNER, lease_ttl=30, turn_id=f"t{n}")
        assert replay.stored_turn is not None
        trips.append((middle - before, proxy.round_trips - middle))
    # begin + busy begin; end (with the NOTIFY the busy claim asked for) + replay.
    assert trips == [(2, 2)] * 3
    assert await store.get_ledger("s") == Ledger(turns=3, cost_usd=1.5)


async def test_a_release_notifies_only_when_a_claim_found_the_lease_busy(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    heard: asyncio.Queue[str] = asyncio.Queue()

    def hear(*args: Any) -> None:
        heard.put_nowait(args[3])

    await raw.add_listener(channel_name(schema, "promptkit_"), hear)
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        quiet = await store.begin_turn("quiet", owner=OWNER, lease_ttl=30)
        assert quiet.token is not None
        await store.end_turn("quiet", quiet.token, [user("q")])  # nobody asked: no NOTIFY
        held = await store.begin_turn("busy", owner=OWNER, lease_ttl=30)
        assert held.token is not None
        assert (await store.begin_turn("busy", owner="other", lease_ttl=30)).token is None
        await store.release_turn("busy", held.token)
        # Notifications arrive in commit order: the first one is the contended release.
        assert await asyncio.wait_for(heard.get(), 5) == "rbusy"
        stolen = await store.begin_turn("busy", owner=OWNER, lease_ttl=30)
        assert stolen.token is not None
        thief = await store.begin_turn("busy", owner="other", lease_ttl=30, steal=True)
        assert await asyncio.wait_for(heard.get(), 5) == f"l{thief.token}:busy"
    await raw.remove_listener(channel_name(schema, "promptkit_"), hear)


async def test_the_listening_connection_is_given_back_by_aclose(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    pool = await asyncpg.create_pool(postgres_server.dsn, min_size=1, max_size=3)
    listening = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' "
        "AND pid <> pg_backend_pid()"
    )
    try:
        store = PostgresStateStore(pool, schema=unique_schema())
        claim = await store.begin_turn("s", owner=OWNER, lease_ttl=30)
        assert claim.token is not None
        assert (await store.begin_turn("s", owner="other", lease_ttl=30)).token is None
        assert await store.wait_turn("s", 0.05) is False  # busy all along: times out
        assert await raw.fetchval(listening) == 1
        assert pool.get_size() - pool.get_idle_size() == 1  # the listener holds one
        await store.aclose()
        assert await raw.fetchval(listening) == 0  # UNLISTENed...
        assert pool.get_size() == pool.get_idle_size()  # ...and back in the pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_claim_whose_answer_was_lost_does_not_hold_the_session_for_its_ttl(
    postgres_server: PostgresServer,
) -> None:
    """begin_turn is applied (the lease taken) but its answer lost: the caller never
    learns the token. The same owner's next claim frees that lease first; another
    owner meanwhile finds the session busy, as it should."""
    proxy = await AmbiguousProxy(postgres_server.port, b'begin_turn"', mode="drop").start()
    schema = unique_schema()
    lossy = await PostgresStateStore.connect(
        f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres",
        schema=schema,
        statement_cache_size=0,
    )
    direct = await PostgresStateStore.connect(postgres_server.dsn, schema=schema)
    try:
        with pytest.raises(StoreUnavailableError):
            await lossy.begin_turn("s", owner=OWNER, lease_ttl=60)
        assert proxy.faults == 1
        proxy.every = 10**9  # no more faults
        assert (await direct.begin_turn("s", owner="other", lease_ttl=60)).token is None
        claim = await lossy.begin_turn("s", owner=OWNER, lease_ttl=60)
        assert claim.token is not None  # not a 60 s wait
        await lossy.end_turn("s", claim.token, [user("q"), bot("a")])
        assert contents(await direct.load("s")) == ["q", "a"]
    finally:
        await lossy.aclose()
        await direct.aclose()
        await proxy.aclose()


async def test_a_cancelled_begin_turn_gives_its_lease_back(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    schema = unique_schema()
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        await store.count("s")  # the tables exist
        # Hold the session row so that the claim waits on the server once sent.
        lock = raw.transaction()
        await lock.start()
        await raw.execute(f"INSERT INTO \"{schema}\".promptkit_sessions (id) VALUES ('s')")
        claim = asyncio.ensure_future(store.begin_turn("s", owner=OWNER, lease_ttl=60))
        await _wait_for_lock_wait(raw, postgres_server.dsn)
        claim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claim
        await lock.commit()  # the claim now takes the lease, then gives it back

        async def taken_by_another() -> int:
            while True:
                await store.wait_turn("s", 5)
                claim = await store.begin_turn("s", owner="other", lease_ttl=60)
                if claim.token is not None:
                    return claim.token

        await asyncio.wait_for(taken_by_another(), 5)  # not in 60 s


async def _wait_for_lock_wait(raw: asyncpg.Connection, dsn: str) -> None:
    """Until some statement waits for a row lock (polling the server, bounded)."""
    conn = await asyncpg.connect(dsn)

    async def poll() -> None:
        # Polling another process's state: nothing here can be awaited instead.
        while not await conn.fetchval(  # noqa: ASYNC110
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ):
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), 10)
    finally:
        await conn.close()


async def test_a_turn_cancelled_while_its_end_turn_is_on_the_wire_waits_for_it(
    postgres_server: PostgresServer, raw: asyncpg.Connection
) -> None:
    """Inside finish_sent_writes() (as StateMiddleware saves), a sent end_turn lands
    before the caller's cancellation is re-raised, like append."""
    schema = unique_schema()
    async with await PostgresStateStore.connect(postgres_server.dsn, schema=schema) as store:
        claim = await store.begin_turn("s", owner=OWNER, lease_ttl=60)
        assert claim.token is not None
        token = claim.token
        lock = raw.transaction()
        await lock.start()
        await raw.execute(
            f"SELECT 1 FROM \"{schema}\".promptkit_sessions WHERE id = 's' FOR UPDATE"
        )

        async def save() -> None:
            with finish_sent_writes():
                await store.end_turn("s", token, [user("q"), bot("a")], turn_id="t")

        saving = asyncio.ensure_future(save())
        await _wait_for_lock_wait(raw, postgres_server.dsn)  # sent, waiting for the row
        saving.cancel()
        done, _ = await asyncio.wait({saving}, timeout=0.3)
        assert not done  # still waiting for its sent write
        await lock.commit()
        with pytest.raises(asyncio.CancelledError):
            await saving
        assert contents(await store.load("s")) == ["q", "a"]
        assert await store.has_turn("s", "t")


async def test_concurrent_claims_and_ends_travel_in_one_statement_each(
    counted: tuple[PostgresStateStore, CountingProxy],
) -> None:
    store, proxy = counted
    sessions = [f"s{i}" for i in range(5)]

    async def claim_all() -> list[int]:
        claims = await asyncio.gather(
            *(store.begin_turn(s, owner=OWNER, lease_ttl=30) for s in sessions)
        )
        tokens = [c.token for c in claims]
        assert None not in tokens
        return [t for t in tokens if t is not None]

    async def end_all(tokens: list[int], n: int) -> None:
        await asyncio.gather(
            *(
                store.end_turn(s, t, [user(f"{s}-q{n}"), bot(f"{s}-a{n}")], turn_id=f"t{n}")
                for s, t in zip(sessions, tokens, strict=True)
            )
        )

    await end_all(await claim_all(), 0)  # prepares the statements
    await asyncio.gather(*store._tasks)  # the first write's background purge
    before = proxy.round_trips
    tokens = await claim_all()
    assert proxy.round_trips - before == 1  # five claims, one round trip
    before = proxy.round_trips
    await end_all(tokens, 1)
    assert proxy.round_trips - before == 1  # five ends, one round trip
    for s in sessions:
        assert contents(await store.load(s)) == [f"{s}-q0", f"{s}-a0", f"{s}-q1", f"{s}-a1"]
        assert await store.has_turn(s, "t1")
        assert (await store.get_ledger(s)).turns == 2
