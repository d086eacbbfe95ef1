"""Typed events of a turn, and the listeners that receive them.

A pipeline publishes what happens in each turn as small frozen dataclasses, all
subclasses of :class:`Event` (which carries ``session_id`` and ``turn_id``)::

    TurnStarted
      HistoryLoaded            the stored history was read (messages, seconds)
      WindowTrimmed            a context window dropped or summarised messages
      ProviderCallStarted      one model call of the turn (a tool loop makes several)
        ProviderRequestSent    one HTTP attempt (HTTP providers only)
        ProviderRetried        that attempt failed and will be retried (wait, reason)
        FirstChunk             the first streamed chunk arrived
      ProviderCallFinished     usage, cost, finish reason, attempts, or the error
      ToolCallStarted / ToolCallFinished
      TurnStored               the turn's messages were appended (messages, seconds)
    TurnCompleted | TurnFailed | TurnCancelled

Register listeners on the pipeline: ``Pipeline(..., listeners=[fn])`` or
``pipe.listeners.add(fn)``. A listener is any callable taking one event:

* a plain function is called inline, in the task that runs the turn, as the event
  happens. It must be quick (the OpenTelemetry listener is one); what it raises is
  logged (on ``promptkit_async.events``) and never reaches the turn.
* a function that returns an awaitable (an ``async def``) has its awaitable run later,
  in order, by a background task of the listener set, so a slow listener never delays a
  turn. At most ``max_pending`` awaitables wait; beyond that new ones are dropped and
  counted in :attr:`ListenerSet.dropped`. :meth:`ListenerSet.drain` (called by
  ``Pipeline.shutdown``) waits for the backlog. Wrap a slow plain function in
  :func:`in_thread` to make it such a listener, run in a worker thread.

With no listener registered a turn creates no event objects at all: each emission
point is a function call that returns at once (see ``docs/how-to/observability.md``
for the measured cost).

Events carry references, not copies: ``ProviderCallStarted.request`` and
``ProviderCallFinished.response`` hold the messages sent and received. Listeners that
export data must decide what content to keep (the OpenTelemetry listener keeps none
unless asked). Events never carry API keys.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, InvalidArgumentsError
from .types import Cost, Usage

if TYPE_CHECKING:
    from ._context import ExecutionContext
    from .providers.base import Provider, ProviderRequest
    from .types import ProviderResponse, ToolCall

__all__ = [
    "Event",
    "FirstChunk",
    "HistoryLoaded",
    "Listener",
    "ListenerSet",
    "ProviderCallFinished",
    "ProviderCallStarted",
    "ProviderRequestSent",
    "ProviderRetried",
    "ToolCallFinished",
    "ToolCallStarted",
    "TurnCancelled",
    "TurnCompleted",
    "TurnFailed",
    "TurnStarted",
    "TurnStored",
    "WindowTrimmed",
    "in_thread",
]

logger = logging.getLogger("promptkit_async.events")


# --- the events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """What every event carries.

    Attributes:
        session_id: the conversation.
        turn_id: this turn's id: 16 hex digits, a random per-process prefix and a
            counter, so unique across processes and runs.
    """

    session_id: str
    turn_id: str


@dataclass(frozen=True, slots=True)
class TurnStarted(Event):
    """A turn began (after input validation, before the session's queue).

    Attributes:
        role: the input message's role.
        metadata: the turn's metadata as the caller passed it (live; do not modify).
    """

    role: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TurnCompleted(Event):
    """A turn produced a response and was stored.

    Attributes:
        duration: seconds the whole turn took.
        usage / cost: totals over every provider call of the turn.
        finish_reason: the final response's.
        messages: how many messages the turn added to the session.
        model: the model that gave the final response, if known.
    """

    duration: float
    usage: Usage
    cost: Cost
    finish_reason: str | None
    messages: int
    model: str | None


@dataclass(frozen=True, slots=True)
class TurnFailed(Event):
    """A turn raised; nothing of it was stored unless the save had begun.

    Attributes:
        duration: seconds until it failed.
        error: the exception (a ``PromptKitError`` for our own failures; messages carry
            no API key).
    """

    duration: float
    error: BaseException


@dataclass(frozen=True, slots=True)
class TurnCancelled(Event):
    """A turn was cancelled (its task cancelled, or its stream closed early).

    Attributes:
        duration: seconds until it was cancelled.
    """

    duration: float


@dataclass(frozen=True, slots=True)
class HistoryLoaded(Event):
    """The stored history was read.

    Attributes:
        messages: how many messages came back.
        duration: seconds the load took.
        store: the store's class name.
    """

    messages: int
    duration: float
    store: str


@dataclass(frozen=True, slots=True)
class WindowTrimmed(Event):
    """A context window dropped (and maybe summarised) messages to fit its budget.

    Attributes:
        strategy: the window's strategy (``"truncate"``, ``"summarize"``...).
        budget: its token budget.
        tokens: the tokens of what is sent.
        messages: messages before trimming.
        sent: messages sent.
        dropped: messages left out.
        summarised: a summary now stands in for older messages (``"created"``,
            ``"reused"``, ``"failed"`` or ``None``).
    """

    strategy: str
    budget: int
    tokens: int
    messages: int
    sent: int
    dropped: int
    summarised: str | None


@dataclass(frozen=True, slots=True)
class ProviderCallStarted(Event):
    """One model call begins.

    Attributes:
        provider: the provider's id (``"openai"``, ``"anthropic"``...).
        model: the model requested.
        streaming: sent with the streaming API.
        request: what is sent (messages included: content).
    """

    provider: str
    model: str
    streaming: bool
    request: ProviderRequest


@dataclass(frozen=True, slots=True)
class ProviderRequestSent(Event):
    """An HTTP provider sends one attempt of the current call.

    Attributes:
        provider: the provider's id.
        attempt: 1 for the first attempt, 2 for the first retry...
    """

    provider: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ProviderRetried(Event):
    """An attempt failed; the call waits ``wait`` seconds and tries again.

    Attributes:
        provider: the provider's id.
        attempt: the attempt that failed (1 for the first).
        wait: seconds it waits before the next attempt.
        reason: ``"HTTP 429"``, ``"APIConnectionError"``...
        status: the HTTP status, if there was a response.
        error_type: the error's class name.
    """

    provider: str
    attempt: int
    wait: float
    reason: str
    status: int | None
    error_type: str


@dataclass(frozen=True, slots=True)
class FirstChunk(Event):
    """The first streamed chunk of a call arrived.

    Attributes:
        provider: the provider's id.
        seconds: since the call started (retries included).
    """

    provider: str
    seconds: float


@dataclass(frozen=True, slots=True)
class ProviderCallFinished(Event):
    """One model call ended, with a response or an error.

    Attributes:
        provider: the provider's id.
        model: the model requested.
        streaming: sent with the streaming API.
        duration: seconds, retries included.
        attempts: HTTP attempts made (1 without retries; 1 for non-HTTP providers).
        response: the response (``None`` if the call failed); holds content.
        error: the exception if it failed (``CancelledError`` when cancelled).
        time_to_first_chunk: seconds to the first streamed chunk, if one arrived.
    """

    provider: str
    model: str
    streaming: bool
    duration: float
    attempts: int
    response: ProviderResponse | None
    error: BaseException | None
    time_to_first_chunk: float | None


@dataclass(frozen=True, slots=True)
class ToolCallStarted(Event):
    """A tool call the model asked for starts running.

    Attributes:
        name: the tool's name.
        call_id: the provider's call id.
        arguments: the arguments as the model wrote them (content).
    """

    name: str
    call_id: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallFinished(Event):
    """A tool call ended (it never raises into the turn; see ``status``).

    Attributes:
        name / call_id: as in :class:`ToolCallStarted`.
        status: ``"ok"``, ``"error"``, ``"timeout"``, ``"unknown"``, ``"blocked"`` or
            ``"bad_arguments"``.
        duration: seconds.
        result: the tool message's text sent back to the model (content).
    """

    name: str
    call_id: str
    status: str
    duration: float
    result: str


@dataclass(frozen=True, slots=True)
class TurnStored(Event):
    """The turn's messages were appended to the store.

    Attributes:
        messages: how many.
        duration: seconds the append took.
        store: the store's class name.
    """

    messages: int
    duration: float
    store: str


# --- listeners ----------------------------------------------------------------------

#: Receives events: a plain function (called inline) or one returning an awaitable (run
#: in the background). See the module docstring.
Listener = Callable[[Event], "Awaitable[None] | None"]


def in_thread(listener: Callable[[Event], object]) -> Listener:
    """Wrap a slow plain listener (one that writes to a file, a socket, a database
    driver without async support) so that it runs in a worker thread, off the event loop.

    The wrapper is an async listener: events reach ``listener`` in order, one at a time,
    from the listener set's background backlog, and never delay a turn.
    """

    async def run(event: Event) -> None:
        await asyncio.to_thread(listener, event)

    run.__qualname__ = f"in_thread({getattr(listener, '__qualname__', repr(listener))})"
    return run


class ListenerSet:
    """The listeners of one pipeline, and the backlog of their awaitables.

    Args:
        listeners: the initial listeners.
        max_pending: at most this many awaitables from async listeners wait to run;
            further ones are dropped (and counted in :attr:`dropped`).

    Safe to share between tasks of one event loop. Adding or removing a listener takes
    effect from the next event (a turn that started while there were no listeners stays
    unobserved). The background task that runs async listeners exists only while there
    is a backlog; what they raise is logged.
    """

    def __init__(self, listeners: Iterable[Listener] = (), *, max_pending: int = 10_000) -> None:
        if max_pending < 1:
            raise ConfigurationError("max_pending must be at least 1")
        self._listeners: tuple[Listener, ...] = ()
        self.max_pending = max_pending
        #: Awaitables dropped because ``max_pending`` were already waiting.
        self.dropped = 0
        #: Exceptions raised by listeners (each also logged).
        self.failures = 0
        self._pending: deque[Awaitable[None]] = deque()
        self._worker: asyncio.Task[None] | None = None
        for listener in listeners:
            self.add(listener)

    def __repr__(self) -> str:
        return f"ListenerSet({len(self._listeners)} listener(s), pending={len(self._pending)})"

    def __len__(self) -> int:
        return len(self._listeners)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def add(self, listener: Listener) -> None:
        """Register ``listener`` (once; adding it again does nothing)."""
        if not callable(listener):
            raise InvalidArgumentsError(f"a listener must be callable, got {listener!r}")
        if listener not in self._listeners:
            self._listeners = (*self._listeners, listener)

    def remove(self, listener: Listener) -> None:
        """Unregister ``listener``; does nothing if it is not registered."""
        self._listeners = tuple(x for x in self._listeners if x != listener)

    def publish(self, event: Event) -> None:
        """Give ``event`` to every listener. Never raises (listener errors are logged)."""
        for listener in self._listeners:
            try:
                outcome = listener(event)
            except Exception:
                self._failed(listener)
                continue
            if outcome is not None and inspect.isawaitable(outcome):
                self._enqueue(outcome)

    def _failed(self, listener: object) -> None:
        self.failures += 1
        # The first failure loudly, the rest quietly: a broken listener must not flood logs.
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        logger.log(level, "event listener %r raised; the turn goes on", listener, exc_info=True)

    def _enqueue(self, awaitable: Awaitable[None]) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited: close it, or Python warns
            if self.dropped == 1:
                logger.warning(
                    "async event listeners are %d events behind; dropping events "
                    "(ListenerSet.dropped counts them)",
                    self.max_pending,
                )
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # published outside a loop: nothing can run it
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            self.dropped += 1
            return
        self._pending.append(awaitable)
        worker = self._worker
        # (A worker of another loop, one closed without cancelling it, will never run.)
        if worker is None or worker.get_loop() is not loop:
            # A plain context: the worker must not inherit the turn's (its span, its call).
            self._worker = contextvars.Context().run(loop.create_task, self._work())

    async def _work(self) -> None:
        pending = self._pending
        me = asyncio.current_task()
        try:
            while pending:
                awaitable = pending.popleft()
                try:
                    await awaitable
                except Exception:
                    self._failed(awaitable)
        finally:
            # A stale worker (of a closed loop, collected later) leaves the backlog alone:
            # it may belong to its successor by now.
            if self._worker is me:
                self._worker = None
                while pending:  # cancelled mid-backlog: close what will never run
                    left = pending.popleft()
                    if inspect.iscoroutine(left):
                        left.close()

    @property
    def pending(self) -> int:
        """Awaitables from async listeners waiting to run."""
        return len(self._pending)

    async def drain(self, timeout: float | None = 30.0) -> bool:
        """Wait until async listeners have run everything published so far.

        Returns ``False`` if ``timeout`` seconds passed first (the backlog keeps running).
        """
        worker = self._worker
        if worker is None:
            return True
        try:
            # Shielded: a timeout stops the waiting, not the backlog.
            await asyncio.wait_for(asyncio.shield(worker), timeout)
        except asyncio.TimeoutError:
            return False
        return True


# --- emission (called from the pipeline, middleware, tools and the HTTP layer) -------
#
# Every helper returns at once when the turn has no listener (``ctx.events is None``),
# so an unobserved turn creates no event objects. The pipeline puts a ``_Turn`` on the
# context when it has listeners.


# Turn ids: a random prefix per process and a counter (no system call per turn).
_ID_PREFIX = secrets.token_hex(4)
_turn_numbers = itertools.count(1)


class _Turn:
    """What the emission helpers need for one observed turn."""

    __slots__ = ("listeners", "session_id", "started", "turn_id")

    def __init__(self, listeners: ListenerSet, session_id: str) -> None:
        self.listeners = listeners
        self.session_id = session_id
        self.turn_id = f"{_ID_PREFIX}{next(_turn_numbers):08x}"
        self.started = time.perf_counter()


def turn_started(ctx: ExecutionContext, listeners: ListenerSet) -> None:
    """Start observing ``ctx``'s turn if ``listeners`` has any, and say so."""
    if not listeners._listeners:
        return
    turn = ctx.events = _Turn(listeners, ctx.session_id)
    listeners.publish(TurnStarted(turn.session_id, turn.turn_id, ctx.input.role, ctx.metadata))


def turn_completed(ctx: ExecutionContext) -> None:
    """The turn ended normally (called after the onion returned)."""
    turn = ctx.events
    if turn is None:
        return
    response = ctx.response
    turn.listeners.publish(
        TurnCompleted(
            turn.session_id,
            turn.turn_id,
            time.perf_counter() - turn.started,
            ctx.usage,
            ctx.cost,
            None if response is None else response.finish_reason,
            len(ctx.new_messages),
            None if response is None else response.model,
        )
    )


def turn_failed(ctx: ExecutionContext, error: BaseException) -> None:
    """The turn raised ``error`` (``CancelledError``/``GeneratorExit``: cancelled)."""
    turn = ctx.events
    if turn is None:
        return
    duration = time.perf_counter() - turn.started
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        turn.listeners.publish(TurnCancelled(turn.session_id, turn.turn_id, duration))
    else:
        turn.listeners.publish(TurnFailed(turn.session_id, turn.turn_id, duration, error))


def clock(ctx: ExecutionContext) -> float:
    """``time.perf_counter()`` if the turn is observed, else 0 (no clock read)."""
    return 0.0 if ctx.events is None else time.perf_counter()


def history_loaded(ctx: ExecutionContext, messages: int, since: float) -> None:
    """The history (``messages`` of them) was loaded; ``since`` is :func:`clock`'s."""
    turn = ctx.events
    if turn is None:
        return
    store = type(ctx.store).__name__
    duration = time.perf_counter() - since
    turn.listeners.publish(HistoryLoaded(turn.session_id, turn.turn_id, messages, duration, store))


def turn_stored(ctx: ExecutionContext, since: float) -> None:
    """``ctx.new_messages`` were appended; ``since`` is :func:`clock`'s."""
    turn = ctx.events
    if turn is None:
        return
    turn.listeners.publish(
        TurnStored(
            turn.session_id,
            turn.turn_id,
            len(ctx.new_messages),
            time.perf_counter() - since,
            type(ctx.store).__name__,
        )
    )


def window_applied(ctx: ExecutionContext, detail: Mapping[str, Any]) -> None:
    """A context window planned what to send (``detail`` as in its trace event).

    Published as :class:`WindowTrimmed` only when messages were dropped or summarised.
    """
    turn = ctx.events
    if turn is None:
        return
    dropped = int(detail.get("dropped") or 0)
    summary = detail.get("summary")
    if not dropped and summary != "created":
        return
    turn.listeners.publish(
        WindowTrimmed(
            turn.session_id,
            turn.turn_id,
            str(detail.get("strategy")),
            int(detail.get("budget") or 0),
            int(detail.get("tokens") or 0),
            int(detail.get("messages") or 0),
            int(detail.get("sent") or 0),
            dropped,
            None if summary is None else str(summary),
        )
    )


def tool_started(ctx: ExecutionContext, call: ToolCall) -> None:
    """The tool call ``call`` starts."""
    turn = ctx.events
    if turn is None:
        return
    turn.listeners.publish(
        ToolCallStarted(turn.session_id, turn.turn_id, call.name, call.id, call.arguments)
    )


def tool_finished(
    ctx: ExecutionContext, call: ToolCall, status: str, duration: float, result: str
) -> None:
    """The tool call ``call`` ended with ``status`` after ``duration`` seconds."""
    turn = ctx.events
    if turn is None:
        return
    turn.listeners.publish(
        ToolCallFinished(
            turn.session_id, turn.turn_id, call.name, call.id, status, duration, result
        )
    )


# --- provider calls -------------------------------------------------------------------


class _Call:
    """One observed provider call: what the HTTP layer reports into, via a context var.

    The variable is set while the call runs, in the task that runs the turn (the
    provider's code runs there too), so the HTTP layer reports without knowing about
    pipelines. (A streamed call read from successive tasks reports its first attempt's
    events; later ones happen, if at all, in the reading task's own context.)
    """

    __slots__ = (
        "attempts",
        "first_chunk",
        "model",
        "provider",
        "started",
        "streaming",
        "token",
        "turn",
    )

    def __init__(self, turn: _Turn, provider: str, model: str, streaming: bool) -> None:
        self.turn = turn
        self.provider = provider
        self.model = model
        self.streaming = streaming
        self.started = time.perf_counter()
        self.attempts = 0
        self.first_chunk: float | None = None
        self.token: contextvars.Token[_Call | None] | None = None


_current_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "promptkit_async_provider_call", default=None
)


def call_started(
    ctx: ExecutionContext, provider: Provider, request: ProviderRequest, streaming: bool
) -> _Call | None:
    """A provider call of ``ctx``'s turn starts: the record to pass to the other
    ``call_*`` helpers (``None`` when the turn is not observed)."""
    turn = ctx.events
    if turn is None:
        return None
    record = _Call(turn, provider.id, provider.model, streaming)
    turn.listeners.publish(
        ProviderCallStarted(
            turn.session_id, turn.turn_id, record.provider, record.model, streaming, request
        )
    )
    record.token = _current_call.set(record)
    return record


def call_first_chunk(record: _Call) -> None:
    """The call's first chunk arrived (publishes :class:`FirstChunk` once)."""
    if record.first_chunk is None:
        record.first_chunk = seconds = time.perf_counter() - record.started
        turn = record.turn
        turn.listeners.publish(FirstChunk(turn.session_id, turn.turn_id, record.provider, seconds))


def call_finished(
    record: _Call, response: ProviderResponse | None, error: BaseException | None
) -> None:
    """The call ended with ``response`` or ``error`` (:class:`ProviderCallFinished`)."""
    if record.token is not None:
        try:
            _current_call.reset(record.token)
        except ValueError:  # finished in another context (a stream read by another task)
            _current_call.set(None)
        record.token = None
    turn = record.turn
    turn.listeners.publish(
        ProviderCallFinished(
            turn.session_id,
            turn.turn_id,
            record.provider,
            record.model,
            record.streaming,
            time.perf_counter() - record.started,
            max(record.attempts, 1),
            response,
            error,
            record.first_chunk,
        )
    )


def request_sent(attempt: int) -> None:
    """The HTTP layer sends ``attempt`` (1-based) of the current provider call."""
    record = _current_call.get()
    if record is None:
        return
    record.attempts = attempt
    turn = record.turn
    turn.listeners.publish(
        ProviderRequestSent(turn.session_id, turn.turn_id, record.provider, attempt)
    )


def provider_retried(detail: Mapping[str, Any], error: BaseException) -> None:
    """The HTTP layer retries the current call (``detail`` as in its retry trace event)."""
    record = _current_call.get()
    if record is None:
        return
    turn = record.turn
    turn.listeners.publish(
        ProviderRetried(
            turn.session_id,
            turn.turn_id,
            record.provider,
            int(detail.get("attempt", 2)) - 1,
            float(detail.get("wait", 0.0)),
            str(detail.get("reason", "")),
            detail.get("status"),
            type(error).__name__,
        )
    )
