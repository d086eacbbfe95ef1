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

Concurrency: store objects are safe to share between tasks. A store does not serialise
whole turns by itself; :class:`~promptkit_async.pipeline.middleware.StateMiddleware` does,
through the session leases of :class:`TurnStore` (every store of the library is one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from typing_extensions import Self

from ..types import Cost, Message, Usage

__all__ = ["Ledger", "SessionPage", "StateStore", "TurnClaim", "TurnStore"]


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


@dataclass(frozen=True, slots=True)
class Ledger:
    """A session's running totals, updated atomically with every turn stored by
    :meth:`TurnStore.end_turn` (turns stored with a plain ``append`` are not counted).

    ``cost_usd`` sums :attr:`Cost.total_cost`; the token fields sum the turns'
    :class:`~promptkit_async.types.Usage`.
    """

    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, usage: Usage, cost: Cost) -> Ledger:
        """These totals plus one turn's usage and cost."""
        return Ledger(
            turns=self.turns + 1,
            prompt_tokens=self.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.completion_tokens + usage.completion_tokens,
            cached_tokens=self.cached_tokens + usage.cached_tokens,
            total_tokens=self.total_tokens + usage.total_tokens,
            cost_usd=self.cost_usd + cost.total_cost,
        )


@dataclass(frozen=True, slots=True)
class TurnClaim:
    """What :meth:`TurnStore.begin_turn` found, in one round trip.

    Exactly one of three outcomes:

    * the lease was taken: ``token`` is the fencing token, ``messages`` the history
      (when asked to load), ``ledger`` the session's totals;
    * the turn ``turn_id`` is already stored: ``stored_turn`` holds its messages (input
      first, reply last), ``token`` is ``None`` and no lease was taken;
    * another turn holds the lease: ``token`` and ``stored_turn`` are ``None``.
    """

    token: int | None
    messages: list[Message]
    ledger: Ledger
    stored_turn: tuple[Message, ...] | None = None


@runtime_checkable
class TurnStore(StateStore, Protocol):
    """A store that serialises turns on a session across every process sharing it.

    The session's **lease** is held by at most one turn at a time; taking it issues a
    **fencing token** that is strictly greater than every token issued before for the
    session. :meth:`end_turn` writes only if no newer token was issued since, so a
    worker that stalled past its lease and wakes up after another turn took the
    session can no longer write (:class:`~promptkit_async.errors.LeaseLostError`).
    A lease that is not renewed expires after its TTL; an expired lease whose token is
    still the newest may still end its turn (nobody else wrote since).

    Turn ids make saves idempotent: a turn stored under an id is never stored again,
    and :meth:`begin_turn` with that id returns the stored turn instead of a lease.
    A history rewritten with :meth:`save` or :meth:`fork` forgets its turn ids.

    ``StateMiddleware`` drives it: ``begin_turn`` (lease, history and ledger in one
    round trip), ``renew_turn`` while a long turn runs, then ``end_turn`` (fenced
    append, ledger, turn id and release in one round trip) or ``release_turn``.
    """

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
        """Try once to take the session's lease, and read what the turn needs.

        Never waits for the lease (see :meth:`wait_turn`). ``owner`` names the taker in
        diagnostics. With ``steal=True`` the lease is taken even from a live holder,
        whose lease is lost at once (its watchers are told; its ``end_turn`` is fenced).
        ``load``/``last_n`` choose the history returned, as :meth:`StateStore.load`.
        """
        ...

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        """Extend the lease to ``lease_ttl`` seconds from now; ``False`` if it was lost.

        Lost means taken by a newer turn, or ended or released (a renewal arriving after
        its turn's end must not take the lease back). A lease that expired but that
        nobody took may be renewed or reported lost, as the store can tell.
        """
        ...

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
        """Append the turn, add it to the ledger, record ``turn_id``, release the lease.

        All or nothing, and only if ``token`` is still the session's newest, else
        :class:`~promptkit_async.errors.LeaseLostError` and nothing is written. A
        ``turn_id`` already stored writes nothing (the retry of an ambiguous save).
        Awaited inside ``finish_sent_writes()`` like :meth:`StateStore.append`.
        """
        ...

    async def release_turn(self, session_id: str, token: int) -> None:
        """Give the lease back without writing (a failed or cancelled turn).

        A no-op when ``token`` no longer holds it. Wakes the turns waiting for it.
        """
        ...

    async def wait_turn(self, session_id: str, timeout: float) -> bool:
        """Wait until the session's lease may have become free, at most ``timeout`` s.

        ``True`` when woken by a release (or an expiry the store noticed), ``False``
        when the time ran out. Either way the caller tries :meth:`begin_turn` again.
        Each store names its signalling and bounds its latency in its docstring.
        """
        ...

    def watch_lease(
        self, session_id: str, token: int, on_lost: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_lost()`` (from the event loop) if the lease ``token`` is taken away.

        Returns the function that stops watching; call it when the turn ends. Used by
        the ``interrupt`` policy to stop a turn that another process took over.
        """
        ...

    async def has_turn(self, session_id: str, turn_id: str) -> bool:
        """Whether the turn ``turn_id`` is stored in the session."""
        ...

    async def get_ledger(self, session_id: str) -> Ledger:
        """The session's totals (all zero for an unknown session)."""
        ...
