"""Stores under faults: timeouts that bound, reads that never queue, callers' own timeouts.

Real parts only: a private ``redis-server`` frozen with ``SIGSTOP`` (the kernel still
accepts connections and bytes, nothing answers), and SQLite files locked by a second
connection holding ``BEGIN IMMEDIATE``, as another process would. The timing checks
are upper bounds (``elapsed <= bound + MARGIN``), never sleeps standing in for
synchronisation; the only sleeps spread the arrivals of a workload over time.

* Every store operation ends within the store's timeout counted from its call, also
  when it queued behind round trips that do not come back; it raises
  :class:`StoreTimeoutError` whose ``maybe_applied`` is never wrong about a write.
* A client handed to ``RedisStateStore`` without a socket timeout gets the store's bound.
* SQLite reads never wait behind a write blocked by another process's lock.
* ``asyncio.timeout`` / ``anyio.fail_after`` around a store call fire on time and raise
  ``TimeoutError`` as in plain asyncio, and the store's own timeout is never mistaken
  for the caller's (or the other way round).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from promptkit_async import (
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
    StoreError,
    StoreTimeoutError,
)
from promptkit_async.statestore import RedisStateStore, SQLiteStateStore
from promptkit_async.statestore.redis import DEFAULT_TIMEOUT
from tests._redis_server import RedisClusterServers, RedisServer
from tests.faults.conftest import Report

#: Scheduling slack allowed on top of a bound (2 shared cores): far below the bound itself.
MARGIN = 0.3
TIMEOUT = 0.5  # the stores' timeouts in these tests


def user(text: str) -> Message:
    return Message("user", text)


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """The server process stopped (SIGSTOP) for the block, then resumed (SIGCONT)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """The database's write lock held by another connection for the block."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


# Another process holding the write lock until it reads a line on stdin.
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextlib.asynccontextmanager
async def locked_by(holder: str, path: Path) -> AsyncIterator[None]:
    """The write lock held for the block by another connection or another process."""
    if holder == "connection":
        with locked(path):
            yield
        return
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOCKER, str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert await process.stdout.readline() == b"locked\n"
        yield
    finally:
        process.stdin.write(b"release\n")
        await process.stdin.drain()
        process.stdin.close()
        assert await process.wait() == 0


class Outcome:
    """One operation: how long it took from its call, and how it ended."""

    def __init__(self, name: str, text: str, elapsed: float, error: BaseException | None):
        self.name, self.text, self.elapsed, self.error = name, text, elapsed, error


async def timed(name: str, text: str, work: Awaitable[Any]) -> Outcome:
    start = time.monotonic()
    try:
        await work
    except Exception as exc:
        return Outcome(name, text, time.monotonic() - start, exc)
    return Outcome(name, text, time.monotonic() - start, None)


async def storm(store: Any, seconds: float, workers: int = 12) -> list[Outcome]:
    """Workers calling load/append non-stop for ``seconds``, their arrivals spread over
    one timeout, so that most operations arrive while earlier round trips are stuck."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    outcomes: list[Outcome] = []

    async def worker(w: int) -> None:
        await asyncio.sleep(w * TIMEOUT / workers)  # the workload's arrival pattern
        i = 0
        while loop.time() < end:
            text = f"w{w}-{i}"
            if i % 2:
                outcomes.append(await timed("append", text, store.append(f"s{w}", [user(text)])))
            else:
                outcomes.append(await timed("load", text, store.load(f"s{w}")))
            i += 1

    with anyio.fail_after(seconds + 10 * TIMEOUT):  # a hang guard; bounds are checked later
        await asyncio.gather(*(worker(w) for w in range(workers)))
    return outcomes


def check_bounded(outcomes: list[Outcome], bound: float, report: Report) -> None:
    """Every outcome a StoreTimeoutError that came within ``bound`` of its call."""
    assert outcomes
    worst = max(outcomes, key=lambda o: o.elapsed)
    report.add(operations=len(outcomes), bound_s=bound, worst_s=round(worst.elapsed, 3))
    assert worst.elapsed <= bound + MARGIN, (worst.name, worst.elapsed, worst.error)
    for outcome in outcomes:
        error = outcome.error
        assert isinstance(error, StoreTimeoutError), error
        assert error.timeout == bound
        # A turn on a frozen server fails in its first store call, its begin_turn
        # (lease and history in one script).
        assert error.operation == ("begin_turn" if outcome.name == "turn" else outcome.name)
        if error.operation in ("load", "list_sessions"):
            assert not error.maybe_applied


async def check_not_applied(store: Any, outcomes: list[Outcome]) -> int:
    """Appends reported as not applied are not stored; returns how many were checked."""
    stored = set()
    for w in range(12):
        stored |= {m.content for m in await store.load(f"s{w}")}
    surely_not = [
        o.text
        for o in outcomes
        if o.name == "append" and isinstance(o.error, StoreTimeoutError)
        if not o.error.maybe_applied
    ]
    assert not stored & set(surely_not)
    return len(surely_not)


# --- Redis ------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("max_in_flight", [1, 4])
async def test_a_frozen_redis_fails_every_operation_within_its_timeout_queueing_included(
    redis_factory: Callable[..., RedisServer], report: Report, max_in_flight: int
) -> None:
    server = redis_factory()
    # At most max_in_flight batches on the wire: whatever arrives meanwhile queues.
    store = await RedisStateStore.connect(
        server.address, prefix="q", connect_timeout=TIMEOUT, socket_timeout=TIMEOUT,
        max_in_flight=max_in_flight,
    )  # fmt: skip
    with frozen(server):
        outcomes = await storm(store, 3 * TIMEOUT)
    check_bounded(outcomes, TIMEOUT, report)
    # Sent appends (all of them here: a queued operation's deadline is later than those
    # of the batch it waits for) say they may have been applied, and name what to check.
    appends = [o.error for o in outcomes if o.name == "append"]
    assert appends
    for error in appends:
        assert isinstance(error, StoreTimeoutError)
        assert error.maybe_applied
        assert "may or may not have been applied" in str(error)
    message = str(appends[0])
    assert server.address in message
    assert f"{TIMEOUT:g}s" in message
    assert "redis-cli" in message
    # Thawed: the same store works again.
    await store.append("after", [user("thawed")])
    assert [m.content for m in await store.load("after")] == ["thawed"]
    await store.aclose()


@pytest.mark.redis
async def test_a_turn_on_a_frozen_redis_fails_within_the_timeout(
    redis_factory: Callable[..., RedisServer], report: Report
) -> None:
    server = redis_factory()
    store = await RedisStateStore.connect(
        server.address, prefix="turn", connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
    )
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(MockProvider()))

    async def turn(i: int) -> Outcome:
        await asyncio.sleep(i * TIMEOUT / 40)  # arrivals spread over one timeout
        return await timed("turn", f"{i}", pipe.execute(f"t{i}", "user", "hi"))

    with frozen(server), anyio.fail_after(10 * TIMEOUT):  # a hang guard
        outcomes = await asyncio.gather(*(turn(i) for i in range(40)))
    check_bounded(outcomes, TIMEOUT, report)
    await pipe.execute("t0", "user", "thawed")
    assert await store.count("t0") == 2
    await store.aclose()


@pytest.mark.redis
async def test_a_wrapped_client_without_a_socket_timeout_gets_the_store_bound(
    redis_factory: Callable[..., RedisServer], report: Report
) -> None:
    server = redis_factory()
    client = aioredis.Redis(host="127.0.0.1", port=server.port, socket_timeout=None)
    store = RedisStateStore(client, prefix="wrapped")  # no timeout given anywhere
    assert store.timeout == DEFAULT_TIMEOUT
    await store.append("s", [user("before")])
    with frozen(server), anyio.fail_after(3 * DEFAULT_TIMEOUT):  # a hang guard
        outcome = await timed("load", "", store.load("s"))
    report.add(bound_s=DEFAULT_TIMEOUT, load_s=round(outcome.elapsed, 3))
    assert outcome.elapsed <= DEFAULT_TIMEOUT + MARGIN
    assert isinstance(outcome.error, StoreTimeoutError)
    assert [m.content for m in await store.load("s")] == ["before"]
    await store.aclose()
    await client.aclose()


# --- SQLite -----------------------------------------------------------------------------


@pytest.mark.parametrize("holder", ["connection", "process"])
async def test_sqlite_reads_never_wait_behind_a_blocked_write(
    tmp_path: Path, report: Report, holder: str
) -> None:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStateStore(path, busy_timeout=30)
    await store.append("a", [user("a0")])
    await store.append("b", [user("b0")])
    await store.merge_metadata("b", {"k": 1})
    async with locked_by(holder, path):
        write = asyncio.ensure_future(store.append("a", [user("a1")]))
        start = time.monotonic()
        with anyio.fail_after(5):  # a hang guard; the bound checked is below
            assert [m.content for m in await store.load("b")] == ["b0"]
            assert await store.count("b") == 1
            assert await store.get_metadata("b") == {"k": 1}
            assert (await store.list_sessions()).session_ids == ("a", "b")
            # The locked session's own history reads too (WAL readers take no lock).
            assert [m.content for m in await store.load("a")] == ["a0"]
        elapsed = time.monotonic() - start
        report.add(five_reads_s=round(elapsed, 3), busy_timeout_s=30)
        assert elapsed <= MARGIN, elapsed
        assert not write.done()  # the write still waits for the lock
    await write  # the lock is gone: the write goes through
    assert [m.content for m in await store.load("a")] == ["a0", "a1"]
    await store.aclose()


async def test_every_sqlite_operation_is_bounded_from_its_call_queueing_included(
    tmp_path: Path, report: Report
) -> None:
    path = tmp_path / "chat.sqlite3"
    # refresh_ttl_on_read: loads write too, so every operation needs the lock.
    store = SQLiteStateStore(path, busy_timeout=TIMEOUT, ttl=3600, refresh_ttl_on_read=True)
    await store.count("s0")  # create the database before locking it
    with locked(path):
        outcomes = await storm(store, 3 * TIMEOUT)
    check_bounded(outcomes, TIMEOUT, report)
    message = str(outcomes[0].error)
    assert str(path) in message
    assert "busy_timeout=0.5s" in message
    assert "locked by another process" in message
    # Every caller gave up before the lock was free: none of their writes ran.
    assert await check_not_applied(store, outcomes) > 0
    assert {o.error.maybe_applied for o in outcomes if isinstance(o.error, StoreTimeoutError)} == {
        False
    }
    assert [p.session_ids for p in [await store.list_sessions()]] == [()]
    await store.aclose()


# --- the caller's own timeouts ----------------------------------------------------------

UserTimeout = Callable[[float], Any]


async def within_asyncio(seconds: float, work: Callable[[], Awaitable[Any]]) -> None:
    async with asyncio.timeout(seconds):
        await work()


async def within_anyio(seconds: float, work: Callable[[], Awaitable[Any]]) -> None:
    with anyio.fail_after(seconds):
        await work()


# asyncio.timeout is 3.11+; anyio's scopes on 3.10 (no Task.uncancel) leave tasks cancelling.
_NEW_ASYNCIO = pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Python 3.11+")
scopes = pytest.mark.parametrize(
    "within",
    [
        pytest.param(within_asyncio, id="asyncio.timeout", marks=_NEW_ASYNCIO),
        pytest.param(within_anyio, id="anyio.fail_after", marks=_NEW_ASYNCIO),
    ],
)


async def check_caller_timeout(
    within: Callable[[float], Any], work: Callable[[], Awaitable[Any]]
) -> None:
    """The caller's 0.2 s scope fires on time, raises TimeoutError, leaves no cancel."""
    start = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        await asyncio.wait_for(within(0.2, work), 10)  # wait_for: a hang guard
    assert time.monotonic() - start <= 0.2 + MARGIN
    assert not isinstance(caught.value, StoreTimeoutError)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # nothing left pending or eaten
    await asyncio.sleep(0)  # and the task is not cancelled later either


@pytest.mark.redis
@scopes
async def test_a_callers_timeout_around_a_frozen_redis_fires_on_time(
    redis_factory: Callable[..., RedisServer], within: Callable[[float], Any]
) -> None:
    server = redis_factory()
    store = await RedisStateStore.connect(server.address, prefix="caller", socket_timeout=5)
    with frozen(server):
        await check_caller_timeout(within, lambda: store.load("s"))
        await check_caller_timeout(within, lambda: store.append("s", [user("x")]))
        # The other way round: the store's bound is shorter, its error is not the
        # caller's TimeoutError and the caller's scope did not fire.
        short = RedisStateStore(store.client, prefix="caller", timeout=0.2)
        with anyio.move_on_after(5) as scope:
            with pytest.raises(StoreTimeoutError):
                await within(5, lambda: short.load("s"))
        assert not scope.cancelled_caught
    await store.append("s", [user("thawed")])
    assert "thawed" in [m.content for m in await store.load("s")]
    await short.aclose()
    await store.aclose()


@scopes
async def test_a_callers_timeout_around_a_locked_sqlite_fires_on_time(
    tmp_path: Path, within: Callable[[float], Any]
) -> None:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStateStore(path, busy_timeout=30, ttl=3600, refresh_ttl_on_read=True)
    await store.append("s", [user("before")])
    with locked(path):
        # refresh_ttl_on_read makes a load a write: it waits for the lock too.
        await check_caller_timeout(within, lambda: store.load("s"))
        await check_caller_timeout(within, lambda: store.append("s", [user("given up")]))
        short = SQLiteStateStore(path, busy_timeout=0.2)
        with pytest.raises(StoreTimeoutError):
            await within(5, lambda: short.append("s", [user("also given up")]))
        await short.aclose()
    # The callers gave up before the lock was free: their writes never ran.
    assert [m.content for m in await store.load("s")] == ["before"]
    await store.aclose()


@pytest.mark.redis
async def test_a_frozen_cluster_node_fails_operations_within_the_timeout(
    tmp_path: Path, report: Report
) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.start()
    async with contextlib.AsyncExitStack() as closing:
        closing.callback(cluster.stop)
        # Connecting is not what is tested: a generous bound (a busy machine is slow to
        # discover three nodes); operations keep the short one.
        store = await RedisStateStore.connect(
            cluster.url, cluster=True, prefix="c", connect_timeout=10, socket_timeout=TIMEOUT
        )
        closing.push_async_callback(store.aclose)
        # And a client of the user's without any socket timeout, wrapped. (Closed even if
        # the test fails, or its sockets' warnings would fail whichever test runs next.)
        client = RedisCluster.from_url(cluster.url, socket_timeout=None)
        closing.push_async_callback(client.aclose)
        wrapped = RedisStateStore(client, prefix="c", timeout=TIMEOUT)
        closing.push_async_callback(wrapped.aclose)
        await store.append("s", [user("before")])
        assert isinstance(store.client, RedisCluster)
        owner = store.client.get_node_from_key("c:{s}:m")
        assert owner is not None
        node = next(n for n in cluster.nodes if n.port == owner.port)
        outcomes = []
        with frozen(node), anyio.fail_after(40 * TIMEOUT):  # a hang guard
            for each in (store, wrapped):
                outcomes += [
                    await timed("load", "", each.load("s")),
                    await timed("append", "", each.append("s", [user("frozen")])),
                    await timed("list_sessions", "", each.list_sessions(limit=1000)),
                ]
            # SCAN goes to each master outside the batcher: callers' scopes still work
            # (checked on 3.11+, as the other caller-scope cases).
            if sys.version_info >= (3, 11):
                for within in (within_asyncio, within_anyio):
                    await check_caller_timeout(within, lambda: store.list_sessions(limit=1000))
        check_bounded(outcomes, TIMEOUT, report)
        # Thawed: both stores work again. Each client may need a moment to see the node
        # answer again (the frozen node works through what queued up meanwhile, and a
        # client may rediscover the cluster), so each is retried until it does.
        with anyio.fail_after(30):
            while True:
                try:
                    await store.append("s", [user("thawed")])
                    break
                except StoreError:
                    await asyncio.sleep(0.05)  # polling an external process's recovery
            while True:
                try:
                    history = await wrapped.load("s")
                    break
                except StoreError:
                    await asyncio.sleep(0.05)  # the same, for the user's client
        assert [m.content for m in history][-1] == "thawed"


@pytest.mark.redis
async def test_a_turn_cancelled_while_its_save_is_on_the_wire_waits_for_it(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """StateMiddleware's save, once sent, lands before the turn's CancelledError: the
    session's next turn can never load a history missing it. (A direct store call, as
    above, just stops waiting.)"""
    server = redis_factory()
    store = await RedisStateStore.connect(server.address, prefix="wire", socket_timeout=30)
    # The server knows the store's script now (a fresh server's first write takes a
    # second round trip, which a cancelled save does not make: then it is not stored).
    await store.append("warm-up", [user("hello")])
    answered = asyncio.Event()
    stopped = contextlib.ExitStack()

    def model(request: ProviderRequest) -> str:
        stopped.enter_context(frozen(server))  # the save is about to go to a frozen server
        answered.set()
        return "reply"

    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(MockProvider(handler=model)))
    with stopped:
        turn = asyncio.create_task(pipe.execute("s", "user", "question"))
        await answered.wait()
        for _ in range(50):  # loop steps, no waiting: the save is written to the socket
            await asyncio.sleep(0)
        turn.cancel()
        for _ in range(50):
            await asyncio.sleep(0)
        assert not turn.done()  # still finishing the save the frozen server holds
    with anyio.fail_after(30):  # a hang guard
        with pytest.raises(asyncio.CancelledError):
            await turn
    assert [m.content for m in await store.load("s")] == ["question", "reply"]
    await store.aclose()
