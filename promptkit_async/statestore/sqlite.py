"""A state store in one SQLite file: durable, embedded, no server.

Tables (created on first use; ``PRAGMA user_version`` records the layout version)::

    promptkit_sessions (id TEXT PRIMARY KEY, metadata TEXT, next_seq INTEGER, expires_at REAL)
    promptkit_messages (session_id TEXT, seq INTEGER, record TEXT, PRIMARY KEY (session_id, seq))

``record`` is the shared JSON record of a message (see ``records``), so histories move
between SQLite and Redis unchanged. Session ids are stored as they are (SQL parameters,
never string formatting), so any id is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from .._lifecycle import AsyncResource
from .._validation import check_session_id
from ..errors import (
    InvalidRequestError,
    LeaseLostError,
    StoreDataError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from ..types import Cost, Message, Usage
from ._batch import Batcher, Command, Expired
from ._common import (
    check_last_n,
    check_lease_ttl,
    check_limit,
    check_owner,
    check_seconds,
    check_token,
    check_ttl,
    check_turn_figures,
    check_turn_id,
    check_wait_timeout,
    dumps_value,
    split_patch,
)
from ._leases import Waiters, Watches
from .base import Ledger, SessionPage, TurnClaim
from .records import decode_messages, encode_messages

__all__ = ["SQLiteStateStore"]

T = TypeVar("T")

#: The table layout this version writes (stored in ``PRAGMA user_version``).
LAYOUT_VERSION = 2

# Each layout's statements, applied in order from the file's version to LAYOUT_VERSION
# (a new file runs them all), in one write transaction.
_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS promptkit_sessions (
    id TEXT PRIMARY KEY NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    next_seq INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS promptkit_sessions_expiry
    ON promptkit_sessions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS promptkit_messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
""",
    # Issue 15: session leases with fencing tokens, turn ids, the per-session ledger.
    2: """
ALTER TABLE promptkit_sessions ADD COLUMN l_turns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promptkit_sessions ADD COLUMN l_prompt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promptkit_sessions ADD COLUMN l_completion INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promptkit_sessions ADD COLUMN l_cached INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promptkit_sessions ADD COLUMN l_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promptkit_sessions ADD COLUMN l_cost REAL NOT NULL DEFAULT 0.0;
CREATE TABLE IF NOT EXISTS promptkit_fence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO promptkit_fence (id, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS promptkit_leases (
    session_id TEXT PRIMARY KEY NOT NULL,
    fence INTEGER NOT NULL,
    owner TEXT,
    expires_at REAL,
    contended INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS promptkit_turns (
    session_id TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (session_id, turn_id)
) WITHOUT ROWID;
""",
}

# A session row counts only while it has not expired.
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_SWEEP_INTERVAL = 60.0
_WRITES = frozenset(
    (
        "append",
        "save",
        "delete",
        "fork",
        "merge_metadata",
        "begin_turn",
        "renew_turn",
        "end_turn",
        "release_turn",
    )
)
#: Waiting for a lease: the first poll at once, then every 5 ms doubling up to 50 ms.
_POLL_FIRST = 0.005
_POLL_MAX = 0.05
#: Watched leases (the interrupt policy) are polled this often, by one task per store.
_WATCH_INTERVAL = 0.05


class SQLiteStateStore(AsyncResource):
    """Conversation histories in a SQLite database file.

    Restart your program with the same file and session id and the conversation
    continues. Nothing happens in the constructor: the file is opened (and the tables
    created) by the first operation, in a worker thread.

    Args:
        path: the database file (created if missing; its directory must exist), or
            ``":memory:"`` for a private in-memory database.
        ttl: seconds a session lives after its last write (sliding); ``None`` = forever.
            Expired sessions read as absent and are purged lazily.
        refresh_ttl_on_read: also restart the TTL on ``load`` and ``get_metadata``
            (which then write, and so take the write path described below).
        busy_timeout: seconds any operation may take, counted from its call: waiting
            behind this store's other operations and for another process's write lock
            included. Past it the operation fails with
            :class:`~promptkit_async.errors.StoreTimeoutError`. ``0``: fail at once when
            the database is locked (operations then have no overall bound).
        clock: wall-clock time source in seconds (``time.time``; injectable for tests).
            Expiry times are stored, so they must survive restarts: not monotonic.

    Threads and concurrency: all SQLite calls run in anyio worker threads, never on the
    event loop. The store has two connections, each used by one thread at a time (a
    capacity limiter of one each): one for writes, one for reads. Tasks sharing a store
    never contend for SQLite's locks and never see "database is locked". Operations
    that tasks start during one event-loop iteration run together in one trip to the
    worker thread and one transaction, each inside its own savepoint (so each is still
    all-or-nothing, and a failing one undoes only itself); results are handed back once
    the transaction has committed. The database uses WAL mode, so reads (``load``,
    ``count``, ``list_sessions``, ``get_metadata``) never wait for a writer: not for
    another process's, nor for this store's own write that waits for one. Writers wait
    up to ``busy_timeout`` for each other (write transactions begin with ``BEGIN
    IMMEDIATE``, so waiting is all they do). A read sees every write that returned
    before it was called. Safe to share between tasks on one event loop. A
    ``":memory:"`` database is private to one connection, so it has only one, shared
    by reads and writes.

    Cancellation and timeouts: an operation whose caller is cancelled or times out
    before the worker thread starts it never runs, even if its batch was waiting for
    another process's lock; once started it completes with its batch, the caller just
    stops waiting. :class:`~promptkit_async.errors.StoreTimeoutError` says which
    (``maybe_applied``: the write had started, and may or may not have been applied,
    never in part). The store's timer never cancels the caller's task, so a caller's own
    ``asyncio.timeout`` or ``anyio.fail_after`` fires on time and raises what it raises
    around any await.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: float | None = None,
        refresh_ttl_on_read: bool = False,
        busy_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.ttl = check_ttl(ttl)
        self.busy_timeout = check_seconds(busy_timeout, "busy_timeout", zero=True)
        self.refresh_ttl_on_read = bool(refresh_ttl_on_read)
        self._clock = clock
        self._timeout = self.busy_timeout or None
        setup = threading.Lock()
        self._writes = _Worker(_Database(self.path, self.busy_timeout, setup))
        if self.path in ("", ":memory:"):
            self._reads = self._writes  # a second connection would be another database
        else:
            self._reads = _Worker(_Database(self.path, self.busy_timeout, setup, read_only=True))
        self._closed = False
        self._next_sweep = 0.0
        self._waiters = Waiters()
        self._watches = Watches()
        self._watch_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteStateStore({self.path!r}, ttl={self.ttl}, closed={self._closed})"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        workers = [w for w in (getattr(self, "_writes", None), getattr(self, "_reads", None)) if w]
        if any(w.db.conn is not None and not w.db.closed for w in workers):
            _warn(
                f"unclosed {self!r}; use 'async with' or await aclose()",
                ResourceWarning,
                source=self,
            )
            # Then close it, as a forgotten file is: no batch can be running once the
            # store is unreachable, and sqlite3 itself warns about open connections (3.13+).
            for worker in workers:
                with contextlib.suppress(Exception):
                    worker.db.close()

    # --- running in the worker thread ------------------------------------------------

    async def _run(self, op: str, writes: bool, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(conn, *args)`` in a worker thread, in the next batch.

        Writes go to the write connection; reads to the read connection, so that they
        never queue behind a write waiting for another process's lock.
        """
        if self._closed:
            raise StoreError("this SQLiteStateStore is closed; create a new one")
        worker = self._writes if writes else self._reads
        ticket = _Ticket()
        try:
            result = (
                await worker.batcher.call(
                    ((func, args, writes, ticket),), self._timeout, write=writes
                )
            )[0]
        except Expired:
            raise self._timed_out(op, writes, ticket.give_up() and writes) from None
        except sqlite3.Error as exc:  # the whole batch failed (open, BEGIN, COMMIT)
            raise self._translate(exc, op) from exc
        except BaseException:  # cancelled: if the thread has not started it, it never will
            ticket.give_up()
            raise
        if isinstance(result, sqlite3.Error):
            raise self._translate(result, op) from result
        if isinstance(result, Exception):
            raise result
        return cast(T, result)

    def _timed_out(self, op: str, writes: bool, maybe_applied: bool) -> StoreTimeoutError:
        # Reads never wait for a lock (WAL): only writes can be held up by another process.
        if writes:
            cause = "it stayed locked by another process, or the disk is too slow"
            remedy = "Find the process holding a long write transaction, or raise busy_timeout"
        else:
            cause = "the disk is too slow or the store too busy (reads take no lock)"
            remedy = "Raise busy_timeout"
        if maybe_applied:
            outcome = " The write had started and may or may not have been applied (never in part)."
        elif op in _WRITES:
            outcome = " The write was not applied."
        else:
            outcome = ""
        return StoreTimeoutError(
            f"SQLite database {self.path!r} did not finish {op} within busy_timeout="
            f"{self.busy_timeout:g}s, counted from the call: {cause}.{outcome} {remedy}",
            operation=op,
            timeout=self.busy_timeout,
            maybe_applied=maybe_applied,
        )

    def _translate(self, exc: sqlite3.Error, op: str) -> StoreError:
        """The one place where sqlite3 errors become this library's errors."""
        detail = str(exc)
        where = f"SQLite database {self.path!r}"
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in detail or "busy" in detail:
                return StoreUnavailableError(
                    f"{where} stayed locked by another process for more than "
                    f"{self.busy_timeout:g}s during {op}; raise busy_timeout or find the "
                    "process holding a long write transaction"
                )
            if "unable to open" in detail or "readonly" in detail or "disk" in detail:
                return StoreUnavailableError(
                    f"cannot use {where} during {op}: {detail}; check that the directory "
                    "exists, is writable and has free space"
                )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in detail:
            return StoreDataError(f"{where} is not a SQLite database ({detail})")
        return StoreError(f"{where} failed {op}: {detail}")

    def _expiry(self, now: float) -> float | None:
        return None if self.ttl is None else now + self.ttl

    def _sweep_due(self, now: float) -> bool:
        if now < self._next_sweep:
            return False
        self._next_sweep = now + _SWEEP_INTERVAL
        return True

    # --- the StateStore contract ------------------------------------------------------

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        """The session's messages, oldest first (the newest ``last_n`` if given)."""
        check_session_id(session_id)
        check_last_n(last_n)
        now = self._clock()
        refresh = self._expiry(now) if self.refresh_ttl_on_read else None
        records = await self._run(
            "load", refresh is not None, _load, session_id, last_n, now, refresh
        )
        return decode_messages(records, session_id=session_id)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` at the end, all together, in one transaction."""
        check_session_id(session_id)
        records = encode_messages(messages)
        if records:
            now = self._clock()
            expires, sweep = self._expiry(now), self._sweep_due(now)
            await self._run("append", True, _append, session_id, records, now, expires, sweep)

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the whole history atomically (metadata is kept)."""
        check_session_id(session_id)
        records = encode_messages(messages)
        now = self._clock()
        await self._run("save", True, _save, session_id, records, now, self._expiry(now))

    async def delete(self, session_id: str) -> bool:
        """Remove the session's history and metadata; True if it existed."""
        check_session_id(session_id)
        return await self._run("delete", True, _delete, session_id, self._clock())

    async def count(self, session_id: str) -> int:
        """Number of stored messages."""
        check_session_id(session_id)
        return await self._run("count", False, _count, session_id, self._clock())

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        """Session ids in sorted order, ``limit`` at a time (the cursor is the last id)."""
        check_limit(limit)
        ids = await self._run("list_sessions", False, _list, cursor, limit + 1, self._clock())
        if len(ids) > limit:
            return SessionPage(tuple(ids[:limit]), ids[limit - 1])
        return SessionPage(tuple(ids), None)

    async def fork(self, source_id: str, target_id: str) -> int:
        """Replace ``target_id`` with a copy of ``source_id`` in one transaction."""
        check_session_id(source_id)
        check_session_id(target_id)
        now = self._clock()
        return await self._run("fork", True, _fork, source_id, target_id, now, self._expiry(now))

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        """The session's metadata (``{}`` when none)."""
        check_session_id(session_id)
        now = self._clock()
        refresh = self._expiry(now) if self.refresh_ttl_on_read else None
        text = await self._run(
            "get_metadata", refresh is not None, _get_metadata, session_id, now, refresh
        )
        return _decode_metadata(text, session_id)

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` (``None`` values delete keys) in one transaction."""
        check_session_id(session_id)
        updates, removals = split_patch(patch)
        now = self._clock()
        text = await self._run(
            "merge_metadata", True, _merge, session_id, updates, removals, now, self._expiry(now)
        )
        return _decode_metadata(text, session_id)

    # --- the TurnStore contract: leases, turn ids, the ledger ---------------------------

    async def begin_turn(
        self,
        session_id: str,
        *,
        owner: str,
        lease_ttl: float,
        load: bool = True,
        last_n: int | None = None,
        turn_id: str | None = None,
        steal: bool = False,
    ) -> TurnClaim:
        """Take the session's lease if it is free (or expired, or ``steal``), in one
        transaction with the turn-id check and the history and ledger reads."""
        check_session_id(session_id)
        check_owner(owner)
        ttl = check_lease_ttl(lease_ttl)
        check_last_n(last_n)
        if turn_id is not None:
            check_turn_id(turn_id)
        now = self._clock()
        refresh = self._expiry(now) if self.refresh_ttl_on_read else None
        token, records, ledger, stored, _, taken = await self._run(
            "begin_turn",
            True,
            _begin_turn,
            session_id,
            owner,
            now,
            now + ttl,
            bool(load),
            last_n,
            turn_id,
            bool(steal),
            refresh,
        )
        totals = Ledger(*ledger)
        if stored is not None:
            turn = tuple(decode_messages(stored, session_id=session_id))
            return TurnClaim(None, [], totals, turn)
        if token is None:
            return TurnClaim(None, [], totals)
        if taken is not None:
            self._watches.lost(session_id, token)  # this process's holder, told at once
        return TurnClaim(token, decode_messages(records, session_id=session_id), totals)

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        """Extend the lease to ``lease_ttl`` s from now; ``False`` if another turn took it."""
        check_session_id(session_id)
        check_token(token)
        ttl = check_lease_ttl(lease_ttl)
        until = self._clock() + ttl
        return await self._run("renew_turn", True, _renew_turn, session_id, token, until)

    async def end_turn(
        self,
        session_id: str,
        token: int,
        messages: Sequence[Message],
        *,
        turn_id: str | None = None,
        usage: Usage | None = None,
        cost: Cost | None = None,
    ) -> None:
        """Append the turn, add it to the ledger, record ``turn_id`` and release the
        lease, in one transaction, only if ``token`` is still the session's newest.

        Raises:
            LeaseLostError: another turn took the lease since; nothing was written.
        """
        check_session_id(session_id)
        check_token(token)
        if turn_id is not None:
            check_turn_id(turn_id)
        usage, cost = check_turn_figures(usage, cost)
        records = encode_messages(messages)
        u = usage
        totals = (
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.total_tokens,
            cost.total_cost,
        )
        now = self._clock()
        expires, sweep = self._expiry(now), self._sweep_due(now)
        outcome = await self._run(
            "end_turn",
            True,
            _end_turn,
            session_id,
            token,
            records,
            turn_id,
            totals,
            now,
            expires,
            sweep,
        )
        if outcome == "lost":
            raise _lease_lost(session_id, token)
        self._waiters.wake(session_id)

    async def release_turn(self, session_id: str, token: int) -> None:
        """Give the lease back without writing; a no-op if ``token`` no longer holds it."""
        check_session_id(session_id)
        check_token(token)
        await self._run("release_turn", True, _release, session_id, token)
        self._waiters.wake(session_id)

    async def wait_turn(self, session_id: str, timeout: float) -> bool:  # noqa: ASYNC109 (the protocol)
        """Wait until the session's lease may be free, at most ``timeout`` seconds.

        Signalling: a release by this store object wakes its waiters at once; other
        processes' releases (and expired leases) are seen by polling the lease row on
        the read connection (never blocked by writers): at once, then every 5 ms
        doubling up to 50 ms. So a waiter notices a release within about 50 ms plus one
        read. ``True`` when the lease looked free, ``False`` when ``timeout`` ran out.
        """
        check_session_id(session_id)
        left = check_wait_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + left
        woken = self._waiters.register(session_id)  # before the first check: no lost wake-up
        interval = _POLL_FIRST
        try:
            while True:
                if woken.done():
                    return True
                state = await self._run("wait_turn", False, _lease_state, [session_id])
                entry = state.get(session_id)
                if entry is None or entry[1] is None or entry[1] <= self._clock():
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                await asyncio.wait((woken,), timeout=min(interval, left))
                interval = min(interval * 2, _POLL_MAX)
        finally:
            self._waiters.discard(session_id, woken)

    def watch_lease(
        self, session_id: str, token: int, on_lost: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_lost()`` once if another turn takes the lease ``token``.

        A steal by this store object is told at once; another process's by one poll
        task per store (running only while something is watched), every 50 ms, so
        within about 50 ms plus one read. Returns the function that stops watching.
        """
        check_session_id(session_id)
        check_token(token)
        if not callable(on_lost):
            raise InvalidRequestError(f"on_lost must be callable, not {on_lost!r}")
        if self._closed:
            raise StoreError("this SQLiteStateStore is closed; create a new one")
        stop = self._watches.add(session_id, token, on_lost)
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop())
        return stop

    async def _watch_loop(self) -> None:
        while self._watches and not self._closed:
            await asyncio.sleep(_WATCH_INTERVAL)
            ids = self._watches.sessions()
            if not ids or self._closed:
                return
            try:
                state = await self._run("watch_lease", False, _lease_state, ids)
            except StoreError:
                continue  # the file is busy or gone for now: look again at the next tick
            for session_id in ids:
                entry = state.get(session_id)
                self._watches.lost(session_id, None if entry is None else entry[0])

    async def has_turn(self, session_id: str, turn_id: str) -> bool:
        """Whether the turn ``turn_id`` is stored in the session (and not rewritten since)."""
        check_session_id(session_id)
        check_turn_id(turn_id)
        return await self._run("has_turn", False, _has_turn, session_id, turn_id, self._clock())

    async def get_ledger(self, session_id: str) -> Ledger:
        """The session's totals (all zero for an unknown or expired session)."""
        check_session_id(session_id)
        row = await self._run("get_ledger", False, _ledger_row, session_id, self._clock())
        return Ledger(*row)

    async def aclose(self) -> None:
        """Wait for operations in flight, then close the database. Safe to repeat."""
        if self._closed:
            return
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._waiters.wake_all()
        await self._writes.aclose()
        await self._reads.aclose()


class _Ticket:
    """Whether an operation's caller still waits, and whether its thread started it.

    The caller gives up (timeout, cancellation) and the worker thread starts the
    operation under one lock, so exactly one of them wins: an operation given up first
    never runs, and the caller knows when it may have.
    """

    __slots__ = ("abandoned", "lock", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.started = False

    def give_up(self) -> bool:
        """Stop waiting; True if the operation had already started (it may complete)."""
        with self.lock:
            self.abandoned = True
            return self.started

    def start(self) -> bool:
        """Called by the worker thread; False if the caller has given up (skip it)."""
        with self.lock:
            self.started = not self.abandoned
            return self.started


class _Worker:
    """One connection, the batches sent to it, and the limiter keeping it to one thread."""

    __slots__ = ("batcher", "db", "limiter")

    def __init__(self, db: _Database) -> None:
        self.db = db
        self.batcher = Batcher(self._execute, max_in_flight=1)
        self.limiter: anyio.CapacityLimiter | None = None

    async def _execute(self, operations: list[Command]) -> list[Any]:
        # No batch deadline here: a thread cannot be interrupted, SQLite's busy timeout
        # bounds its wait for a lock, and operations given up on are skipped (_Ticket).
        if self.limiter is None:
            # Created on first use, inside the running loop (never at import time).
            self.limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self.db.run, operations, limiter=self.limiter)

    async def aclose(self) -> None:
        await self.batcher.drain()
        if self.db.conn is None:
            self.db.closed = True
            return
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(1)
        # Through the limiter: the connection is closed only after the batch using it.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.db.close, limiter=self.limiter)


# --- the worker-thread side --------------------------------------------------------------


class _Database:
    """The connection and all that worker threads touch.

    Kept apart from the store so that an idle worker thread, which may hold on to the
    last function it ran, never keeps the store itself alive (and its ResourceWarning
    for a forgotten ``aclose`` silent).
    """

    __slots__ = ("busy_timeout", "closed", "conn", "path", "read_only", "setup_lock")

    def __init__(
        self,
        path: str,
        busy_timeout: float,
        setup_lock: threading.Lock,
        *,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.setup_lock = setup_lock
        self.read_only = read_only
        self.conn: sqlite3.Connection | None = None
        self.closed = False

    def run(self, operations: list[Command]) -> list[Any]:
        """Run a batch of operations in one transaction, one savepoint each."""
        if self.closed:
            raise StoreError("this SQLiteStateStore is closed; create a new one")
        conn = self.conn
        if conn is None:
            conn = self.conn = self._open()
        writes = any(op[2] for op in operations)
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        results: list[Any] = []
        try:
            for func, args, _, ticket in operations:
                if not ticket.start():
                    results.append(None)  # nobody waits for it any more: never run it
                    continue
                conn.execute("SAVEPOINT operation")
                try:
                    results.append(func(conn, *args))
                except Exception as exc:  # undo this operation only; the others stand
                    conn.execute("ROLLBACK TO operation")
                    results.append(exc)
                conn.execute("RELEASE operation")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def close(self) -> None:
        self.closed = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        # The store's two connections open one after the other (the setup lock), so
        # they never race each other to set a new file up. Connections of other
        # processes may: they race to switch it to WAL, and SQLite answers the loser
        # "database is locked" at once (no busy wait); setting up is idempotent, so try
        # again until busy_timeout has passed.
        with self.setup_lock:
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    return self._try_open()
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(0.01)  # a worker thread: sleeping blocks no event loop

    def _try_open(self) -> sqlite3.Connection:
        # check_same_thread=False: the limiter guarantees one thread at a time, but not
        # always the same worker thread.
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # Already WAL (every file this store set up): a no-op that takes no lock.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at every checkpoint, fast
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != LAYOUT_VERSION:
                with _write(conn):
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version > LAYOUT_VERSION:
                        raise StoreDataError(
                            f"{self.path} was written by a newer promptkit_async (layout "
                            f"{version}, this one knows {LAYOUT_VERSION}); upgrade"
                        )
                    for step in range(version + 1, LAYOUT_VERSION + 1):
                        for statement in _MIGRATIONS[step].split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={LAYOUT_VERSION}")
            if self.read_only:
                conn.execute("PRAGMA query_only=ON")  # a bug here must not write
        except BaseException:
            conn.close()
            raise
        return conn


# --- the SQL of each operation (run in the worker thread) ----------------------------


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, committed whole or rolled back whole.

    ``BEGIN IMMEDIATE`` takes the write lock up front (waiting up to the busy timeout),
    so a transaction never fails half-way because another writer got there first.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _decode_metadata(text: str | None, session_id: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StoreDataError(f"corrupt metadata in session {session_id!r}: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreDataError(f"corrupt metadata in session {session_id!r}: not an object")
    return value


def _session(conn: sqlite3.Connection, session_id: str, now: float) -> tuple[str, int] | None:
    """(metadata, next_seq) of a live session; an expired one is purged (in a write)."""
    row = conn.execute(
        "SELECT metadata, next_seq, expires_at FROM promptkit_sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        return None
    if row[2] is not None and row[2] <= now:
        _purge(conn, session_id)
        return None
    return row[0], row[1]


def _purge(conn: sqlite3.Connection, session_id: str) -> None:
    # The lease row stays: its fencing token must outlive the session (see _sweep).
    conn.execute("DELETE FROM promptkit_messages WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM promptkit_turns WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM promptkit_sessions WHERE id = ?", (session_id,))


def _sweep(conn: sqlite3.Connection, now: float) -> None:
    conn.execute(
        "DELETE FROM promptkit_messages WHERE session_id IN "
        "(SELECT id FROM promptkit_sessions WHERE expires_at <= ?)",
        (now,),
    )
    conn.execute(
        "DELETE FROM promptkit_turns WHERE session_id IN "
        "(SELECT id FROM promptkit_sessions WHERE expires_at <= ?)",
        (now,),
    )
    # Lease rows of sessions that are gone, free or expired for long: a holder stalled
    # for longer than _LEASE_GRACE then finds no row, and is fenced all the same.
    conn.execute(
        "DELETE FROM promptkit_leases WHERE (expires_at IS NULL OR expires_at <= ?) "
        "AND NOT EXISTS (SELECT 1 FROM promptkit_sessions s WHERE s.id = session_id "
        "AND (s.expires_at IS NULL OR s.expires_at > ?))",
        (now - _LEASE_GRACE, now),
    )
    conn.execute("DELETE FROM promptkit_sessions WHERE expires_at <= ?", (now,))


def _insert(conn: sqlite3.Connection, session_id: str, first: int, records: list[str]) -> None:
    conn.executemany(
        "INSERT INTO promptkit_messages (session_id, seq, record) VALUES (?, ?, ?)",
        [(session_id, first + i, r) for i, r in enumerate(records)],
    )


def _has_messages(conn: sqlite3.Connection, session_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM promptkit_messages WHERE session_id = ? LIMIT 1", (session_id,)
    ).fetchone()
    return row is not None


def _refresh(conn: sqlite3.Connection, session_id: str, now: float, expires: float) -> None:
    conn.execute(
        f"UPDATE promptkit_sessions SET expires_at = ? WHERE id = ? AND {_LIVE}",
        (expires, session_id, now),
    )


def _load(
    conn: sqlite3.Connection,
    session_id: str,
    last_n: int | None,
    now: float,
    refresh: float | None,
) -> list[str]:
    if refresh is not None:
        _refresh(conn, session_id, now, refresh)
    if last_n == 0:
        return []
    rows = conn.execute(
        "SELECT record FROM promptkit_messages WHERE session_id = ? AND EXISTS ("
        f"SELECT 1 FROM promptkit_sessions WHERE id = ? AND {_LIVE}) "
        "ORDER BY seq DESC LIMIT ?",
        (session_id, session_id, now, -1 if last_n is None else last_n),
    ).fetchall()
    rows.reverse()
    return [r[0] for r in rows]


def _append(
    conn: sqlite3.Connection,
    session_id: str,
    records: list[str],
    now: float,
    expires: float | None,
    sweep: bool,
) -> None:
    if sweep:
        _sweep(conn, now)
    session = _session(conn, session_id, now)
    first = 0 if session is None else session[1]
    _insert(conn, session_id, first, records)
    conn.execute(
        "INSERT INTO promptkit_sessions (id, next_seq, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET next_seq = excluded.next_seq, "
        "expires_at = excluded.expires_at",
        (session_id, first + len(records), expires),
    )


def _save(
    conn: sqlite3.Connection,
    session_id: str,
    records: list[str],
    now: float,
    expires: float | None,
) -> None:
    session = _session(conn, session_id, now)
    conn.execute("DELETE FROM promptkit_messages WHERE session_id = ?", (session_id,))
    # The turn ids' positions would be stale: a rewritten history forgets them.
    conn.execute("DELETE FROM promptkit_turns WHERE session_id = ?", (session_id,))
    metadata = "{}" if session is None else session[0]
    if not records and metadata == "{}":
        conn.execute("DELETE FROM promptkit_sessions WHERE id = ?", (session_id,))
        return
    _insert(conn, session_id, 0, records)
    # An upsert, not a replace: the ledger is kept.
    conn.execute(
        "INSERT INTO promptkit_sessions (id, metadata, next_seq, expires_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET metadata = excluded.metadata, "
        "next_seq = excluded.next_seq, expires_at = excluded.expires_at",
        (session_id, metadata, len(records), expires),
    )


def _delete(conn: sqlite3.Connection, session_id: str, now: float) -> bool:
    existed = _session(conn, session_id, now) is not None
    _purge(conn, session_id)
    return existed


def _count(conn: sqlite3.Connection, session_id: str, now: float) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM promptkit_messages WHERE session_id = ? AND EXISTS ("
        f"SELECT 1 FROM promptkit_sessions WHERE id = ? AND {_LIVE})",
        (session_id, session_id, now),
    ).fetchone()
    return int(row[0])


def _list(conn: sqlite3.Connection, cursor: str | None, limit: int, now: float) -> list[str]:
    rows = conn.execute(
        f"SELECT id FROM promptkit_sessions WHERE id > ? AND {_LIVE} ORDER BY id LIMIT ?",
        ("" if cursor is None else cursor, now, limit),
    ).fetchall()
    return [r[0] for r in rows]


def _fork(
    conn: sqlite3.Connection,
    source_id: str,
    target_id: str,
    now: float,
    expires: float | None,
) -> int:
    source = _session(conn, source_id, now)
    if source_id == target_id:
        if source is None:
            return 0
        conn.execute(
            "UPDATE promptkit_sessions SET expires_at = ? WHERE id = ?", (expires, target_id)
        )
        return _count(conn, target_id, now)
    _purge(conn, target_id)
    if source is None:
        return 0
    copied = conn.execute(
        "INSERT INTO promptkit_messages (session_id, seq, record) "
        "SELECT ?, seq, record FROM promptkit_messages WHERE session_id = ?",
        (target_id, source_id),
    ).rowcount
    # The fork continues the conversation: it gets a copy of the source's ledger.
    conn.execute(
        f"INSERT INTO promptkit_sessions (id, metadata, next_seq, expires_at, {_LEDGER_COLUMNS}) "
        f"SELECT ?, metadata, next_seq, ?, {_LEDGER_COLUMNS} FROM promptkit_sessions "
        "WHERE id = ?",
        (target_id, expires, source_id),
    )
    return int(copied)


def _get_metadata(
    conn: sqlite3.Connection, session_id: str, now: float, refresh: float | None
) -> str | None:
    if refresh is not None:
        _refresh(conn, session_id, now, refresh)
    row = conn.execute(
        f"SELECT metadata FROM promptkit_sessions WHERE id = ? AND {_LIVE}", (session_id, now)
    ).fetchone()
    return None if row is None else str(row[0])


def _merge(
    conn: sqlite3.Connection,
    session_id: str,
    updates: dict[str, Any],
    removals: list[str],
    now: float,
    expires: float | None,
) -> str:
    session = _session(conn, session_id, now)
    metadata = _decode_metadata(None if session is None else session[0], session_id)
    metadata.update(updates)
    for key in removals:
        metadata.pop(key, None)
    text = dumps_value(metadata)
    if not metadata and (session is None or not _has_messages(conn, session_id)):
        conn.execute("DELETE FROM promptkit_sessions WHERE id = ?", (session_id,))
        return text
    conn.execute(
        "INSERT INTO promptkit_sessions (id, metadata, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET metadata = excluded.metadata, "
        "expires_at = excluded.expires_at",
        (session_id, text, expires),
    )
    return text


# --- turns: leases, fencing, turn ids, the ledger (issue 15) ----------------------------

#: How the ledger's columns are read, in :class:`Ledger` field order.
_LEDGER_COLUMNS = "l_turns, l_prompt, l_completion, l_cached, l_total, l_cost"
_NO_LEDGER = (0, 0, 0, 0, 0, 0.0)
#: A lease row (its fencing token) outlives its lease by this long once its session is
#: gone, so a holder that stalled is still fenced rather than told the session is new.
_LEASE_GRACE = 3600.0


def _ledger_row(conn: sqlite3.Connection, session_id: str, now: float) -> tuple[Any, ...]:
    row = conn.execute(
        f"SELECT {_LEDGER_COLUMNS} FROM promptkit_sessions WHERE id = ? AND {_LIVE}",
        (session_id, now),
    ).fetchone()
    return _NO_LEDGER if row is None else tuple(row)


def _stored_turn(
    conn: sqlite3.Connection, session_id: str, turn_id: str, now: float
) -> list[str] | None:
    """The records of the stored turn ``turn_id`` of a live session, or None."""
    row = conn.execute(
        "SELECT t.first_seq, t.n FROM promptkit_turns t JOIN promptkit_sessions s "
        f"ON s.id = t.session_id WHERE t.session_id = ? AND t.turn_id = ? AND {_LIVE}",
        (session_id, turn_id, now),
    ).fetchone()
    if row is None:
        return None
    rows = conn.execute(
        "SELECT record FROM promptkit_messages WHERE session_id = ? AND seq >= ? AND seq < ? "
        "ORDER BY seq",
        (session_id, row[0], row[0] + row[1]),
    ).fetchall()
    return [r[0] for r in rows]


def _begin_turn(
    conn: sqlite3.Connection,
    session_id: str,
    owner: str,
    now: float,
    lease_until: float,
    load: bool,
    last_n: int | None,
    turn_id: str | None,
    steal: bool,
    refresh: float | None,
) -> tuple[int | None, list[str], tuple[Any, ...], list[str] | None, float | None, int | None]:
    """(token, records, ledger, stored turn, busy until, token taken over) in one
    transaction: the turn id check, the lease and the history read together."""
    if turn_id is not None:
        stored = _stored_turn(conn, session_id, turn_id, now)
        if stored is not None:
            return None, [], _ledger_row(conn, session_id, now), stored, None, None
    lease = conn.execute(
        "SELECT fence, expires_at FROM promptkit_leases WHERE session_id = ?", (session_id,)
    ).fetchone()
    held = lease is not None and lease[1] is not None and lease[1] > now
    if held and not steal:
        # Tell the holder's release to wake the waiters (other processes poll anyway).
        conn.execute(
            "UPDATE promptkit_leases SET contended = 1 WHERE session_id = ?", (session_id,)
        )
        return None, [], _ledger_row(conn, session_id, now), None, float(lease[1]), None
    # One counter for the whole file: tokens only grow, even across a session deleted
    # and created again, so a token an old holder may still hold is never issued again.
    token = int(
        conn.execute(
            "UPDATE promptkit_fence SET value = value + 1 WHERE id = 1 RETURNING value"
        ).fetchone()[0]
    )
    conn.execute(
        "INSERT INTO promptkit_leases (session_id, fence, owner, expires_at, contended) "
        "VALUES (?, ?, ?, ?, 0) ON CONFLICT (session_id) DO UPDATE SET "
        "fence = excluded.fence, owner = excluded.owner, expires_at = excluded.expires_at",
        (session_id, token, owner, lease_until),
    )
    records = _load(conn, session_id, last_n, now, refresh) if load else []
    taken = int(lease[0]) if lease is not None and lease[1] is not None else None
    return token, records, _ledger_row(conn, session_id, now), None, None, taken


def _holds(conn: sqlite3.Connection, session_id: str, token: int) -> bool:
    row = conn.execute(
        "SELECT fence FROM promptkit_leases WHERE session_id = ?", (session_id,)
    ).fetchone()
    return row is not None and row[0] == token


def _release(conn: sqlite3.Connection, session_id: str, token: int) -> bool:
    """Free the lease ``token`` holds; whether a waiter asked to be woken."""
    row = conn.execute(
        "UPDATE promptkit_leases SET owner = NULL, expires_at = NULL, contended = 0 "
        "WHERE session_id = ? AND fence = ? AND expires_at IS NOT NULL RETURNING contended",
        (session_id, token),
    ).fetchone()
    return bool(row and row[0])


def _renew_turn(conn: sqlite3.Connection, session_id: str, token: int, lease_until: float) -> bool:
    # An expired lease nobody took since is still this turn's: renewing it is safe.
    row = conn.execute(
        "UPDATE promptkit_leases SET expires_at = ? "
        "WHERE session_id = ? AND fence = ? AND expires_at IS NOT NULL RETURNING 1",
        (lease_until, session_id, token),
    ).fetchone()
    return row is not None


def _end_turn(
    conn: sqlite3.Connection,
    session_id: str,
    token: int,
    records: list[str],
    turn_id: str | None,
    ledger: tuple[int, int, int, int, float],
    now: float,
    expires: float | None,
    sweep: bool,
) -> str:
    """``"lost"`` (fenced, nothing written), ``"stored"`` (the turn id was already
    stored: only the lease is released) or ``"ok"``."""
    if not _holds(conn, session_id, token):
        return "lost"
    if sweep:
        _sweep(conn, now)
    if turn_id is not None and _stored_turn(conn, session_id, turn_id, now) is not None:
        _release(conn, session_id, token)
        return "stored"
    session = _session(conn, session_id, now)
    first = 0 if session is None else session[1]
    _insert(conn, session_id, first, records)
    prompt, completion, cached, total, cost = ledger
    conn.execute(
        "INSERT INTO promptkit_sessions (id, next_seq, expires_at, l_turns, l_prompt, "
        "l_completion, l_cached, l_total, l_cost) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET next_seq = excluded.next_seq, "
        "expires_at = excluded.expires_at, l_turns = l_turns + 1, "
        "l_prompt = l_prompt + excluded.l_prompt, "
        "l_completion = l_completion + excluded.l_completion, "
        "l_cached = l_cached + excluded.l_cached, l_total = l_total + excluded.l_total, "
        "l_cost = l_cost + excluded.l_cost",
        (session_id, first + len(records), expires, prompt, completion, cached, total, cost),
    )
    if turn_id is not None:
        conn.execute(
            "INSERT OR REPLACE INTO promptkit_turns (session_id, turn_id, first_seq, n) "
            "VALUES (?, ?, ?, ?)",
            (session_id, turn_id, first, len(records)),
        )
    _release(conn, session_id, token)
    return "ok"


def _lease_state(
    conn: sqlite3.Connection, session_ids: list[str]
) -> dict[str, tuple[int, float | None]]:
    """(newest token, lease expiry or None when free) of each session that has a lease row."""
    marks = ",".join("?" * len(session_ids))
    rows = conn.execute(
        f"SELECT session_id, fence, expires_at FROM promptkit_leases WHERE session_id IN ({marks})",
        session_ids,
    ).fetchall()
    return {r[0]: (int(r[1]), r[2]) for r in rows}


def _has_turn(conn: sqlite3.Connection, session_id: str, turn_id: str, now: float) -> bool:
    row = conn.execute(
        "SELECT 1 FROM promptkit_turns t JOIN promptkit_sessions s ON s.id = t.session_id "
        f"WHERE t.session_id = ? AND t.turn_id = ? AND {_LIVE}",
        (session_id, turn_id, now),
    ).fetchone()
    return row is not None


def _lease_lost(session_id: str, token: int) -> LeaseLostError:
    return LeaseLostError(
        f"the lease of session {session_id!r} passed to another turn (token {token} is no "
        "longer the newest): this turn was not stored, and the session holds exactly what "
        "the other turns stored. A turn that stalls past lease_ttl loses its lease; renew "
        "it (StateMiddleware does) or raise lease_ttl",
        session_id=session_id,
        token=token,
    )
