"""An in-process state store: fast, bounded, and gone when the process exits."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from .._lifecycle import AsyncResource
from .._validation import check_session_id
from ..errors import InvalidMessageError, InvalidRequestError, LeaseLostError
from ..types import Cost, Message, Usage
from ._common import (
    check_count,
    check_last_n,
    check_lease_ttl,
    check_limit,
    check_owner,
    check_token,
    check_ttl,
    check_turn_figures,
    check_turn_id,
    check_wait_timeout,
    copy_json_object,
    split_patch,
)
from .base import Ledger, SessionPage, TurnClaim
from .records import encode_message

__all__ = ["InMemoryStateStore"]


_NO_LEDGER = Ledger()


@dataclass(slots=True)
class _Session:
    messages: list[Message] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    # Turn id -> (index of its first message, how many): positions stay valid because
    # history only grows; save and fork, which rewrite it, clear them.
    turn_ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    ledger: Ledger = _NO_LEDGER


@dataclass(slots=True)
class _Lease:
    token: int
    owner: str
    expires_at: float
    watchers: list[Callable[[], None]] = field(default_factory=list)


def _own(message: Message) -> Message:
    """A copy the caller cannot reach into.

    Messages are frozen, so only their metadata mapping could be shared; it is deep-copied
    through JSON, which also rejects what no persistent store could hold.
    """
    if not isinstance(message, Message):
        raise InvalidMessageError(f"expected Message, got {type(message).__name__}")
    if not message.metadata:
        return message
    return replace(message, metadata=json.loads(encode_message(message))["metadata"])


class InMemoryStateStore(AsyncResource):
    """Keeps histories in a dict in this process.

    Args:
        ttl: seconds a session lives after its last write (sliding); ``None`` = forever.
        refresh_ttl_on_read: also extend the TTL when a session is read.
        max_sessions: keep at most this many sessions, evicting the least recently used.
        clock: monotonic time source in seconds (injectable for tests).

    Reads and writes copy, so callers cannot corrupt stored history. Every operation runs
    without awaiting inside, so each is atomic with respect to other tasks on the loop.
    Not shared between processes: use SQLite or Redis for that.

    Like every store, a session exists while it holds a message or a metadata key: saving
    an empty history to a session without metadata (or removing its last metadata key
    from a session without messages) deletes it.

    It is a :class:`~promptkit_async.statestore.TurnStore`, the reference for the others:

    * **Leases** live beside the sessions (taking one creates no session) and expire by
      the store's ``clock``. Fencing tokens come from one counter for the whole store, so
      a session's tokens keep growing even across ``delete``. A lease is forgotten when
      its turn ends or is released; a token without a lease is fenced.
    * **Turn ids** and the **ledger** live in the session: they expire and are evicted
      with it, ``delete`` drops them, ``save`` drops the turn ids and keeps the ledger,
      ``fork`` gives the target the source's ledger (the fork continues the same
      conversation) and no turn ids.
    * **Signalling**: ``wait_turn`` parks on a future that a release or an ended turn
      resolves at once (no latency beyond the event loop); an expiry is noticed when the
      lease's TTL passes. ``watch_lease`` callbacks run through ``loop.call_soon`` when a
      newer turn takes the lease (a steal, or a take after expiry).
    """

    def __init__(
        self,
        *,
        ttl: float | None = None,
        refresh_ttl_on_read: bool = False,
        max_sessions: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = check_ttl(ttl)
        if max_sessions is not None:
            check_count(max_sessions, "max_sessions (or None for no limit)")
        self.refresh_ttl_on_read = refresh_ttl_on_read
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._leases: dict[str, _Lease] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tokens = itertools.count(1)

    def __repr__(self) -> str:
        return f"InMemoryStateStore(sessions={len(self._sessions)}, ttl={self.ttl})"

    # --- internals --------------------------------------------------------------------

    def _get(self, session_id: str, *, touch: bool) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at is not None and session.expires_at <= self._clock():
            del self._sessions[session_id]
            return None
        self._sessions.move_to_end(session_id)
        if touch and self.ttl is not None:
            session.expires_at = self._clock() + self.ttl
        return session

    def _for_write(self, session_id: str) -> _Session:
        session = self._get(session_id, touch=True)
        if session is None:
            session = _Session(expires_at=None if self.ttl is None else self._clock() + self.ttl)
            self._sessions[session_id] = session
            self._evict()
        return session

    def _drop_if_empty(self, session_id: str, session: _Session) -> None:
        # The persistent stores cannot hold an empty session (Redis has no empty lists),
        # so no store keeps one: the contract suite checks they all agree.
        if not session.messages and not session.metadata:
            self._sessions.pop(session_id, None)

    def _evict(self) -> None:
        now = self._clock()
        # Oldest-touched first: drop expired ones, then the least recently used past the cap.
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            expired = oldest.expires_at is not None and oldest.expires_at <= now
            over_cap = self.max_sessions is not None and len(self._sessions) > self.max_sessions
            if not (expired or over_cap):
                break
            self._sessions.popitem(last=False)

    # --- the StateStore contract ----------------------------------------------------

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        """The session's messages, oldest first (the newest ``last_n`` if given)."""
        check_session_id(session_id)
        check_last_n(last_n)
        session = self._get(session_id, touch=self.refresh_ttl_on_read)
        if session is None:
            return []
        messages = session.messages
        if last_n is not None:
            messages = messages[-last_n:] if last_n else []
        return [_own(m) for m in messages]

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` at the end, all together."""
        check_session_id(session_id)
        owned = [_own(m) for m in messages]  # validates everything before changing anything
        if owned:
            self._for_write(session_id).messages.extend(owned)

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the whole history (metadata is kept)."""
        check_session_id(session_id)
        owned = [_own(m) for m in messages]
        session = self._for_write(session_id)
        session.messages = owned
        session.turn_ids = {}  # their positions would be stale
        self._drop_if_empty(session_id, session)

    async def delete(self, session_id: str) -> bool:
        """Forget the session; True if it existed."""
        check_session_id(session_id)
        existed = self._get(session_id, touch=False) is not None
        self._sessions.pop(session_id, None)
        return existed

    async def count(self, session_id: str) -> int:
        """Number of stored messages."""
        check_session_id(session_id)
        session = self._get(session_id, touch=False)
        return 0 if session is None else len(session.messages)

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        """Session ids in sorted order, ``limit`` at a time."""
        check_limit(limit)
        now = self._clock()
        ids = sorted(
            sid for sid, s in self._sessions.items() if s.expires_at is None or s.expires_at > now
        )
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        page = ids[start : start + limit]
        more = start + limit < len(ids)
        return SessionPage(tuple(page), page[-1] if more and page else None)

    async def fork(self, source_id: str, target_id: str) -> int:
        """Copy ``source_id`` over ``target_id``; returns the number of messages copied."""
        check_session_id(source_id)
        check_session_id(target_id)
        source = self._get(source_id, touch=False)
        if source is None:
            self._sessions.pop(target_id, None)
            return 0
        messages = list(source.messages)
        metadata = copy_json_object(source.metadata)
        ledger = source.ledger
        target = self._for_write(target_id)
        target.messages = messages
        target.metadata = metadata
        target.turn_ids = {}
        target.ledger = ledger
        return len(messages)

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        """A copy of the session's metadata."""
        check_session_id(session_id)
        session = self._get(session_id, touch=self.refresh_ttl_on_read)
        return {} if session is None else copy_json_object(session.metadata)

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch``; ``None`` values delete keys."""
        check_session_id(session_id)
        updates, removals = split_patch(patch)
        session = self._for_write(session_id)
        metadata = session.metadata
        metadata.update(updates)
        for key in removals:
            metadata.pop(key, None)
        self._drop_if_empty(session_id, session)
        return copy_json_object(metadata)

    async def aclose(self) -> None:
        """Nothing to release; present for the common store shape."""

    # --- the TurnStore contract -----------------------------------------------------

    def _live_lease(self, session_id: str) -> _Lease | None:
        lease = self._leases.get(session_id)
        return lease if lease is not None and lease.expires_at > self._clock() else None

    def _holds(self, session_id: str, token: int) -> _Lease | None:
        # The newest token of a session is the one of its lease entry, expired or not;
        # an entry goes when its turn ends, so a token without one is fenced.
        lease = self._leases.get(session_id)
        return lease if lease is not None and lease.token == token else None

    def _stored_turn(self, session_id: str, turn_id: str) -> tuple[Message, ...] | None:
        session = self._get(session_id, touch=self.refresh_ttl_on_read)
        if session is None or turn_id not in session.turn_ids:
            return None
        start, count = session.turn_ids[turn_id]
        return tuple(_own(m) for m in session.messages[start : start + count])

    def _free(self, session_id: str) -> None:
        """Forget the session's lease and wake every task waiting for it."""
        self._leases.pop(session_id, None)
        for waiter in self._waiters.pop(session_id, ()):
            if not waiter.done():
                waiter.set_result(None)

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
        """Take the session's lease (or find ``turn_id`` stored), with history and ledger.

        See :meth:`TurnStore.begin_turn`. Never waits; atomic (nothing here awaits).
        """
        check_session_id(session_id)
        check_owner(owner)
        ttl = check_lease_ttl(lease_ttl)
        check_last_n(last_n)
        if turn_id is not None:
            check_turn_id(turn_id)
            stored = self._stored_turn(session_id, turn_id)
            if stored is not None:
                return TurnClaim(None, [], self._ledger(session_id), stored_turn=stored)
        if self._live_lease(session_id) is not None and not steal:
            return TurnClaim(None, [], _NO_LEDGER)
        old = self._leases.get(session_id)
        if old is not None:
            self._tell_lost(old)
        lease = _Lease(next(self._tokens), owner, self._clock() + ttl)
        self._leases[session_id] = lease
        session = self._get(session_id, touch=self.refresh_ttl_on_read)
        messages: list[Message] = []
        if load and session is not None:
            kept = session.messages
            if last_n is not None:
                kept = kept[-last_n:] if last_n else []
            messages = [_own(m) for m in kept]
        return TurnClaim(lease.token, messages, _NO_LEDGER if session is None else session.ledger)

    def _tell_lost(self, lease: _Lease) -> None:
        if lease.watchers:
            loop = asyncio.get_running_loop()
            for on_lost in lease.watchers:
                loop.call_soon(on_lost)
            lease.watchers.clear()

    def _ledger(self, session_id: str) -> Ledger:
        session = self._get(session_id, touch=False)
        return _NO_LEDGER if session is None else session.ledger

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        """Extend the lease ``token`` holds; ``False`` if a newer turn took it."""
        check_session_id(session_id)
        check_token(token)
        ttl = check_lease_ttl(lease_ttl)
        lease = self._holds(session_id, token)
        if lease is None:
            return False
        lease.expires_at = self._clock() + ttl
        return True

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
        """Append the turn, count it in the ledger, record ``turn_id``, release the lease.

        See :meth:`TurnStore.end_turn`; all of it happens at once (nothing here awaits).
        """
        check_session_id(session_id)
        check_token(token)
        if turn_id is not None:
            check_turn_id(turn_id)
        usage, cost = check_turn_figures(usage, cost)
        owned = [_own(m) for m in messages]
        if not owned:
            raise InvalidRequestError(
                "end_turn needs the turn's messages; end a turn that stores nothing with "
                "release_turn"
            )
        # Fenced first: a stalled copy of a turn stored meanwhile learns it lost (its
        # reply is not the stored one).
        if self._holds(session_id, token) is None:
            raise LeaseLostError(
                f"session {session_id!r} was taken over by a newer turn (token {token} is "
                "stale); nothing of this turn was stored",
                session_id=session_id,
                token=token,
            )
        if turn_id is not None and self._stored_turn(session_id, turn_id) is not None:
            self._free(session_id)
            return  # stored already (a retried save): write nothing
        session = self._for_write(session_id)
        if turn_id is not None:
            session.turn_ids[turn_id] = (len(session.messages), len(owned))
        session.messages.extend(owned)
        session.ledger = session.ledger.add(usage, cost)
        self._free(session_id)

    async def release_turn(self, session_id: str, token: int) -> None:
        """Give the lease back without writing; a no-op if ``token`` no longer holds it."""
        check_session_id(session_id)
        check_token(token)
        if self._holds(session_id, token) is not None:
            self._free(session_id)

    async def wait_turn(self, session_id: str, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the lease is released or expires.

        Returns ``True`` at once when it already is; a release resolves the wait with no
        delay; an expiry is noticed when the lease's TTL has passed (by the store's clock,
        checked when that many seconds have passed on the loop).
        """
        check_session_id(session_id)
        timeout = check_wait_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            lease = self._live_lease(session_id)
            if lease is None:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(session_id, [])
            waiters.append(waiter)
            wake = loop.call_later(
                min(left, max(lease.expires_at - self._clock(), 0.0)), _resolve, waiter
            )
            try:
                await waiter
            finally:
                wake.cancel()
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters and self._waiters.get(session_id) is waiters:
                    del self._waiters[session_id]

    def watch_lease(
        self, session_id: str, token: int, on_lost: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_lost()`` soon after a newer turn takes the lease ``token`` held
        (at once if it already has); returns the function that stops watching."""
        check_session_id(session_id)
        check_token(token)
        lease = self._holds(session_id, token)
        if lease is None:
            handle = asyncio.get_running_loop().call_soon(on_lost)
            return handle.cancel
        lease.watchers.append(on_lost)
        return partial(_unwatch, lease.watchers, on_lost)  # (one object, not a closure)

    async def has_turn(self, session_id: str, turn_id: str) -> bool:
        """Whether the turn ``turn_id`` is stored in the session."""
        check_session_id(session_id)
        check_turn_id(turn_id)
        session = self._get(session_id, touch=False)
        return session is not None and turn_id in session.turn_ids

    async def get_ledger(self, session_id: str) -> Ledger:
        """The session's totals (zero for an unknown session)."""
        check_session_id(session_id)
        return self._ledger(session_id)


def _unwatch(watchers: list[Callable[[], None]], on_lost: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        watchers.remove(on_lost)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
