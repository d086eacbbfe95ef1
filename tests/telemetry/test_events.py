"""The event model and listener dispatch: what a turn publishes, in which order, and that
listeners (sync, async, slow, failing) never break or block a turn."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import types
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from promptkit_async import (
    ContextWindowMiddleware,
    ExecutionContext,
    InMemoryStateStore,
    Message,
    MockProvider,
    Next,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    ProviderResponse,
    StateMiddleware,
    StreamChunk,
    ToolCall,
)
from promptkit_async.events import (
    Event,
    FirstChunk,
    HistoryLoaded,
    ListenerSet,
    ProviderCallFinished,
    ProviderRequestSent,
    ProviderRetried,
    ToolCallFinished,
    ToolCallStarted,
    TurnCancelled,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    TurnStored,
    WindowTrimmed,
)
from promptkit_async.providers import OpenAIProvider
from tests._otel import CHAT_URL, completion


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def make(provider: MockProvider, *listeners: object, **kwargs: object) -> Pipeline:
    return Pipeline(
        StateMiddleware(InMemoryStateStore()),
        ProviderMiddleware(provider, kwargs.pop("tools", None), config=kwargs.pop("config", None)),  # type: ignore[arg-type]
        listeners=listeners,  # type: ignore[arg-type]
    )


async def test_a_plain_turn_publishes_in_order() -> None:
    seen = Recorder()
    pipe = make(MockProvider(["Hi!", "Hi again"], model="gpt-4o-mini"), seen)
    result = await pipe.execute("s1", "user", "Hello")
    assert seen.kinds() == [
        "TurnStarted",
        "HistoryLoaded",
        "ProviderCallStarted",
        "FirstChunk",
        "ProviderCallFinished",
        "TurnStored",
        "TurnCompleted",
    ]
    turn_ids = {e.turn_id for e in seen.events}
    assert len(turn_ids) == 1
    assert {e.session_id for e in seen.events} == {"s1"}
    [finished] = seen.of(ProviderCallFinished)
    assert isinstance(finished, ProviderCallFinished)
    assert finished.response is result.response
    assert finished.error is None
    assert finished.attempts == 1
    assert finished.time_to_first_chunk is not None
    assert finished.time_to_first_chunk <= finished.duration
    [completed] = seen.of(TurnCompleted)
    assert isinstance(completed, TurnCompleted)
    assert completed.usage == result.usage
    assert completed.cost == result.cost
    assert completed.messages == 2
    assert completed.finish_reason == "stop"
    [stored] = seen.of(TurnStored)
    assert isinstance(stored, TurnStored)
    assert stored.messages == 2
    assert stored.store == "InMemoryStateStore"
    # A second turn has its own id and sees the history.
    await pipe.execute("s1", "user", "Again")
    loaded = seen.of(HistoryLoaded)
    assert [e.messages for e in loaded] == [0, 2]  # type: ignore[attr-defined]
    assert len({e.turn_id for e in seen.events}) == 2


async def test_no_listener_no_events_object() -> None:
    seen: list[ExecutionContext] = []

    async def spy(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        seen.append(ctx)
        async for chunk in next(ctx):
            yield chunk

    pipe = Pipeline(spy, ProviderMiddleware(MockProvider(["ok", "ok"])))
    await pipe.execute("s", "user", "Hi")
    assert seen[0].events is None
    recorder = Recorder()
    pipe.listeners.add(recorder)
    await pipe.execute("s", "user", "Hi")
    assert seen[1].events is not None
    assert recorder.kinds()[0] == "TurnStarted"


async def test_tool_events() -> None:
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    provider = MockProvider(
        [
            ProviderResponse(tool_calls=(ToolCall("c1", "add", '{"a": 2, "b": 3}'),)),
            "5",
        ]
    )
    seen = Recorder()
    pipe = make(provider, seen, tools=[add])
    await pipe.execute("s", "user", "2+3?")
    [started] = seen.of(ToolCallStarted)
    [finished] = seen.of(ToolCallFinished)
    assert isinstance(started, ToolCallStarted)
    assert isinstance(finished, ToolCallFinished)
    assert (started.name, started.call_id, started.arguments) == ("add", "c1", '{"a": 2, "b": 3}')
    assert (finished.status, finished.result) == ("ok", "5")
    kinds = seen.kinds()
    assert kinds.index("ToolCallStarted") > kinds.index("ProviderCallFinished")
    assert kinds.count("ProviderCallStarted") == 2


async def test_failed_and_cancelled_turns() -> None:
    seen = Recorder()
    pipe = make(MockProvider([ValueError("boom")]), seen)
    with pytest.raises(ValueError, match="boom"):
        await pipe.execute("s", "user", "Hi")
    [failed] = seen.of(TurnFailed)
    assert isinstance(failed, TurnFailed)
    assert isinstance(failed.error, ValueError)
    [call] = seen.of(ProviderCallFinished)
    assert isinstance(call, ProviderCallFinished)
    assert isinstance(call.error, ValueError)
    assert call.response is None
    assert not seen.of(TurnStored)

    called = asyncio.Event()

    async def hang(request: object) -> str:
        called.set()
        await asyncio.Event().wait()
        return "never"  # pragma: no cover

    seen = Recorder()
    pipe = make(MockProvider(handler=hang), seen, config=ProviderMiddlewareConfig(stream=False))
    task = asyncio.create_task(pipe.execute("s", "user", "Hi"))
    await called.wait()
    assert seen.kinds()[-1] == "ProviderCallStarted"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen.kinds()[-2:] == ["ProviderCallFinished", "TurnCancelled"]
    assert not seen.of(TurnFailed)


async def test_window_trimmed_event() -> None:
    store = InMemoryStateStore()
    await store.append("s", [Message("user", "x " * 400), Message("assistant", "y " * 400)] * 3)
    seen = Recorder()
    pipe = Pipeline(
        StateMiddleware(store),
        ContextWindowMiddleware(300, model="gpt-4o-mini", reserve_output_tokens=50),
        ProviderMiddleware(MockProvider(["ok"])),
        listeners=[seen],
    )
    await pipe.execute("s", "user", "Hi")
    [trimmed] = seen.of(WindowTrimmed)
    assert isinstance(trimmed, WindowTrimmed)
    assert trimmed.dropped > 0
    assert trimmed.sent < trimmed.messages
    assert trimmed.tokens <= trimmed.budget


async def test_http_attempts_and_retries_reach_the_turn(
    router: respx.MockRouter, openai: OpenAIProvider
) -> None:
    router.post(CHAT_URL).mock(
        side_effect=[
            httpx.Response(429, json={}, headers={"retry-after-ms": "1"}),
            httpx.Response(200, json=completion()),
        ]
    )
    seen = Recorder()
    pipe = make(openai, seen, config=ProviderMiddlewareConfig(stream=False))  # type: ignore[arg-type]
    await pipe.execute("s", "user", "Hi")
    assert [e.attempt for e in seen.of(ProviderRequestSent)] == [1, 2]  # type: ignore[attr-defined]
    [retry] = seen.of(ProviderRetried)
    assert isinstance(retry, ProviderRetried)
    assert (retry.attempt, retry.status, retry.reason) == (1, 429, "HTTP 429")
    assert retry.error_type == "RateLimitError"
    assert retry.wait == pytest.approx(0.001)
    # The provider's own calls outside a pipeline report nowhere (and do not fail).
    router.post(CHAT_URL).mock(return_value=httpx.Response(200, json=completion()))
    from promptkit_async.providers import ProviderRequest

    before = len(seen.events)
    await openai.complete(ProviderRequest([Message("user", "direct")]))
    assert len(seen.events) == before


async def test_a_failing_listener_never_breaks_a_turn(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    seen = Recorder()
    pipe = make(MockProvider(["ok", "ok"]), broken, seen)
    with caplog.at_level(logging.DEBUG, logger="promptkit_async.events"):
        result = await pipe.execute("s", "user", "Hi")
        await pipe.execute("s", "user", "Hi")
    assert result.response.content == "ok"
    assert seen.kinds()[-1] == "TurnCompleted"  # later listeners still got everything
    assert pipe.listeners.failures == len(seen.events)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # loud once, then quiet
    assert "listener bug" in (caplog.text)


async def test_async_listeners_run_in_the_background_in_order() -> None:
    release = asyncio.Event()
    got: list[str] = []

    async def slow(event: Event) -> None:
        await release.wait()
        got.append(type(event).__name__)

    pipe = make(MockProvider(["ok"]), slow)
    # The turn completes although the listener is blocked.
    result = await asyncio.wait_for(pipe.execute("s", "user", "Hi"), 5)
    assert result.response.content == "ok"
    assert got == []
    assert pipe.listeners.pending > 0
    release.set()
    await pipe.shutdown(timeout=5)  # drains the backlog
    assert got[0] == "TurnStarted"
    assert got[-1] == "TurnCompleted"
    assert pipe.listeners.pending == 0


async def test_failing_async_listener_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(event: Event) -> None:
        raise RuntimeError("async listener bug")

    pipe = make(MockProvider(["ok"]), broken)
    with caplog.at_level(logging.WARNING, logger="promptkit_async.events"):
        await pipe.execute("s", "user", "Hi")
        assert await pipe.listeners.drain(5)
    assert "async listener bug" in caplog.text
    assert pipe.listeners.failures > 0


async def test_backlog_is_bounded() -> None:
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    listeners = ListenerSet([slow], max_pending=3)
    for i in range(10):
        listeners.publish(TurnStarted("s", str(i), "user"))
    assert listeners.pending <= 3
    assert listeners.dropped >= 6
    assert not await listeners.drain(timeout=0.01)  # still blocked: reports it
    release.set()
    assert await listeners.drain(timeout=5)
    assert listeners.pending == 0


async def test_drain_timeout_keeps_the_backlog_running() -> None:
    release = asyncio.Event()
    done: list[Event] = []

    async def slow(event: Event) -> None:
        await release.wait()
        done.append(event)

    listeners = ListenerSet([slow])
    listeners.publish(TurnStarted("s", "t", "user"))
    assert not await listeners.drain(timeout=0.01)
    release.set()
    assert await listeners.drain(timeout=5)
    assert len(done) == 1


def test_listener_set_api() -> None:
    listeners = ListenerSet()
    assert not listeners

    def one(event: Event) -> None:
        pass

    listeners.add(one)
    listeners.add(one)
    assert len(listeners) == 1
    listeners.remove(one)
    listeners.remove(one)
    assert not listeners
    with pytest.raises(TypeError, match="callable"):
        listeners.add("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending"):
        ListenerSet(max_pending=0)


async def test_first_chunk_only_once_per_call() -> None:
    seen = Recorder()
    pipe = make(MockProvider(["a long reply in many chunks"], chunk_size=2), seen)
    async with pipe.stream("s", "user", "Hi") as chunks:
        async for _ in chunks:
            pass
    assert len(seen.of(FirstChunk)) == 1


def test_importing_the_library_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, promptkit_async, promptkit_async.events, promptkit_async.telemetry\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_opentelemetry_the_error_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('opentelemetry'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import promptkit_async.telemetry as t\n"
        "try:\n"
        "    t.OpenTelemetryListener\n"
        "except ImportError as e:\n"
        "    assert 'promptkit-async[otel]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_dropped_stream_is_reported_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    import gc

    seen = Recorder()
    cancelled = asyncio.Event()

    def watch(event: Event) -> None:
        seen(event)
        if isinstance(event, TurnCancelled):
            cancelled.set()

    class Hanging(MockProvider):
        async def stream(self, request):  # type: ignore[no-untyped-def,override]
            yield StreamChunk(delta="first")
            await asyncio.Event().wait()

    pipe = make(Hanging(), watch)

    async def read_one() -> None:
        stream = pipe.stream("s", "user", "Hi")
        assert (await stream.__anext__()).delta == "first"
        # dropped here, mid-turn, from a task that then ends

    await asyncio.create_task(read_one())
    gc.collect()
    await asyncio.wait_for(cancelled.wait(), 5)
    assert seen.kinds()[-2:] == ["ProviderCallFinished", "TurnCancelled"]
    assert "failed while it was cancelled" not in caplog.text


def test_public_names_exist_and_have_docstrings() -> None:
    import inspect

    import promptkit_async.events as events_module
    import promptkit_async.telemetry as telemetry_module
    import promptkit_async.telemetry.otel as otel_module

    for module in (events_module, telemetry_module, otel_module):
        names = module.__all__
        assert names == sorted(names)
        for name in names:
            obj = getattr(module, name)
            # Type aliases (Listener = Callable[...]) carry no docstring; Python 3.10
            # reports them as classes.
            if isinstance(obj, types.GenericAlias) or "Callable[" in repr(obj):
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


async def test_a_slow_plain_listener_in_a_thread_does_not_block_turns() -> None:
    import threading

    from promptkit_async.events import in_thread

    release = threading.Event()
    got: list[str] = []

    def slow(event: Event) -> None:  # blocking I/O, say
        assert release.wait(10)
        got.append(type(event).__name__)

    pipe = make(MockProvider(["ok"]), in_thread(slow))
    result = await asyncio.wait_for(pipe.execute("s", "user", "Hi"), 5)
    assert result.response.content == "ok"
    assert got == []  # the turn finished while the listener was blocked
    release.set()
    assert await pipe.listeners.drain(10)
    assert got[0] == "TurnStarted"
    assert got[-1] == "TurnCompleted"
    assert len(got) == 7


def test_a_listener_set_outlives_its_event_loop() -> None:
    got: list[str] = []
    gate: list[asyncio.Event] = []

    async def listener(event: Event) -> None:
        if not gate:
            gate.append(asyncio.Event())
            await gate[0].wait()  # blocks forever in the first loop
        got.append(event.turn_id)

    listeners = ListenerSet([listener])
    first = asyncio.new_event_loop()

    async def publish_one(turn_id: str) -> None:
        listeners.publish(TurnStarted("s", turn_id, "user"))
        await asyncio.sleep(0)

    first.run_until_complete(publish_one("1"))
    first.close()  # closed with the worker still blocked (never cancelled)

    async def second() -> bool:
        await publish_one("2")
        return await listeners.drain(5)

    assert asyncio.run(second())
    assert "2" in got


def test_publishing_outside_a_loop_drops_async_work() -> None:
    async def listener(event: Event) -> None:
        raise AssertionError("never run")  # pragma: no cover

    listeners = ListenerSet([listener])
    listeners.publish(TurnStarted("s", "t", "user"))
    assert listeners.dropped == 1
    assert listeners.pending == 0
