"""The pipeline: an onion of middleware built once, run per turn, streamed or not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any

from typing_extensions import Self

from .. import events
from .._context import ExecutionContext, Middleware, Next
from .._lifecycle import AsyncResource
from .._validation import check_input, check_session_id
from ..errors import PipelineClosedError, PipelineError, PipelineTimeoutError
from ..events import Listener, ListenerSet
from ..types import ExecutionResult, Message, StreamChunk

__all__ = ["Pipeline", "ResultStream"]

logger = logging.getLogger("promptkit_async.pipeline")


async def _terminal(ctx: ExecutionContext) -> None:
    """The innermost ``next``: there is nothing after the last middleware."""


def _link(middleware: Middleware, following: Next) -> Next:
    # A plain function returning the middleware's coroutine: one frame per layer, not two.
    def call(ctx: ExecutionContext) -> Any:
        return middleware(ctx, following)

    return call


def build_onion(middleware: Sequence[Middleware]) -> Next:
    """Compose ``middleware`` so the first one is the outermost layer."""
    handler: Next = _terminal
    for layer in reversed(middleware):
        if not callable(layer):
            raise TypeError(f"middleware must be an async callable (ctx, next), got {layer!r}")
        handler = _link(layer, handler)
    return handler


class Pipeline:
    """Runs conversation turns through a chain of middleware.

    Args:
        *middleware: async callables ``(ctx, next)``, outermost first. Put
            ``StateMiddleware`` first and ``ProviderMiddleware`` last.
        max_concurrency: at most this many turns run at once (others wait their turn);
            ``None`` for no cap.
        shutdown_timeout: default seconds :meth:`shutdown` waits for in-flight turns.
        listeners: receive each turn's events (see :mod:`promptkit_async.events`); more
            can be added later through :attr:`listeners`.

    The onion is composed once, here. A pipeline is safe to share between any number of
    tasks (one per web request, say): turns on different sessions run concurrently, and
    ``StateMiddleware`` serialises turns on the same session.

    ``async with Pipeline(...) as pipe:`` calls :meth:`shutdown` on exit.
    """

    def __init__(
        self,
        *middleware: Middleware,
        max_concurrency: int | None = None,
        shutdown_timeout: float = 30.0,
        listeners: Sequence[Listener] = (),
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1, or None")
        self.middleware: tuple[Middleware, ...] = middleware
        self.shutdown_timeout = shutdown_timeout
        self._handler = build_onion(middleware)
        self._limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._closing = False
        # Streams watch for chunks emitted from other tasks (see _Driver) until their own
        # first chunk, unless every layer says it runs the rest of the turn in the turn's
        # own task (``runs_next_inline``); always, once one was seen.
        self._watch_start = not all(getattr(m, "runs_next_inline", False) for m in middleware)
        self._foreign_emits = False
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
        """True once :meth:`shutdown` was called."""
        return self._closing

    def _context(
        self, session_id: str, role: str, content: str, metadata: dict[str, Any] | None
    ) -> ExecutionContext:
        if self._closing:
            raise PipelineClosedError("the pipeline is shut down; create a new one for new turns")
        check_session_id(session_id)
        check_input(role, content)
        return ExecutionContext(session_id, Message(role, content), metadata)  # type: ignore[arg-type]

    async def _run(self, ctx: ExecutionContext) -> ExecutionResult:
        if self._closing:
            raise PipelineClosedError("the pipeline is shut down; create a new one for new turns")
        self._in_flight += 1
        events.turn_started(ctx, self.listeners)
        try:
            if self._limit is None:
                await self._handler(ctx)
            else:
                async with self._limit:
                    await self._handler(ctx)
        except BaseException as exc:
            events.turn_failed(ctx, exc)
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()
        response = ctx.response
        if response is None:
            raise PipelineError(
                "no middleware produced a response; add ProviderMiddleware as the last layer"
            )
        events.turn_completed(ctx)
        return ExecutionResult(
            session_id=ctx.session_id,
            response=response,
            cost=ctx.cost,
            usage=ctx.usage,
            messages=tuple(ctx.new_messages),
            latency=time.perf_counter() - ctx.started,
            trace=tuple(ctx.trace),
            metadata=ctx.metadata,
            estimated_prompt_tokens=ctx.estimated_prompt_tokens,
        )

    async def execute(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Run one turn and return its result.

        Runs the same onion as :meth:`stream`; the streamed chunks are discarded.

        Raises:
            InvalidRequestError: bad session id, role or content (before any I/O).
            PipelineClosedError: after :meth:`shutdown`.
            ProviderError / StoreError: from the provider or the store; the turn is then
                not stored at all.

        Cancelling the awaiting task cancels the turn: nothing of it is stored unless
        the final save had already begun, in which case the save completes first.
        """
        return await self._run(self._context(session_id, role, content, metadata))

    def stream(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> ResultStream:
        """Run one turn, yielding :class:`StreamChunk` objects as the model writes.

        Input is validated now (raising at once); the turn starts on first iteration
        and runs inside the iterating task, at the pace it reads (no task or buffer of
        its own: a slow reader slows the model's stream instead of piling it up). The
        last chunk carries ``finish_reason`` and ``final_result`` and arrives after the
        turn has been stored. Leaving ``async with``, ``aclose()``, or cancelling the
        reading task cancels the turn (nothing stored, HTTP response closed); a stream
        dropped unfinished is cancelled when collected. Read it from one task at a time::

            async with pipe.stream("user-1", "user", "Hi") as chunks:
                async for chunk in chunks:
                    print(chunk.delta, end="")
        """
        return ResultStream(self, self._context(session_id, role, content, metadata))

    async def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new turns and wait for in-flight ones to finish.

        Args:
            timeout: seconds to wait (default ``shutdown_timeout``).

        Raises:
            PipelineTimeoutError: if turns are still running after ``timeout``; they keep
                running, and calling ``shutdown`` again waits again.

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
                "call shutdown() again to keep waiting"
            ) from None
        await self.listeners.drain(wait)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


_NOTHING = object()


@types.coroutine
def _handoff(marker: asyncio.Future[None]) -> Generator[Any, None, None]:
    # Yield the driver's marker: an already-done future, so that a task other than the
    # driver's that gets here (an eager task started inside the turn) just resumes.
    marker._asyncio_future_blocking = True
    yield marker


class _Driver:
    """Runs one streamed turn inside the task that reads it: no task, no queue per turn.

    The turn is a coroutine (the onion). :meth:`step` sends into it from the reader's
    task, passes whatever it waits for (a future) up to that task, and returns when
    ``ctx.emit`` (the driver itself) hands over a chunk: called while the turn's code runs
    (``running``), emit suspends the turn by yielding the driver's marker, an already
    done future (so an eager task started inside the turn that emits just resumes). A
    chunk costs no task switch, and a reader that pauses pauses the turn
    (back-pressure). Cancelling the reader's task while it waits inside :meth:`step`
    throws ``CancelledError`` into the turn, where it was waiting.

    A chunk emitted from another task (a middleware that runs ``next`` in a task of its
    own, as ``asyncio.wait_for`` does before Python 3.12, or ``asyncio.shield``) cannot
    suspend the turn; it is queued, and the reader must be woken for it. So the driver
    *watches*: it waits for the turn's future or such a chunk, whichever comes first.
    Watching costs a future per wait, so a turn watches only until its own first chunk,
    unless its pipeline has seen chunks from other tasks before (then always), and not at
    all when every middleware declares ``runs_next_inline = True`` (the library's own do,
    ``ProviderMiddleware`` only without tools). A chunk from another task that comes when
    nobody watches waits until the turn's own task next resumes.

    The driver holds no reference to its :class:`ResultStream`, so a dropped stream is
    freed at once and its ``__del__`` can cancel the turn.
    """

    __slots__ = (
        "coro",
        "interrupted",
        "items",
        "marker",
        "parked",
        "pipeline",
        "result",
        "running",
        "stepping",
        "waiter",
        "watch",
    )

    def __init__(self, pipeline: Pipeline, ctx: ExecutionContext) -> None:
        self.pipeline = pipeline
        self.coro: Coroutine[Any, Any, ExecutionResult] | None = pipeline._run(ctx)
        self.items: deque[StreamChunk] = deque()
        # What emit() yields up the turn's coroutine to say "a chunk is ready".
        self.marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.marker.set_result(None)
        self.stepping = False  # a task is inside step()
        self.running = False  # the turn's code is executing (not waiting) right now
        # Wake for chunks from other tasks (see the class docstring)?
        self.watch = pipeline._watch_start or pipeline._foreign_emits
        self.waiter: asyncio.Future[None] | None = None
        self.parked: Any = _NOTHING  # a future the turn still waits for (see step)
        self.interrupted = False  # something was thrown in from the reader's task
        self.result: ExecutionResult | None = None

    async def __call__(self, chunk: StreamChunk) -> None:
        # The driver itself is ctx.emit (no bound method kept alive through the turn).
        self.items.append(chunk)
        if self.running:  # called by the turn itself, inside step()
            self.watch = self.pipeline._foreign_emits
            await _handoff(self.marker)  # the reader gets the chunk from this suspension
            return
        self.watch = self.pipeline._foreign_emits = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @types.coroutine
    def step(self, error: BaseException | None = None) -> Generator[Any, Any, StreamChunk | None]:
        """Run the turn until it hands over a chunk (returned) or ends (``None``)."""
        items = self.items
        if items and error is None:
            return items.popleft()
        coro = self.coro
        if coro is None:
            return None
        self.stepping = True
        marker = self.marker
        signal = self.parked
        waiting = signal is not _NOTHING
        self.parked = _NOTHING
        if waiting and error is not None:
            signal.cancel()  # as Task.cancel() does to the future its coroutine awaits
            waiting = False
        try:
            while True:
                if not waiting:
                    self.running = True
                    try:
                        if error is None:
                            signal = coro.send(None)
                        else:
                            thrown, error = error, None
                            signal = coro.throw(thrown)
                    except StopIteration as stop:
                        self.running = False
                        self.coro = None
                        result: ExecutionResult = stop.value
                        self.result = result
                        items.append(
                            StreamChunk(
                                finish_reason=result.response.finish_reason,
                                usage=result.usage,
                                final_result=result,
                            )
                        )
                        return items.popleft()
                    except BaseException:
                        self.running = False
                        self.coro = None
                        raise
                    self.running = False
                    if signal is marker:
                        return items.popleft()
                waiting = False
                if self.watch and asyncio.isfuture(signal):
                    # Wait for the turn's future or a chunk from another task, whichever
                    # comes first; on a chunk, return it and keep the turn parked.
                    waiter = self.waiter = asyncio.get_running_loop().create_future()

                    def wake(_: object, waiter: asyncio.Future[None] = waiter) -> None:
                        if not waiter.done():
                            waiter.set_result(None)

                    signal.add_done_callback(wake)
                    try:
                        yield from waiter
                    except BaseException as exc:
                        self.interrupted = True
                        signal.cancel()
                        error = exc
                    finally:
                        self.waiter = None
                        signal.remove_done_callback(wake)
                    if error is None and not signal.done():
                        self.parked = signal
                        return items.popleft()
                else:
                    try:
                        yield signal
                    except BaseException as exc:
                        self.interrupted = True
                        error = exc
                if items and error is None:
                    return items.popleft()
        finally:
            self.stepping = False

    async def cancel(self) -> None:
        """Throw ``CancelledError`` into the turn and run its clean-up to the end.

        A ``CancelledError`` that ends the turn is absorbed unless this task was itself
        cancelled meanwhile; any other error of the clean-up (a failed save) is raised.
        """
        self.items.clear()
        self.interrupted = False
        error: BaseException | None = asyncio.CancelledError()
        try:
            while self.coro is not None:
                await self.step(error)
                error = None
                self.items.clear()
        except asyncio.CancelledError:
            if self.interrupted:
                raise


_abandoned: set[asyncio.Task[None]] = set()


async def _cancel_abandoned(driver: _Driver) -> None:
    try:
        await driver.cancel()
    except Exception:
        logger.warning("a dropped stream's turn failed while it was cancelled", exc_info=True)


class ResultStream(AsyncResource, AsyncIterator[StreamChunk]):
    """The chunks of one streamed turn; see :meth:`Pipeline.stream`.

    Iterate it once, from one task at a time. The turn runs inside the iterating task
    (no extra task or queue), one chunk at a time: it advances only while you iterate, so
    a reader that stops without closing the stream keeps the session's turn open. Use
    ``async with`` (or :meth:`aclose`) to cancel a turn you stop reading early and wait
    for its clean-up; a stream that is simply dropped is cancelled in a task of its own.
    ``result`` holds the :class:`ExecutionResult` after the last chunk.
    """

    def __init__(self, pipeline: Pipeline, ctx: ExecutionContext) -> None:
        self._pipeline = pipeline
        self._ctx = ctx
        self._driver: _Driver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False
        #: The turn's result, once the last chunk was read.
        self.result: ExecutionResult | None = None

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running" if self._driver else "not started"
        return f"<ResultStream session_id={self._ctx.session_id!r} {state}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamChunk:
        # A real coroutine (not a generator) so that asyncio.create_task(anext(stream))
        # works on every Python version.
        driver = self._driver
        if driver is None:
            if self._finished:
                raise StopAsyncIteration
            self._loop = asyncio.get_running_loop()
            driver = self._driver = _Driver(self._pipeline, self._ctx)
            self._ctx.emit = driver
        elif driver.stepping:
            raise RuntimeError("this stream is already being read by another task")
        try:
            chunk = await driver.step()
        except BaseException:
            self._finished = True
            raise
        if chunk is None:
            self._finished = True
            raise StopAsyncIteration
        if chunk.final_result is not None:
            self.result = chunk.final_result
        return chunk

    async def aclose(self) -> None:
        """Cancel the turn if it is still running, and wait until it has cleaned up.

        Raises ``RuntimeError`` if another task is inside ``__anext__`` right now.
        """
        self._finished = True
        driver = self._driver
        if driver is None or driver.coro is None:
            return
        if driver.stepping:
            raise RuntimeError("aclose() while another task is reading this stream")
        await driver.cancel()

    def __del__(self) -> None:
        driver = self._driver
        if driver is None or driver.coro is None:
            return
        # Dropped mid-turn: cancel it in a task of its own (nothing is stored unless the
        # save had begun). Without a loop left to run it, just close the coroutine.
        loop = self._loop
        try:
            if loop is None or loop.is_closed():
                raise RuntimeError
            task = loop.create_task(_cancel_abandoned(driver))
            _abandoned.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(_abandoned.discard)
        except RuntimeError:
            with contextlib.suppress(RuntimeError):
                driver.coro.close()
