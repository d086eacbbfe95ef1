"""StateMiddleware: conversation memory, one turn at a time per session, across processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import sys
from asyncio import current_task
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ... import events
from ..._concurrency import finish_sent_writes, finish_shielded, settle
from ..._context import BusyPolicy, ExecutionContext, Next
from ..._structured import with_parsed
from ...errors import (
    AmbiguousTurnError,
    BudgetExceededError,
    ConfigurationError,
    InvalidRequestError,
    LeaseLostError,
    PromptKitError,
    SessionBusyError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    TurnInterruptedError,
)
from ...statestore.base import Ledger, StateStore, TurnClaim, TurnStore
from ...types import Message, ProviderResponse, StreamChunk

__all__ = ["BusyPolicy", "SessionBudget", "StateMiddleware"]

_log = logging.getLogger("promptkit_async.pipeline")

_POLICIES = ("queue", "reject", "interrupt")


@dataclass(frozen=True, slots=True)
class SessionBudget:
    """A per-session spending limit, checked against the session's ledger before a turn.

    A turn is refused (:class:`~promptkit_async.errors.BudgetExceededError`, nothing sent
    or stored) once the session's stored totals have reached a limit; the turn that
    crosses it still completes, so a session may end slightly above its budget.

    Args:
        max_cost_usd: the most the session may cost, in US dollars (``None``: no limit).
        max_total_tokens: the most tokens (prompt plus completion) it may use.
    """

    max_cost_usd: float | None = None
    max_total_tokens: int | None = None

    def __post_init__(self) -> None:
        cost, tokens = self.max_cost_usd, self.max_total_tokens
        if cost is not None and (
            isinstance(cost, bool)
            or not isinstance(cost, (int, float))
            or not math.isfinite(cost)
            or cost < 0
        ):
            raise ConfigurationError(
                f"max_cost_usd must be a finite number of dollars >= 0, or None; not {cost!r}"
            )
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
        ):
            raise ConfigurationError(
                f"max_total_tokens must be an int >= 0, or None; not {tokens!r}"
            )


class _Turn:
    """One turn's lease bookkeeping (the in-process queue holds these)."""

    __slots__ = (
        "arrived",
        "cancelled",
        "cancelling",
        "done",
        "expires",
        "interrupted",
        "lost",
        "renewal",
        "token",
        "waiting",
    )

    def __init__(self) -> None:
        self.token: int | None = None
        self.lost = False  # the lease passed to another turn
        self.interrupted = False  # ... to a turn of this process, with on_busy="interrupt"
        self.done = False
        self.expires = 0.0  # when the lease expires by the loop's clock (from its sending)
        self.arrived: float | None = None  # set only when the turn had to wait
        self.renewal: asyncio.Task[None] | None = None
        # The task running the rest of the pipeline while the turn waits on it (not while
        # a chunk is with the reader), and the one we cancelled when the lease went.
        self.waiting: asyncio.Task[Any] | None = None
        self.cancelled: asyncio.Task[Any] | None = None
        self.cancelling = 0

    def lose(self) -> None:
        """The lease passed to another turn: stop this one now if it is waiting on the
        model (or a tool...), by cancelling that wait, as ``asyncio.timeout`` would."""
        self.lost = True
        task = self.waiting
        # Task.uncancel (3.11+) tells our cancellation apart from a caller's, as
        # asyncio.timeout does; without it a lost lease is noticed at the next chunk.
        if sys.version_info >= (3, 11) and task is not None and self.cancelled is None:
            self.cancelled, self.cancelling = task, task.cancelling()
            task.cancel("the session's lease passed to another turn")

    def ours(self) -> bool:
        """For a CancelledError from the wait: whether it is only the one :meth:`lose`
        made (then the turn ends as interrupted); a caller's cancellation stays one."""
        task, self.cancelled = self.cancelled, None
        if sys.version_info >= (3, 11) and task is not None:
            return task.uncancel() <= self.cancelling
        return False


def _give_up(handed: asyncio.Future[bool]) -> None:
    if not handed.done():
        handed.set_result(False)


class StateMiddleware:
    """Loads a session's history before the model runs and stores the turn after, one
    turn at a time per session, in this process and in every process sharing the store.

    Put it first in the pipeline. For each turn it:

    1. waits for earlier turns of this pipeline on the same session (arrival order, in
       memory: no store traffic while waiting);
    2. takes the session's **lease** in the store and reads the history (the newest
       ``max_history_messages`` if set) and the session's ledger, in one call
       (:meth:`TurnStore.begin_turn`, one round trip on Redis and PostgreSQL); the
       history goes in front of the new message in ``ctx.messages``;
    3. runs the rest of the pipeline, renewing the lease while a long turn runs;
    4. stores ``ctx.new_messages`` (the input, tool messages and the reply) with the
       turn's usage and cost and gives the lease back, in one atomic, fenced call
       (:meth:`TurnStore.end_turn`). History is never rewritten.

    **Across processes.** The lease serialises turns on one session across every
    process and host that shares the store: the k-th turn sees every earlier turn.
    A worker that dies or stalls loses its lease after ``lease_ttl`` seconds without
    renewal; its fencing token then no longer matches, so if it wakes up it cannot
    write (:class:`~promptkit_async.errors.LeaseLostError`). The lease is renewed every
    ``lease_ttl / 3`` to ``lease_ttl / 2`` seconds of a running turn, by one timer per
    middleware that checks the running turns every ``lease_ttl / 6`` seconds: a turn
    shorter than that costs no renewal, no timer and no task.

    **A turn that arrives while another runs** (``on_busy``, per pipeline; override it
    per call with ``execute(..., on_busy=...)``):

    * ``"queue"`` (default): wait, in arrival order within this process, at most
      ``busy_timeout`` seconds in all, then :class:`~promptkit_async.errors.SessionBusyError`.
      Waiting for another process's turn uses the store's signalling, whose latency
      each store bounds in its ``wait_turn`` docstring: Redis pub/sub (one message
      delivery; a dead holder's expired lease is seen by a check every
      ``signal_poll_interval``, 0.5 s), PostgreSQL LISTEN/NOTIFY (one network hop;
      a 0.5 s look-again while its listener is down), SQLite polling (5 ms backing
      off to 50 ms), memory futures (at once).
    * ``"reject"``: :class:`~promptkit_async.errors.SessionBusyError` at once.
    * ``"interrupt"``: take the session from the running turn, even in another process,
      and run now. The interrupted turn stops at once and raises
      :class:`~promptkit_async.errors.TurnInterruptedError`, and stores nothing; the new
      turn sees the history without it. "At once": a turn waiting on the rest of the
      pipeline (the model's answer, its first chunk, a tool) has that wait cancelled,
      which closes the model's HTTP response; a turn whose reader holds a chunk stops at
      its next read. The cancellation is the turn's own, told apart from any of the
      caller's as ``asyncio.timeout`` does (``Task.uncancel``): a caller's timeout or
      cancellation is never taken for an interrupt, nor the other way round. (On Python
      3.10, which lacks ``Task.uncancel``, the turn stops at its next chunk, or at the
      latest when it tries to store.)

    A turn whose lease expired because its worker stalled (rather than being
    interrupted) raises :class:`~promptkit_async.errors.LeaseLostError` instead.

    **Idempotent turns.** Every turn has an id: ``execute(..., turn_id=...)`` (an HTTP
    ``Idempotency-Key``, say), or one generated here. A turn id already stored is not
    run again: the stored reply comes back with ``result.replayed`` set, the model is
    not called and nothing is stored. If the save fails with its outcome unknown (the
    store timed out after the write was sent, or lost its connection during it), the
    turn raises
    :class:`~promptkit_async.errors.AmbiguousTurnError` carrying the ``turn_id``:
    retrying with it is safe. Reusing a turn id for a different message raises
    :class:`~promptkit_async.errors.InvalidRequestError`.

    **Budget.** With ``budget``, the session's ledger (returned by the lease, no extra
    round trip) is checked before the turn is sent:
    :class:`~promptkit_async.errors.BudgetExceededError` once a limit is reached.

    A turn is stored whole or not at all: if the provider (or any later middleware)
    raises, or the turn is cancelled before step 4 starts, nothing of it is stored and
    the lease is given back at once (that release finishes even if the turn is being
    cancelled; if it fails, the lease expires after ``lease_ttl``). Once step 4 has
    started it runs to completion even if the turn is cancelled, and the cancellation
    is re-raised afterwards.

    Leases are used when ``isinstance(store, TurnStore)`` (every store of the library,
    and :class:`~promptkit_async.statestore.BlobOffloadStore` around one). A store that
    is not a :class:`~promptkit_async.statestore.TurnStore` (a store of your own) still
    works as before: turns are serialised within this pipeline only
    (``"interrupt"`` included), histories are loaded and appended, turn ids are neither
    generated nor deduplicated, and ``budget`` is refused.

    The turn runs in the task that reads it; chunks pass through unchanged. One
    instance is safe to share between any number of tasks.

    Args:
        store: where histories live (memory, SQLite, Redis, PostgreSQL...).
        max_history_messages: load only the newest N stored messages per turn.
        load_history: ``False`` skips loading and leaves it to a later middleware that
            loads only what it needs through ``ctx.store``, still under this turn's
            lease: ``ContextWindowMiddleware(load_history=True)`` loads just its window,
            so a turn's cost does not grow with the history.
        on_busy: the :data:`BusyPolicy` when a turn finds its session busy.
        busy_timeout: the most seconds a queued turn waits for its session.
        lease_ttl: seconds a lease lasts without renewal: how long a session stays
            blocked after its worker died. Keep it well above the store's round-trip
            time and a process's longest pause (GC, CPU starvation).
        budget: a :class:`SessionBudget` checked before each turn.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        max_history_messages: int | None = None,
        load_history: bool = True,
        on_busy: BusyPolicy = "queue",
        busy_timeout: float = 60.0,
        lease_ttl: float = 15.0,
        budget: SessionBudget | None = None,
    ) -> None:
        if max_history_messages is not None and (
            isinstance(max_history_messages, bool)
            or not isinstance(max_history_messages, int)
            or max_history_messages < 0
        ):
            raise ConfigurationError("max_history_messages must be an int >= 0, or None")
        if on_busy not in _POLICIES:
            raise ConfigurationError(
                f"on_busy must be 'queue', 'reject' or 'interrupt', not {on_busy!r}"
            )
        for name, value in (("busy_timeout", busy_timeout), ("lease_ttl", lease_ttl)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds > 0, not {value!r}"
                )
        if budget is not None and not isinstance(budget, SessionBudget):
            raise ConfigurationError(
                f"budget must be a SessionBudget or None, not {type(budget).__name__}"
            )
        turns = store if isinstance(store, TurnStore) else None
        if budget is not None and turns is None:
            raise ConfigurationError(
                f"budget needs a store that keeps a ledger (a TurnStore); "
                f"{type(store).__name__} is not one: use one of the library's stores"
            )
        self.store = store
        self.max_history_messages = max_history_messages
        self.load_history = load_history
        self.on_busy: BusyPolicy = on_busy
        self.busy_timeout = float(busy_timeout)
        self.lease_ttl = float(lease_ttl)
        self.budget = budget
        self._turns = turns
        # One timer per middleware renews the leases of long turns (none per turn): the
        # loop it runs on, while turns hold leases.
        self._ticking: asyncio.AbstractEventLoop | None = None
        # Names this process's leases in the store, for diagnostics.
        self._owner = f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"
        # Sessions with a turn running here -> that turn, and the turns waiting for it in
        # arrival order (no entry while nobody waits). Entries go when their last turn
        # ends, so thousands of short-lived sessions do not accumulate. The session is
        # handed straight to the next waiter, so a newcomer cannot overtake the queue.
        self._holders: dict[str, _Turn] = {}
        self._waiting: dict[str, deque[tuple[asyncio.Future[bool], _Turn]]] = {}

    def __repr__(self) -> str:
        return f"StateMiddleware(store={self.store!r}, on_busy={self.on_busy!r})"

    def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        """The turn's chunks (see the class docstring)."""
        if self._turns is None:
            return self._plain(ctx, next)
        return self._leased(ctx, next, self._turns)

    # --- with session leases -------------------------------------------------------------

    async def _leased(
        self, ctx: ExecutionContext, next: Next, store: TurnStore
    ) -> AsyncIterator[StreamChunk]:
        session_id = ctx.session_id
        policy = ctx.on_busy or self.on_busy
        turn = _Turn()
        if session_id in self._holders:
            await self._enter_busy(session_id, turn, policy)
        else:
            self._holders[session_id] = turn
        ctx.store = self.store
        turn_id = ctx.turn_id
        if turn_id is None:
            turn_id = ctx.turn_id = os.urandom(16).hex()
        loop = asyncio.get_running_loop()
        try:
            since = events.clock(ctx)
            sent = loop.time()
            claim = await store.begin_turn(
                session_id,
                owner=self._owner,
                lease_ttl=self.lease_ttl,
                load=self.load_history,
                last_n=self.max_history_messages,
                turn_id=turn_id,
                steal=policy == "interrupt",
            )
            if claim.token is None and claim.stored_turn is None:
                claim, sent = await self._wait_store(store, session_id, turn, policy, turn_id)
            if claim.stored_turn is not None:
                self._replay(ctx, turn_id, claim.stored_turn)
                return
            turn.token = claim.token
            turn.expires = sent + self.lease_ttl
            if turn.lost:  # interrupted by a turn of ours while it waited
                raise self._lost(session_id, turn)
            if self.budget is not None:
                self._check_budget(session_id, claim.ledger)
            if self.load_history:
                events.history_loaded(ctx, len(claim.messages), since)
                if claim.messages:
                    ctx.messages[:0] = claim.messages
            token = claim.token
            assert token is not None
            # Not kept through the turn: every object a turn holds across its awaits is
            # scanned by the collector while a thousand turns are in flight.
            del claim
            if self._ticking is not loop:
                self._ticking = loop
                loop.call_later(self.lease_ttl / 6, self._tick, store, loop)
            stop_watching = store.watch_lease(session_id, token, turn.lose)
            try:
                # ``waiting``: the task running the rest of the pipeline, set while the
                # turn waits on it (any task may read the stream, so it is looked up
                # again after each chunk), cleared while the reader holds a chunk.
                turn.waiting = current_task(loop)
                async for chunk in next(ctx):
                    turn.waiting = None
                    if turn.lost:
                        raise self._lost(session_id, turn)
                    yield chunk
                    turn.waiting = current_task(loop)
                turn.waiting = None
                if turn.lost:
                    raise self._lost(session_id, turn)
            except asyncio.CancelledError:
                if turn.ours():  # the interrupt's own cancellation (see _Turn.lose)
                    raise self._lost(session_id, turn) from None
                raise
            finally:
                turn.waiting = None
                stop_watching()
                pending = self._stop_renewing(turn)
                if pending is not None:
                    # Let an in-flight renewal land first, so that it cannot reach the
                    # store after the turn's end and take the lease back.
                    await settle(pending)
                    if not pending.cancelled():
                        pending.exception()  # retrieved (it logs its own store errors)
            if ctx.response is not None and ctx.new_messages:
                await self._end(store, ctx, turn, turn_id)
        finally:
            turn.done = True
            if turn.token is not None:  # failed, cancelled, interrupted or no reply
                # (a no-op in the store if the lease has moved on; but a turn interrupted
                # here may have taken the lease just after the interrupting turn did)
                await self._release(store, session_id, turn.token)
            self._leave(session_id, turn)

    async def _end(
        self, store: TurnStore, ctx: ExecutionContext, turn: _Turn, turn_id: str
    ) -> None:
        """Store the turn (fenced) and give the lease back, in one call."""
        session_id = ctx.session_id
        token = turn.token
        assert token is not None
        since = events.clock(ctx)
        try:
            # A save that has begun lands before a cancellation is re-raised, so the
            # session stays ours until it has (our stores' batchers do it cheaply; see
            # StateStore.append for a store of your own).
            with finish_sent_writes():
                await store.end_turn(
                    session_id,
                    token,
                    ctx.new_messages,
                    turn_id=turn_id,
                    usage=ctx.usage,
                    cost=ctx.cost,
                )
        except LeaseLostError as exc:
            turn.lost = True
            turn.token = None  # fenced: nothing to give back
            error = self._lost(session_id, turn)
            if isinstance(error, LeaseLostError):
                raise
            raise error from exc
        except StoreUnavailableError as exc:
            # A timeout says whether the save left; a connection lost mid-call cannot, so
            # it counts as ambiguous (retrying with the turn id is safe either way).
            if isinstance(exc, StoreTimeoutError) and not exc.maybe_applied:
                raise
            raise AmbiguousTurnError(
                f"storing turn {turn_id!r} of session {session_id!r} failed after it may "
                f"have been sent ({exc}), so it may or may not be stored; retry with "
                f"turn_id={turn_id!r}: a stored turn is returned instead of being run "
                "again, never stored twice",
                session_id=session_id,
                turn_id=turn_id,
            ) from exc
        turn.token = None  # ended: the lease went with it
        events.turn_stored(ctx, since)

    async def _wait_store(
        self, store: TurnStore, session_id: str, turn: _Turn, policy: BusyPolicy, turn_id: str
    ) -> tuple[TurnClaim, float]:
        """Another process's turn holds the lease: apply the policy (never ``interrupt``
        here: a steal always takes the lease)."""
        if policy == "reject":
            raise self._busy(session_id, 0.0)
        loop = asyncio.get_running_loop()
        if turn.arrived is None:
            turn.arrived = loop.time()
        deadline = turn.arrived + self.busy_timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise self._busy(session_id, loop.time() - turn.arrived)
            await store.wait_turn(session_id, left)
            if turn.lost:
                raise self._lost(session_id, turn)
            sent = loop.time()
            claim = await store.begin_turn(
                session_id,
                owner=self._owner,
                lease_ttl=self.lease_ttl,
                load=self.load_history,
                last_n=self.max_history_messages,
                turn_id=turn_id,
            )
            if claim.token is not None or claim.stored_turn is not None:
                return claim, sent

    def _replay(self, ctx: ExecutionContext, turn_id: str, stored: tuple[Message, ...]) -> None:
        """Answer a retried turn with its stored reply (nothing sent, nothing stored)."""
        if not stored:  # a store of your own may keep a turn without messages
            stored = (ctx.input, Message("assistant", ""))
        first, last = stored[0], stored[-1]
        if first.role != ctx.input.role or first.text != ctx.input.text:
            raise InvalidRequestError(
                f"turn_id {turn_id!r} is already stored in session {ctx.session_id!r} "
                "for a different message; use a new turn id for every new turn"
            )
        response = ProviderResponse(
            content=last.text, finish_reason="stop", tool_calls=last.tool_calls
        )
        if ctx.response_format is not None:  # the caller's format: parse the stored answer
            response = with_parsed(ctx.response_format, response)
        ctx.response = response
        ctx.new_messages = list(stored)
        ctx.replayed = True

    def _check_budget(self, session_id: str, ledger: Ledger) -> None:
        budget = self.budget
        assert budget is not None
        cost_limit, token_limit = budget.max_cost_usd, budget.max_total_tokens
        over_cost = cost_limit is not None and ledger.cost_usd >= cost_limit
        over_tokens = token_limit is not None and ledger.total_tokens >= token_limit
        if over_cost or over_tokens:
            raise BudgetExceededError(
                f"session {session_id!r} has used ${ledger.cost_usd:.6f} of "
                f"{'no cost limit' if cost_limit is None else f'${cost_limit:.6f}'} and "
                f"{ledger.total_tokens} tokens of "
                f"{'no token limit' if token_limit is None else token_limit}; "
                "the turn was not sent: raise the budget or start a new session",
                session_id=session_id,
                spent_usd=ledger.cost_usd,
                limit_usd=cost_limit,
                spent_tokens=ledger.total_tokens,
                limit_tokens=token_limit,
            )

    # --- renewal, loss and release --------------------------------------------------------

    def _tick(self, store: TurnStore, loop: asyncio.AbstractEventLoop) -> None:
        """Every ``lease_ttl / 6`` s while turns hold leases: renew those a third old."""
        if self._ticking is not loop:
            return  # the middleware moved on to another event loop
        now = loop.time()
        due = now + self.lease_ttl * 2 / 3  # expires no later: renewed >= lease_ttl / 3 ago
        running = False
        for session_id, turn in self._holders.items():
            if turn.token is None or turn.done or turn.lost:
                continue
            running = True
            if turn.expires <= due and (turn.renewal is None or turn.renewal.done()):
                turn.renewal = loop.create_task(self._renew(store, session_id, turn))
        if running:
            loop.call_later(self.lease_ttl / 6, self._tick, store, loop)
        else:
            self._ticking = None

    async def _renew(self, store: TurnStore, session_id: str, turn: _Turn) -> None:
        sent = asyncio.get_running_loop().time()
        token = turn.token
        assert token is not None
        try:
            renewed = await store.renew_turn(session_id, token, self.lease_ttl)
        except StoreError as exc:
            # Tried again at the next tick; if the store stays away past the lease's TTL,
            # the turn's save is fenced should another turn take the session meanwhile.
            _log.debug("renewing the lease of session %r failed: %r", session_id, exc)
            return
        if renewed:
            turn.expires = sent + self.lease_ttl
        else:
            turn.lose()  # another turn holds the session: this one cannot store

    def _stop_renewing(self, turn: _Turn) -> asyncio.Task[None] | None:
        """No more renewals for ``turn``; the renewal still in flight, if any."""
        turn.done = True
        renewal = turn.renewal
        return renewal if renewal is not None and not renewal.done() else None

    def _lost(self, session_id: str, turn: _Turn) -> PromptKitError:
        """The error of a turn whose lease passed to another turn."""
        turn.ours()  # a cancellation of ours that the pipeline swallowed: take it back
        if not turn.interrupted and asyncio.get_running_loop().time() >= turn.expires:
            return LeaseLostError(
                f"the lease of session {session_id!r} expired while this turn ran (its "
                f"worker stalled or could not reach the store for lease_ttl="
                f"{self.lease_ttl}s) and another turn took the session; nothing of this "
                "turn was stored: retry it",
                session_id=session_id,
                token=turn.token if turn.token is not None else -1,
            )
        return TurnInterruptedError(
            f"a newer turn on session {session_id!r} interrupted this one "
            "(on_busy='interrupt'); nothing of this turn was stored",
            session_id=session_id,
        )

    def _busy(self, session_id: str, waited: float) -> SessionBusyError:
        if waited <= 0:
            hint = "retry later, or queue the turn (on_busy='queue')"
        else:
            hint = f"gave up after {waited:.1f}s (busy_timeout={self.busy_timeout}); retry later"
        return SessionBusyError(
            f"session {session_id!r} is busy with another turn; {hint}",
            session_id=session_id,
            waited=max(waited, 0.0),
        )

    async def _release(self, store: TurnStore, session_id: str, token: int) -> None:
        """Give the lease back; finishes even if the turn is being cancelled."""
        try:
            await finish_shielded(store.release_turn(session_id, token))
        except StoreError as exc:
            # The turn's own error matters more; the lease expires after its TTL.
            _log.debug(
                "could not release the lease of session %r (it expires within %ss): %r",
                session_id,
                self.lease_ttl,
                exc,
            )

    # --- the in-process queue --------------------------------------------------------------

    async def _enter_busy(self, session_id: str, turn: _Turn, policy: BusyPolicy) -> None:
        """A turn of this pipeline holds the session: apply the policy."""
        if policy == "interrupt":
            holder = self._holders[session_id]
            holder.interrupted = True
            holder.lose()
            self._holders[session_id] = turn  # its _leave will not hand the session on
            return
        if policy == "reject":
            raise self._busy(session_id, 0.0)
        loop = asyncio.get_running_loop()
        turn.arrived = loop.time()
        waiting = self._waiting.get(session_id)
        if waiting is None:
            waiting = self._waiting[session_id] = deque()
        handed: asyncio.Future[bool] = loop.create_future()
        entry = (handed, turn)
        waiting.append(entry)
        timer = loop.call_later(self.busy_timeout, _give_up, handed)
        try:
            got = await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled() and handed.result():
                self._leave(session_id, turn)  # handed over just as we were cancelled
            else:
                self._unqueue(session_id, waiting, entry)
            raise
        finally:
            timer.cancel()
        if not got:
            self._unqueue(session_id, waiting, entry)
            raise self._busy(session_id, loop.time() - turn.arrived)

    def _unqueue(
        self,
        session_id: str,
        waiting: deque[tuple[asyncio.Future[bool], _Turn]],
        entry: tuple[asyncio.Future[bool], _Turn],
    ) -> None:
        with contextlib.suppress(ValueError):  # _leave may have dropped it already
            waiting.remove(entry)
        if not waiting and self._waiting.get(session_id) is waiting:
            del self._waiting[session_id]

    def _leave(self, session_id: str, turn: _Turn) -> None:
        """Hand the session straight to the next waiting turn, or free it."""
        if self._holders.get(session_id) is not turn:
            return  # an interrupting turn took it over
        waiting = self._waiting.get(session_id)
        while waiting:
            handed, following = waiting.popleft()
            if not handed.done():
                self._holders[session_id] = following  # the session stays taken
                handed.set_result(True)
                return
        self._waiting.pop(session_id, None)
        del self._holders[session_id]

    # --- without session leases (a store of your own) ------------------------------------

    async def _plain(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        session_id = ctx.session_id
        turn = _Turn()
        if session_id in self._holders:
            await self._enter_busy(session_id, turn, ctx.on_busy or self.on_busy)
        else:
            self._holders[session_id] = turn
        ctx.store = self.store
        try:
            if self.load_history:
                since = events.clock(ctx)
                history = await self.store.load(session_id, self.max_history_messages)
                events.history_loaded(ctx, len(history), since)
                if history:
                    ctx.messages[:0] = history
            loop = asyncio.get_running_loop()
            try:  # as in _leased
                turn.waiting = current_task(loop)
                async for chunk in next(ctx):
                    turn.waiting = None
                    if turn.lost:
                        raise self._lost(session_id, turn)
                    yield chunk
                    turn.waiting = current_task(loop)
                turn.waiting = None
            except asyncio.CancelledError:
                if turn.ours():
                    raise self._lost(session_id, turn) from None
                raise
            finally:
                turn.waiting = None
            if turn.lost:
                raise self._lost(session_id, turn)
            if ctx.response is not None and ctx.new_messages:
                since = events.clock(ctx)
                with finish_sent_writes():
                    await self.store.append(session_id, ctx.new_messages)
                events.turn_stored(ctx, since)
        finally:
            self._leave(session_id, turn)
