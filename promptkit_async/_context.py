"""The per-turn context that middleware read and write, and the middleware type."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .types import Cost, Message, ProviderResponse, StreamChunk, TraceEvent, Usage

if TYPE_CHECKING:
    from .events import _Turn
    from .statestore.base import StateStore

__all__ = ["Emit", "ExecutionContext", "Middleware", "Next"]

#: Sends one chunk towards the caller of ``Pipeline.stream``.
Emit = Callable[[StreamChunk], Awaitable[None]]


# Frozen, so every turn can start from the same zero totals.
_NO_USAGE = Usage()
_NO_COST = Cost()


async def _discard(chunk: StreamChunk) -> None:
    """The chunk sink of ``Pipeline.execute``: nobody is listening."""


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
        emit: send a chunk towards the streaming caller. A middleware may wrap it
            (replace ``ctx.emit`` before calling ``next``) to observe or transform chunks.
        events: the turn's event publisher when its pipeline has listeners, else
            ``None`` (see :mod:`promptkit_async.events`; middleware leave it alone).

    A context belongs to one turn and one task; it is not shared.
    """

    __slots__ = (
        "cost",
        "emit",
        "estimated_prompt_tokens",
        "events",
        "input",
        "messages",
        "metadata",
        "new_messages",
        "response",
        "session_id",
        "started",
        "store",
        "trace",
        "usage",
    )

    def __init__(
        self, session_id: str, input: Message, metadata: dict[str, Any] | None = None
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
        self.emit: Emit = _discard
        self.events: _Turn | None = None
        self.started = time.perf_counter()

    def __repr__(self) -> str:
        return (
            f"ExecutionContext(session_id={self.session_id!r}, "
            f"messages={len(self.messages)}, new_messages={len(self.new_messages)})"
        )


#: Calls the rest of the onion.
Next = Callable[[ExecutionContext], Awaitable[None]]
#: A middleware: an async callable taking the context and the rest of the onion.
#:
#: A middleware object may set ``runs_next_inline = True`` to promise that it awaits
#: ``next`` in the turn's own task (not in a task it creates, as ``asyncio.wait_for``
#: before Python 3.12 or ``asyncio.shield`` do). When every layer promises it,
#: ``Pipeline.stream`` skips watching for chunks emitted from other tasks.
Middleware = Callable[[ExecutionContext, Next], Awaitable[None]]
