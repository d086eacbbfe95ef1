"""A state store in PostgreSQL, on asyncpg: shared by processes, durable, queryable.

Tables (``S`` the schema, ``P`` the table prefix; created by :meth:`migrate`, or on first
use)::

    S.P_schema_version (version INT PRIMARY KEY, applied_at TIMESTAMPTZ)
    S.P_sessions (id TEXT PRIMARY KEY, metadata JSONB, start_seq BIGINT, next_seq BIGINT,
                  expires_at TIMESTAMPTZ)
    S.P_messages (session_id TEXT, seq BIGINT, record TEXT, PRIMARY KEY (session_id, seq))

A session's live messages are the rows with ``start_seq <= seq < next_seq``: ``append``
takes the next sequence numbers under the session row's lock, ``save``, ``delete`` and an
expiry move ``start_seq`` past the old rows, which are then invisible at once and deleted
later. Session rows are only ever removed together with their messages, so sequence
numbers are never reused. ``record`` is the library's versioned JSON record (see
``records``), so histories move between stores unchanged. Session ids and all values are
SQL parameters, never formatted into SQL.

Why records are TEXT, not JSONB or BYTEA (measured with asyncpg 0.32 on PostgreSQL 15,
100 000 records of a chat turn's size, inserted 2 000 per statement, read back 2 000 per
query and decoded): TEXT took 1.3 s to insert and 2.0 s to read, BYTEA 1.5 s and 2.7 s,
JSONB 3.4 s and 3.1 s (the server parses and re-serialises every record). And JSONB
cannot hold what the record codec must round-trip: it refuses ``\u0000`` and lone
surrogates. Records are ASCII, so TEXT stores them byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
import asyncpg.exceptions as pgexc

from .._lifecycle import AsyncResource
from .._validation import check_session_id
from ..errors import (
    ConfigurationError,
    InvalidArgumentsError,
    InvalidRequestError,
    LeaseLostError,
    StoreDataError,
    StoreError,
    StoreUnavailableError,
)
from ..types import Cost, Message, Usage
from ._batch import Batcher, Command
from ._common import (
    check_last_n,
    check_lease_ttl,
    check_limit,
    check_owner,
    check_token,
    check_ttl,
    check_turn_figures,
    check_turn_id,
    check_wait_timeout,
    split_patch,
)
from ._leases import Waiters, Watches
from .base import Ledger, SessionPage, TurnClaim
from .records import decode_messages, encode_messages

__all__ = ["LAYOUT_VERSION", "PostgresStateStore"]

#: The table layout this version writes (recorded in ``P_schema_version``).
LAYOUT_VERSION = 2
#: The ledger's columns, in :class:`Ledger` field order.
_LEDGER_COLUMNS = ("l_turns", "l_prompt", "l_completion", "l_cached", "l_total", "l_cost")

# Set by a busy begin_turn in the task that called it: (store id, session id, releases
# heard for the session when the claim was sent, loop time the holder's lease ends).
_busy_mark: contextvars.ContextVar[tuple[int, str, int, float] | None] = contextvars.ContextVar(
    "promptkit_pg_busy_mark", default=None
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_SWEEP_INTERVAL = 60.0
_SWEEP_BATCH = 1000
_WRITES = frozenset(
    (
        "append",
        "save",
        "fork",
        "merge_metadata",
        "delete",
        "begin_turn",
        "renew_turn",
        "end_turn",
        "release_turn",
    )
)
#: A waiter looks again at least this often, should a notification be lost.
_WAIT_FALLBACK = 0.5
#: While the listener connection is down, watched leases are polled this often.
_WATCH_POLL = 0.5
#: Kept per session only for sessions with waiters lately (bounded).
_MAX_GENERATIONS = 10_000
_TABLE_EXISTS = (
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2)"
)
#: What asyncpg and the sockets under it raise; translated in one place (_translate).
_DRIVER_ERRORS = (
    pgexc.PostgresError,
    pgexc.InterfaceError,
    pgexc.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)

# Metadata is JSONB, which cannot hold NUL characters (nor lone surrogates): keys escape
# "%" and NUL as %25 / %00, and a value that JSONB cannot hold (or that looks like the
# wrapper) is stored as its JSON text inside a one-key wrapper object.
_WRAPPER = "$promptkit.json"
_KEY_ESCAPE = re.compile("[%\x00]")
_KEY_UNESCAPE = re.compile("%(25|00)")
_dumps_raw = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_dumps_ascii = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def _encode_metadata(values: Mapping[str, Any]) -> str:
    """The JSONB text of (already validated) metadata values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        text = _dumps_raw(value)
        awkward = "\\u0000" in text or (
            isinstance(value, dict) and len(value) == 1 and _WRAPPER in value
        )
        if not awkward and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate
                awkward = True
        if awkward:
            value = {_WRAPPER: _dumps_ascii(value)}
        out[_escape_key(key)] = value
    return _dumps_raw(out)


def _decode_metadata(text: str | None, session_id: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        stored = json.loads(text)
        out: dict[str, Any] = {}
        for key, value in stored.items():
            if isinstance(value, dict) and len(value) == 1 and _WRAPPER in value:
                value = json.loads(value[_WRAPPER])
            out[_KEY_UNESCAPE.sub(lambda m: "%" if m[1] == "25" else "\x00", key)] = value
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise StoreDataError(
            f"corrupt metadata in session {session_id!r}: {exc}; delete or repair it"
        ) from exc
    return out


def _escape_key(key: str) -> str:
    return _KEY_ESCAPE.sub(lambda m: "%25" if m[0] == "%" else "%00", key)


def _check_identifier(name: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{name} must be letters, digits and '_' (not starting with a digit, at most "
            f"40 characters), not {value!r}"
        )
    return value


def _describe_dsn(dsn: str | None) -> str:
    """``host:port`` of a DSN, never its password."""
    if not dsn:
        return "the PostgreSQL server of $PGHOST/$PGPORT"
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the PostgreSQL server of the DSN"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Pool reset for the pools this store creates: nothing to undo, no round trip.

    The store never leaves session state behind (no SET, LISTEN or advisory lock
    outlives an operation); asyncpg still rolls back an open transaction itself.
    """


class PostgresStateStore(AsyncResource):
    """Conversation histories in PostgreSQL, through an asyncpg connection pool.

    Why asyncpg: it speaks PostgreSQL's binary protocol natively from asyncio (no thread
    hop, no libpq), caches prepared statements per connection, and sends bind, execute
    and sync in one write, so each operation here is one round trip once warm; it is the
    fastest asyncio PostgreSQL driver.

    Create one with :meth:`connect` (the store then owns its pool and closes it)::

        store = await PostgresStateStore.connect("postgresql://app@db.example.com/chat")

    or hand it a pool your application already owns; :meth:`aclose` then leaves it open::

        pool = await asyncpg.create_pool(dsn)
        store = PostgresStateStore(pool, schema="chat", ttl=3600)

    (A pool's default ``reset`` runs a reset query each time a connection goes back to
    the pool: one more round trip per operation. If nothing in your application leaves
    session state on its connections, pass ``reset=`` a coroutine function that does
    nothing, as the pools :meth:`connect` creates do.)

    Args:
        pool: the ``asyncpg.Pool`` to use.
        schema: the PostgreSQL schema holding the tables (created if missing).
        table_prefix: start of every table name; with ``schema`` it lets one database
            host several applications or several stores.
        ttl: seconds a session lives after its last write (sliding: history and
            metadata expire together); ``None`` keeps sessions forever. Expiry uses the
            server's clock, so processes with skewed clocks agree.
        refresh_ttl_on_read: also restart the TTL on ``load`` and ``get_metadata`` (in
            the same statement as the read).
        timeout: seconds one operation may take, waiting for a pooled connection
            included, before it fails with
            :class:`~promptkit_async.errors.StoreUnavailableError` (asyncpg then asks the
            server to cancel the statement). ``None``: no client-side limit.
        auto_migrate: create (or migrate forward) the tables on first use; with
            ``False``, call :meth:`migrate` yourself (e.g. at deploy time, as the tables'
            owner) and the store only checks the version.
        sweep_interval: seconds between purges of expired sessions. A purge runs in the
            background after a write when one is due, on its own pooled connection, so
            no scheduler is needed and no operation waits for it.
        max_in_flight: how many batches of loads and appends may run at once (see
            below).

    Round trips: ``load``, ``append``, ``save``, ``delete``, ``count``, ``fork``,
    ``get_metadata``, ``merge_metadata`` and ``list_sessions`` are one statement each
    (one round trip with a warm pool), so a pipeline turn costs two. ``load(last_n=n)``
    reads only the newest ``n`` rows (an index range scan). The first operation also
    checks (or creates) the tables: a few more round trips, once. Loads and appends
    that concurrent tasks start during one event-loop iteration travel together: one
    statement for all the loads, one for all the appends, run at once on two pooled
    connections (each operation is still atomic on its own; a server error fails the
    operations of its statement).

    Concurrency: safe to share between any number of tasks on one event loop (asyncpg
    pools are bound to their loop). Each operation is one statement, atomic on the
    server; concurrent appends to a session, from any number of processes, are
    serialised by the session row's lock and never interleave. Cancelling a load or an
    append before its batch was sent drops it; once sent, it completes on the server
    and the caller just stops waiting. Cancelling another operation (or a timeout
    around it) makes asyncpg cancel its statement on the server: it is applied whole
    or not at all, and its connection goes back to the pool only once the server has
    answered the cancellation (or is dropped).

    Failures: an unreachable, restarting or read-only server, a statement timeout, a
    serialization failure or an exhausted pool raise
    :class:`~promptkit_async.errors.StoreUnavailableError` naming the address and what to
    check; a timed-out write may or may not have been applied (never in part). Other
    database errors raise :class:`~promptkit_async.errors.StoreError`. Broken
    connections are replaced on the next operation, so after a server restart the same
    store works again.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        schema: str = "public",
        table_prefix: str = "promptkit_",
        ttl: float | None = None,
        refresh_ttl_on_read: bool = False,
        timeout: float | None = 10.0,
        auto_migrate: bool = True,
        sweep_interval: float = _SWEEP_INTERVAL,
        max_in_flight: int = 4,
    ) -> None:
        if not isinstance(pool, asyncpg.Pool):
            raise InvalidArgumentsError(
                "pool must be an asyncpg.Pool; use PostgresStateStore.connect(dsn) to create one"
            )
        self.schema = _check_identifier("schema", schema)
        if table_prefix:
            _check_identifier("table_prefix", table_prefix)
        self.table_prefix = table_prefix
        self.ttl = check_ttl(ttl)
        if timeout is not None and not timeout > 0:
            raise ConfigurationError("timeout must be positive seconds, or None")
        if max_in_flight < 1:
            raise ConfigurationError("max_in_flight must be at least 1")
        if not sweep_interval > 0:
            raise ConfigurationError("sweep_interval must be positive seconds")
        self.timeout = timeout
        self.refresh_ttl_on_read = bool(refresh_ttl_on_read)
        self.auto_migrate = bool(auto_migrate)
        self.sweep_interval = float(sweep_interval)
        self.pool = pool
        self._owns_pool = False
        self._closed = False
        self._ready = False
        self._ready_lock: asyncio.Lock | None = None
        self._address = "PostgreSQL (the pool passed to PostgresStateStore)"
        self._next_sweep = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._sql = _Statements(schema, table_prefix, self.ttl)
        self._batcher = Batcher(self._execute, max_in_flight)
        self._waiters = Waiters()
        self._watches = Watches()
        # Releases notified per session (only contended sessions are notified), so a
        # release between a busy begin_turn and its wait_turn is not missed.
        self._generations: OrderedDict[str, int] = OrderedDict()
        self._listener: Any = None  # the pooled connection that LISTENs, once started
        self._listener_lock: asyncio.Lock | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str | None = None,
        *,
        schema: str = "public",
        table_prefix: str = "promptkit_",
        ttl: float | None = None,
        refresh_ttl_on_read: bool = False,
        timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = None,
        min_size: int = 1,
        max_size: int = 10,
        auto_migrate: bool = True,
        sweep_interval: float = _SWEEP_INTERVAL,
        max_in_flight: int = 4,
        **pool_options: Any,
    ) -> PostgresStateStore:
        """Create a pool, check the server answers (and the tables); the store owns the pool.

        ``schema``, ``table_prefix``, ``ttl``, ``refresh_ttl_on_read``, ``timeout``,
        ``auto_migrate``, ``sweep_interval`` and ``max_in_flight`` are the class's.

        Args:
            dsn: ``postgresql://user:password@host:port/database`` (``?sslmode=...`` and
                the other libpq URL parameters work); ``None`` uses the ``PG*``
                environment variables. The password never appears in errors or repr.
            connect_timeout: seconds to wait for the server when opening a connection.
            statement_timeout: the server-side ``statement_timeout`` for the pool's
                connections, in seconds (``None``: the server's setting).
            min_size / max_size: connections kept open / opened at most. Operations
                beyond ``max_size`` wait for a free connection (within ``timeout``).
            **pool_options: passed to ``asyncpg.create_pool`` (e.g. ``ssl``,
                ``server_settings``).

        Raises:
            StoreUnavailableError: the server cannot be reached in time; the message
                names the address and how to check it (``pg_isready``).
            StoreError: the server refused the credentials or the database.
        """
        _check_identifier("schema", schema)
        check_ttl(ttl)
        if not connect_timeout > 0:
            raise ConfigurationError("connect_timeout must be positive seconds")
        address = _describe_dsn(dsn)
        settings = dict(pool_options.pop("server_settings", None) or {})
        if statement_timeout is not None:
            settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
        settings.setdefault("application_name", "promptkit_async")
        options: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": connect_timeout,
            "server_settings": settings,
            "reset": _no_reset,
            **pool_options,
        }
        try:
            # Bounded as a whole: DNS, TCP, TLS and authentication of min_size connections.
            pool = await asyncio.wait_for(
                asyncpg.create_pool(dsn, **options), connect_timeout + 1.0
            )
        except _DRIVER_ERRORS as exc:
            # "from None": asyncpg's own message may quote the DSN.
            raise _translate(exc, "connect", address, connect_timeout, schema) from None
        store = cls(
            pool,
            schema=schema,
            table_prefix=table_prefix,
            ttl=ttl,
            refresh_ttl_on_read=refresh_ttl_on_read,
            timeout=timeout,
            auto_migrate=auto_migrate,
            sweep_interval=sweep_interval,
            max_in_flight=max_in_flight,
        )
        store._owns_pool = True
        store._address = address
        try:
            await store._ensure_ready("connect")
        except BaseException:
            await store.aclose()
            raise
        return store

    def __repr__(self) -> str:
        return (
            f"PostgresStateStore({self._address}, schema={self.schema!r}, "
            f"table_prefix={self.table_prefix!r}, ttl={self.ttl}, closed={self._closed})"
        )

    # --- schema -------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Create the schema and tables, or migrate them forward; returns the layout version.

        Safe to run from many processes at once (a transaction-scoped advisory lock
        serialises them) and to run again. Tables written by a newer version of this
        library raise :class:`~promptkit_async.errors.StoreDataError`.
        """
        self._check_open()
        sql = self._sql
        try:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                # Up to date (the usual case): no lock, no DDL, so a read-only replica
                # or a user without CREATE rights can use tables that exist.
                if await self._read_version(conn) != LAYOUT_VERSION:
                    async with conn.transaction():
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtext($1))", sql.lock_key
                        )
                        version = await self._read_version(conn)
                        if version < LAYOUT_VERSION:
                            await self._upgrade(conn, version)
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "migrate") from exc
        self._ready = True
        return LAYOUT_VERSION

    async def _read_version(self, conn: asyncpg.Connection) -> int:
        """The layout version of the tables (0: none yet); a newer one is refused."""
        version = 0
        # A catalog query, not to_regclass(): it reads the statement's snapshot, so it
        # sees tables another migrator committed while this one waited for the lock.
        if await conn.fetchval(_TABLE_EXISTS, self.schema, f"{self.table_prefix}schema_version"):
            version = await conn.fetchval(self._sql.current_version)
        if version > LAYOUT_VERSION:
            raise StoreDataError(self._newer_message(version))
        return int(version)

    async def _upgrade(self, conn: asyncpg.Connection, version: int) -> None:
        sql = self._sql
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema):
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await conn.execute(sql.create_version_table)
        for step in range(version + 1, LAYOUT_VERSION + 1):
            for statement in sql.migrations[step]:
                await conn.execute(statement)
            await conn.execute(sql.record_version, step)

    def _newer_message(self, version: int) -> str:
        return (
            f"the tables {self._sql.where} were written by a newer promptkit_async (layout "
            f"{version}, this one knows {LAYOUT_VERSION}); upgrade promptkit_async"
        )

    async def _ensure_ready(self, op: str) -> None:
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()  # created inside the running loop
        async with self._ready_lock:
            if self._ready:
                return
            if self.auto_migrate:
                await self.migrate()
                return
            try:
                async with self.pool.acquire(timeout=self.timeout) as conn:
                    version = await self._read_version(conn)
            except _DRIVER_ERRORS as exc:
                raise self._translate(exc, op) from exc
            if version < LAYOUT_VERSION:
                raise StoreError(
                    f"the tables {self._sql.where} are at layout {version}, this library "
                    f"needs {LAYOUT_VERSION}; run 'await store.migrate()' (auto_migrate=False)"
                )
            self._ready = True

    # --- running statements -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this PostgresStateStore is closed; create a new one")

    async def _fetch(self, op: str, query: str, *args: Any) -> list[Any]:
        """Run one statement on a pooled connection: one round trip once warm."""
        self._check_open()
        if not self._ready:
            await self._ensure_ready(op)
        try:
            return await self._run(op, query, args)
        except _DRIVER_ERRORS as exc:
            raise self._driver_error(exc, op) from exc

    async def _run(self, op: str, query: str, args: Sequence[Any]) -> list[Any]:
        """One statement on a pooled connection; driver errors are left to the caller.

        One deadline (``timeout``) covers waiting for a pooled connection (or opening
        one) and the statement; giving the connection back is bounded by it too.
        """
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in (1, 2):
            try:
                conn = await self.pool.acquire(timeout=timeout)
            except asyncio.TimeoutError:
                raise StoreUnavailableError(
                    f"no connection to {self._address} for {op} within {timeout}s: all "
                    f"{self.pool.get_max_size()} pooled connections stayed busy, or a new "
                    "one could not be opened in time. Raise the pool's max_size or the "
                    "timeout, look for slow statements (pg_stat_activity), or check that "
                    "the server answers (pg_isready)"
                ) from None
            try:
                left = None if deadline is None else max(0.001, deadline - time.monotonic())
                return cast("list[Any]", await conn.fetch(query, *args, timeout=left))
            except pgexc.InternalClientError:
                # The connection is still winding down a statement that timed out or was
                # cancelled (asyncpg handed it back once the cancel request was sent).
                # Nothing was sent: drop it and use another connection, once.
                conn.terminate()
                if attempt == 2:
                    raise
            finally:
                # After a timeout asyncpg waits for the server to confirm the
                # cancellation: bounded, since a frozen server never would.
                await self.pool.release(conn, timeout=timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    def _driver_error(self, exc: BaseException, op: str) -> StoreError:
        if isinstance(exc, pgexc.UndefinedTableError):
            self._ready = False  # dropped behind our back: check (or create) again
        return self._translate(exc, op)

    async def _batched(self, op: str, command: tuple[Any, ...]) -> Any:
        """Run ``command`` in the next shared batch (see :meth:`_execute`)."""
        self._check_open()
        if not self._ready:
            await self._ensure_ready(op)
        # An append that was sent finishes before a turn's cancellation (see Batcher).
        result = (await self._batcher.call((command,), write=command[0] == "append"))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """Run a batch: all its appends in one statement, all its loads in another.

        The two statements run at once on two pooled connections. Each operation keeps
        its own atomicity: the appends of a batch commit together (one statement), and a
        load reads one consistent snapshot. Errors are returned in place.
        """
        results: list[Any] = [None] * len(commands)
        appends = [i for i, c in enumerate(commands) if c[0] == "append"]
        loads = [i for i, c in enumerate(commands) if c[0] == "load"]
        jobs = []
        if appends:
            jobs.append(self._append_batch(commands, appends, results))
        if loads:
            jobs.append(self._load_batch(commands, loads, results))
        # A turn's end is one call of its own (it is fenced per session).
        jobs += [
            self._end_turn(commands[i], i, results)
            for i, c in enumerate(commands)
            if c[0] == "end_turn"
        ]
        if len(jobs) == 1:
            await jobs[0]
        else:
            await asyncio.gather(*jobs)
        return results

    async def _append_batch(
        self, commands: list[Command], indexes: list[int], results: list[Any]
    ) -> None:
        # Appends to one session are joined in submission order, each one's records
        # kept adjacent; sessions are locked in id order, so batches never deadlock.
        grouped: dict[str, list[str]] = {}
        for i in indexes:
            grouped.setdefault(commands[i][1], []).extend(commands[i][2])
        ids = sorted(grouped)
        counts = [len(grouped[s]) for s in ids]
        owners: list[int] = []
        records: list[str] = []
        for n, session_id in enumerate(ids, 1):
            group = grouped[session_id]
            owners += [n] * len(group)
            records += group
        try:
            await self._run("append", self._sql.append_many, (ids, counts, owners, records))
        except (*_DRIVER_ERRORS, StoreError) as exc:
            error = exc if isinstance(exc, StoreError) else self._driver_error(exc, "append")
            error.__cause__ = None if error is exc else exc
            for i in indexes:
                results[i] = error

    async def _load_batch(
        self, commands: list[Command], indexes: list[int], results: list[Any]
    ) -> None:
        ids = [commands[i][1] for i in indexes]
        last = [commands[i][2] for i in indexes]
        try:
            rows = await self._run("load", self._sql.load_many, (ids, last))
        except (*_DRIVER_ERRORS, StoreError) as exc:
            error = exc if isinstance(exc, StoreError) else self._driver_error(exc, "load")
            error.__cause__ = None if error is exc else exc
            for i in indexes:
                results[i] = error
            return
        found: list[list[str]] = [[] for _ in indexes]
        for row in rows:
            found[row[0] - 1].append(row[1])
        for n, i in enumerate(indexes):
            results[i] = found[n]

    async def _end_turn(self, command: Command, index: int, results: list[Any]) -> None:
        try:
            rows = await self._run("end_turn", self._sql.end_turn, command[1:])
            results[index] = rows[0][0]
        except (*_DRIVER_ERRORS, StoreError) as exc:
            error = exc if isinstance(exc, StoreError) else self._driver_error(exc, "end_turn")
            error.__cause__ = None if error is exc else exc
            results[index] = error

    def _translate(self, exc: BaseException, op: str) -> StoreError:
        return _translate(exc, op, self._address, self.timeout, self.schema)

    def _maybe_sweep(self) -> None:
        """Start a background purge of expired sessions when one is due."""
        now = time.monotonic()
        if now < self._next_sweep or self._closed:
            return
        self._next_sweep = now + self.sweep_interval
        task = asyncio.get_running_loop().create_task(self._sweep())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        # Best effort: a failed purge is retried at the next interval. Rows of sessions
        # that expired (or hold nothing) go in one transaction with their messages, so a
        # session row and its sequence numbers never outlive each other.
        with contextlib.suppress(*_DRIVER_ERRORS):
            async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
                ids = await conn.fetchval(self._sql.sweep_sessions, _SWEEP_BATCH)
                if ids:
                    await conn.execute(self._sql.sweep_messages, ids)

    async def purge_expired(self) -> int:
        """Delete expired (and empty) sessions now; returns how many were removed.

        Not needed in normal use: the store purges in the background after writes.
        """
        self._check_open()
        if not self._ready:
            await self._ensure_ready("purge_expired")
        removed = 0
        try:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                while True:
                    async with conn.transaction():
                        ids = await conn.fetchval(self._sql.sweep_sessions, _SWEEP_BATCH)
                        if ids:
                            await conn.execute(self._sql.sweep_messages, ids)
                    removed += len(ids or ())
                    if not ids or len(ids) < _SWEEP_BATCH:
                        return removed
        except _DRIVER_ERRORS as exc:
            raise self._translate(exc, "purge_expired") from exc

    # --- the StateStore contract ----------------------------------------------------------

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        """The session's messages, oldest first (the newest ``last_n`` if given).

        One statement, reading only the rows it returns (and restarting the TTL in the
        same statement when ``refresh_ttl_on_read`` is set).
        """
        check_session_id(session_id)
        check_last_n(last_n)
        sql = self._sql
        if last_n == 0:
            if self.refresh_ttl_on_read and self.ttl is not None:
                await self._fetch("load", sql.touch, session_id)
            return []
        if self.refresh_ttl_on_read and self.ttl is not None:
            rows = await self._fetch("load", sql.load_touch, session_id, last_n)
            records = [r[0] for r in rows]
        else:
            records = await self._batched("load", ("load", session_id, last_n))
        return decode_messages(records, session_id=session_id)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` at the end, all together, in one statement."""
        check_session_id(session_id)
        records = encode_messages(messages)
        if records:
            await self._batched("append", ("append", session_id, records))
            self._maybe_sweep()

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the whole history in one statement (metadata is kept)."""
        check_session_id(session_id)
        records = encode_messages(messages)
        await self._fetch("save", self._sql.save, session_id, records)
        self._maybe_sweep()

    async def delete(self, session_id: str) -> bool:
        """Remove the session's history and metadata; True if it existed."""
        check_session_id(session_id)
        rows = await self._fetch("delete", self._sql.delete, session_id)
        return bool(rows and rows[0][0])

    async def count(self, session_id: str) -> int:
        """Number of stored messages (read from the session row, not counted)."""
        check_session_id(session_id)
        rows = await self._fetch("count", self._sql.count, session_id)
        return int(rows[0][0]) if rows else 0

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        """Session ids in byte order, ``limit`` at a time (the cursor is the last id)."""
        check_limit(limit)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidRequestError(
                f"invalid cursor {cursor!r}; pass the next_cursor of a previous page"
            )
        rows = await self._fetch("list_sessions", self._sql.list, cursor or "", limit + 1)
        ids = [r[0] for r in rows]
        if len(ids) > limit:
            return SessionPage(tuple(ids[:limit]), ids[limit - 1])
        return SessionPage(tuple(ids), None)

    async def fork(self, source_id: str, target_id: str) -> int:
        """Replace ``target_id`` with a copy of ``source_id`` in one statement.

        Returns the number of messages copied (0 for an unknown source, which clears
        the target). The target gets a fresh TTL.
        """
        check_session_id(source_id)
        check_session_id(target_id)
        if source_id == target_id:
            rows = await self._fetch("fork", self._sql.fork_self, source_id)
        else:
            rows = await self._fetch("fork", self._sql.fork, source_id, target_id)
            self._maybe_sweep()
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        """The session's metadata (``{}`` when none)."""
        check_session_id(session_id)
        sql = self._sql
        query = (
            sql.get_metadata_touch
            if self.refresh_ttl_on_read and self.ttl is not None
            else sql.get_metadata
        )
        rows = await self._fetch("get_metadata", query, session_id)
        return _decode_metadata(rows[0][0] if rows else None, session_id)

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` (``None`` values delete keys) in one statement."""
        check_session_id(session_id)
        updates, removals = split_patch(patch)
        rows = await self._fetch(
            "merge_metadata",
            self._sql.merge,
            session_id,
            _encode_metadata(updates),
            [_escape_key(k) for k in removals],
        )
        self._maybe_sweep()
        return _decode_metadata(rows[0][0], session_id)

    # --- the TurnStore contract: leases, turn ids, the ledger -----------------------------

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
        """Take the session's lease if it is free (or expired, or ``steal``), with the
        turn-id check, the history and the ledger: one call of a server-side function,
        one round trip.

        If the caller is cancelled once the call was sent, the call still completes and
        a lease it took is released in the background (never left to expire).
        """
        check_session_id(session_id)
        check_owner(owner)
        ttl = check_lease_ttl(lease_ttl)
        check_last_n(last_n)
        if turn_id is not None:
            check_turn_id(turn_id)
        refresh = self.ttl if self.refresh_ttl_on_read else None
        generation = self._generations.get(session_id, 0)
        args = (session_id, owner, ttl, bool(load), last_n, turn_id, bool(steal), refresh)
        loop = asyncio.get_running_loop()
        claim = loop.create_task(self._fetch("begin_turn", self._sql.begin_turn, *args))
        try:
            rows = await asyncio.shield(claim)
        except asyncio.CancelledError:
            claim.add_done_callback(lambda task: self._release_orphan(session_id, task))
            raise
        token, busy_for, stored, records, *totals = rows[0]
        ledger = _ledger(totals)
        if stored:
            return TurnClaim(
                None, [], ledger, tuple(decode_messages(records, session_id=session_id))
            )
        if token is None:
            _busy_mark.set((id(self), session_id, generation, loop.time() + float(busy_for)))
            return TurnClaim(None, [], ledger)
        self._watches.lost(session_id, token)  # a lease of this process, taken over
        return TurnClaim(token, decode_messages(records or [], session_id=session_id), ledger)

    def _release_orphan(self, session_id: str, claim: asyncio.Task[list[Any]]) -> None:
        """A cancelled caller's claim finished: give back the lease it may have taken."""
        if claim.cancelled() or claim.exception() is not None or self._closed:
            return
        token = claim.result()[0][0]
        if token is not None:
            self._background(self._release(session_id, token))

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, session_id: str, token: int) -> None:
        with contextlib.suppress(StoreError):
            await self._fetch("release_turn", self._sql.release_turn, session_id, token)

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        """Extend the lease to ``lease_ttl`` s from now (the server's clock); ``False``
        if another turn took it."""
        check_session_id(session_id)
        check_token(token)
        ttl = check_lease_ttl(lease_ttl)
        rows = await self._fetch("renew_turn", self._sql.renew_turn, session_id, token, ttl)
        return bool(rows)

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
        """Append the turn, add it to the ledger, record ``turn_id``, release the lease
        and notify the waiters (only if some asked): one server-side function call,
        only if ``token`` is still the session's newest.

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
        command = (
            "end_turn",
            session_id,
            token,
            records,
            turn_id,
            self.ttl,
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.total_tokens,
            cost.total_cost,
        )
        # Through the batcher, as append: a sent end_turn finishes before a turn's
        # cancellation is re-raised (finish_sent_writes).
        outcome = await self._batched("end_turn", command)
        if outcome == 2:
            raise _lease_lost(session_id, token)
        self._waiters.wake(session_id)
        self._maybe_sweep()

    async def release_turn(self, session_id: str, token: int) -> None:
        """Give the lease back without writing; a no-op if ``token`` no longer holds it.

        Once sent it completes even if the caller is cancelled (the lease is never left
        to expire because a cleanup was interrupted).
        """
        check_session_id(session_id)
        check_token(token)
        task = asyncio.get_running_loop().create_task(
            self._fetch("release_turn", self._sql.release_turn, session_id, token)
        )
        self._tasks_add(task)
        await asyncio.shield(task)
        self._waiters.wake(session_id)

    def _tasks_add(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Retrieved, so that a cancelled caller leaves no "never retrieved" warning.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def wait_turn(self, session_id: str, timeout: float) -> bool:
        """Wait until the session's lease may be free, at most ``timeout`` seconds.

        Signalling: LISTEN/NOTIFY on one pooled connection per store object (taken by
        the first wait, kept until :meth:`aclose`). A busy :meth:`begin_turn` marks the
        session contended, and the holder's release then notifies in the same
        transaction, so a waiter hears it within one network hop. A notification that
        is lost (the listening connection dropped) is made up for by looking again
        every 0.5 s (one small read), and a holder that died by looking when its lease
        expires. A release between the busy ``begin_turn`` and this call still wakes
        it. ``True``: the lease looked free (try ``begin_turn``); ``False``:
        ``timeout`` ran out.
        """
        check_session_id(session_id)
        left = check_wait_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + left
        woken = self._waiters.register(session_id)  # first: no wake-up is lost after this
        try:
            mark = _busy_mark.get()
            lease_end: float | None = None
            look = True  # whether to read the lease before waiting
            if mark is not None and mark[0] == id(self) and mark[1] == session_id:
                if self._generations.get(session_id, 0) > mark[2]:
                    return True  # released since the busy claim was sent
                lease_end, look = mark[3], self._listener is None
            while True:
                if self._listener is None:
                    await self._start_listener(max(deadline - loop.time(), 0.001))
                if look:
                    rows = await self._fetch("wait_turn", self._sql.lease_left, session_id)
                    held_for = rows[0][0] if rows else None
                    if held_for is None or held_for <= 0:
                        return True
                    lease_end = loop.time() + float(held_for)
                left = deadline - loop.time()
                if woken.done():
                    return True
                if left <= 0:
                    return False
                # Listening: a release notifies; look again anyway every 0.5 s (a lost
                # notification) and when the holder's lease ends (a dead holder).
                bound = min(left, _WAIT_FALLBACK)
                if lease_end is not None:
                    bound = min(bound, max(lease_end - loop.time(), 0.0) + 0.005)
                await asyncio.wait((woken,), timeout=bound)
                if woken.done():
                    return True
                look = True
        finally:
            self._waiters.discard(session_id, woken)

    async def _start_listener(self, limit: float) -> bool:
        """LISTEN on the store's channel; True if this call started it."""
        if self._listener_lock is None:
            self._listener_lock = asyncio.Lock()
        async with self._listener_lock:
            if self._listener is not None or self._closed:
                return False
            if not self._ready:
                await self._ensure_ready("wait_turn")
            wait = limit if self.timeout is None else min(limit, self.timeout)
            try:
                conn = await self.pool.acquire(timeout=max(wait, 0.001))
            except (*_DRIVER_ERRORS, StoreError):
                return False  # waiters poll meanwhile; the next wait tries again
            try:
                await asyncio.wait_for(conn.add_listener(self._sql.channel, self._on_notify), wait)
                conn.add_termination_listener(self._on_listener_lost)
            except _DRIVER_ERRORS:
                conn.terminate()
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await self.pool.release(conn, timeout=self.timeout)
                return False
            self._listener = conn
            return True

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        kind, rest = payload[:1], payload[1:]
        if kind == "r":  # released while contended
            self._generations[rest] = self._generations.pop(rest, 0) + 1
            while len(self._generations) > _MAX_GENERATIONS:
                self._generations.popitem(last=False)
            self._waiters.wake(rest)
        elif kind == "l":  # taken over: "l<newest token>:<session id>"
            token, _, session_id = rest.partition(":")
            with contextlib.suppress(ValueError):
                self._watches.lost(session_id, int(token))

    def _on_listener_lost(self, conn: Any) -> None:
        if self._listener is conn:
            self._listener = None
        self._waiters.wake_all()  # they look again, and poll until a listener is back
        self._ensure_watching()

    def watch_lease(
        self, session_id: str, token: int, on_lost: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_lost()`` once if another turn takes the lease ``token``.

        A takeover by this store object is told at once; another process's through the
        NOTIFY its ``begin_turn`` sends, within one network hop. Until the listening
        connection is up (and whenever it is lost) the watched leases are polled every
        0.5 s. Returns the function that stops watching.
        """
        check_session_id(session_id)
        check_token(token)
        if not callable(on_lost):
            raise InvalidRequestError(f"on_lost must be callable, not {on_lost!r}")
        self._check_open()
        stop = self._watches.add(session_id, token, on_lost)
        if self._listener is None:
            self._ensure_watching()
        return stop

    def _ensure_watching(self) -> None:
        idle = self._watch_task is None or self._watch_task.done()
        if self._watches and not self._closed and idle:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while self._watches and not self._closed:
            if self._listener is None:
                await self._start_listener(_WATCH_POLL)
            ids = self._watches.sessions()
            # One look at the fences covers what happened before the listener was up.
            with contextlib.suppress(StoreError):
                rows = await self._fetch("watch_lease", self._sql.fences, ids)
                fences = {r[0]: int(r[1]) for r in rows}
                for session_id in ids:
                    self._watches.lost(session_id, fences.get(session_id))
            if self._listener is not None:
                return  # notifications tell from now on; a lost listener restarts this
            await asyncio.sleep(_WATCH_POLL)

    async def has_turn(self, session_id: str, turn_id: str) -> bool:
        """Whether the turn ``turn_id`` is stored in the session (and not rewritten since)."""
        check_session_id(session_id)
        check_turn_id(turn_id)
        rows = await self._fetch("has_turn", self._sql.has_turn, session_id, turn_id)
        return bool(rows[0][0])

    async def get_ledger(self, session_id: str) -> Ledger:
        """The session's totals (all zero for an unknown or expired session)."""
        check_session_id(session_id)
        rows = await self._fetch("get_ledger", self._sql.get_ledger, session_id)
        if not rows:
            return Ledger()
        return _ledger(rows[0])

    async def aclose(self) -> None:
        """Wait for background purges, then close the pool if this store created it.

        A pool passed to the constructor is left open: its owner closes it. Safe to
        call more than once; the store refuses operations afterwards. The listening
        connection (if any) stops listening and goes back to the pool.
        """
        if self._closed:
            return
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.remove_termination_listener(self._on_listener_lost)
                await asyncio.wait_for(
                    listener.remove_listener(self._sql.channel, self._on_notify), self.timeout
                )
            except _DRIVER_ERRORS:
                listener.terminate()
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self.pool.release(listener, timeout=self.timeout)
        self._waiters.wake_all()
        await self._batcher.drain()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_pool:
            await self.pool.close()


class _Statements:
    """The SQL of one store (schema, prefix and TTL are fixed per store)."""

    def __init__(self, schema: str, prefix: str, ttl: float | None) -> None:
        s = f'"{schema}"'
        sessions = f'{s}."{prefix}sessions"'
        messages = f'{s}."{prefix}messages"'
        versions = f'{s}."{prefix}schema_version"'
        turns = f'{s}."{prefix}turns"'
        self.channel = channel_name(schema, prefix)
        self.where = f"{schema}.{prefix}*"
        self.lock_key = f"promptkit_async:{schema}.{prefix}"
        expires = "NULL::timestamptz" if ttl is None else f"now() + {ttl!r} * interval '1 second'"
        live = "(s.expires_at IS NULL OR s.expires_at > now())"
        expired = "(s.expires_at <= now())"
        # A session exists while it is live and holds a message or a metadata key.
        exists = f"({live} AND (s.next_seq > s.start_seq OR s.metadata <> '{{}}'::jsonb))"

        self.create_version_table = (
            f"CREATE TABLE IF NOT EXISTS {versions} ("
            "version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        self.current_version = f"SELECT coalesce(max(version), 0) FROM {versions}"
        self.record_version = f"INSERT INTO {versions} (version) VALUES ($1)"
        self.migrations: dict[int, list[str]] = {
            1: [
                # COLLATE "C": byte order, so list_sessions pages are stable whatever the
                # database's locale, and the primary keys serve both lookups and paging.
                f"CREATE TABLE {sessions} ("
                'id TEXT COLLATE "C" PRIMARY KEY, '
                "metadata JSONB NOT NULL DEFAULT '{}', "
                "start_seq BIGINT NOT NULL DEFAULT 0, "
                "next_seq BIGINT NOT NULL DEFAULT 0, "
                "expires_at TIMESTAMPTZ)",
                f'CREATE INDEX "{prefix}sessions_expiry" ON {sessions} (expires_at) '
                "WHERE expires_at IS NOT NULL",
                f"CREATE TABLE {messages} ("
                'session_id TEXT COLLATE "C" NOT NULL, '
                "seq BIGINT NOT NULL, "
                "record TEXT NOT NULL, "
                "PRIMARY KEY (session_id, seq))",
            ],
            2: self._layout_2(s, prefix, sessions, messages),
        }

        # Old rows below start_seq are deleted in the same statement that hides them
        # (those a concurrent statement committed meanwhile are left to the sweeper's
        # next pass over that session, harmless since they are invisible).
        def gone(session: str, below: str) -> str:
            return f"DELETE FROM {messages} WHERE session_id = {session} AND seq < ({below})"

        rows = "unnest($2::text[]) WITH ORDINALITY AS r(record, i)"
        # An expired session that is written again starts empty: start past its rows
        # and forget its metadata.
        restart_seq = f"start_seq = CASE WHEN {expired} THEN s.next_seq ELSE s.start_seq END"
        # ... and with a ledger of zeros.
        restart_ledger = ", ".join(
            f"{c} = CASE WHEN {expired} THEN 0 ELSE s.{c} END" for c in _LEDGER_COLUMNS
        )
        restart = (
            f"{restart_seq}, "
            f"metadata = CASE WHEN {expired} THEN '{{}}'::jsonb ELSE s.metadata END, "
            f"{restart_ledger}"
        )

        self.load = (
            f"SELECT m.record FROM {sessions} s JOIN {messages} m ON m.session_id = s.id "
            "AND m.seq >= greatest(s.start_seq, s.next_seq - coalesce($2::bigint, s.next_seq)) "
            "AND m.seq < s.next_seq "
            f"WHERE s.id = $1 AND {live} ORDER BY m.seq"
        )
        # Many loads in one statement: the q.i-th load's rows, oldest first.
        # Many loads in one statement: the q.i-th load's rows, oldest first. The newest
        # last_n rows of each come from a backward index scan that stops after them.
        self.load_many = (
            "SELECT q.i, m.record FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY "
            f"AS q(id, last_n, i) JOIN {sessions} s ON s.id = q.id AND {live} "
            f"CROSS JOIN LATERAL (SELECT m.seq, m.record FROM {messages} m "
            "WHERE m.session_id = s.id AND m.seq >= s.start_seq AND m.seq < s.next_seq "
            "ORDER BY m.seq DESC LIMIT q.last_n) m ORDER BY q.i, m.seq"
        )
        self.touch = (
            f"UPDATE {sessions} s SET expires_at = {expires} WHERE s.id = $1 AND {live} "
            "RETURNING s.start_seq, s.next_seq, s.metadata"
        )
        self.load_touch = (
            f"WITH t AS ({self.touch}) "
            f"SELECT m.record FROM t JOIN {messages} m ON m.session_id = $1 "
            "AND m.seq >= greatest(t.start_seq, t.next_seq - coalesce($2::bigint, t.next_seq)) "
            "AND m.seq < t.next_seq ORDER BY m.seq"
        )
        self.append = (
            f"WITH t AS (INSERT INTO {sessions} AS s (id, next_seq, expires_at) "
            f"VALUES ($1, cardinality($2::text[]), {expires}) "
            f"ON CONFLICT (id) DO UPDATE SET {restart}, "
            "next_seq = s.next_seq + cardinality($2::text[]), expires_at = EXCLUDED.expires_at "
            "RETURNING s.start_seq, s.next_seq - cardinality($2::text[]) AS first), "
            f"g AS ({gone('$1', 'SELECT start_seq FROM t')}) "
            f"INSERT INTO {messages} (session_id, seq, record) "
            f"SELECT $1, t.first + r.i - 1, r.record FROM t, {rows}"
        )
        # Appends to many sessions in one statement: $1 the (distinct, sorted) ids, $2 how
        # many records each gets; $3 the 1-based index in $1 of each record's session and
        # $4 the records, in order.
        self.append_many = (
            "WITH q AS (SELECT * FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY "
            "AS q(id, n, i)), "
            f"t AS (INSERT INTO {sessions} AS s (id, next_seq, expires_at) "
            f"SELECT q.id, q.n, {expires} FROM q ORDER BY q.id "
            f"ON CONFLICT (id) DO UPDATE SET {restart}, "
            "next_seq = s.next_seq + EXCLUDED.next_seq, expires_at = EXCLUDED.expires_at "
            "RETURNING s.id, s.start_seq, s.next_seq), "
            f"g AS (DELETE FROM {messages} m USING t "
            "WHERE m.session_id = t.id AND m.seq < t.start_seq) "
            f"INSERT INTO {messages} (session_id, seq, record) "
            "SELECT q.id, t.next_seq - q.n + row_number() OVER (PARTITION BY r.owner "
            "ORDER BY r.k) - 1, r.record "
            "FROM unnest($3::int[], $4::text[]) WITH ORDINALITY AS r(owner, record, k) "
            "JOIN q ON q.i = r.owner JOIN t ON t.id = q.id"
        )
        self.save = (
            f"WITH t AS (INSERT INTO {sessions} AS s (id, next_seq, expires_at) "
            f"VALUES ($1, cardinality($2::text[]), {expires}) "
            "ON CONFLICT (id) DO UPDATE SET start_seq = s.next_seq, "
            f"metadata = CASE WHEN {expired} THEN '{{}}'::jsonb ELSE s.metadata END, "
            f"{restart_ledger}, "
            "next_seq = s.next_seq + cardinality($2::text[]), expires_at = EXCLUDED.expires_at "
            "RETURNING s.start_seq AS first), "
            f"g AS ({gone('$1', 'SELECT first FROM t')}) "
            f"INSERT INTO {messages} (session_id, seq, record) "
            f"SELECT $1, t.first + r.i - 1, r.record FROM t, {rows}"
        )
        zero_ledger = ", ".join(f"{c} = 0" for c in _LEDGER_COLUMNS)
        # FOR UPDATE re-reads the newest version of the row, so "existed" is exact. The
        # row itself stays (with its fencing token), emptied.
        self.delete = (
            f"WITH o AS (SELECT s.id, {exists} AS existed FROM {sessions} s "
            "WHERE s.id = $1 FOR UPDATE), "
            f"u AS (UPDATE {sessions} s SET start_seq = s.next_seq, metadata = '{{}}', "
            f"{zero_ledger}, "
            "expires_at = now() FROM o WHERE s.id = o.id RETURNING s.next_seq), "
            f"g AS ({gone('$1', 'SELECT next_seq FROM u')}) "
            "SELECT coalesce((SELECT existed FROM o), false)"
        )
        self.count = f"SELECT s.next_seq - s.start_seq FROM {sessions} s WHERE s.id = $1 AND {live}"
        self.list = (
            f"SELECT s.id FROM {sessions} s WHERE s.id > $1 AND {exists} ORDER BY s.id LIMIT $2"
        )
        self.get_metadata = f"SELECT s.metadata::text FROM {sessions} s WHERE s.id = $1 AND {live}"
        self.get_metadata_touch = (
            f"UPDATE {sessions} s SET expires_at = {expires} WHERE s.id = $1 AND {live} "
            "RETURNING s.metadata::text"
        )
        self.merge = (
            f"WITH t AS (INSERT INTO {sessions} AS s (id, metadata, expires_at) "
            f"VALUES ($1, $2::text::jsonb, {expires}) "
            f"ON CONFLICT (id) DO UPDATE SET {restart_seq}, {restart_ledger}, "
            f"metadata = (CASE WHEN {expired} THEN '{{}}'::jsonb ELSE s.metadata END "
            "|| EXCLUDED.metadata) - $3::text[], expires_at = EXCLUDED.expires_at "
            "RETURNING s.metadata::text AS metadata, s.start_seq), "
            f"g AS ({gone('$1', 'SELECT start_seq FROM t')}) "
            "SELECT metadata FROM t"
        )
        # The source is read in the statement's snapshot; the target row is replaced
        # under its lock (or created); an unknown source clears the target. The fork
        # continues the conversation: it gets a copy of the source's ledger.
        ledger = ", ".join(_LEDGER_COLUMNS)
        copy_ledger = ", ".join(f"{c} = EXCLUDED.{c}" for c in _LEDGER_COLUMNS)
        self.fork = (
            f"WITH src AS (SELECT s.metadata, s.start_seq, s.next_seq, {ledger} FROM {sessions} s "
            f"WHERE s.id = $1 AND {exists}), "
            f"t AS (INSERT INTO {sessions} AS s (id, metadata, next_seq, expires_at, {ledger}) "
            f"SELECT $2, src.metadata, src.next_seq - src.start_seq, {expires}, {ledger} FROM src "
            "ON CONFLICT (id) DO UPDATE SET metadata = EXCLUDED.metadata, "
            "start_seq = s.next_seq, next_seq = s.next_seq + EXCLUDED.next_seq, "
            f"{copy_ledger}, "
            "expires_at = EXCLUDED.expires_at RETURNING s.start_seq AS first), "
            f"c AS (UPDATE {sessions} s SET start_seq = s.next_seq, metadata = '{{}}', "
            f"{zero_ledger}, "
            "expires_at = now() WHERE s.id = $2 AND NOT EXISTS (SELECT 1 FROM src) "
            "RETURNING s.next_seq AS first), "
            f"g AS ({gone('$2', 'SELECT first FROM t UNION ALL SELECT first FROM c')}), "
            f"i AS (INSERT INTO {messages} (session_id, seq, record) "
            "SELECT $2, t.first + m.seq - src.start_seq, m.record "
            f"FROM src, t, {messages} m WHERE m.session_id = $1 "
            "AND m.seq >= src.start_seq AND m.seq < src.next_seq RETURNING 1) "
            "SELECT count(*) FROM i"
        )
        self.fork_self = (
            f"UPDATE {sessions} s SET expires_at = {expires} WHERE s.id = $1 AND {exists} "
            "RETURNING s.next_seq - s.start_seq"
        )
        # Expired sessions, and rows that hold nothing (emptied by save, delete, fork or a
        # metadata merge). SKIP LOCKED: never wait for, nor block, a session in use.
        # A row whose lease is held, or expired less than an hour ago, stays: it holds
        # the session's fencing token, and a holder that stalled must find it.
        unleased = "(lease_expires_at IS NULL OR lease_expires_at < now() - interval '1 hour')"
        self.sweep_sessions = (
            f"WITH d AS (DELETE FROM {sessions} WHERE id IN (SELECT s.id FROM {sessions} s "
            "WHERE (s.expires_at <= now() OR (s.next_seq = s.start_seq "
            f"AND s.metadata = '{{}}'::jsonb)) AND {unleased.replace('lease_', 's.lease_')} "
            "LIMIT $1 FOR UPDATE SKIP LOCKED) "
            "AND (expires_at <= now() OR (next_seq = start_seq AND metadata = '{}'::jsonb)) "
            f"AND {unleased} RETURNING id) SELECT array_agg(id) FROM d"
        )
        self.sweep_messages = (
            f"WITH t AS (DELETE FROM {turns} WHERE session_id = ANY($1::text[])) "
            f"DELETE FROM {messages} WHERE session_id = ANY($1::text[])"
        )

        # --- turns (issue 15): one server-side function call per operation ---------
        fn = f'{s}."{prefix}'
        self.begin_turn = f'SELECT * FROM {fn}begin_turn"($1, $2, $3, $4, $5, $6, $7, $8)'
        self.end_turn = f'SELECT {fn}end_turn"($1, $2, $3::text[], $4, $5, $6, $7, $8, $9, $10)'
        self.release_turn = f'SELECT {fn}release_turn"($1, $2)'
        self.renew_turn = (
            f"UPDATE {sessions} SET lease_expires_at = clock_timestamp() + "
            "$3 * interval '1 second' WHERE id = $1 AND fence = $2 "
            "AND lease_expires_at IS NOT NULL RETURNING 1"
        )
        self.fences = f"SELECT id, fence FROM {sessions} WHERE id = ANY($1::text[])"
        self.lease_left = (
            "SELECT extract(epoch FROM lease_expires_at - clock_timestamp())::float8 "
            f"FROM {sessions} WHERE id = $1"
        )
        self.has_turn = (
            f"SELECT EXISTS (SELECT 1 FROM {turns} t JOIN {sessions} s ON s.id = t.session_id "
            f"WHERE t.session_id = $1 AND t.turn_id = $2 AND {live} "
            "AND t.first_seq >= s.start_seq AND t.first_seq + t.n <= s.next_seq)"
        )
        self.get_ledger = f"SELECT {ledger} FROM {sessions} s WHERE s.id = $1 AND {live}"

    @staticmethod
    def _layout_2(s: str, prefix: str, sessions: str, messages: str) -> list[str]:
        """Layout 2 (issue 15): leases, fencing tokens, turn ids and the ledger."""
        turns = f'{s}."{prefix}turns"'
        fence = f'{s}."{prefix}fence"'
        fn = f'{s}."{prefix}'
        channel = channel_name(s.strip('"'), prefix).replace("'", "")
        live = "(r.expires_at IS NULL OR r.expires_at > now())"
        ledger = ", ".join(f"r.{c}" for c in _LEDGER_COLUMNS)
        zeros = "0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::float8"
        # The turn ``t`` of row ``r`` is stored while its messages are still live: a
        # save, fork, delete or expiry moves start_seq past them, which forgets it.
        stored = "t.first_seq >= r.start_seq AND t.first_seq + t.n <= r.next_seq"
        release = (
            f"UPDATE {sessions} SET lease_owner = NULL, lease_expires_at = NULL, "
            "contended = false WHERE id = p_id"
        )
        return [
            f"ALTER TABLE {sessions} "
            "ADD COLUMN fence BIGINT NOT NULL DEFAULT 0, "
            "ADD COLUMN lease_owner TEXT, "
            "ADD COLUMN lease_expires_at TIMESTAMPTZ, "
            "ADD COLUMN contended BOOLEAN NOT NULL DEFAULT false, "
            "ADD COLUMN l_turns BIGINT NOT NULL DEFAULT 0, "
            "ADD COLUMN l_prompt BIGINT NOT NULL DEFAULT 0, "
            "ADD COLUMN l_completion BIGINT NOT NULL DEFAULT 0, "
            "ADD COLUMN l_cached BIGINT NOT NULL DEFAULT 0, "
            "ADD COLUMN l_total BIGINT NOT NULL DEFAULT 0, "
            "ADD COLUMN l_cost DOUBLE PRECISION NOT NULL DEFAULT 0",
            # One sequence for every session of these tables: tokens only grow, even
            # when a session's row is purged and created again.
            f"CREATE SEQUENCE {fence}",
            f"CREATE TABLE {turns} ("
            'session_id TEXT COLLATE "C" NOT NULL, '
            'turn_id TEXT COLLATE "C" NOT NULL, '
            "first_seq BIGINT NOT NULL, "
            "n INT NOT NULL, "
            "PRIMARY KEY (session_id, turn_id))",
            # begin_turn: the turn-id check, the lease (exactly one of racing callers
            # wins: the row lock), the history and the ledger, in one call.
            f'CREATE FUNCTION {fn}begin_turn"(p_id text, p_owner text, p_lease float8, '
            "p_load boolean, p_last_n bigint, p_turn text, p_steal boolean, p_refresh float8) "
            "RETURNS TABLE (token bigint, busy_for float8, stored boolean, records text[], "
            "l_turns bigint, l_prompt bigint, l_completion bigint, l_cached bigint, "
            "l_total bigint, l_cost float8) "
            "LANGUAGE plpgsql AS $body$\n"
            f"DECLARE r {sessions}%ROWTYPE; t record; live boolean; newest bigint;\n"
            "BEGIN\n"
            "  IF p_turn IS NOT NULL THEN\n"
            f"    SELECT x.first_seq, x.n INTO t FROM {turns} x "
            "WHERE x.session_id = p_id AND x.turn_id = p_turn;\n"
            "    IF FOUND THEN\n"
            f"      SELECT * INTO r FROM {sessions} WHERE id = p_id;\n"
            f"      IF FOUND AND {live} AND {stored} THEN\n"
            "        RETURN QUERY SELECT NULL::bigint, NULL::float8, true, "
            f"ARRAY(SELECT m.record FROM {messages} m WHERE m.session_id = p_id "
            "AND m.seq >= t.first_seq AND m.seq < t.first_seq + t.n ORDER BY m.seq), "
            f"{ledger};\n"
            "        RETURN;\n"
            "      END IF;\n"
            "    END IF;\n"
            "  END IF;\n"
            f"  SELECT * INTO r FROM {sessions} WHERE id = p_id FOR UPDATE;\n"
            "  IF NOT FOUND THEN\n"
            f"    INSERT INTO {sessions} (id) VALUES (p_id) ON CONFLICT (id) DO NOTHING;\n"
            f"    SELECT * INTO r FROM {sessions} WHERE id = p_id FOR UPDATE;\n"
            "  END IF;\n"
            f"  live := {live};\n"
            "  IF r.lease_expires_at > clock_timestamp() AND NOT p_steal THEN\n"
            # Busy: ask the holder's release to notify (only then does it).
            "    IF NOT r.contended THEN\n"
            f"      UPDATE {sessions} SET contended = true WHERE id = p_id;\n"
            "    END IF;\n"
            "    RETURN QUERY SELECT NULL::bigint, "
            "extract(epoch FROM r.lease_expires_at - clock_timestamp())::float8, false, "
            f"NULL::text[], {ledger} WHERE live UNION ALL SELECT NULL::bigint, "
            "extract(epoch FROM r.lease_expires_at - clock_timestamp())::float8, false, "
            f"NULL::text[], {zeros} WHERE NOT live;\n"
            "    RETURN;\n"
            "  END IF;\n"
            f"  newest := nextval('{fence}');\n"
            f"  UPDATE {sessions} SET fence = newest, lease_owner = p_owner, "
            "lease_expires_at = clock_timestamp() + p_lease * interval '1 second', "
            "expires_at = CASE WHEN live AND p_refresh IS NOT NULL "
            "THEN now() + p_refresh * interval '1 second' ELSE expires_at END "
            "WHERE id = p_id;\n"
            # A lease taken from a holder (stolen, or expired): tell its watchers.
            "  IF r.lease_expires_at IS NOT NULL THEN\n"
            f"    PERFORM pg_notify('{channel}', 'l' || newest || ':' || p_id);\n"
            "  END IF;\n"
            "  IF NOT live THEN\n"
            f"    RETURN QUERY SELECT newest, NULL::float8, false, '{{}}'::text[], {zeros};\n"
            "    RETURN;\n"
            "  END IF;\n"
            "  RETURN QUERY SELECT newest, NULL::float8, false, CASE WHEN p_load THEN "
            "ARRAY(SELECT x.record FROM (SELECT m.seq, m.record FROM "
            f"{messages} m WHERE m.session_id = p_id AND m.seq >= r.start_seq "
            "AND m.seq < r.next_seq ORDER BY m.seq DESC LIMIT p_last_n) x ORDER BY x.seq) "
            f"ELSE '{{}}'::text[] END, {ledger};\n"
            "END\n$body$",
            # end_turn: 0 stored, 1 the turn id was already stored (nothing written, the
            # lease released), 2 fenced (nothing written).
            f'CREATE FUNCTION {fn}end_turn"(p_id text, p_token bigint, p_records text[], '
            "p_turn text, p_ttl float8, p_prompt bigint, p_completion bigint, "
            "p_cached bigint, p_total bigint, p_cost float8) RETURNS int "
            "LANGUAGE plpgsql AS $body$\n"
            f"DECLARE r {sessions}%ROWTYPE; live boolean; first bigint; "
            "start bigint; n int := coalesce(cardinality(p_records), 0);\n"
            "BEGIN\n"
            f"  SELECT * INTO r FROM {sessions} WHERE id = p_id FOR UPDATE;\n"
            "  IF NOT FOUND OR r.fence <> p_token THEN\n"
            "    RETURN 2;\n"
            "  END IF;\n"
            f"  live := {live};\n"
            f"  IF p_turn IS NOT NULL AND live AND EXISTS (SELECT 1 FROM {turns} t "
            f"WHERE t.session_id = p_id AND t.turn_id = p_turn AND {stored}) THEN\n"
            f"    {release} AND lease_expires_at IS NOT NULL;\n"
            "    IF r.contended THEN\n"
            f"      PERFORM pg_notify('{channel}', 'r' || p_id);\n"
            "    END IF;\n"
            "    RETURN 1;\n"
            "  END IF;\n"
            # An expired session that is written again starts empty (as append does).
            "  start := CASE WHEN live THEN r.start_seq ELSE r.next_seq END;\n"
            "  first := r.next_seq;\n"
            f"  UPDATE {sessions} SET start_seq = start, next_seq = first + n, "
            "metadata = CASE WHEN live THEN metadata ELSE '{}'::jsonb END, "
            "expires_at = now() + p_ttl * interval '1 second', "
            "l_turns = CASE WHEN live THEN l_turns ELSE 0 END + 1, "
            "l_prompt = CASE WHEN live THEN l_prompt ELSE 0 END + p_prompt, "
            "l_completion = CASE WHEN live THEN l_completion ELSE 0 END + p_completion, "
            "l_cached = CASE WHEN live THEN l_cached ELSE 0 END + p_cached, "
            "l_total = CASE WHEN live THEN l_total ELSE 0 END + p_total, "
            "l_cost = CASE WHEN live THEN l_cost ELSE 0 END + p_cost, "
            "lease_owner = NULL, lease_expires_at = NULL, contended = false "
            "WHERE id = p_id;\n"
            "  IF NOT live THEN\n"
            f"    DELETE FROM {messages} WHERE session_id = p_id AND seq < start;\n"
            "  END IF;\n"
            f"  INSERT INTO {messages} (session_id, seq, record) "
            "SELECT p_id, first + x.i - 1, x.record "
            "FROM unnest(p_records) WITH ORDINALITY AS x(record, i);\n"
            "  IF p_turn IS NOT NULL THEN\n"
            f"    INSERT INTO {turns} (session_id, turn_id, first_seq, n) "
            "VALUES (p_id, p_turn, first, n) ON CONFLICT (session_id, turn_id) "
            "DO UPDATE SET first_seq = EXCLUDED.first_seq, n = EXCLUDED.n;\n"
            "  END IF;\n"
            "  IF r.contended THEN\n"
            f"    PERFORM pg_notify('{channel}', 'r' || p_id);\n"
            "  END IF;\n"
            "  RETURN 0;\n"
            "END\n$body$",
            f'CREATE FUNCTION {fn}release_turn"(p_id text, p_token bigint) RETURNS void '
            "LANGUAGE plpgsql AS $body$\n"
            "DECLARE was_contended boolean;\n"
            "BEGIN\n"
            f"  SELECT contended INTO was_contended FROM {sessions} WHERE id = p_id "
            "AND fence = p_token AND lease_expires_at IS NOT NULL FOR UPDATE;\n"
            "  IF FOUND THEN\n"
            f"    {release};\n"
            "    IF was_contended THEN\n"
            f"      PERFORM pg_notify('{channel}', 'r' || p_id);\n"
            "    END IF;\n"
            "  END IF;\n"
            "END\n$body$",
        ]


def _ledger(row: Sequence[Any]) -> Ledger:
    return Ledger(
        turns=int(row[0]),
        prompt_tokens=int(row[1]),
        completion_tokens=int(row[2]),
        cached_tokens=int(row[3]),
        total_tokens=int(row[4]),
        cost_usd=float(row[5]),
    )


def _lease_lost(session_id: str, token: int) -> LeaseLostError:
    return LeaseLostError(
        f"the lease of session {session_id!r} passed to another turn (token {token} is no "
        "longer the newest): this turn was not stored, and the session holds exactly what "
        "the other turns stored. A turn that stalls past lease_ttl loses its lease; renew "
        "it (StateMiddleware does) or raise lease_ttl",
        session_id=session_id,
        token=token,
    )


def channel_name(schema: str, prefix: str) -> str:
    """The LISTEN/NOTIFY channel of one set of tables (63 bytes at most, as PostgreSQL
    requires): the stores sharing the tables share it."""
    digest = hashlib.sha256(f"{schema}.{prefix}".encode()).hexdigest()[:24]
    return f"promptkit_{digest}"


def _translate(
    exc: BaseException, op: str, address: str, timeout: float | None, schema: str
) -> StoreError:
    """The one place where asyncpg and socket errors become this library's errors."""
    where = f"PostgreSQL at {address}"
    host, _, port = address.rpartition(":")
    check = (
        f"check that it is running and reachable: pg_isready -h {host.strip('[]')} -p {port}"
        if host and port.isdigit()
        else "check that it is running and reachable (pg_isready)"
    )
    detail = str(exc).rstrip(".") or type(exc).__name__
    maybe = " The write may or may not have been applied (never in part)." if op in _WRITES else ""
    if isinstance(exc, asyncio.TimeoutError):
        return StoreUnavailableError(
            f"{where} did not answer {op} within {timeout}s.{maybe} It is overloaded, stuck "
            f"or unreachable; {check}"
        )
    if isinstance(exc, pgexc.QueryCanceledError):
        return StoreUnavailableError(
            f"{where} cancelled {op} ({detail}: statement_timeout or a cancel request).{maybe} "
            "Look for locks or slow statements (pg_stat_activity), or raise statement_timeout"
        )
    if isinstance(exc, pgexc.ReadOnlySQLTransactionError):
        return StoreUnavailableError(
            f"{where} is read-only and refused {op} ({detail}): it is a standby replica or in "
            "read-only mode; point the DSN at the primary (target_session_attrs=read-write). "
            "Nothing was written"
        )
    if isinstance(exc, (pgexc.SerializationError, pgexc.DeadlockDetectedError)):
        return StoreUnavailableError(
            f"{where} aborted {op} on a conflict with a concurrent transaction ({detail}); "
            "nothing was written, retry the operation"
        )
    if isinstance(exc, pgexc.InvalidAuthorizationSpecificationError):
        return StoreError(
            f"{where} refused the credentials for {op}: {detail}; check the user and password "
            "in the DSN (and pg_hba.conf)"
        )
    if isinstance(exc, pgexc.InvalidCatalogNameError):
        return StoreError(f"{where} refused {op}: {detail}; create the database or fix the DSN")
    if isinstance(exc, pgexc.InsufficientPrivilegeError):
        return StoreError(
            f"{where} refused {op}: {detail}; grant the user rights on schema {schema!r}, or "
            "run migrate() as the tables' owner"
        )
    if isinstance(exc, pgexc.UndefinedTableError):
        return StoreError(
            f"{where} failed {op}: {detail}; the store's tables are missing, run "
            "'await store.migrate()'"
        )
    unavailable = (
        OSError,
        pgexc.InterfaceError,  # connection closed, pool closing
        pgexc.InternalClientError,  # a connection still busy with a cancelled statement
        pgexc.PostgresConnectionError,  # class 08
        pgexc.OperatorInterventionError,  # class 57: shutdown, crash, starting up
        pgexc.InsufficientResourcesError,  # class 53: too many connections, disk full
    )
    if isinstance(exc, unavailable):
        return StoreUnavailableError(f"cannot use {where} during {op}: {detail}.{maybe} {check}")
    return StoreError(f"{where} failed {op}: {detail}")
