"""A state store in Redis or Redis Cluster: shared by processes, survives restarts.

Layout (``P`` is the prefix, ``E`` the session id percent-encoded, see below)::

    P:{E}:m   a list, one JSON record per message (schema-versioned, see records.py)
    P:{E}:h   a hash, one field per metadata key, each value JSON

``{E}`` is a Redis Cluster hash tag, so both keys of a session live in one slot and every
write touches one node atomically. ``E`` is the UTF-8 id percent-encoded with only
``A-Z a-z 0-9 - . _ ~`` left as they are: it is reversible (``list_sessions`` recovers the
ids from the keys), it never contains ``{``, ``}``, ``:`` or a glob character, so ids
cannot collide, cannot leave the prefix or the hash tag, and need no escaping in SCAN
patterns. Writes run one Lua script (atomic on the server, one command) that also sets
the TTL of both keys, so a session expires as a whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar, Union
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._lifecycle import AsyncResource
from .._validation import check_session_id
from ..errors import (
    InvalidRequestError,
    StoreDataError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from ..types import Message
from ._batch import Batcher, Command, Expired, batch_deadline
from ._common import (
    check_count,
    check_last_n,
    check_limit,
    check_seconds,
    check_ttl,
    dumps_value,
    split_patch,
)
from .base import SessionPage
from .records import decode_messages, encode_messages

__all__ = ["DEFAULT_TIMEOUT", "RedisStateStore"]

#: Seconds an operation may take when neither the store nor its client sets a timeout.
DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")

#: A client the store can use: a standalone client or a cluster client.
RedisClient = Union[aioredis.Redis, RedisCluster]  # noqa: UP007 (runtime alias on 3.10)

# One script for every write. KEYS[1] = the message list, KEYS[2] = the metadata hash;
# ARGV[1] = operation, ARGV[2] = TTL in ms (0 = none). Lists of values are pushed in
# chunks of 1000 because Lua's unpack() has a stack limit near 8000.
_SCRIPT = """
local op, ttl, m, h = ARGV[1], tonumber(ARGV[2]), KEYS[1], KEYS[2]
local function push(cmd, key, first, last)
  for i = first, last, 1000 do
    redis.call(cmd, key, unpack(ARGV, i, math.min(i + 999, last)))
  end
end
local function touch()
  if ttl > 0 then
    redis.call('PEXPIRE', m, ttl)
    redis.call('PEXPIRE', h, ttl)
  else
    redis.call('PERSIST', m)
    redis.call('PERSIST', h)
  end
end
if op == 'append' then
  push('RPUSH', m, 3, #ARGV)
  touch()
  return #ARGV - 2
elseif op == 'save' then
  redis.call('DEL', m)
  push('RPUSH', m, 3, #ARGV)
  touch()
  return #ARGV - 2
elseif op == 'merge' then
  local last_set = 3 + 2 * tonumber(ARGV[3])
  push('HSET', h, 4, last_set)
  push('HDEL', h, last_set + 1, #ARGV)
  touch()
  return redis.call('HGETALL', h)
elseif op == 'replace' then
  redis.call('DEL', m, h)
  local last_record = 3 + tonumber(ARGV[3])
  push('RPUSH', m, 4, last_record)
  push('HSET', h, last_record + 1, #ARGV)
  touch()
  return last_record - 3
elseif op == 'delete' then
  return redis.call('DEL', m, h)
end
return redis.error_reply('ERR unknown promptkit_async store operation ' .. tostring(op))
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()

# Characters an encoded id may contain (quote() with safe="" leaves only these).
_ENCODED_ID = re.compile(r"[A-Za-z0-9_.~%-]+")
_WRITES = frozenset(("append", "save", "fork", "merge_metadata", "delete"))
_SCRIPTS = frozenset(("EVALSHA", "EVAL"))
_SCAN_CALLS_PER_PAGE = 16
_KEY_CACHE_SIZE = 4096
# Node names in list_sessions cursors: a standalone server, and "scan finished".
_STANDALONE = "*"
_DONE = "-"
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _pairs(reply: Any) -> list[Any]:
    """A flat [field, value, ...] list from HGETALL (RESP2 list or RESP3 / parsed dict)."""
    if isinstance(reply, dict):
        return [x for kv in reply.items() for x in kv]
    return list(reply)


def _pack(commands: list[Command]) -> bytes:
    """The RESP request bytes of ``commands`` (str arguments UTF-8, ints as digits).

    A lean equivalent of redis-py's ``pack_commands`` for the few argument types this
    store sends; on the hot path it costs a fraction of the general one.
    """
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if type(arg) is str:
                data = arg.encode()
            elif type(arg) is bytes:
                data = arg
            else:
                data = b"%d" % arg
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
    return b"".join(parts)


def _forget(task: asyncio.Task[Any]) -> None:
    """Done callback of a store's own task: retrieve its outcome (nobody may wait)."""
    if not task.cancelled():
        task.exception()


def _client_timeout(client: RedisClient) -> float:
    """The client's own reply timeout when it has a usable one, else DEFAULT_TIMEOUT."""
    if isinstance(client, RedisCluster):
        kwargs = client.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    value = kwargs.get("socket_timeout")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return DEFAULT_TIMEOUT


def _parse_address(address: str) -> tuple[str | None, str, int]:
    """(url or None, host, port) of ``"host:port"``, ``"[v6]:port"`` or a redis URL.

    For a ``unix://`` URL, ``host`` is the socket path and ``port`` is 0.
    """
    if not isinstance(address, str) or not address.strip():
        raise InvalidRequestError(
            f"Redis address must be 'host:port' or a redis:// URL, not {address!r}"
        )
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidRequestError(
                f"unsupported Redis URL scheme {parts.scheme!r}; use redis://, rediss:// or unix://"
            )
        if parts.scheme == "unix":
            return address, parts.path, 0
        try:
            port = parts.port or 6379
        except ValueError:
            raise InvalidRequestError("invalid port in the Redis URL") from None
        return address, parts.hostname or "localhost", port
    host, sep, port_text = address.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = address, "6379"
    host = host.strip("[]") or "localhost"
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidRequestError(
            f"invalid Redis address {address!r}; use 'host:port', e.g. 'localhost:6379'"
        ) from None
    return None, host, port


class RedisStateStore(AsyncResource):
    """Conversation histories in Redis or Redis Cluster.

    Create one with :meth:`connect` (the store then owns its client)::

        store = await RedisStateStore.connect("localhost:6379")
        store = await RedisStateStore.connect("rediss://:secret@cache.example.com:6380/2")
        store = await RedisStateStore.connect("10.0.0.5:7000", cluster=True)

    or wrap a client you own (``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``); :meth:`aclose` then leaves it open::

        store = RedisStateStore(redis.asyncio.Redis(host="localhost"), ttl=3600)

    Args:
        client: the client to use.
        prefix: start of every key (no ``{`` or ``}``); stores with different prefixes
            never see each other's sessions.
        ttl: seconds a session lives after its last write (sliding; both of its keys
            expire together); ``None`` keeps sessions forever (and a write by such a
            store removes a TTL set earlier).
        refresh_ttl_on_read: also restart the TTL on ``load`` and ``get_metadata``
            (sent in the same round trip as the read).
        max_in_flight: how many pipelined batches may be on the wire at once.
        timeout: seconds any operation may take, counted from the moment it is called:
            waiting behind other operations' round trips, taking a pooled connection,
            sending and reading its replies (``fork`` and ``list_sessions``, which take
            more than one round trip, get this bound in total). Past it the operation
            fails with :class:`~promptkit_async.errors.StoreTimeoutError`. ``None``
            means the client's ``socket_timeout`` when it has one, else
            :data:`DEFAULT_TIMEOUT` (5 s): a store never waits without a bound, even
            around a client created without timeouts.

    Round trips: ``load``, ``append``, ``save``, ``count``, ``delete``,
    ``get_metadata`` and ``merge_metadata`` are one round trip each (``append`` and the
    other writes are one atomic Lua script), so a pipeline turn costs two. ``fork``
    costs two (read the source, write the target). Operations that concurrent tasks
    start during the same event-loop iteration share a round trip: they are sent as one
    pipeline, each still atomic on its own.

    Concurrency: safe to share between any number of tasks on one event loop (not
    between loops or threads). Processes sharing one Redis never lose or interleave
    appends: each append is one script, and the order of the list is Redis's order.
    Cancelling an operation before it was sent drops it; once sent, a write completes
    on the server even though the caller stopped waiting.

    Timeouts and cancellation: an operation that outlives ``timeout`` raises
    :class:`~promptkit_async.errors.StoreTimeoutError` (never a :class:`TimeoutError`);
    its ``maybe_applied`` is ``True`` only for a write that was already sent, which may
    or may not have been applied (never in part). The store's timer never cancels the
    caller's task, so ``asyncio.timeout``, ``anyio.fail_after`` or a task group around a
    store call fire on time and raise exactly what they raise around any await.

    Failures: an unreachable or failing server raises
    :class:`~promptkit_async.errors.StoreUnavailableError` naming the address. Other
    Redis errors raise :class:`~promptkit_async.errors.StoreError`. The store
    reconnects on the next operation, so a restarted server needs no new store.

    Scripts: writes use ``EVALSHA`` and fall back to ``EVAL`` once when the server does
    not know the script yet (a fresh or restarted server).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "promptkit",
        ttl: float | None = None,
        refresh_ttl_on_read: bool = False,
        max_in_flight: int = 4,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(client, (aioredis.Redis, RedisCluster)):
            raise InvalidRequestError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster; "
                "use RedisStateStore.connect(address) to create one"
            )
        self._check_prefix(prefix)
        self.ttl = check_ttl(ttl)
        check_count(max_in_flight, "max_in_flight")
        #: Seconds any operation may take, from its call (see the class docstring).
        self.timeout = (
            _client_timeout(client) if timeout is None else check_seconds(timeout, "timeout")
        )
        self.prefix = prefix
        self.refresh_ttl_on_read = bool(refresh_ttl_on_read)
        self.client = client
        self._cluster = isinstance(client, RedisCluster)
        self._ttl_ms = "0" if self.ttl is None else str(max(1, math.ceil(self.ttl * 1000)))
        self._owns_client = False
        self._closed = False
        self._address = self._describe(client)
        self._head = prefix + ":{"
        self._key_cache: dict[str, tuple[str, str]] = {}
        self._scan_pattern = _glob_escape(prefix) + ":{*}:[mh]"
        self._batcher = Batcher(
            self._execute_cluster if self._cluster else self._execute_standalone, max_in_flight
        )
        # Calls outside the batcher (cluster SCAN, topology), each in a task of its own.
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    async def connect(
        cls,
        address: str = "localhost:6379",
        password: str | None = None,
        db: int = 0,
        *,
        prefix: str = "promptkit",
        ttl: float | None = None,
        refresh_ttl_on_read: bool = False,
        cluster: bool = False,
        connect_timeout: float | None = 3.0,
        socket_timeout: float | None = 5.0,
        max_connections: int = 32,
        max_in_flight: int = 4,
        **client_options: Any,
    ) -> RedisStateStore:
        """Connect to Redis and check that it answers; the store owns the connection.

        Args:
            address: ``"host:port"`` (``"localhost:6379"``), or a ``redis://``,
                ``rediss://`` (TLS) or ``unix://`` URL. A URL's own password and db
                take precedence over the arguments.
            password: the server password (``requirepass`` / ACL); never logged.
            db: the database number (must be 0 for a cluster).
            prefix / ttl / refresh_ttl_on_read / max_in_flight: see the class.
            cluster: connect to a Redis Cluster (``address`` is any one of its nodes).
            connect_timeout: seconds to wait for a TCP (and TLS) connection.
            socket_timeout: the store's ``timeout``: seconds any operation may take from
                its call, queueing included (``None``: :data:`DEFAULT_TIMEOUT`). With
                these two an unreachable or stuck server fails fast instead of hanging.
            max_connections: connections to open at most (per node on a cluster);
                further operations wait for a free one, within their timeout.
            **client_options: passed to the redis-py client (e.g. ``username``,
                ``ssl_ca_certs``, ``client_name``).

        Raises:
            StoreUnavailableError: the server cannot be reached or does not answer; the
                message names the address and how to check it (``redis-cli ping``).
            StoreError: the server refused the credentials.

        redis-py's own command retries are disabled: a retried write whose first attempt
        did reach the server would be applied twice.
        """
        cls._check_prefix(prefix)
        check_ttl(ttl)
        timeout = (
            DEFAULT_TIMEOUT
            if socket_timeout is None
            else check_seconds(socket_timeout, "socket_timeout")
        )
        url, host, port = _parse_address(address)
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            # The store bounds every operation itself (cheaper than a timer per reply);
            # redis-py's cluster client also times each read, so its own retries and
            # redirections fail before the store's bound does.
            "socket_timeout": timeout if cluster else None,
            "retry": Retry(NoBackoff(), 0),
        }
        if password is not None:
            options["password"] = password
        options.update(client_options)
        client: RedisClient
        if cluster:
            if db:
                raise InvalidRequestError("a Redis Cluster has only db 0")
            options["max_connections"] = max_connections
            if url is not None:
                client = RedisCluster.from_url(url, **options)
            else:
                client = RedisCluster(host=host, port=port, **options)
        else:
            options["max_connections"] = max_connections
            options["timeout"] = timeout  # waiting for a free pooled connection
            if url is not None:
                if db:
                    options["db"] = db
                pool = BlockingConnectionPool.from_url(url, **options)
            else:
                pool = BlockingConnectionPool(host=host, port=port, db=db, **options)
            client = aioredis.Redis.from_pool(pool)
        store = cls(
            client,
            prefix=prefix,
            ttl=ttl,
            refresh_ttl_on_read=refresh_ttl_on_read,
            max_in_flight=max_in_flight,
            timeout=timeout,
        )
        store._owns_client = True
        # Never the URL itself: it may carry a password.
        store._address = f"unix://{host}" if port == 0 else f"{host}:{port}"
        try:
            if isinstance(client, RedisCluster):
                await store._direct("connect", client.initialize, store._deadline())
            else:
                await store._call("connect", (("PING",),))
        except BaseException:
            await store.aclose()
            raise
        return store

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _check_prefix(prefix: object) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise InvalidRequestError(
                f"prefix must be a non-empty str without '{{' or '}}', not {prefix!r}"
            )

    @staticmethod
    def _describe(client: RedisClient) -> str:
        if isinstance(client, RedisCluster):
            nodes = client.nodes_manager.startup_nodes.values() or client.get_nodes()
            return ",".join(n.name for n in nodes) or "the cluster"
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def __repr__(self) -> str:
        kind = "cluster" if self._cluster else "redis"
        return (
            f"RedisStateStore({kind} {self._address}, prefix={self.prefix!r}, ttl={self.ttl}, "
            f"closed={self._closed})"
        )

    def _keys(self, session_id: str) -> tuple[str, str]:
        """The session's (list, hash) keys; validates the id first (before any I/O)."""
        cache = self._key_cache
        keys = cache.get(session_id) if type(session_id) is str else None
        if keys is None:
            check_session_id(session_id)  # only valid ids ever enter the cache
            base = self._head + quote(session_id, safe="")
            keys = base + "}:m", base + "}:h"
            if len(cache) >= _KEY_CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[session_id] = keys
        return keys

    def _id_of(self, key: bytes | str) -> tuple[str, str] | None:
        """(session id, "m" or "h") of one of our keys, or None for a foreign key."""
        text = _text(key)
        if not text.startswith(self._head) or text[-3:] not in ("}:m", "}:h"):
            return None
        encoded = text[len(self._head) : -3]
        if not _ENCODED_ID.fullmatch(encoded):
            return None
        try:
            session_id = unquote(encoded, errors="strict")
        except UnicodeDecodeError:
            return None
        if quote(session_id, safe="") != encoded:
            return None  # not written by us: we only ever write the canonical form
        return session_id, text[-1]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this RedisStateStore is closed; create a new one")

    def _deadline(self) -> float:
        """The loop time by which an operation called now must be done."""
        return asyncio.get_running_loop().time() + self.timeout

    async def _call(
        self,
        op: str,
        commands: Sequence[Command],
        deadline: float | None = None,
        *,
        write: bool = False,
    ) -> list[Any]:
        """Send ``commands`` in one round trip; Redis errors become StoreErrors here.

        A ``write`` that was sent completes even if the caller is cancelled (the
        cancellation is re-raised once it has); see ``Batcher``.

        The round trip must end by ``deadline`` (default: ``timeout`` from now).
        """
        self._check_open()
        timeout = self.timeout
        if deadline is not None:
            timeout = deadline - asyncio.get_running_loop().time()
        try:
            results = await self._batcher.call(commands, timeout, write=write)
        except Expired as exc:
            maybe = exc.sent and any(c[0] in _SCRIPTS for c in commands)
            raise self._timed_out(op, maybe, "") from None
        except (rexc.RedisError, rexc.RedisClusterException, OSError) as exc:
            raise self._translate(exc, op) from exc
        for result in results:
            if isinstance(result, Exception):
                raise self._translate(result, op) from result
        return results

    async def _direct(self, op: str, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """Await ``call()`` outside the batcher (cluster SCAN, topology) by ``deadline``.

        Like a batch, the call runs in a task of its own, bounded there: the store never
        cancels its caller's task, so a caller's own cancel scope is never mistaken for
        the store's timeout, nor the other way round. A caller that stops waiting leaves
        the call to finish (or time out) on its own.
        """
        loop = asyncio.get_running_loop()

        async def bounded() -> T:
            try:
                return await asyncio.wait_for(call(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                raise Expired(sent=True) from None

        task = loop.create_task(bounded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_forget)
        try:
            return await asyncio.shield(task)
        except Expired:
            raise self._timed_out(op, False, "") from None
        except (rexc.RedisError, rexc.RedisClusterException, OSError) as exc:
            raise self._translate(exc, op) from exc

    async def _script(
        self, op: str, keys: tuple[str, str], args: Sequence[Any], deadline: float | None = None
    ) -> Any:
        deadline = self._deadline() if deadline is None else deadline
        try:
            results = await self._call(
                op, (("EVALSHA", _SCRIPT_SHA, 2, *keys, *args),), deadline, write=True
            )
        except StoreError as exc:
            if not isinstance(exc.__cause__, rexc.NoScriptError):
                raise
            # A fresh or restarted server: EVAL runs the script and caches it.
            results = await self._call(
                op, (("EVAL", _SCRIPT, 2, *keys, *args),), deadline, write=True
            )
        return results[0]

    def _where(self) -> tuple[str, str]:
        """("Redis at <address>", what to check) for error messages."""
        host, _, port = self._address.rpartition(":")
        check = (
            f"check that it is running and reachable: redis-cli -h {host} -p {port} ping"
            if host and port.isdigit() and "," not in self._address
            else "check that it is running and reachable (redis-cli ping)"
        )
        return f"Redis at {self._address}", check

    def _timed_out(self, op: str, maybe_applied: bool, detail: str) -> StoreTimeoutError:
        where, check = self._where()
        if maybe_applied:
            outcome = " The write was sent and may or may not have been applied (never in part)."
        elif op in _WRITES:
            outcome = " The write was not applied."
        else:
            outcome = ""
        return StoreTimeoutError(
            f"{where} did not answer {op} in time (the store's timeout is {self.timeout:g}s,"
            f" counted from the call{detail}).{outcome} It is overloaded, stuck or "
            f"unreachable; {check}, or raise the store's timeout (socket_timeout= in connect())",
            operation=op,
            timeout=self.timeout,
            maybe_applied=maybe_applied,
        )

    def _translate(self, exc: BaseException, op: str) -> StoreError:
        """The one place where redis-py errors become this library's errors."""
        where, check = self._where()
        detail = str(exc).rstrip(".") or type(exc).__name__
        if isinstance(exc, (rexc.AuthenticationError, rexc.AuthorizationError)) or (
            isinstance(exc, rexc.ResponseError)
            and (str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")))
        ):
            return StoreError(
                f"{where} refused {op}: {detail}; check the password (and username/ACL)"
            )
        if isinstance(exc, rexc.TimeoutError):
            return self._timed_out(op, op in _WRITES, f"; {detail}")
        unavailable = (
            rexc.ConnectionError,
            rexc.ClusterDownError,
            rexc.TryAgainError,
            rexc.SlotNotCoveredError,
            rexc.ReadOnlyError,
            OSError,
        )
        if (
            isinstance(exc, unavailable)
            or (isinstance(exc, rexc.RedisClusterException) and "cannot be connected" in detail)
            or (isinstance(exc, rexc.ResponseError) and detail.startswith("BUSY "))
        ):
            return StoreUnavailableError(f"cannot reach {where} during {op}: {detail}; {check}")
        if isinstance(exc, rexc.ResponseError) and detail.startswith("OOM"):
            return StoreUnavailableError(
                f"{where} is out of memory and refused {op}: {detail}; raise maxmemory or "
                "set a ttl so old sessions expire"
            )
        return StoreError(f"{where} failed {op}: {detail}")

    async def _execute_standalone(self, commands: list[Command]) -> list[Any]:
        return await self._bounded(self._send_batch(commands))

    async def _bounded(self, work: Coroutine[Any, Any, list[Any]]) -> list[Any]:
        """Run a batch (in the batcher's own task) until the last of its callers gives up."""
        deadline = batch_deadline()
        if deadline is None:
            return await work
        timeout = deadline - asyncio.get_running_loop().time()
        try:
            # Runs in the batch's own task, never a caller's: wait_for cancels the batch
            # once (asyncio's edge-triggered cancellation), so its clean-up can still
            # await: the connection is dropped and released.
            return await asyncio.wait_for(work, max(timeout, 0))
        except asyncio.TimeoutError:
            raise rexc.TimeoutError(f"no reply within {self.timeout:g}s") from None

    async def _send_batch(self, commands: list[Command]) -> list[Any]:
        # One connection, one write of every command, then one reply per command. Raw
        # replies (no redis-py callbacks) and no redis-py retries: a replayed batch
        # could apply an append twice.
        pool = self.client.connection_pool  # type: ignore[union-attr]
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(_pack(commands), check_health=False)
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await conn.read_response())
                except rexc.ResponseError as exc:
                    results.append(exc)
        except BaseException:
            # The connection's state is unknown (a reply may be half-read): drop it.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        return results

    async def _execute_cluster(self, commands: list[Command]) -> list[Any]:
        # The cluster pipeline routes each command to the node owning its slot (all of
        # a session's keys share one) and sends each node's share in one write.
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await self._bounded(pipe.execute(raise_on_error=False))

    def _touch_commands(self, keys: tuple[str, str]) -> tuple[Command, ...]:
        if not self.refresh_ttl_on_read or self.ttl is None:
            return ()
        return (("PEXPIRE", keys[0], self._ttl_ms), ("PEXPIRE", keys[1], self._ttl_ms))

    @staticmethod
    def _decode_metadata(reply: Any, session_id: str) -> dict[str, Any]:
        flat = _pairs(reply)
        try:
            return {_text(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        except (ValueError, RecursionError) as exc:
            raise StoreDataError(
                f"corrupt metadata in session {session_id!r}: {exc}; delete or repair it"
            ) from exc

    # --- the StateStore contract ------------------------------------------------------

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        """The session's messages, oldest first (the newest ``last_n`` if given).

        One round trip: ``LRANGE key -last_n -1`` (plus ``PEXPIRE`` in the same
        pipeline when ``refresh_ttl_on_read`` is set).
        """
        keys = self._keys(session_id)
        check_last_n(last_n)
        touch = self._touch_commands(keys)
        if last_n == 0:
            if touch:
                await self._call("load", touch)
            return []
        start = 0 if last_n is None else -last_n
        results = await self._call("load", (("LRANGE", keys[0], start, -1), *touch))
        return decode_messages(results[0], session_id=session_id)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` at the end, all together, in one atomic script."""
        keys = self._keys(session_id)
        records = encode_messages(messages)
        if records:
            await self._script("append", keys, ("append", self._ttl_ms, *records))

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the whole history atomically (metadata is kept)."""
        keys = self._keys(session_id)
        records = encode_messages(messages)
        await self._script("save", keys, ("save", self._ttl_ms, *records))

    async def delete(self, session_id: str) -> bool:
        """Remove the session's history and metadata; True if it existed."""
        keys = self._keys(session_id)
        return bool(await self._script("delete", keys, ("delete", 0)))

    async def count(self, session_id: str) -> int:
        """Number of stored messages (``LLEN``)."""
        keys = self._keys(session_id)
        return int((await self._call("count", (("LLEN", keys[0]),)))[0])

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        """A page of at most ``limit`` session ids, found with ``SCAN`` (never ``KEYS``).

        On a cluster every master is scanned in turn. A page may hold fewer ids than
        ``limit``, even none, before the last one; the cursor is opaque.
        """
        check_limit(limit)
        self._check_open()
        deadline = self._deadline()
        nodes = await self._scan_nodes(deadline)
        node, scan, pending = self._parse_cursor(cursor, nodes)
        found = dict.fromkeys(pending)
        calls = 0
        while node is not None and len(found) < limit and calls < _SCAN_CALLS_PER_PAGE:
            scan, keys = await self._scan(node, scan, max(limit, 10), deadline)
            calls += 1
            for session_id in await self._session_ids(keys, deadline):
                found.setdefault(session_id)
            if scan == 0:
                later = [n for n in nodes if n > node]
                node = later[0] if later else None
        ids = list(found)
        page, rest = ids[:limit], ids[limit:]
        if node is None and not rest:
            return SessionPage(tuple(page), None)
        # Opaque to callers: "<node>|<SCAN cursor>|<ids found but not returned yet>". SCAN
        # may find more keys than asked; they wait in the cursor, so pages keep the limit.
        encoded = ",".join(quote(s, safe="") for s in rest)
        return SessionPage(tuple(page), f"{_DONE if node is None else node}|{scan}|{encoded}")

    async def fork(self, source_id: str, target_id: str) -> int:
        """Replace ``target_id`` with a copy of ``source_id``; returns messages copied.

        Two round trips: the source is read in one (a consistent snapshot), then the
        target is replaced in one atomic script.
        """
        source = self._keys(source_id)
        target = self._keys(target_id)
        deadline = self._deadline()
        records, fields = await self._call(
            "fork", (("LRANGE", source[0], 0, -1), ("HGETALL", source[1])), deadline
        )
        flat = _pairs(fields)
        if not records and not flat:
            await self._script("fork", target, ("delete", 0), deadline)
            return 0
        args = ("replace", self._ttl_ms, len(records), *records, *flat)
        return int(await self._script("fork", target, args, deadline))

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        """The session's metadata (``{}`` when none); one round trip."""
        keys = self._keys(session_id)
        touch = self._touch_commands(keys)
        results = await self._call("get_metadata", (("HGETALL", keys[1]), *touch))
        return self._decode_metadata(results[0], session_id)

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` (``None`` values delete keys) in one atomic script."""
        keys = self._keys(session_id)
        updates, removals = split_patch(patch)
        args: list[Any] = ["merge", self._ttl_ms, len(updates)]
        for key, value in updates.items():
            args += (key, dumps_value(value))
        args += removals
        reply = await self._script("merge_metadata", keys, args)
        return self._decode_metadata(reply, session_id)

    async def aclose(self) -> None:
        """Wait for operations in flight, then close the client if this store created it.

        A client passed to the constructor is left open: its owner closes it. Safe to
        call more than once; the store refuses operations afterwards.
        """
        if self._closed:
            return
        self._closed = True
        await self._batcher.drain()
        if self._tasks:
            await asyncio.wait(set(self._tasks))  # each ends by its deadline
        if self._owns_client:
            await self.client.aclose()

    # --- listing internals --------------------------------------------------------------

    async def _scan_nodes(self, deadline: float) -> list[str]:
        if not isinstance(self.client, RedisCluster):
            return [_STANDALONE]
        # A no-op once the client knows the cluster.
        await self._direct("list_sessions", self.client.initialize, deadline)
        return sorted(n.name for n in self.client.get_primaries())

    @staticmethod
    def _parse_cursor(cursor: str | None, nodes: list[str]) -> tuple[str | None, int, list[str]]:
        if cursor is None:
            return nodes[0], 0, []
        try:
            node, scan_text, encoded = cursor.split("|", 2)
            scan = int(scan_text)
            pending = [unquote(e, errors="strict") for e in encoded.split(",") if e]
        except (AttributeError, ValueError, UnicodeDecodeError):
            raise InvalidRequestError(
                f"invalid cursor {cursor!r}; pass the next_cursor of a previous page"
            ) from None
        if node == _DONE:
            return None, 0, pending
        if node in nodes:
            return node, scan, pending
        # That master left the cluster meanwhile: go on with the next one by name.
        later = [n for n in nodes if n > node]
        return (later[0] if later else None), 0, pending

    async def _scan(
        self, node: str, cursor: int, count: int, deadline: float
    ) -> tuple[int, list[Any]]:
        command = ("SCAN", cursor, "MATCH", self._scan_pattern, "COUNT", count)
        if not isinstance(self.client, RedisCluster):
            reply = (await self._call("list_sessions", (command,), deadline))[0]
            return int(reply[0]), list(reply[1])
        target = self.client.get_node(node_name=node)
        if target is None:
            return 0, []
        reply = await self._direct(
            "list_sessions", lambda: target.execute_command(*command), deadline
        )
        return int(reply[0]), list(reply[1])

    async def _session_ids(self, keys: list[Any], deadline: float) -> list[str]:
        ids: list[str] = []
        metadata_only: list[str] = []
        for key in keys:
            parsed = self._id_of(key)
            if parsed is None:
                continue
            if parsed[1] == "m":
                ids.append(parsed[0])
            else:
                metadata_only.append(parsed[0])
        if metadata_only:
            # A session with metadata but no messages has only its hash; one with both is
            # reported for its list, so skip hashes whose list exists.
            exists = await self._call(
                "list_sessions", [("EXISTS", self._keys(s)[0]) for s in metadata_only], deadline
            )
            ids += [s for s, n in zip(metadata_only, exists, strict=True) if not n]
        return ids
