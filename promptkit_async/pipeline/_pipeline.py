"""The pipeline: an onion of middleware built once, run per turn, streamed or not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from typing_extensions import Self

from .._lifecycle import AsyncResource
from .._validation import check_input, check_session_id
from ..errors import PipelineClosedError, PipelineError, PipelineTimeoutError
from ..types import ExecutionResult, Message, StreamChunk
from ._context import ExecutionContext, Middleware, Next

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
        try:
            if self._limit is None:
                await self._handler(ctx)
            else:
                async with self._limit:
                    await self._handler(ctx)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()
        response = ctx.response
        if response is None:
            raise PipelineError(
                "no middleware produced a response; add ProviderMiddleware as the last layer"
            )
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

        Input is validated now (raising at once); the turn starts on first iteration.
        The last chunk carries ``finish_reason`` and ``final_result`` and arrives after
        the turn has been stored. Breaking out of the loop, ``aclose()``, or cancelling
        the consuming task cancels the turn (nothing stored, HTTP response closed)::

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

        Safe to call more than once.
        """
        self._closing = True
        if self._in_flight == 0:
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class _Channel:
    """A one-producer, one-consumer hand-off from the turn's task to the reader.

    Lighter than ``asyncio.Queue`` (no task accounting, no getter/putter deques): the
    reader parks on one future, and chunks put while it runs are drained without waking
    it again. Unbounded, so a slow reader never stalls the provider's socket (chunks are
    bounded by ``max_tokens``).
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[object] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: object) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> object:
        items = self._items
        while not items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        return items.popleft()


async def _produce(pipeline: Pipeline, ctx: ExecutionContext, channel: _Channel) -> None:
    # Runs the turn in its own task. It holds no reference to the ResultStream, so a
    # dropped stream can be collected (and its __del__ cancels this task).
    put = channel.put

    async def emit(chunk: StreamChunk) -> None:
        put(chunk)

    ctx.emit = emit
    try:
        result = await pipeline._run(ctx)
    except asyncio.CancelledError:
        put(_Failed(PipelineError("the turn was cancelled before it finished")))
        raise
    except Exception as exc:
        put(_Failed(exc))
        return
    put(
        StreamChunk(
            finish_reason=result.response.finish_reason,
            usage=result.usage,
            final_result=result,
        )
    )
    put(_END)


class ResultStream(AsyncResource, AsyncIterator[StreamChunk]):
    """The chunks of one streamed turn; see :meth:`Pipeline.stream`.

    Iterate it once. ``result`` holds the :class:`ExecutionResult` after the last chunk.
    Use ``async with`` (or :meth:`aclose`) to cancel a turn you stop reading early and
    wait for its clean-up; a stream that is simply dropped is cancelled when collected.
    """

    def __init__(self, pipeline: Pipeline, ctx: ExecutionContext) -> None:
        self._pipeline = pipeline
        self._ctx = ctx
        self._channel = _Channel()
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        #: The turn's result, once the last chunk was read.
        self.result: ExecutionResult | None = None

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running" if self._task else "not started"
        return f"<ResultStream session_id={self._ctx.session_id!r} {state}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                _produce(self._pipeline, self._ctx, self._channel)
            )
        try:
            item = await self._channel.get()
        except asyncio.CancelledError:
            # The reader was cancelled (e.g. the web client went away): cancel the turn.
            self._finished = True
            self._task.cancel()
            raise
        if type(item) is StreamChunk:
            if item.final_result is not None:
                self.result = item.final_result
            return item
        self._finished = True
        if isinstance(item, _Failed):
            raise item.error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancel the turn if it is still running, and wait until it has cleaned up."""
        self._finished = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))

    def __del__(self) -> None:
        task = self._task
        if task is not None and not task.done():
            # Dropped mid-turn: cancel it (nothing is stored). The loop may be gone already.
            with contextlib.suppress(RuntimeError):
                task.cancel()
