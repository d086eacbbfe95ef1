"""The per-turn context that middleware read and write, and the middleware type.

A bottom module: the pipeline, its middleware and the tool loop all use these types, and
none of them needs the others to do so.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .types import Cost, ExecutionResult, Message, ProviderResponse, StreamChunk, TraceEvent, Usage

if TYPE_CHECKING:
    from .events import _Turn
    from .statestore.base import StateStore

__all__ = ["BusyPolicy", "ExecutionContext", "Middleware", "Next"]

#: What a turn does when another turn holds its session (see ``StateMiddleware``):
#: ``"queue"`` waits its turn (bounded), ``"reject"`` fails at once with
#: ``SessionBusyError``, ``"interrupt"`` stops the running turn and runs instead.
BusyPolicy: TypeAlias = Literal["queue", "reject", "interrupt"]


# Frozen, so every turn can start from the same zero totals.
_NO_USAGE = Usage()
_NO_COST = Cost()


class ExecutionContext:
    """Everything one turn carries through the middleware onion.

    Attributes:
        session_id: the conversation this turn belongs to.
        input: the message the caller sent.
        messages: what the provider will be sent, oldest first. Starts as ``[input]``;
            ``StateMiddleware`` puts the stored history in front; a context-window
            middleware may replace it with a trimmed view.
        new_messages: what this turn adds to the session, in order. Starts as
            ``[input]``; the provider middleware appends its replies (and tool messages).
            ``StateMiddleware`` stores exactly this list once the turn succeeds.
        response: the model's final response, once there is one. A middleware that
            answers without calling ``next`` must set it (and append its reply to
            ``new_messages``).
        usage / cost: totals of every provider call of the turn.
        trace: notable events (retries, trims, fallbacks).
        metadata: free space for middleware; copied to the result.
        estimated_prompt_tokens: a local token count of what was sent, if computed.
        store: the session's store, set by ``StateMiddleware`` (``None`` without one), so
            later middleware can keep per-session data (``get_metadata``/``merge_metadata``).
        result: the turn's :class:`~promptkit_async.types.ExecutionResult`, once it ended.
        events: the turn's event publisher when its pipeline has listeners, else
            ``None`` (see :mod:`promptkit_async.events`; middleware leave it alone).
        turn_id: the caller's idempotency key for the turn (``execute(turn_id=...)``);
            ``StateMiddleware`` generates one when the caller gave none.
        on_busy: the caller's :data:`BusyPolicy` for this turn, or ``None`` for the
            pipeline's.
        replayed: ``True`` when the turn was already stored under ``turn_id`` and
            ``StateMiddleware`` answered with the stored reply instead of running it.

    A context belongs to one turn; it is not shared between turns.
    """

    __slots__ = (
        "_opened",
        "cost",
        "estimated_prompt_tokens",
        "events",
        "input",
        "messages",
        "metadata",
        "new_messages",
        "on_busy",
        "replayed",
        "response",
        "result",
        "session_id",
        "started",
        "store",
        "trace",
        "turn_id",
        "usage",
    )

    def __init__(
        self,
        session_id: str,
        input: Message,
        metadata: dict[str, Any] | None = None,
        *,
        turn_id: str | None = None,
        on_busy: BusyPolicy | None = None,
    ) -> None:
        self.session_id = session_id
        self.input = input
        self.messages: list[Message] = [input]
        self.new_messages: list[Message] = [input]
        self.response: ProviderResponse | None = None
        self.usage = _NO_USAGE
        self.cost = _NO_COST
        self.trace: list[TraceEvent] = []
        self.metadata: dict[str, Any] = metadata if metadata is not None else {}
        self.estimated_prompt_tokens: int | None = None
        self.store: StateStore | None = None
        self.result: ExecutionResult | None = None
        self.events: _Turn | None = None
        self.turn_id = turn_id
        self.on_busy = on_busy
        self.replayed = False
        self.started = time.perf_counter()
        # The layers' chunk iterators of this turn, outermost first: the pipeline closes
        # them (innermost first) when the turn ends, however it ends.
        self._opened: list[AsyncIterator[StreamChunk]] = []

    def __repr__(self) -> str:
        return (
            f"ExecutionContext(session_id={self.session_id!r}, "
            f"messages={len(self.messages)}, new_messages={len(self.new_messages)})"
        )


#: Runs the rest of the onion: the chunks it streams, as an async iterator.
Next = Callable[[ExecutionContext], AsyncIterator[StreamChunk]]

#: A middleware: an async generator function ``(ctx, next)`` that yields the turn's chunks.
#:
#: It does its work before and after iterating ``next(ctx)``, passing on (or changing,
#: or holding back) each chunk it yields; it may answer without calling ``next`` by
#: setting ``ctx.response`` (and adding its reply to ``ctx.new_messages``). An exception
#: it lets out fails the turn, and nothing of the turn is stored. The turn runs in the
#: task that reads the stream, so, as anyio advises for every async generator, do not
#: ``yield`` inside a cancel scope (``asyncio.timeout``, ``anyio.fail_after``, a task
#: group): a stream may be read from another task by the time it resumes. Scope the
#: awaits between yields instead; those behave exactly as in plain asyncio.
Middleware = Callable[[ExecutionContext, Next], AsyncIterator[StreamChunk]]
