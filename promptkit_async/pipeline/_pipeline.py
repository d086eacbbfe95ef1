"""The pipeline: an onion of middleware built once, run per turn, streamed or not."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from typing_extensions import Self

from .. import events
from .._context import BusyPolicy, ExecutionContext, Middleware, Next
from .._lifecycle import AsyncResource
from .._structured import ResponseFormat, ResponseFormatLike
from .._validation import check_input, check_session_id
from ..errors import (
    ConfigurationError,
    InvalidMiddlewareError,
    InvalidRequestError,
    PipelineClosedError,
    PipelineError,
    PipelineTimeoutError,
    StreamBusyError,
)
from ..events import Listener, ListenerSet
from ..statestore import check_turn_id
from ..types import ExecutionResult, Message, MessageContent, StreamChunk

__all__ = ["Pipeline", "ResultStream", "build_onion"]


_BUSY_POLICIES = frozenset(("queue", "reject", "interrupt"))


class _NoChunks(AsyncIterator[StreamChunk]):
    """An async iterator that is already exhausted (one, shared: it has no state)."""

    __slots__ = ()

    async def __anext__(self) -> StreamChunk:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Nothing to close (there so that ``aclosing(next(ctx))`` works, as before)."""


_NO_CHUNKS = _NoChunks()


def _terminal(ctx: ExecutionContext) -> AsyncIterator[StreamChunk]:
    """The innermost ``next``: there is nothing after the last middleware (no
    generator per turn: the last layer iterates this shared, empty iterator)."""
    return _NO_CHUNKS


def _check(layer: object) -> None:
    if not callable(layer):
        raise InvalidMiddlewareError(
            f"middleware must be an async generator function (ctx, next), got {layer!r}"
        )
    call = layer if inspect.isroutine(layer) else type(layer).__call__
    if inspect.iscoroutinefunction(call):
        raise InvalidMiddlewareError(
            f"{layer!r} is a coroutine function; middleware are async generators now: "
            "replace `await next(ctx)` with `async for chunk in next(ctx): yield chunk`"
        )


def _link(middleware: Middleware, following: Next) -> Next:
    def call(ctx: ExecutionContext) -> AsyncIterator[StreamChunk]:
        chunks = middleware(ctx, following)
        ctx._opened.append(chunks)
        return chunks

    return call


async def _close_layers(ctx: ExecutionContext) -> None:
    """Close every layer the turn opened, innermost first, however the turn ended (done,
    failed, closed early), so each one's clean-up has run before the turn is over."""
    opened = ctx._opened
    while opened:
        aclose = getattr(opened.pop(), "aclose", None)
        if aclose is not None:
            await aclose()


def build_onion(middleware: Sequence[Middleware]) -> Next:
    """Compose ``middleware`` so the first one is the outermost layer."""
    handler: Next = _terminal
    for layer in reversed(middleware):
        _check(layer)
        handler = _link(layer, handler)
    return handler


class Pipeline(AsyncResource):
    """Runs conversation turns through a chain of middleware.

    Args:
        *middleware: async generator functions ``(ctx, next)`` (see
            :data:`~promptkit_async.pipeline.Middleware`), outermost first. Put
            ``StateMiddleware`` first and ``ProviderMiddleware`` last.
        max_concurrency: at most this many turns run at once (others wait their turn);
            ``None`` for no cap.
        shutdown_timeout: default seconds :meth:`aclose` waits for in-flight turns.
        listeners: receive each turn's events (see :mod:`promptkit_async.events`); more
            can be added later through :attr:`listeners`.

    The onion is composed once, here. A pipeline is safe to share between any number of
    tasks (one per web request, say): turns on different sessions run concurrently, and
    ``StateMiddleware`` serialises turns on the same session (in this process; see its
    docstring for several processes).

    How a chunk travels: a turn is a chain of async generators, one per layer, run in
    the task that awaits :meth:`execute` or reads :meth:`stream`. The provider
    middleware yields each chunk the model streams; every outer layer passes it on as it
    iterates ``next(ctx)``; the stream hands it to its reader. Nothing runs ahead of the
    reader and no task or queue is involved; the last chunk carries the turn's
    :class:`~promptkit_async.types.ExecutionResult` once the turn is stored.

    ``async with Pipeline(...) as pipe:`` calls :meth:`aclose` on exit.
    """

    def __init__(
        self,
        *middleware: Middleware,
        max_concurrency: int | None = None,
        shutdown_timeout: float = 30.0,
        listeners: Sequence[Listener] = (),
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be at least 1, or None")
        self.middleware: tuple[Middleware, ...] = middleware
        self.shutdown_timeout = shutdown_timeout
        self._handler = build_onion(middleware)
        self._limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._closing = False
        #: Who receives this pipeline's turn events (``add``/``remove`` listeners here).
        self.listeners = ListenerSet(listeners)

    def __repr__(self) -> str:
        names = ", ".join(type(m).__name__ for m in self.middleware)
        return f"Pipeline({names}; in_flight={self._in_flight}, closed={self._closing})"

    @property
    def in_flight(self) -> int:
        """Turns currently running (streams count from their first iteration)."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` (or :meth:`shutdown`) was called."""
        return self._closing

    def _context(
        self,
        session_id: str,
        role: str,
        content: MessageContent,
        metadata: dict[str, Any] | None,
        turn_id: str | None,
        on_busy: BusyPolicy | None,
    ) -> ExecutionContext:
        if self._closing:
            raise PipelineClosedError("the pipeline is closed; create a new one for new turns")
        check_session_id(session_id)
        check_input(role, content)
        if turn_id is not None:
            check_turn_id(turn_id)
        if on_busy is not None and on_busy not in _BUSY_POLICIES:
            raise InvalidRequestError(
                f"on_busy must be 'queue', 'reject', 'interrupt' or None, not {on_busy!r}"
            )
        return ExecutionContext(
            session_id,
            Message(role, content),  # type: ignore[arg-type]
            metadata,
            turn_id=turn_id,
            on_busy=on_busy,
        )

    async def _turn(self, ctx: ExecutionContext) -> AsyncGenerator[StreamChunk, None]:
        """One turn: the onion's chunks, then the final chunk with the result."""
        if self._closing:
            raise PipelineClosedError("the pipeline is closed; create a new one for new turns")
        self._in_flight += 1
        events.turn_started(ctx, self.listeners)
        try:
            if self._limit is None:
                async for chunk in self._handler(ctx):
                    yield chunk
            else:
                async with self._limit:
                    async for chunk in self._handler(ctx):
                        yield chunk
        except BaseException as exc:  # failed, cancelled, or closed early (GeneratorExit)
            await _close_layers(ctx)  # their clean-up (and its events) comes first
            events.turn_failed(ctx, exc)
            raise
        finally:
            await _close_layers(ctx)
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()
        response = ctx.response
        if response is None:
            error = PipelineError(
                "no middleware produced a response; add ProviderMiddleware as the last layer"
            )
            events.turn_failed(ctx, error)
            raise error
        events.turn_completed(ctx)
        result = ctx.result = ExecutionResult(
            session_id=ctx.session_id,
            response=response,
            cost=ctx.cost,
            usage=ctx.usage,
            messages=tuple(ctx.new_messages),
            latency=time.perf_counter() - ctx.started,
            trace=tuple(ctx.trace),
            metadata=ctx.metadata,
            estimated_prompt_tokens=ctx.estimated_prompt_tokens,
            turn_id=ctx.turn_id,
            replayed=ctx.replayed,
        )
        yield StreamChunk(
            finish_reason=response.finish_reason, usage=result.usage, final_result=result
        )

    async def execute(
        self,
        session_id: str,
        role: str,
        content: MessageContent,
        *,
        metadata: dict[str, Any] | None = None,
        response_format: ResponseFormatLike | None = None,
        turn_id: str | None = None,
        on_busy: BusyPolicy | None = None,
    ) -> ExecutionResult:
        """Run one turn and return its result.

        Runs the same onion as :meth:`stream`, in the awaiting task; the streamed chunks
        are discarded.

        ``response_format`` (a JSON-schema dict, a pydantic model class, ``"json"`` or a
        :class:`~promptkit_async.ResponseFormat`) asks for a structured final answer
        for this turn, over the pipeline's and the provider's; ``result.parsed`` then
        holds it parsed (a model instance for a model).

        Args:
            turn_id: the turn's idempotency key (e.g. an HTTP ``Idempotency-Key``): a
                turn already stored under it is not run again, its stored reply is
                returned (``result.replayed``). ``StateMiddleware`` generates one if
                ``None``. At most 200 printable characters.
            on_busy: this turn's policy when another turn holds the session
                (``"queue"``, ``"reject"``, ``"interrupt"``); ``None`` for the one
                ``StateMiddleware`` was given.

        Raises:
            InvalidRequestError: bad session id, role, content, response format, turn id
                or policy (before any I/O).
            PipelineClosedError: after :meth:`aclose`.
            SessionBusyError / TurnInterruptedError: see ``StateMiddleware``.
            ProviderError / StoreError: from the provider or the store; the turn is then
                not stored at all, except :class:`AmbiguousTurnError` (it may be: retry
                with its ``turn_id``). ``StructuredOutputError`` (a ``ProviderError``): the
                answer does not match ``response_format``.

        Cancelling the awaiting task cancels the turn: nothing of it is stored unless
        the final save had already begun, in which case the save completes first.
        """
        ctx = self._context(session_id, role, content, metadata, turn_id, on_busy)
        if response_format is not None:
            ctx.response_format = ResponseFormat.coerce(response_format)
        async for _ in self._turn(ctx):
            pass
        assert ctx.result is not None  # _turn ends with the result or raises
        return ctx.result

    def stream(
        self,
        session_id: str,
        role: str,
        content: MessageContent,
        *,
        metadata: dict[str, Any] | None = None,
        response_format: ResponseFormatLike | None = None,
        turn_id: str | None = None,
        on_busy: BusyPolicy | None = None,
    ) -> ResultStream:
        """Run one turn, yielding :class:`StreamChunk` objects as the model writes.

        Input is validated now (raising at once); the turn starts on first iteration
        and runs inside the iterating task, at the pace it reads (no task or buffer of
        its own: a slow reader slows the model's stream instead of piling it up). The
        last chunk carries ``finish_reason`` and ``final_result`` and arrives after the
        turn has been stored. ``turn_id`` and ``on_busy`` are as for :meth:`execute`.
        Leaving ``async with``, ``aclose()``, or cancelling the
        reading task ends the turn (nothing stored, HTTP response closed); a stream
        dropped unfinished is closed when collected. Read it from one task at a time::

            async with pipe.stream("user-1", "user", "Hi") as chunks:
                async for chunk in chunks:
                    print(chunk.delta, end="")

        With ``response_format`` (see :meth:`execute`) the chunks stream the answer's raw
        JSON text and the final result's ``parsed`` holds it parsed.
        """
        ctx = self._context(session_id, role, content, metadata, turn_id, on_busy)
        if response_format is not None:
            ctx.response_format = ResponseFormat.coerce(response_format)
        return ResultStream(self, ctx)

    async def aclose(self, timeout: float | None = None) -> None:
        """Refuse new turns and wait for in-flight ones to finish.

        Args:
            timeout: seconds to wait (default ``shutdown_timeout``).

        Raises:
            PipelineTimeoutError: if turns are still running after ``timeout``; they keep
                running, and calling ``aclose`` again waits again.

        Async event listeners' backlog is drained too (for at most ``timeout``).

        Safe to call more than once.
        """
        self._closing = True
        if self._in_flight == 0:
            await self.listeners.drain(self.shutdown_timeout if timeout is None else timeout)
            return
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        wait = self.shutdown_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self._idle.wait(), wait)
        except asyncio.TimeoutError:
            raise PipelineTimeoutError(
                f"{self._in_flight} turn(s) still running after {wait}s; "
                "call aclose() again to keep waiting"
            ) from None
        await self.listeners.drain(wait)

    async def shutdown(self, timeout: float | None = None) -> None:
        """The tutorial's name for :meth:`aclose` (the same thing)."""
        await self.aclose(timeout)


class ResultStream(AsyncResource, AsyncIterator[StreamChunk]):
    """The chunks of one streamed turn; see :meth:`Pipeline.stream`.

    Iterate it once, from one task at a time (any task: ``asyncio.wait_for`` on each
    ``__anext__`` is fine, and its timeout ends the turn). The turn runs inside the
    iterating task, one chunk at a time: it advances only while you iterate, so a reader
    that stops without closing the stream keeps the session's turn open. Use
    ``async with`` (or :meth:`aclose`) to end a turn you stop reading early and wait for
    its clean-up; a stream that is simply dropped is closed when collected.
    ``result`` holds the :class:`ExecutionResult` after the last chunk.
    """

    __slots__ = ("_chunks", "_ctx", "_finished", "_reading", "_started")

    def __init__(self, pipeline: Pipeline, ctx: ExecutionContext) -> None:
        self._ctx = ctx
        self._chunks = pipeline._turn(ctx)
        self._started = False
        self._reading = False  # a task is inside __anext__
        self._finished = False

    @property
    def result(self) -> ExecutionResult | None:
        """The turn's result, once the last chunk was read."""
        return self._ctx.result

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running" if self._started else "not started"
        return f"<ResultStream {state}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamChunk:
        # A real coroutine (not the generator's own awaitable), so that
        # asyncio.create_task(anext(stream)) works on every Python version.
        if self._finished:
            raise StopAsyncIteration
        if self._reading:
            raise StreamBusyError(
                "this stream is already being read by another task; read it from one task"
            )
        self._started = self._reading = True
        try:
            return await self._chunks.__anext__()
        except BaseException:
            self._finished = True  # ended, failed or cancelled: the turn is over
            raise
        finally:
            self._reading = False

    async def aclose(self) -> None:
        """End the turn if it is still running, and wait until it has cleaned up.

        Raises :class:`StreamBusyError` (a ``RuntimeError``) if another task is inside
        ``__anext__`` right now.
        """
        if self._reading:
            raise StreamBusyError(
                "aclose() while another task is reading this stream; cancel that task instead"
            )
        self._finished = True
        await self._chunks.aclose()
