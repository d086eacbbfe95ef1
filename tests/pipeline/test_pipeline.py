"""Pipeline: the onion, execute/stream on one path, shutdown, concurrency cap, bad input."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import Any

import anyio
import pytest

from promptkit_async import (
    BaseProvider,
    ExecutionContext,
    InMemoryStateStore,
    InvalidMessageError,
    InvalidMiddlewareError,
    InvalidRoleError,
    InvalidSessionIdError,
    MockProvider,
    Next,
    Pipeline,
    PipelineClosedError,
    PipelineError,
    PipelineTimeoutError,
    ProviderMiddleware,
    ProviderRequest,
    ProviderResponse,
    ResultStream,
    StateMiddleware,
    StreamChunk,
)
from promptkit_async.statestore import finish_shielded
from promptkit_async.types import Message
from tests._plain_store import PlainStore


class GatedProvider(BaseProvider):
    """Streams one chunk, then waits for ``release`` before finishing; records closes."""

    def __init__(self) -> None:
        super().__init__("gated", "gpt-4o-mini")
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = 0
        self.calls = 0

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        try:
            yield StreamChunk(delta="partial ")
            self.started.set()
            await self.release.wait()
            yield StreamChunk(delta="done")
            yield StreamChunk(response=ProviderResponse("partial done", finish_reason="stop"))
        finally:
            self.closed += 1


async def test_execute_returns_response_usage_and_cost(pipeline: Pipeline) -> None:
    result = await pipeline.execute("user-123", "user", "My name is Alice")
    assert result.response.content == "reply to My name is Alice"
    assert result.response.finish_reason == "stop"
    assert result.usage.total_tokens == result.response.usage.total_tokens > 0
    assert result.cost.total_cost > 0
    assert [m.role for m in result.messages] == ["user", "assistant"]
    assert result.session_id == "user-123"
    assert result.latency > 0


async def test_second_turn_sees_history(
    pipeline: Pipeline, echo_provider: MockProvider, store: InMemoryStateStore
) -> None:
    await pipeline.execute("s", "user", "My name is Alice")
    await pipeline.execute("s", "user", "What's my name?")
    sent = echo_provider.requests[-1].messages
    assert [m.content for m in sent] == [
        "My name is Alice",
        "reply to My name is Alice",
        "What's my name?",
    ]
    assert len(await store.load("s")) == 4


async def test_stream_yields_deltas_then_final_chunk(
    pipeline: Pipeline, store: InMemoryStateStore
) -> None:
    chunks = [c async for c in pipeline.stream("s", "user", "hello there")]
    text = "".join(c.delta for c in chunks)
    assert text == "reply to hello there"
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.final_result is not None
    assert last.final_result.response.content == text
    assert all(c.final_result is None for c in chunks[:-1])
    # The final chunk arrives after the turn was stored.
    assert len(await store.load("s")) == 2


async def test_result_stream_exposes_result_and_context_manager(pipeline: Pipeline) -> None:
    async with pipeline.stream("s", "user", "hi") as chunks:
        async for _ in chunks:
            pass
    assert chunks.result is not None
    assert chunks.result.response.content == "reply to hi"


async def test_middleware_forms_and_onion_order(echo_provider: MockProvider) -> None:
    order: list[str] = []

    async def plain(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        order.append("plain:before")
        async for chunk in next(ctx):
            yield chunk
        order.append("plain:after")

    class AsClass:
        async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
            order.append("class:before")
            async for chunk in next(ctx):
                yield chunk
            order.append("class:after")

    pipe = Pipeline(plain, AsClass(), ProviderMiddleware(echo_provider))
    await pipe.execute("s", "user", "x")
    assert order == ["plain:before", "class:before", "class:after", "plain:after"]


async def test_middleware_may_answer_without_calling_next(
    store: InMemoryStateStore, echo_provider: MockProvider
) -> None:
    async def canned(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        if ctx.input.content == "ping":
            ctx.response = ProviderResponse("pong", finish_reason="stop")
            ctx.new_messages.append(ctx.response.to_message())
            return
        async for chunk in next(ctx):
            yield chunk

    pipe = Pipeline(StateMiddleware(store), canned, ProviderMiddleware(echo_provider))
    result = await pipe.execute("s", "user", "ping")
    assert result.response.content == "pong"
    assert echo_provider.requests == []
    assert [m.content for m in await store.load("s")] == ["ping", "pong"]


async def test_middleware_observes_and_transforms_stream(echo_provider: MockProvider) -> None:
    seen: list[str] = []

    async def shout(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        async for chunk in next(ctx):
            seen.append(chunk.delta)
            yield StreamChunk(delta=chunk.delta.upper())

    pipe = Pipeline(shout, ProviderMiddleware(echo_provider))
    chunks = [c.delta async for c in pipe.stream("s", "user", "quiet words")]
    assert "".join(seen) == "reply to quiet words"
    assert "".join(chunks) == "REPLY TO QUIET WORDS"
    # execute runs the same onion: the middleware sees the chunks there too.
    seen.clear()
    await pipe.execute("s", "user", "again")
    assert "".join(seen) == "reply to again"


async def test_no_response_is_a_pipeline_error(store: InMemoryStateStore) -> None:
    async def nothing(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        async for chunk in next(ctx):
            yield chunk

    pipe = Pipeline(StateMiddleware(store), nothing)
    with pytest.raises(PipelineError, match="ProviderMiddleware"):
        await pipe.execute("s", "user", "hi")
    assert await store.load("s") == []


def test_non_callable_middleware_is_rejected() -> None:
    with pytest.raises(InvalidMiddlewareError, match="async generator function"):
        Pipeline("not a middleware")  # type: ignore[arg-type]


def test_coroutine_middleware_is_rejected_with_the_way_to_fix_it() -> None:
    async def old_style(ctx: ExecutionContext, next: object) -> None:
        pass

    class OldStyle:
        async def __call__(self, ctx: ExecutionContext, next: object) -> None:
            pass

    for layer in (old_style, OldStyle()):
        with pytest.raises(TypeError, match=r"async for chunk in next\(ctx\): yield chunk"):
            Pipeline(layer)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("session_id", "error"),
    [
        ("", InvalidSessionIdError),
        ("   ", InvalidSessionIdError),
        ("x" * 1025, InvalidSessionIdError),
        ("a\x00b", InvalidSessionIdError),
        ("\ud800", InvalidSessionIdError),
        (123, InvalidSessionIdError),
    ],
)
async def test_bad_session_ids_fail_before_any_io(
    pipeline: Pipeline,
    echo_provider: MockProvider,
    store: InMemoryStateStore,
    session_id: object,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await pipeline.execute(session_id, "user", "hi")  # type: ignore[arg-type]
    with pytest.raises(error):
        pipeline.stream(session_id, "user", "hi")  # type: ignore[arg-type]
    assert echo_provider.requests == []
    assert (await store.list_sessions()).session_ids == ()


async def test_longest_allowed_session_id_works(pipeline: Pipeline) -> None:
    result = await pipeline.execute("x" * 1024, "user", "hi")
    assert result.session_id == "x" * 1024


@pytest.mark.parametrize(
    ("role", "content", "error"),
    [
        ("robot", "hi", InvalidRoleError),
        ("tool", "hi", InvalidRoleError),
        ("user", "", InvalidMessageError),
        ("user", "  \n", InvalidMessageError),
        ("user", b"bytes", InvalidMessageError),
    ],
)
async def test_bad_role_or_content_fail_before_any_io(
    pipeline: Pipeline,
    echo_provider: MockProvider,
    store: InMemoryStateStore,
    role: str,
    content: object,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await pipeline.execute("s", role, content)  # type: ignore[arg-type]
    assert echo_provider.requests == []
    assert await store.load("s") == []


async def test_invalid_input_errors_are_value_errors(pipeline: Pipeline) -> None:
    with pytest.raises(ValueError, match="unknown role 'robot'"):
        await pipeline.execute("s", "robot", "hi")


async def test_shutdown_drains_in_flight_and_refuses_new_turns(
    store: InMemoryStateStore,
) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    turn = asyncio.create_task(pipe.execute("s", "user", "hi"))
    await provider.started.wait()
    assert pipe.in_flight == 1

    shutting = asyncio.create_task(pipe.shutdown())
    await asyncio.sleep(0)  # one loop step: lets the shutdown task start
    with pytest.raises(PipelineClosedError):
        await pipe.execute("s", "user", "too late")
    with pytest.raises(PipelineClosedError):
        pipe.stream("s", "user", "too late")
    assert not shutting.done()

    provider.release.set()
    result = await turn
    await shutting
    assert result.response.content == "partial done"
    assert [m.content for m in await store.load("s")] == ["hi", "partial done"]
    assert pipe.closed
    await pipe.shutdown()  # twice is fine


async def test_shutdown_timeout_reports_running_turns(store: InMemoryStateStore) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    turn = asyncio.create_task(pipe.execute("s", "user", "hi"))
    await provider.started.wait()
    with pytest.raises(PipelineTimeoutError, match="1 turn"):
        await pipe.shutdown(timeout=0.01)
    provider.release.set()
    await turn
    await pipe.shutdown(timeout=1)


async def test_async_with_shuts_down(echo_provider: MockProvider) -> None:
    async with Pipeline(ProviderMiddleware(echo_provider)) as pipe:
        await pipe.execute("s", "user", "hi")
    assert pipe.closed
    with pytest.raises(PipelineClosedError):
        await pipe.execute("s", "user", "hi")


async def test_max_concurrency_caps_running_turns() -> None:
    running = 0
    peak = 0
    gate = asyncio.Event()
    entered = asyncio.Queue[None]()

    async def handler(request: ProviderRequest) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        entered.put_nowait(None)
        await gate.wait()
        running -= 1
        return "ok"

    pipe = Pipeline(ProviderMiddleware(MockProvider(handler=handler)), max_concurrency=2)
    turns = [asyncio.create_task(pipe.execute(f"s{i}", "user", "hi")) for i in range(6)]
    await entered.get()
    await entered.get()
    gate.set()
    await asyncio.gather(*turns)
    assert peak == 2


async def test_cancelling_stream_consumer_cancels_turn_and_stores_nothing(
    store: InMemoryStateStore,
) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    first = asyncio.Event()

    async def consume() -> None:
        async for _chunk in pipe.stream("s", "user", "hi"):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pipe.shutdown(timeout=5)  # the turn's task has finished its clean-up
    assert provider.closed == 1
    assert await store.load("s") == []


async def test_aclose_mid_stream_cancels_and_cleans_up(store: InMemoryStateStore) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    stream = pipe.stream("s", "user", "hi")
    chunk = await stream.__anext__()
    assert chunk.delta == "partial "
    await stream.aclose()
    assert provider.closed == 1
    assert pipe.in_flight == 0
    assert await store.load("s") == []
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_dropped_stream_is_cancelled(store: InMemoryStateStore) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))

    async def read_one_and_drop() -> None:
        async for _chunk in pipe.stream("s", "user", "hi"):
            break

    await read_one_and_drop()
    gc.collect()
    await pipe.shutdown(timeout=5)
    assert provider.closed == 1
    assert await store.load("s") == []


async def test_cancelling_execute_stores_nothing(store: InMemoryStateStore) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    task = asyncio.create_task(pipe.execute("s", "user", "hi"))
    await provider.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.closed == 1
    assert pipe.in_flight == 0
    assert await store.load("s") == []
    # The session is usable afterwards (its lock was released).
    provider.release.set()
    result = await pipe.execute("s", "user", "again")
    assert result.response.content == "partial done"


async def test_stream_error_is_raised_to_reader_and_nothing_stored(
    store: InMemoryStateStore,
) -> None:
    provider = MockProvider([RuntimeError("model exploded")])
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    with pytest.raises(RuntimeError, match="model exploded"):
        async for _ in pipe.stream("s", "user", "hi"):
            pass
    assert await store.load("s") == []


async def test_system_prompt_is_kept_first(
    pipeline: Pipeline, store: InMemoryStateStore, echo_provider: MockProvider
) -> None:
    persona = Message("system", "You speak like a pirate.")
    await store.save("s", [persona])
    await pipeline.execute("s", "user", "hello")
    await pipeline.execute("s", "user", "again")
    assert echo_provider.requests[-1].messages[0] == persona
    stored = await store.load("s")
    assert stored[0] == persona
    assert len(stored) == 5


# --- streams run inside the reading task ---------------------------------------------------


class CountingProvider(BaseProvider):
    """Streams ``n`` deltas, counting how many it has produced; each waits on the loop."""

    def __init__(self, n: int = 3) -> None:
        super().__init__("counting", "gpt-4o-mini")
        self.n = n
        self.reset()

    def reset(self) -> None:
        """Ready for another turn: nothing produced, every gate closed."""
        self.produced = 0
        self.gates = [asyncio.Event() for _ in range(self.n)]

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        for i in range(self.n):
            await self.gates[i].wait()  # like a network read: the turn waits for a future
            self.produced += 1
            yield StreamChunk(delta=f"d{i} ")
        yield StreamChunk(response=ProviderResponse("done", finish_reason="stop"))


async def test_stream_advances_only_as_it_is_read(store: InMemoryStateStore) -> None:
    provider = CountingProvider(n=2)
    for gate in provider.gates:
        gate.set()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    async with pipe.stream("s", "user", "hi") as chunks:
        first = await chunks.__anext__()
        for _ in range(5):
            await asyncio.sleep(0)  # give a background producer every chance to run ahead
        assert (first.delta, provider.produced) == ("d0 ", 1)
        rest = [c async for c in chunks]
    assert [c.delta for c in rest] == ["d1 ", ""]
    assert rest[-1].final_result is not None
    assert [m.content for m in await store.load("s")] == ["hi", "done"]


async def test_wait_for_on_each_chunk_times_out_and_cancels_the_turn(
    store: InMemoryStateStore,
) -> None:
    provider = GatedProvider()  # one chunk, then waits for release (never given)
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    stream = pipe.stream("s", "user", "hi")
    chunk = await asyncio.wait_for(stream.__anext__(), 5)
    assert chunk.delta == "partial "
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stream.__anext__(), 0.05)
    assert provider.closed == 1
    assert pipe.in_flight == 0
    assert await store.load("s") == []
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_one_stream_is_read_by_one_task_at_a_time(store: InMemoryStateStore) -> None:
    provider = GatedProvider()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    stream = pipe.stream("s", "user", "hi")
    await stream.__anext__()
    pending = asyncio.create_task(stream.__anext__())  # waits for release
    await provider.started.wait()
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already being read"):
        await stream.__anext__()
    with pytest.raises(RuntimeError, match="another task is reading"):
        await stream.aclose()
    provider.release.set()
    assert (await pending).delta == "done"
    await stream.aclose()
    assert provider.closed == 1
    assert await store.load("s") == []


async def test_a_failed_save_during_aclose_is_raised(store: InMemoryStateStore) -> None:
    class FailingSave(InMemoryStateStore):
        async def end_turn(self, session_id: str, token: int, messages: object, **kw: Any) -> None:
            await asyncio.sleep(0)
            raise OSError("disk gone")

    provider = CountingProvider(n=1)
    provider.gates[0].set()
    pipe = Pipeline(StateMiddleware(FailingSave()), ProviderMiddleware(provider))
    stream = pipe.stream("s", "user", "hi")
    with pytest.raises(OSError, match="disk gone"):
        async for _ in stream:
            pass
    await stream.aclose()  # finished already: nothing left to raise
    assert pipe.in_flight == 0


# --- user code around our awaits behaves as in plain asyncio ----------------------------


async def read_from_successive_tasks(stream: ResultStream) -> list[StreamChunk]:
    """Each chunk read in a task of its own, as ``asyncio.wait_for(anext(...))`` does."""
    chunks: list[StreamChunk] = []
    while True:
        try:
            chunks.append(await asyncio.create_task(_anext(stream)))
        except StopAsyncIteration:
            return chunks


async def _anext(stream: ResultStream) -> StreamChunk:
    return await stream.__anext__()


class SlowLookup:
    """A middleware that awaits a slow lookup under a timeout between two chunks."""

    def __init__(self, timeout: Callable[[float], AbstractAsyncContextManager[object]]) -> None:
        self.timeout = timeout
        self.lookup = asyncio.Event()  # never set unless a test wants the lookup to end

    async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        first = True
        async for chunk in next(ctx):
            yield chunk
            if first:
                first = False
                async with self.timeout(0.05):  # around an await, between yields
                    await self.lookup.wait()


@asynccontextmanager
async def _fail_after(seconds: float) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):  # anyio's scope is a plain (sync) context manager
        yield


def _asyncio_timeout(seconds: float) -> AbstractAsyncContextManager[object]:
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    return _fail_after(seconds)  # asyncio.timeout is 3.11+


def _ready_pipeline(store: InMemoryStateStore, lookup: SlowLookup) -> Pipeline:
    provider = CountingProvider(n=3)
    for gate in provider.gates:
        gate.set()
    return Pipeline(StateMiddleware(store), lookup, ProviderMiddleware(provider))


@pytest.mark.parametrize("scope", [_asyncio_timeout, _fail_after])
async def test_a_timeout_inside_a_middleware_fires_when_read_from_successive_tasks(
    store: InMemoryStateStore,
    scope: Callable[[float], AbstractAsyncContextManager[object]],
) -> None:
    pipe = _ready_pipeline(store, SlowLookup(scope))
    stream = pipe.stream("s", "user", "hi")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_from_successive_tasks(stream), 5)
    assert pipe.in_flight == 0
    assert await store.load("s") == []  # the turn failed: nothing stored


@pytest.mark.parametrize("scope", [_asyncio_timeout, _fail_after])
async def test_a_timeout_inside_a_middleware_that_does_not_expire_changes_nothing(
    store: InMemoryStateStore,
    scope: Callable[[float], AbstractAsyncContextManager[object]],
) -> None:
    lookup = SlowLookup(lambda _: scope(5))
    lookup.lookup.set()
    pipe = _ready_pipeline(store, lookup)
    chunks = await asyncio.wait_for(read_from_successive_tasks(pipe.stream("s", "user", "hi")), 5)
    assert [c.delta for c in chunks] == ["d0 ", "d1 ", "d2 ", ""]
    assert chunks[-1].final_result is not None
    assert [m.content for m in await store.load("s")] == ["hi", "done"]


class TimedAppendStore(PlainStore):
    """A custom store whose append waits on a stuck disk under its own timeout."""

    def __init__(self, timeout: Callable[[float], AbstractAsyncContextManager[object]]) -> None:
        super().__init__()
        self.timeout = timeout
        self.disk = asyncio.Event()

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        await finish_shielded(self._write(session_id, messages))

    async def _write(self, session_id: str, messages: Sequence[Message]) -> None:
        async with self.timeout(0.05):
            await self.disk.wait()
        await self.inner.append(session_id, messages)


class TimedEndStore(InMemoryStateStore):
    """A store with session leases whose end_turn waits on a stuck disk under its own
    timeout."""

    def __init__(self, timeout: Callable[[float], AbstractAsyncContextManager[object]]) -> None:
        super().__init__()
        self.timeout = timeout
        self.disk = asyncio.Event()

    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        await finish_shielded(self._write(session_id, token, messages, **kw))

    async def _write(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        async with self.timeout(0.05):
            await self.disk.wait()
        await super().end_turn(session_id, token, messages, **kw)


@pytest.mark.parametrize("kind", [TimedAppendStore, TimedEndStore])
@pytest.mark.parametrize("scope", [_asyncio_timeout, _fail_after])
async def test_a_timeout_inside_a_custom_stores_append_fires(
    scope: Callable[[float], AbstractAsyncContextManager[object]], kind: Any
) -> None:
    store = kind(scope)
    provider = CountingProvider(n=2)
    for gate in provider.gates:
        gate.set()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_from_successive_tasks(pipe.stream("s", "user", "hi")), 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pipe.execute("s", "user", "again"), 5)
    assert pipe.in_flight == 0
    assert await store.load("s") == []


async def test_a_timeout_around_the_reader_ends_the_turn(store: InMemoryStateStore) -> None:
    provider = GatedProvider()  # one chunk, then waits for release (never given)
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    got: list[str] = []

    async def read() -> None:
        async with _asyncio_timeout(0.05), pipe.stream("s", "user", "hi") as chunks:
            async for chunk in chunks:
                got.append(chunk.delta)

    with pytest.raises(TimeoutError):
        await read()
    assert got == ["partial "]
    assert provider.closed == 1
    assert pipe.in_flight == 0
    assert await store.load("s") == []


async def test_a_middleware_that_stops_early_closes_the_layers_inside_it(
    store: InMemoryStateStore,
) -> None:
    """Layers below a middleware that stops iterating are closed before the turn ends."""
    provider = GatedProvider()

    async def first_chunk_only(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        async for chunk in next(ctx):
            ctx.response = ProviderResponse(chunk.delta, finish_reason="length")
            ctx.new_messages.append(ctx.response.to_message())
            yield chunk
            break  # never resumes the provider: it must still be closed, now

    pipe = Pipeline(StateMiddleware(store), first_chunk_only, ProviderMiddleware(provider))
    result = await asyncio.wait_for(pipe.execute("s", "user", "hi"), 5)
    assert result.response.content == "partial "
    assert provider.closed == 1  # closed before execute returned, not later by the GC
    assert [m.content for m in await store.load("s")] == ["hi", "partial "]


async def test_the_last_layers_next_is_an_empty_stream_that_closes() -> None:
    # The innermost ``next`` is shared and stateless (no generator per turn), yet behaves
    # as an empty async generator would: nothing to read, and aclose() works.
    seen: list[list[StreamChunk]] = []

    async def last(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        for _ in range(2):  # twice: the shared end has no state to run out of
            async with aclosing(next(ctx)) as rest:
                seen.append([chunk async for chunk in rest])
        async for chunk in ProviderMiddleware(MockProvider(handler=lambda r: "hi"))(ctx, next):
            yield chunk

    async with Pipeline(last) as pipe:
        result = await pipe.execute("s", "user", "Hi")
    assert result.response.content == "hi"
    assert seen == [[], []]
