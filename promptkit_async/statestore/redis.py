"""A state store in Redis or Redis Cluster: shared by processes, survives restarts.

Layout (``P`` is the prefix, ``E`` the session id percent-encoded, see below)::

    P:{E}:m   a list, one JSON record per message (schema-versioned, see records.py)
    P:{E}:h   a hash, one field per metadata key, each value JSON
    P:{E}:t   a hash, turn id -> "<index of its first message> <message count>"
    P:{E}:g   a hash, the ledger: turns, prompt, completion, cached, total, cost
    P:{E}:l   a hash, the session's lease: tok (fencing token), own (owner), w (a turn
              waits: publish the release); PEXPIRE = the lease TTL
    P:{E}:f   a string, the newest fencing token issued ("<token>-" once its turn ended
              or gave the lease back: still the newest, but no longer renewable)

``{E}`` is a Redis Cluster hash tag, so all keys of a session live in one slot and every
write touches one node atomically. ``E`` is the UTF-8 id percent-encoded with only
``A-Z a-z 0-9 - . _ ~`` left as they are: it is reversible (``list_sessions`` recovers the
ids from the keys), it never contains ``{``, ``}``, ``:`` or a glob character, so ids
cannot collide, cannot leave the prefix or the hash tag, and need no escaping in SCAN
patterns. Writes run one Lua script (atomic on the server, one command) that also sets
the TTL of the session's keys, so a session expires as a whole. ``list_sessions`` finds
sessions by their ``m`` and ``h`` keys only: a session that has only a lease or a
fencing key (a turn that never ended) does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import secrets
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
    LeaseLostError,
    StoreDataError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from ..types import Cost, Message, Usage
from ._batch import Batcher, Command, Expired, batch_deadline
from ._common import (
    check_count,
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
from .base import Ledger, SessionPage, TurnClaim
from .records import decode_messages, encode_messages

__all__ = ["DEFAULT_TIMEOUT", "RedisStateStore"]

#: Seconds an operation may take when neither the store nor its client sets a timeout.
DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")

#: A client the store can use: a standalone client or a cluster client.
RedisClient = Union[aioredis.Redis, RedisCluster]  # noqa: UP007 (runtime alias on 3.10)

# One script for every write. KEYS = the session's message list, metadata hash, turn-id
# hash, ledger hash, lease hash and fencing key (all in one hash slot); ARGV[1] =
# operation, ARGV[2] = the session's TTL in ms (0 = none). Lists of values are pushed in
# chunks of 1000 because Lua's unpack() has a stack limit near 8000.
#
# Turns: 'begin' takes the lease (or reports it busy, or finds the turn id stored) and
# reads the history and the ledger; 'end' checks the fencing token, appends, records the
# turn id, adds to the ledger and releases; 'release' and 'renew' act on the lease only.
# Fencing tokens are max(newest + 1, server time in microseconds): they keep growing
# even after the fencing key is gone (delete, expiry), as long as the server's clock
# does not jump back by more than the gap. Releases PUBLISH (to the store's channel)
# only when a busy 'begin' flagged the lease ('w'), and steals always do.
_SCRIPT = """
local op, ttl = ARGV[1], tonumber(ARGV[2])
local m, h, t, g, l, f = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local function push(cmd, key, first, last)
  for i = first, last, 1000 do
    redis.call(cmd, key, unpack(ARGV, i, math.min(i + 999, last)))
  end
end
local function touch()
  if ttl > 0 then
    redis.call('PEXPIRE', m, ttl)
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', t, ttl)
    redis.call('PEXPIRE', g, ttl)
  else
    redis.call('PERSIST', m)
    redis.call('PERSIST', h)
    redis.call('PERSIST', t)
    redis.call('PERSIST', g)
  end
end
local function release(tok, chan)
  -- The turn is over: "<token>-" stays the newest token, but renews no more.
  if redis.call('GET', f) == tok then
    redis.call('SET', f, tok .. '-', 'KEEPTTL')
  end
  if redis.call('HGET', l, 'tok') == tok then
    local waiting = redis.call('HGET', l, 'w')
    redis.call('DEL', l)
    if waiting then
      redis.call('PUBLISH', chan, l .. ' free ' .. tok)
    end
  end
end
local function ledger()
  return redis.call('HMGET', g, 'turns', 'prompt', 'completion', 'cached', 'total', 'cost')
end
if op == 'append' then
  push('RPUSH', m, 3, #ARGV)
  touch()
  return #ARGV - 2
elseif op == 'begin' then
  local lease, tid = tonumber(ARGV[3]), ARGV[7]
  if tid ~= '' then
    local pos = redis.call('HGET', t, tid)
    if pos then
      local s, n = string.match(pos, '^(%d+) (%d+)$')
      s, n = tonumber(s), tonumber(n)
      return {'stored', redis.call('LRANGE', m, s, s + n - 1), ledger()}
    end
  end
  local held = redis.call('HGET', l, 'tok')
  if held and ARGV[5] ~= '1' then
    redis.call('HSET', l, 'w', '1')
    return {'busy', {}, ledger()}
  end
  local now = redis.call('TIME')
  local newest = tonumber(string.match(redis.call('GET', f) or '0', '^%d+'))
  local tok = string.format('%.0f',
    math.max(newest + 1, tonumber(now[1]) * 1000000 + tonumber(now[2])))
  local waiting = held and redis.call('HGET', l, 'w')
  redis.call('DEL', l)
  redis.call('HSET', l, 'tok', tok, 'own', ARGV[4], 'n', ARGV[9])
  if waiting then
    redis.call('HSET', l, 'w', '1')
  end
  redis.call('PEXPIRE', l, lease)
  if ttl > 0 then
    redis.call('SET', f, tok, 'PX', ttl + lease)
    touch()
  else
    redis.call('SET', f, tok)
  end
  if held then
    redis.call('PUBLISH', ARGV[8], l .. ' lost ' .. held)
  end
  local history = {}
  if ARGV[6] == 'all' then
    history = redis.call('LRANGE', m, 0, -1)
  elseif ARGV[6] ~= '' then
    history = redis.call('LRANGE', m, -tonumber(ARGV[6]), -1)
  end
  return {tok, history, ledger()}
elseif op == 'end' then
  local tok, tid, chan = ARGV[3], ARGV[4], ARGV[5]
  -- The fence first: a stalled copy of a turn stored meanwhile is refused, not told
  -- its (different) reply is the stored one.
  if redis.call('GET', f) ~= tok then
    release(tok, chan)
    return 'lost'
  end
  if tid ~= '' and redis.call('HEXISTS', t, tid) == 1 then
    release(tok, chan)
    return 'stored'
  end
  push('RPUSH', m, 11, #ARGV)
  if tid ~= '' then
    local n = #ARGV - 10
    redis.call('HSET', t, tid, string.format('%d %d', redis.call('LLEN', m) - n, n))
  end
  redis.call('HINCRBY', g, 'turns', 1)
  redis.call('HINCRBY', g, 'prompt', ARGV[6])
  redis.call('HINCRBY', g, 'completion', ARGV[7])
  redis.call('HINCRBY', g, 'cached', ARGV[8])
  redis.call('HINCRBY', g, 'total', ARGV[9])
  redis.call('HINCRBYFLOAT', g, 'cost', ARGV[10])
  touch()
  if ttl > 0 then
    redis.call('PEXPIRE', f, ttl)
  end
  release(tok, chan)
  return 'ok'
elseif op == 'release' then
  release(ARGV[3], ARGV[4])
  return 'ok'
elseif op == 'abandon' then
  -- A begin whose reply never came: release its lease if it took one.
  local tok = redis.call('HGET', l, 'tok')
  if tok and redis.call('HGET', l, 'n') == ARGV[3] then
    release(tok, ARGV[4])
  end
  return 'ok'
elseif op == 'renew' then
  local tok, lease = ARGV[3], tonumber(ARGV[4])
  if redis.call('GET', f) ~= tok then
    return 0
  end
  if redis.call('HGET', l, 'tok') ~= tok then
    -- Expired, but nobody took it since: the token is still the newest.
    redis.call('DEL', l)
    redis.call('HSET', l, 'tok', tok, 'own', ARGV[5])
  end
  redis.call('PEXPIRE', l, lease)
  if ttl > 0 then
    redis.call('PEXPIRE', f, ttl + lease)
  end
  return 1
elseif op == 'save' then
  redis.call('DEL', m, t)
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
  redis.call('DEL', m, h, t, g)
  local last_record = 5 + tonumber(ARGV[3]) - 1
  local last_field = last_record + tonumber(ARGV[4])
  push('RPUSH', m, 5, last_record)
  push('HSET', h, last_record + 1, last_field)
  push('HSET', g, last_field + 1, #ARGV)
  touch()
  return last_record - 4
elseif op == 'delete' then
  local existed = redis.call('DEL', m, h, t, g)
  redis.call('DEL', f)
  return existed
end
return redis.error_reply('ERR unknown promptkit_async store operation ' .. tostring(op))
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()

# Characters an encoded id may contain (quote() with safe="" leaves only these).
_ENCODED_ID = re.compile(r"[A-Za-z0-9_.~%-]+")
_WRITES = frozenset(
    (
        "append",
        "save",
        "fork",
        "merge_metadata",
        "delete",
        "begin_turn",
        "end_turn",
        "release_turn",
        "renew_turn",
    )
)
# The session's keys, in the order the script takes them: messages, metadata, turn ids,
# ledger, lease, fencing token.
_SUFFIXES = ("}:m", "}:h", "}:t", "}:g", "}:l", "}:f")
_Keys = tuple[str, ...]
_SCRIPTS = frozenset(("EVALSHA", "EVAL"))
_SCAN_CALLS_PER_PAGE = 16
_KEY_CACHE_SIZE = 4096
# Node names in list_sessions cursors: a standalone server, and "scan finished".
_STANDALONE = "*"
_DONE = "-"
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


# The ledger hash's fields, in Ledger order.
_LEDGER_FIELDS = ("turns", "prompt", "completion", "cached", "total", "cost")


def _lease_ms(lease_ttl: object) -> int:
    return max(1, math.ceil(check_lease_ttl(lease_ttl) * 1000))


def _turn_id_arg(turn_id: object) -> str:
    """The turn id as sent to the script (``""`` for none)."""
    return "" if turn_id is None else check_turn_id(turn_id)


def _ledger(reply: Any, session_id: str) -> Ledger:
    """A Ledger from ``HMGET`` of the ledger fields (missing fields count as zero)."""
    try:
        turns, prompt, completion, cached, total, cost = (
            0 if value is None else value for value in reply
        )
        return Ledger(
            turns=int(turns),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            cached_tokens=int(cached),
            total_tokens=int(total),
            cost_usd=float(cost),
        )
    except (TypeError, ValueError) as exc:
        raise StoreDataError(
            f"corrupt ledger in session {session_id!r}: {exc}; delete or repair it"
        ) from exc


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
        signal_poll_interval: seconds between the checks that bound a missed wake-up
            of :meth:`wait_turn` (an expired lease, a reconnecting subscriber).

    Round trips: ``load``, ``append``, ``save``, ``count``, ``delete``,
    ``get_metadata`` and ``merge_metadata`` are one round trip each (``append`` and the
    other writes are one atomic Lua script), so a pipeline turn costs two. ``fork``
    costs two (read the source, write the target). Through the session lease
    (:class:`~promptkit_async.statestore.TurnStore`, what ``StateMiddleware`` uses) a
    turn costs two as well: ``begin_turn`` and ``end_turn`` are one script each;
    ``renew_turn``, ``release_turn``, ``has_turn`` and ``get_ledger`` one round trip
    each. Operations that concurrent tasks
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

    Session leases (see :class:`~promptkit_async.statestore.TurnStore`): the lease is a
    hash key with a ``PEXPIRE`` of the lease TTL, so Redis's clock judges its expiry.
    Fencing tokens are ``max(newest + 1, the server's TIME in microseconds)``: they keep
    growing even once the fencing key is gone (``delete`` removes it; it expires with
    the session), so a stalled holder can never match a later token. ``end_turn``
    writes only while the fencing key holds its token (a missing key, after ``delete``
    or expiry, fences it too). ``delete`` drops the turn ids, the ledger and the
    fencing key; ``save`` drops the turn ids and keeps the ledger; ``fork`` copies the
    ledger (the fork continues the conversation) but no turn ids. Wake-ups use Redis
    pub/sub (one subscriber connection per store, opened by the first ``wait_turn`` or
    ``watch_lease``; ``StateMiddleware`` watches every turn, so a store used by a
    pipeline subscribes at its first turn; plain ``PUBLISH``, which a cluster delivers
    to subscribers on every node); see :meth:`wait_turn` for the latency bound. The
    lease scripts need Redis 6.0 or later (``SET ... KEEPTTL``).
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
        signal_poll_interval: float = 0.5,
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
        self._key_cache: dict[str, _Keys] = {}
        self._scan_pattern = _glob_escape(prefix) + ":{*}:[mh]"
        self._batcher = Batcher(
            self._execute_cluster if self._cluster else self._execute_standalone, max_in_flight
        )
        # Calls outside the batcher (cluster SCAN, topology), each in a task of its own.
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Seconds between the checks that bound a missed wake-up (see wait_turn).
        self.signal_poll_interval = check_seconds(signal_poll_interval, "signal_poll_interval")
        self._channel = prefix + ":signals"
        self._subscriber: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # lease key -> {handle: (token, fence key, on_lost)}
        self._watchers: dict[str, dict[object, tuple[str, str, Callable[[], None]]]] = {}
        # lease key -> the token taken from it by the newest steal this store heard of
        self._stolen: dict[str, str] = {}
        # Releases of leases that failed begin_turns may hold (see _abandon).
        self._cleanups: set[asyncio.Task[None]] = set()

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
        signal_poll_interval: float = 0.5,
        **client_options: Any,
    ) -> RedisStateStore:
        """Connect to Redis and check that it answers; the store owns the connection.

        Args:
            address: ``"host:port"`` (``"localhost:6379"``), or a ``redis://``,
                ``rediss://`` (TLS) or ``unix://`` URL. A URL's own password and db
                take precedence over the arguments.
            password: the server password (``requirepass`` / ACL); never logged.
            db: the database number (must be 0 for a cluster).
            prefix / ttl / refresh_ttl_on_read / max_in_flight / signal_poll_interval:
                see the class.
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
        check_seconds(signal_poll_interval, "signal_poll_interval")
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
            signal_poll_interval=signal_poll_interval,
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

    def _keys(self, session_id: str) -> _Keys:
        """The session's keys (list, hash, turn ids, ledger, lease, fence); validates the
        id first (before any I/O)."""
        cache = self._key_cache
        keys = cache.get(session_id) if type(session_id) is str else None
        if keys is None:
            check_session_id(session_id)  # only valid ids ever enter the cache
            base = self._head + quote(session_id, safe="")
            keys = tuple(base + suffix for suffix in _SUFFIXES)
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
        self, op: str, keys: _Keys, args: Sequence[Any], deadline: float | None = None
    ) -> Any:
        deadline = self._deadline() if deadline is None else deadline
        try:
            results = await self._call(
                op, (("EVALSHA", _SCRIPT_SHA, 6, *keys, *args),), deadline, write=True
            )
        except StoreError as exc:
            if not isinstance(exc.__cause__, rexc.NoScriptError):
                raise
            # A fresh or restarted server: EVAL runs the script and caches it.
            results = await self._call(
                op, (("EVAL", _SCRIPT, 6, *keys, *args),), deadline, write=True
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

    def _touch_commands(self, keys: _Keys) -> tuple[Command, ...]:
        if not self.refresh_ttl_on_read or self.ttl is None:
            return ()
        return tuple(("PEXPIRE", key, self._ttl_ms) for key in keys[:4])

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
        records, fields, totals = await self._call(
            "fork",
            (("LRANGE", source[0], 0, -1), ("HGETALL", source[1]), ("HGETALL", source[3])),
            deadline,
        )
        flat = _pairs(fields)
        if not records and not flat:
            await self._script("fork", target, ("delete", 0), deadline)
            return 0
        args = ("replace", self._ttl_ms, len(records), len(flat), *records, *flat)
        args += tuple(_pairs(totals))
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

    # --- the TurnStore contract: session leases, turn ids, the ledger --------------------

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
        """Try once to take the session's lease; one round trip (one script).

        The script looks the turn id up (returning the stored turn's messages), takes
        the lease (or flags it so that its release is published to waiters), issues the
        fencing token, and reads the history and the ledger. A ``begin_turn`` that timed
        out after it was sent (``maybe_applied``) may hold a lease nobody uses: it
        expires after ``lease_ttl``.
        """
        keys = self._keys(session_id)
        lease_ms = _lease_ms(lease_ttl)
        check_last_n(last_n)
        tid = _turn_id_arg(turn_id)
        check_owner(owner)
        # The history the script returns: none, all, or the newest last_n.
        mode = "" if not load or last_n == 0 else "all" if last_n is None else str(last_n)
        args = ("begin", self._ttl_ms, lease_ms, owner, "1" if steal else "0", mode, tid)
        nonce = secrets.token_hex(8)  # names this call's lease, for _abandon
        try:
            reply = await self._script("begin_turn", keys, (*args, self._channel, nonce))
        except StoreError:
            # Sent, maybe applied, reply lost: a lease nobody will use. Release it in
            # the background rather than let the session wait out lease_ttl.
            self._abandon(keys, nonce, lease_ms / 1000)
            raise
        head = _text(reply[0])
        ledger = _ledger(reply[2], session_id)
        if head == "busy":
            return TurnClaim(None, [], ledger)
        messages = decode_messages(reply[1], session_id=session_id)
        if head == "stored":
            return TurnClaim(None, [], ledger, stored_turn=tuple(messages))
        return TurnClaim(int(head), messages, ledger)

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        """Extend the lease to ``lease_ttl`` s from now; ``False`` if it was lost. One
        round trip. A lease that expired but that nobody took since is taken again."""
        keys = self._keys(session_id)
        check_token(token)
        lease_ms = _lease_ms(lease_ttl)
        args = ("renew", self._ttl_ms, str(token), lease_ms, "(renewed after expiry)")
        return bool(await self._script("renew_turn", keys, args))

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
        """Store the turn and release the lease in one round trip (one atomic script).

        The script checks that ``token`` is still the newest, appends, records the
        turn id with the position of its messages, adds to the ledger, releases the
        lease and, if a turn waits for it, publishes the release. A write: inside
        ``finish_sent_writes()`` a sent ``end_turn`` completes before a cancellation
        is re-raised, and its timeout says ``maybe_applied``.

        Raises:
            LeaseLostError: a newer token was issued, or the session was deleted or
                expired since ``begin_turn``; nothing was written.
        """
        keys = self._keys(session_id)
        check_token(token)
        tid = _turn_id_arg(turn_id)
        records = encode_messages(messages)
        used, priced = check_turn_figures(usage, cost)
        spent = priced.total_cost
        if not math.isfinite(spent):
            raise InvalidRequestError(f"the turn's cost must be finite, not {spent!r}")
        args = (
            "end",
            self._ttl_ms,
            str(token),
            tid,
            self._channel,
            used.prompt_tokens,
            used.completion_tokens,
            used.cached_tokens,
            used.total_tokens,
            repr(float(spent)),
            *records,
        )
        reply = _text(await self._script("end_turn", keys, args))
        if reply == "lost":
            raise LeaseLostError(
                f"session {session_id!r}: the turn's lease (token {token}) passed to another "
                "turn, or the session was deleted or expired, so nothing of this turn was "
                "written; load the session again and retry the turn if it still applies",
                session_id=session_id,
                token=token,
            )

    async def release_turn(self, session_id: str, token: int) -> None:
        """Give the lease back without writing; one round trip. A no-op when ``token``
        no longer holds it; publishes the release when a turn waits for it."""
        keys = self._keys(session_id)
        check_token(token)
        await self._script(
            "release_turn", keys, ("release", self._ttl_ms, str(token), self._channel)
        )

    async def has_turn(self, session_id: str, turn_id: str) -> bool:
        """Whether the turn ``turn_id`` is stored in the session (``HEXISTS``)."""
        keys = self._keys(session_id)
        tid = check_turn_id(turn_id)
        return bool((await self._call("has_turn", (("HEXISTS", keys[2], tid),)))[0])

    async def get_ledger(self, session_id: str) -> Ledger:
        """The session's totals (all zero for an unknown session); one ``HMGET``."""
        keys = self._keys(session_id)
        reply = await self._call("get_ledger", (("HMGET", keys[3], *_LEDGER_FIELDS),))
        return _ledger(reply[0], session_id)

    async def wait_turn(self, session_id: str, timeout: float) -> bool:
        """Wait until the session's lease may have become free, at most ``timeout`` s.

        Signalling: Redis pub/sub on the store's channel (``<prefix>:signals``), one
        subscriber connection per store object, opened by the first ``wait_turn`` or
        :meth:`watch_lease` and closed by :meth:`aclose`. The busy ``begin_turn`` that
        preceded this wait flagged the lease, so its release is published; this wait
        registers, subscribes, then checks the lease once more, so a release in between
        is not missed. Latency: a release wakes the waiter within one message delivery
        (about a millisecond on a LAN); an expired lease (its holder died), or a message
        missed while the subscriber reconnects, is noticed by a check every
        ``signal_poll_interval`` seconds (0.5 s by default). Cancelling the wait just
        stops it.
        """
        keys = self._keys(session_id)
        limit = check_wait_timeout(timeout)
        self._check_open()
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        woken: asyncio.Future[None] = loop.create_future()
        lease = keys[4]
        self._waiters.setdefault(lease, set()).add(woken)
        try:
            ready = self._listen()
            if not ready.done():
                await asyncio.wait({woken, ready}, timeout=min(limit, self.signal_poll_interval))
            while not woken.done():
                if loop.time() >= end or not await self._lease_held(lease, end):
                    return loop.time() < end
                left = end - loop.time()
                await asyncio.wait({woken}, timeout=min(left, self.signal_poll_interval))
            return True
        finally:
            waiters = self._waiters.get(lease)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[lease]
            if not woken.done():
                woken.cancel()

    def watch_lease(
        self, session_id: str, token: int, on_lost: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_lost()`` (from the event loop) if the lease ``token`` is taken away.

        A steal publishes on the store's channel (see :meth:`wait_turn`), so a watcher
        in any process learns of it within one message delivery; a steal published
        before the watch began is remembered by the subscriber, and after the
        subscriber (re)connects every watched lease is checked once (one round trip),
        so no steal is missed. A lease that merely expired is not reported (its holder
        is fenced when it tries to write). Returns the function that stops watching.
        """
        keys = self._keys(session_id)
        check_token(token)
        if not callable(on_lost):
            raise InvalidRequestError("on_lost must be a callable taking no arguments")
        self._check_open()
        lease = keys[4]
        held = str(token)
        handle = object()
        loop = asyncio.get_running_loop()
        if self._stolen.get(lease) == held:
            loop.call_soon(on_lost)
            return lambda: None
        watchers = self._watchers.setdefault(lease, {})
        watchers[handle] = (held, keys[5], on_lost)
        self._listen()

        def stop() -> None:
            current = self._watchers.get(lease)
            if current is not None:
                current.pop(handle, None)
                if not current:
                    del self._watchers[lease]

        return stop

    def _abandon(self, keys: _Keys, nonce: str, within: float) -> None:
        """Release the lease a failed ``begin_turn`` may have taken, retrying while the
        server is away, for at most ``within`` seconds (then the lease has expired)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + within

        async def abandon() -> None:
            delay = 0.05
            while not self._closed and loop.time() < end:
                try:
                    await self._script(
                        "begin_turn", keys, ("abandon", self._ttl_ms, nonce, self._channel)
                    )
                    return
                except StoreError:
                    await asyncio.sleep(min(delay, max(end - loop.time(), 0)))
                    delay = min(delay * 2, 1.0)

        task = loop.create_task(abandon())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        task.add_done_callback(_forget)

    # --- signalling internals -----------------------------------------------------------

    async def _lease_held(self, lease: str, end: float) -> bool:
        """Whether the lease key exists; by ``end`` (or the store's timeout)."""
        loop = asyncio.get_running_loop()
        try:
            reply = await self._call(
                "wait_turn", (("EXISTS", lease),), min(end, loop.time() + self.timeout)
            )
        except StoreTimeoutError:
            if loop.time() >= end:
                return True  # the caller's time ran out first
            raise
        return bool(reply[0])

    def _listen(self) -> asyncio.Future[None]:
        """Start the subscriber if needed; the future is done while it is subscribed."""
        loop = asyncio.get_running_loop()
        if self._ready is None:
            self._ready = loop.create_future()
        if self._subscriber is None:
            self._subscriber = loop.create_task(self._subscribe_loop())
        return self._ready

    async def _subscribe_loop(self) -> None:
        # Ends when cancelled by aclose, or at the latest one read (1 s) after the store
        # closed: asyncio.wait_for (3.11) may swallow a cancellation that races with
        # its inner call finishing, so the loop also checks the flag.
        delay = 0.05
        first = True
        while not self._closed:
            pubsub = self.client.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self._channel), self.timeout)
                self._subscribed(first)
                first = False
                delay = 0.05
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except Exception:
                pass  # any failure: reconnect below (the poll bounds the gap)
            finally:
                if self._ready is not None and self._ready.done():
                    self._ready = asyncio.get_running_loop().create_future()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)  # back off while the server is away
            delay = min(delay * 2, 1.0)

    def _subscribed(self, first: bool) -> None:
        """Subscribed: wake who waits for it; after a reconnect, recover what was missed."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if not first:
            for waiters in self._waiters.values():
                for woken in waiters:
                    if not woken.done():
                        woken.set_result(None)  # they try begin_turn again
        # Steals published before this subscription (or during a reconnect) were not
        # heard: check every watched lease once.
        if self._watchers:
            task = asyncio.get_running_loop().create_task(self._check_watchers())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(_forget)

    async def _check_watchers(self) -> None:
        """One round trip: each watched lease's newest token; report those taken."""
        watched = [(lease, h, w) for lease, ws in self._watchers.items() for h, w in ws.items()]
        if not watched:
            return
        fences = [fence for _, _, (_, fence, _) in watched]
        reply = await self._call("watch_lease", [("GET", fence) for fence in fences])
        for (lease, handle, (held, _, on_lost)), newest in zip(watched, reply, strict=True):
            if newest is None or _text(newest).rstrip("-") != held:
                self._lost(lease, handle, on_lost)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            lease, kind, token = _text(data).rsplit(" ", 2)
        except ValueError:
            return  # not ours
        for woken in self._waiters.get(lease, ()):
            if not woken.done():
                woken.set_result(None)
        if kind != "lost":
            return
        if len(self._stolen) >= _KEY_CACHE_SIZE:
            del self._stolen[next(iter(self._stolen))]
        self._stolen[lease] = token
        for handle, (held, _, on_lost) in list(self._watchers.get(lease, {}).items()):
            if held == token:
                self._lost(lease, handle, on_lost)

    def _lost(self, lease: str, handle: object, on_lost: Callable[[], None]) -> None:
        watchers = self._watchers.get(lease)
        if watchers is None or watchers.pop(handle, None) is None:
            return  # already reported or stopped
        if not watchers:
            del self._watchers[lease]
        asyncio.get_running_loop().call_soon(on_lost)

    async def aclose(self) -> None:
        """Wait for operations in flight, then close the client if this store created it.

        A client passed to the constructor is left open: its owner closes it. Safe to
        call more than once; the store refuses operations afterwards.
        """
        if self._closed:
            return
        self._closed = True
        for waiters in self._waiters.values():
            for woken in waiters:
                if not woken.done():
                    woken.set_result(None)  # they try again and find the store closed
        for cleanup in list(self._cleanups):
            cleanup.cancel()  # the leases expire by their TTL
        if self._cleanups:
            await asyncio.wait(set(self._cleanups))
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.cancel()
            # Bounded: the loop also stops on its own within a read after the flag.
            await asyncio.wait({subscriber}, timeout=self.timeout + 1.0)
            if not subscriber.done():
                subscriber.cancel()
                await asyncio.wait({subscriber}, timeout=self.timeout)
            if subscriber.done() and not subscriber.cancelled():
                subscriber.exception()
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
