"""The state store contract that every store (memory, SQLite, Redis) fulfils.

A store keeps, per session id, an ordered list of :class:`~promptkit_async.types.Message`
plus a small JSON metadata object (used e.g. for conversation summaries).

Guarantees every store gives (and ``tests/contract`` checks for each):

* ``append`` is atomic: all of its messages land together and adjacent, or none do, even
  when many tasks (or processes, for shared stores) append to one session at once.
* ``save`` replaces a session's history atomically; ``fork`` copies one atomically.
* Loaded messages are copies: changing them cannot change what is stored.
* Session ids are validated before any I/O (see :func:`check_session_id`); any other
  text, including ``:``, ``*``, ``{`` and non-ASCII, is stored without collisions.
  Other bad arguments (``last_n < 0``, ``limit < 1``, a message that is not a
  :class:`~promptkit_async.types.Message` or whose metadata is not JSON) raise an
  :class:`~promptkit_async.errors.InvalidRequestError` subclass, also before any I/O.
* A session exists while it holds at least one message or one metadata key; it is
  listed, counted by ``delete``'s return value and copied by ``fork`` only then.
* With a TTL, a session expires as a whole (history and metadata together), the TTL
  restarting at every write (and, if the store is configured so, every read).
* Failures are :class:`~promptkit_async.errors.StoreError` subclasses.
* Every operation that can wait (for a server, a lock, a disk) is bounded by the store's
  timeout counted from its call, queueing inside the store included, and raises
  :class:`~promptkit_async.errors.StoreTimeoutError` past it; its ``maybe_applied``
  says whether a write may have been applied. A store never cancels its caller's task,
  so a caller's ``asyncio.timeout`` / ``anyio.fail_after`` around a call behave as
  around any other await.

Concurrency: store objects are safe to share between tasks. They do not serialise whole
turns; :class:`~promptkit_async.pipeline.middleware.StateMiddleware` does that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from typing_extensions import Self

from ..types import Message

__all__ = ["SessionPage", "StateStore"]


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of :meth:`StateStore.list_sessions`.

    ``next_cursor`` is ``None`` on the last page; otherwise pass it back to get the next.
    A store may return fewer ids than asked (even none) on a page that is not the last.
    """

    session_ids: tuple[str, ...]
    next_cursor: str | None = None


@runtime_checkable
class StateStore(Protocol):
    """Async persistence of conversation histories, keyed by session id."""

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        """The session's messages, oldest first; only the newest ``last_n`` if given.

        An unknown session loads as ``[]``.
        """
        ...

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Add ``messages`` to the end of the session, atomically and adjacently.

        ``StateMiddleware`` calls it inside ``finish_sent_writes()``: there a write that
        has begun must complete even if the caller is cancelled, the cancellation being
        re-raised afterwards (the session's next turn must not load a history missing a
        turn that is being stored). The library's stores do this where their writes
        leave; a store of your own that suspends in ``append`` gets it by awaiting its
        write through ``promptkit_async.statestore.finish_shielded``. Outside that block
        a cancelled caller just stops waiting, as with any await.
        """
        ...

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Replace the session's whole history with ``messages`` (metadata is kept)."""
        ...

    async def delete(self, session_id: str) -> bool:
        """Remove the session's history and metadata; True if it existed."""
        ...

    async def count(self, session_id: str) -> int:
        """How many messages the session holds."""
        ...

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        """A page of at most ``limit`` session ids (no order promised); follow ``next_cursor``.

        Every session that exists for the whole listing is returned at least once;
        sessions created or deleted meanwhile may or may not be.
        """
        ...

    async def fork(self, source_id: str, target_id: str) -> int:
        """Replace ``target_id`` with a copy of ``source_id`` (history and metadata).

        Returns the number of messages copied (0 for an unknown source).
        """
        ...

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        """The session's metadata (``{}`` when none)."""
        ...

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` into the metadata (``None`` values delete keys).

        Returns the merged metadata. Atomic with respect to other merges.
        """
        ...

    async def aclose(self) -> None:
        """Release connections or threads the store owns."""
        ...

    async def __aenter__(self) -> Self:
        """``async with store:`` closes the store on exit."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store (:meth:`aclose`)."""
        ...
