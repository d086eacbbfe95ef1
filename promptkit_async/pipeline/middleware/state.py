"""StateMiddleware: conversation memory, one turn at a time per session."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from ... import events
from ..._concurrency import finish_sent_writes
from ..._context import ExecutionContext, Next
from ...errors import ConfigurationError
from ...statestore.base import StateStore
from ...types import StreamChunk

__all__ = ["StateMiddleware"]


class StateMiddleware:
    """Loads a session's history before the model runs and stores the turn after.

    Put it first in the pipeline. For each turn it:

    1. waits for earlier turns on the same session to finish (turns on one session are
       serialised in arrival order; different sessions run fully concurrently);
    2. loads the stored history (the newest ``max_history_messages`` if set) and puts it
       in front of the new message in ``ctx.messages``;
    3. runs the rest of the pipeline;
    4. appends ``ctx.new_messages`` (the input, tool messages and the reply) to the store
       in one atomic ``append``; history is never rewritten.

    A turn is stored whole or not at all: if the provider (or any later middleware)
    raises, or the turn is cancelled before step 4 starts, nothing of the turn is stored.
    Once step 4 has started it runs to completion even if the turn is cancelled, and the
    cancellation is re-raised afterwards.

    The turn runs in the task that reads it; chunks pass through unchanged.
    Serialisation is per ``StateMiddleware`` instance, i.e. per pipeline. Turns that
    reach one session from several pipelines or processes are still never lost or
    interleaved (appends are atomic), but each may not see the other's in-flight turn.

    Args:
        store: where histories live (memory, SQLite, Redis...).
        max_history_messages: load only the newest N stored messages per turn.
        load_history: ``False`` skips step 2 and leaves loading to a later middleware
            that loads only what it needs through ``ctx.store``, still under this
            middleware's session lock: ``ContextWindowMiddleware(load_history=True)``
            loads just its window, so a turn's cost does not grow with the history.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        max_history_messages: int | None = None,
        load_history: bool = True,
    ) -> None:
        if max_history_messages is not None and max_history_messages < 0:
            raise ConfigurationError("max_history_messages must be >= 0, or None")
        self.store = store
        self.max_history_messages = max_history_messages
        self.load_history = load_history
        # Sessions with a turn running -> the turns waiting for it, in arrival order
        # (None while nobody waits: no object per turn). An entry goes when its last
        # turn ends, so thousands of short-lived sessions do not accumulate. Cheaper than
        # an asyncio.Lock per session, and the session is handed straight to the next
        # waiter, so a newcomer cannot overtake the queue.
        self._turns: dict[str, deque[asyncio.Future[None]] | None] = {}

    def __repr__(self) -> str:
        return f"StateMiddleware(store={self.store!r})"

    async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        session_id = ctx.session_id
        if session_id in self._turns:
            await self._wait_turn(session_id)
        else:
            self._turns[session_id] = None  # this turn runs; nobody waits
        ctx.store = self.store
        try:
            if self.load_history:
                since = events.clock(ctx)
                history = await self.store.load(session_id, self.max_history_messages)
                events.history_loaded(ctx, len(history), since)
                if history:
                    ctx.messages[:0] = history
            async for chunk in next(ctx):
                yield chunk
            if ctx.response is not None and ctx.new_messages:
                # A save that has begun lands before a cancellation is re-raised, so the
                # session stays ours until it has (our stores' batchers do it cheaply;
                # see StateStore.append for a store of your own).
                since = events.clock(ctx)
                with finish_sent_writes():
                    await self.store.append(session_id, ctx.new_messages)
                events.turn_stored(ctx, since)
        finally:
            self._pass_turn(session_id)

    async def _wait_turn(self, session_id: str) -> None:
        """Wait until the session is handed to this turn (turns go in arrival order)."""
        waiting = self._turns[session_id]
        if waiting is None:
            waiting = self._turns[session_id] = deque()
        handed = asyncio.get_running_loop().create_future()
        waiting.append(handed)
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self._pass_turn(session_id)  # handed over just as we were cancelled
            elif handed in waiting:  # (_pass_turn drops cancelled waiters it meets)
                waiting.remove(handed)
            raise

    def _pass_turn(self, session_id: str) -> None:
        """Hand the session straight to the next waiting turn, or free it."""
        waiting = self._turns[session_id]
        while waiting:
            handed = waiting.popleft()
            if not handed.done():
                handed.set_result(None)  # the session stays taken: now that turn's
                return
        del self._turns[session_id]
