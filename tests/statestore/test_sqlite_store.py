"""SQLiteStateStore beyond the shared contract: restarts, locking, threads, layout."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from promptkit_async import (
    InMemoryStateStore,
    InvalidRequestError,
    InvalidSessionIdError,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
)
from promptkit_async.statestore import SQLiteStateStore
from tests.statestore._records import EXPECTED, check_loaded, raw_records


def user(text: str) -> Message:
    return Message("user", text)


def contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def echo_pipeline(store: Any) -> tuple[Pipeline, MockProvider]:
    provider = MockProvider(
        handler=lambda r: f"reply to {r.messages[-1].content}", model="gpt-4o-mini"
    )
    return Pipeline(StateMiddleware(store), ProviderMiddleware(provider)), provider


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_constructor_does_no_io(tmp_path: Path) -> None:
    path = tmp_path / "missing-directory" / "chat.sqlite3"
    store = SQLiteStateStore(path)
    assert not path.parent.exists()

    with pytest.raises(StoreUnavailableError, match="missing-directory") as caught:
        await store.load("s")
    assert "directory exists" in str(caught.value)
    await store.aclose()


async def test_session_ids_are_checked_before_any_io(tmp_path: Path) -> None:
    # The directory does not exist: any I/O would fail with StoreUnavailableError.
    store = SQLiteStateStore(tmp_path / "missing" / "chat.sqlite3")
    for call in (store.load(""), store.append(" ", [user("x")]), store.fork("ok", "a\x00")):
        with pytest.raises(InvalidSessionIdError):
            await call
    with pytest.raises(StoreUnavailableError):
        await store.load("fine")
    await store.aclose()


async def test_a_restart_continues_the_conversation(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    async with SQLiteStateStore(path) as store:
        pipeline, _ = echo_pipeline(store)
        await pipeline.execute("alice", "user", "My name is Alice")
        await pipeline.execute("alice", "user", "I like tea")

    async with SQLiteStateStore(path) as store:  # a new process would do just this
        pipeline, provider = echo_pipeline(store)
        await pipeline.execute("alice", "user", "What is my name?")
        assert contents(provider.requests[0].messages) == [
            "My name is Alice",
            "reply to My name is Alice",
            "I like tea",
            "reply to I like tea",
            "What is my name?",
        ]
        assert await store.count("alice") == 6


async def test_concurrent_sessions_on_two_connections_never_hit_a_locked_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.sqlite3"
    first, second = SQLiteStateStore(path), SQLiteStateStore(path)  # two connections, one file
    pipes = [echo_pipeline(first)[0], echo_pipeline(second)[0]]

    async def chat(n: int) -> None:
        pipeline = pipes[n % 2]
        for i in range(3):
            await pipeline.execute(f"user-{n}", "user", f"{n}.{i}")
            await pipeline.execute("shared", "user", f"shared {n}.{i}")

    await asyncio.gather(*(chat(n) for n in range(100)))

    for n in (0, 1, 99):
        assert contents(await second.load(f"user-{n}")) == [
            f"{n}.0",
            f"reply to {n}.0",
            f"{n}.1",
            f"reply to {n}.1",
            f"{n}.2",
            f"reply to {n}.2",
        ]
    shared = contents(await first.load("shared"))
    assert len(shared) == 600
    assert shared[1::2] == [f"reply to {q}" for q in shared[0::2]]
    await first.aclose()
    await second.aclose()


async def test_a_write_waiting_for_another_process_does_not_block_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStateStore(path)
    await store.count("s")  # open the database and create the tables
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")  # holds the write lock

    append = asyncio.create_task(store.append("s", [user("waits for the lock")]))
    # The loop keeps serving other work while the append waits in its worker thread.
    memory, _ = echo_pipeline(InMemoryStateStore())
    for i in range(20):
        await memory.execute("m", "user", f"{i}")
    assert not append.done()

    other_process.execute("COMMIT")
    other_process.close()
    await append
    assert contents(await store.load("s")) == ["waits for the lock"]
    await store.aclose()


async def test_a_lock_held_too_long_is_a_store_unavailable_error(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStateStore(path, busy_timeout=0.1)
    await store.append("s", [user("before")])
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked by another process"):
            await store.append("s", [user("never")])
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()
    assert contents(await store.load("s")) == ["before"]
    await store.aclose()


async def test_wal_mode_and_layout_version(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    async with SQLiteStateStore(path) as store:
        await store.append("s", [user("x")])
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        db.close()


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    async with SQLiteStateStore(path) as store:
        with pytest.raises(StoreDataError, match="newer"):
            await store.load("s")


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"this is not a database, just some text " * 100)
    async with SQLiteStateStore(path) as store:
        with pytest.raises(StoreDataError, match="not a SQLite database"):
            await store.load("s")


@pytest.mark.parametrize("version", sorted(EXPECTED))
async def test_records_of_every_schema_version_load(tmp_path: Path, version: int) -> None:
    path = tmp_path / "chat.sqlite3"
    async with SQLiteStateStore(path) as store:
        await store.count("s")  # creates the tables
        with sqlite3.connect(path) as db:
            records = raw_records(version)
            db.executemany(
                "INSERT INTO promptkit_messages (session_id, seq, record) VALUES ('old', ?, ?)",
                list(enumerate(records)),
            )
            db.execute(
                "INSERT INTO promptkit_sessions (id, next_seq) VALUES ('old', ?)", (len(records),)
            )
        db.close()
        check_loaded(await store.load("old"), version)
        await store.append("old", [user("new turn")])
        assert (await store.load("old"))[-1] == user("new turn")


async def test_corrupt_rows_raise_store_data_error(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    async with SQLiteStateStore(path) as store:
        await store.append("s", [user("x")])
        with sqlite3.connect(path) as db:
            db.execute("UPDATE promptkit_messages SET record = '{oops'")
            db.execute("UPDATE promptkit_sessions SET metadata = '[1, 2]'")
        db.close()
        with pytest.raises(StoreDataError, match="'s'"):
            await store.load("s")
        with pytest.raises(StoreDataError, match="'s'"):
            await store.get_metadata("s")


async def test_expiry_survives_a_restart_and_expired_rows_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    clock = Clock()
    async with SQLiteStateStore(path, ttl=10, clock=clock) as store:
        await store.append("short", [user("x")])
        await store.merge_metadata("short", {"k": 1})
    clock.now += 5
    async with SQLiteStateStore(path, ttl=10, clock=clock) as store:
        assert contents(await store.load("short")) == ["x"]
    clock.now += 6
    async with SQLiteStateStore(path, ttl=10, clock=clock) as store:
        assert await store.load("short") == []
        await store.append("other", [user("y")])  # a write sweeps expired sessions away
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT DISTINCT session_id FROM promptkit_messages").fetchall() == [
            ("other",)
        ]
        assert db.execute("SELECT id FROM promptkit_sessions").fetchall() == [("other",)]
    db.close()


async def test_an_in_memory_database_works(tmp_path: Path) -> None:
    async with SQLiteStateStore(":memory:") as store:
        await store.append("s", [user("x")])
        assert contents(await store.load("s")) == ["x"]


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "chat.sqlite3")
    await store.append("s", [user("x")])
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.load("s")
    never_opened = SQLiteStateStore(tmp_path / "other.sqlite3")
    await never_opened.aclose()
    assert not (tmp_path / "other.sqlite3").exists()


async def test_a_forgotten_store_warns(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "chat.sqlite3")
    await store.count("s")
    with pytest.warns(ResourceWarning, match="unclosed SQLiteStateStore"):  # noqa: PT031
        del store
        gc.collect()  # the store may sit in a reference cycle until collected


def test_constructor_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="ttl"):
        SQLiteStateStore(tmp_path / "x", ttl=-1)
    for busy_timeout in (-1, float("inf"), "5"):
        with pytest.raises(InvalidRequestError, match="busy_timeout"):
            SQLiteStateStore(tmp_path / "x", busy_timeout=busy_timeout)  # type: ignore[arg-type]


async def test_one_failing_operation_does_not_fail_its_batch(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    async with SQLiteStateStore(path) as store:
        await store.merge_metadata("broken", {"k": 1})
        with sqlite3.connect(path) as db:
            db.execute("UPDATE promptkit_sessions SET metadata = '{oops'")
        db.close()

        results = await asyncio.gather(
            store.append("fine", [user("x")]),
            store.merge_metadata("broken", {"k": 2}),  # fails after reading: rolled back
            store.append("fine", [user("y")]),
            return_exceptions=True,
        )

        assert results[0] is None
        assert isinstance(results[1], StoreDataError)
        assert results[2] is None
        assert contents(await store.load("fine")) == ["x", "y"]


async def test_a_cancelled_operation_that_was_not_started_is_not_applied(tmp_path: Path) -> None:
    async with SQLiteStateStore(tmp_path / "chat.sqlite3") as store:
        task = asyncio.create_task(store.append("s", [user("never")]))
        await asyncio.sleep(0)  # queued for the next batch, not yet in the worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.load("s") == []


async def test_the_read_and_write_connections_never_race_to_set_up_a_new_file(
    tmp_path: Path,
) -> None:
    # busy_timeout=0: any lock one of the store's own connections met would fail at once.
    for i in range(20):
        async with SQLiteStateStore(tmp_path / f"{i}.sqlite3", busy_timeout=0) as store:
            loaded, _, counted = await asyncio.gather(
                store.load("a"), store.append("a", [user("x")]), store.count("b")
            )
            assert contents(loaded) in ([], ["x"])  # concurrent: either order
            assert counted == 0
            assert contents(await store.load("a")) == ["x"]
