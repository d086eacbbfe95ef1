"""PostgreSQL faults under load: kill, stop, freeze; statement timeout, lock conflicts, an
exhausted pool.

A private PostgreSQL server per test. In the load test, workers run conversation turns
non-stop on shared sessions through one pipeline and one ``PostgresStateStore``, created
once and never recreated, while a schedule of faults hits the server:

* ``pg_ctl stop -m immediate`` (every server process ends at once, as in a crash) while
  turns are in flight, then a restart that replays the WAL;
* ``pg_ctl stop -m fast`` (backends terminated), then a restart;
* ``SIGSTOP`` of every server process (frozen; the kernel still accepts connections),
  then ``SIGCONT``.

Checked, as the Redis fault suite does: every failed turn raises a :class:`StoreError`
subclass within a guard of the configured timeouts (no hang, no raw asyncpg or OS
error); after each fault the same store and pipeline serve turns again; at the end every
stored record decodes, every turn is whole and in its own session, every acknowledged
turn is stored exactly once in acknowledgement order, and nothing is stored that was
not attempted.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from promptkit_async import (
    Cost,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    StoreUnavailableError,
    Usage,
)
from promptkit_async.statestore import PostgresStateStore
from promptkit_async.statestore.records import decode_message
from tests._pg_proxy import AmbiguousProxy
from tests._postgres_server import PostgresServer, server_pids
from tests.faults._checks import Load, audit
from tests.faults.conftest import Report, scales

pytestmark = pytest.mark.postgres

TIMEOUT = 0.5  # the store's operation timeout (and connect timeout)
HANG_GUARD = 4 * TIMEOUT + 5  # a turn is two operations, each bounded by ~2x TIMEOUT
PHASE_GUARD = 60.0


async def _observed(load: Load, report: Report, name: str, heal: Callable[[], Any]) -> None:
    """Wait until the workers saw the fault, heal it, then until they succeed again."""
    failed_before = load.fail
    await load.until(lambda: load.fail >= failed_before + 4)
    await heal()
    ok_before = load.ok
    await load.until(lambda: load.ok >= ok_before + 20)
    report.add(faults=1)
    schedule = report.figures.setdefault("schedule", [])
    if name not in schedule:
        schedule.append(name)


def _signal_all(server: PostgresServer, sig: int) -> None:
    for pid in server_pids(server):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # a backend that ended meanwhile
            continue


@scales
async def test_postgres_faults_under_load(
    postgres_factory: Callable[[], PostgresServer], report: Report, scale: int
) -> None:
    server = postgres_factory()
    store = await PostgresStateStore.connect(
        server.dsn, schema="faults", timeout=TIMEOUT, connect_timeout=TIMEOUT, max_size=8
    )
    provider = MockProvider(handler=lambda r: f"reply to {r.messages[-1].content}")
    # A lease taken by a claim whose answer was lost while the server was down is held
    # until lease_ttl: keep that well inside HANG_GUARD, so the next turn's bounded wait
    # for it is not taken for a hang (as in the Redis fault run).
    pipe = Pipeline(StateMiddleware(store, lease_ttl=2.0), ProviderMiddleware(provider))
    sessions = [f"p{i}" for i in range(20 * scale)]
    load = Load(pipe, sessions, seed=5, hang_guard=HANG_GUARD)
    workers = [asyncio.ensure_future(load.worker(w)) for w in range(8)]
    try:
        await load.until(lambda: load.ok >= 50)
        for _ in range(scale):
            # Killed mid-load: immediate shutdown ends every process, as a crash does.
            await asyncio.to_thread(server.kill)
            await _observed(
                load, report, "killed + restart", lambda: asyncio.to_thread(server.start)
            )
            await asyncio.to_thread(server.stop)
            await _observed(
                load, report, "stopped + restart", lambda: asyncio.to_thread(server.start)
            )
            _signal_all(server, signal.SIGSTOP)

            async def thaw() -> None:
                _signal_all(server, signal.SIGCONT)

            await _observed(load, report, "sigstop", thaw)
    finally:
        _signal_all(server, signal.SIGCONT)
        load.stopping = True
        await asyncio.wait_for(asyncio.gather(*workers), PHASE_GUARD)

    attempted, checked = await audit(load, store)
    await pipe.shutdown()
    await store.aclose()
    # Every raw record decodes (read around the store, straight from the table).
    raw = await asyncpg.connect(server.dsn)
    records = await raw.fetch("SELECT record FROM faults.promptkit_messages")
    await raw.close()
    for row in records:
        decode_message(row[0])
    report.add(
        turns_attempted=len(attempted),
        turns_acknowledged=load.ok,
        turns_failed=load.fail,
        turns_checked=checked,
        records_decoded=len(records),
        failed_but_stored=checked - load.ok,
        losses=0,
        errors=dict(load.errors),
        failures_by_kind=dict(load.kinds),
    )


# --- one fault at a time ------------------------------------------------------------------


@pytest.fixture
def pg(postgres_factory: Callable[[], PostgresServer]) -> PostgresServer:
    """A private server (the faults' conftest already has a ``server`` fixture)."""
    return postgres_factory()


@pytest.fixture
async def locker(pg: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection that can hold a session row's lock in an open transaction."""
    conn = await asyncpg.connect(pg.dsn)
    yield conn
    await conn.close()


async def _lock_session(conn: asyncpg.Connection, session_id: str) -> Any:
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute(
        "SELECT 1 FROM faults.promptkit_sessions WHERE id = $1 FOR UPDATE", session_id
    )
    return transaction


async def _wait_for_lock_wait(dsn: str) -> None:
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


def user(text: str) -> Message:
    return Message("user", text)


async def test_statement_timeout_is_a_clear_error_and_the_store_goes_on(
    pg: PostgresServer, locker: asyncpg.Connection, report: Report
) -> None:
    store = await PostgresStateStore.connect(
        pg.dsn, schema="faults", statement_timeout=0.2, timeout=10
    )
    await store.append("s", [user("before")])
    transaction = await _lock_session(locker, "s")
    with pytest.raises(StoreUnavailableError, match="cancelled append") as caught:
        await asyncio.wait_for(store.append("s", [user("blocked")]), HANG_GUARD)
    assert "statement timeout" in str(caught.value)
    assert "pg_stat_activity" in str(caught.value)
    await transaction.rollback()
    await store.append("s", [user("after")])
    # A cancelled statement is undone whole.
    assert [m.content for m in await store.load("s")] == ["before", "after"]
    await store.aclose()
    report.add(faults=1)


async def test_client_timeout_cancels_the_statement_and_the_store_goes_on(
    pg: PostgresServer, locker: asyncpg.Connection, report: Report
) -> None:
    store = await PostgresStateStore.connect(pg.dsn, schema="faults", timeout=0.3)
    await store.append("s", [user("before")])
    transaction = await _lock_session(locker, "s")
    with pytest.raises(StoreUnavailableError, match=r"did not answer append within 0\.3s"):
        await asyncio.wait_for(store.append("s", [user("blocked")]), HANG_GUARD)
    await transaction.rollback()
    await store.append("s", [user("after")])
    assert [m.content for m in await store.load("s")] == ["before", "after"]
    await store.aclose()
    report.add(faults=1)


async def test_an_exhausted_pool_fails_within_the_timeout(
    pg: PostgresServer, report: Report
) -> None:
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=1)
    store = PostgresStateStore(pool, schema="faults", timeout=0.3)
    await store.append("s", [user("x")])
    held = await pool.acquire()  # the application holds the only connection
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreUnavailableError, match="no connection") as caught:
        await asyncio.wait_for(store.count("s"), HANG_GUARD)
    assert asyncio.get_running_loop().time() - started < 2
    assert "max_size" in str(caught.value)
    await pool.release(held)
    assert await store.count("s") == 1  # the same store, once a connection is free
    await store.aclose()
    await pool.close()
    report.add(faults=1)


async def test_a_serialization_failure_is_a_retryable_error(
    pg: PostgresServer, locker: asyncpg.Connection, report: Report
) -> None:
    store = await PostgresStateStore.connect(
        pg.dsn,
        schema="faults",
        server_settings={"default_transaction_isolation": "repeatable read"},
    )
    await store.append("s", [user("1")])
    # Another transaction changes the row while the store's statement waits for it.
    transaction = locker.transaction()
    await transaction.start()
    await locker.execute("UPDATE faults.promptkit_sessions SET expires_at = NULL WHERE id = 's'")
    pending = asyncio.ensure_future(store.append("s", [user("2")]))
    await _wait_for_lock_wait(pg.dsn)
    await transaction.commit()
    with pytest.raises(StoreUnavailableError, match="nothing was written, retry"):
        await asyncio.wait_for(pending, HANG_GUARD)
    await store.append("s", [user("2")])  # the retry
    assert [m.content for m in await store.load("s")] == ["1", "2"]
    await store.aclose()
    report.add(faults=1)


async def test_a_cancelled_operation_leaves_no_stale_reply_behind(
    pg: PostgresServer, locker: asyncpg.Connection, report: Report
) -> None:
    # One connection: the operations after the cancelled one run on the same one.
    store = await PostgresStateStore.connect(pg.dsn, schema="faults", max_size=1, timeout=10)
    await store.append("s", [user("1")])
    await store.merge_metadata("s", {"k": "before"})
    await store.append("other", [user("other")])
    transaction = await _lock_session(locker, "s")
    # The caller's own deadline around an operation, as plain asyncio code writes it.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(store.merge_metadata("s", {"k": "cancelled"}), 0.3)
    await transaction.rollback()
    # Each answer is its own, not the late reply of the cancelled statement, which the
    # server cancelled: nothing of it was applied.
    assert await store.get_metadata("s") == {"k": "before"}
    assert [m.content for m in await store.load("other")] == ["other"]
    assert await store.count("s") == 1
    await store.aclose()
    report.add(faults=1)


# --- ambiguous saves of turns (issue 15) --------------------------------------------------


async def test_ambiguous_turn_saves_retried_with_their_turn_ids_are_stored_once(
    pg: PostgresServer, report: Report
) -> None:
    """Every third turn's save is applied by the server but its answer is lost (the
    connection drops): the caller cannot know. Each such turn is retried with its turn
    id: the retry's begin_turn finds it stored, so nothing is stored twice, nothing
    acknowledged is missing, and the ledger equals the sum of the stored turns."""
    proxy = await AmbiguousProxy(pg.port, b'end_turn"', every=3, mode="drop").start()
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    store = await PostgresStateStore.connect(
        dsn, schema="ambiguous", timeout=5.0, max_size=4, statement_cache_size=0
    )
    sessions = [f"a{i}" for i in range(4)]
    per_session = 12
    ambiguous = replayed = 0

    def figures(n: int) -> tuple[Usage, Cost]:
        usage = Usage(prompt_tokens=10 + n, completion_tokens=n, total_tokens=10 + 2 * n)
        return usage, Cost(total_cost=0.001 * (n + 1))

    async def run(session: str) -> None:
        nonlocal ambiguous, replayed
        for n in range(per_session):
            turn_id = f"{session}-{n}"
            usage, cost = figures(n)
            for _ in range(10):
                try:
                    claim = await store.begin_turn(
                        session, owner="faults", lease_ttl=30, turn_id=turn_id
                    )
                    if claim.stored_turn is not None:
                        assert [m.content for m in claim.stored_turn] == [turn_id, f"re {turn_id}"]
                        replayed += 1
                        break
                    assert claim.token is not None
                    await store.end_turn(
                        session,
                        claim.token,
                        [user(turn_id), Message("assistant", f"re {turn_id}")],
                        turn_id=turn_id,
                        usage=usage,
                        cost=cost,
                    )
                    break
                except StoreUnavailableError:
                    ambiguous += 1  # the outcome is unknown: retry with the same turn id
            else:
                raise AssertionError(f"{turn_id} never got through")

    try:
        await asyncio.wait_for(asyncio.gather(*(run(s) for s in sessions)), PHASE_GUARD)
        assert proxy.faults > 0
        # A fault hits every turn whose end_turn traveled in that statement (concurrent
        # ends are batched into one): at least one caller each.
        assert ambiguous >= proxy.faults
        # Each lost answer was of an applied save: its retry found it stored.
        assert replayed == ambiguous
        for session in sessions:
            history = [m.content for m in await store.load(session)]
            expected = [f"{session}-{n}" for n in range(per_session)]
            assert history[0::2] == expected  # each once, in order: no duplicate, no loss
            assert [await store.has_turn(session, t) for t in expected] == [True] * per_session
            ledger = await store.get_ledger(session)
            sums = [figures(n) for n in range(per_session)]
            assert ledger.turns == per_session
            assert ledger.prompt_tokens == sum(u.prompt_tokens for u, _ in sums)
            assert ledger.completion_tokens == sum(u.completion_tokens for u, _ in sums)
            assert ledger.total_tokens == sum(u.total_tokens for u, _ in sums)
            assert ledger.cost_usd == pytest.approx(sum(c.total_cost for _, c in sums))
    finally:
        await store.aclose()
        await proxy.aclose()
    report.add(
        faults=proxy.faults,
        turns=len(sessions) * per_session,
        ambiguous=ambiguous,  # failed to their caller, yet stored...
        replayed=replayed,  # ...each found stored by its retry
        duplicates=0,
    )
