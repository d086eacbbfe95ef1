"""An in-process state store: fast, bounded, and gone when the process exits."""

from __future__ import annotations

import bisect
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .._lifecycle import AsyncResource
from .._validation import check_session_id
from ..errors import InvalidMessageError
from ..types import Message
from ._common import (
    check_count,
    check_last_n,
    check_limit,
    check_ttl,
    copy_json_object,
    split_patch,
)
from .base import SessionPage
from .records import encode_message

__all__ = ["InMemoryStateStore"]


@dataclass(slots=True)
class _Session:
    messages: list[Message] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


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
        target = self._for_write(target_id)
        target.messages = messages
        target.metadata = metadata
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
