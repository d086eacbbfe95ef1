"""StateMiddleware: per-session serialisation, whole-or-nothing turns, isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from promptkit_async import (
    ExecutionContext,
    InMemoryStateStore,
    Message,
    MockProvider,
    Next,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    RateLimitError,
    StateMiddleware,
    StreamChunk,
)
from promptkit_async.statestore import finish_shielded


def assert_paired(history: Sequence[Message]) -> None:
    """Every user message is directly followed by the reply that names it."""
    assert len(history) % 2 == 0
    for user, reply in zip(history[::2], history[1::2], strict=True):
        assert user.role == "user"
        assert reply.role == "assistant"
        assert reply.content == f"reply to {user.content}"


async def test_100_concurrent_turns_on_one_session_are_serialised(
    pipeline: Pipeline, store: InMemoryStateStore
) -> None:
    await asyncio.gather(*(pipeline.execute("shared", "user", f"message {i}") for i in range(100)))
    history = await store.load("shared")
    assert len(history) == 200
    assert_paired(history)
    assert {m.content for m in history[::2]} == {f"message {i}" for i in range(100)}


async def test_each_turn_sees_all_previous_turns_of_its_session(
    store: InMemoryStateStore,
) -> None:
    seen: list[int] = []

    def handler(request: ProviderRequest) -> str:
        seen.append(len(request.messages))
        return f"reply to {request.messages[-1].content}"

    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(MockProvider(handler=handler)))
    await asyncio.gather(*(pipe.execute("s", "user", f"m{i}") for i in range(20)))
    assert sorted(seen) == list(range(1, 40, 2))


async def test_1000_sessions_in_parallel_stay_isolated(
    pipeline: Pipeline, store: InMemoryStateStore
) -> None:
    async def conversation(n: int) -> None:
        for turn in range(2):
            await pipeline.execute(f"user-{n}", "user", f"user {n} turn {turn}")

    await asyncio.gather(*(conversation(n) for n in range(1000)))
    for n in range(1000):
        history = await store.load(f"user-{n}")
        assert [m.content for m in history[::2]] == [f"user {n} turn 0", f"user {n} turn 1"]
        assert_paired(history)


async def test_different_sessions_run_concurrently(store: InMemoryStateStore) -> None:
    # Session A's model call waits for session B's: a global lock would deadlock here.
    b_done = asyncio.Event()

    async def handler(request: ProviderRequest) -> str:
        if request.messages[-1].content == "from A":
            await b_done.wait()
        else:
            b_done.set()
        return "ok"

    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(MockProvider(handler=handler)))
    await asyncio.wait_for(
        asyncio.gather(pipe.execute("A", "user", "from A"), pipe.execute("B", "user", "from B")),
        timeout=10,
    )


async def test_provider_error_stores_nothing_and_session_recovers(
    store: InMemoryStateStore,
) -> None:
    limited = RateLimitError("slow down", status_code=429, provider="mock")
    provider = MockProvider(["first", limited, "third"])
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    await pipe.execute("s", "user", "one")
    with pytest.raises(RateLimitError):
        await pipe.execute("s", "user", "two")
    await pipe.execute("s", "user", "three")
    assert [m.content for m in await store.load("s")] == ["one", "first", "three", "third"]


class SlowAppendStore(InMemoryStateStore):
    """A store whose turn save waits for a signal (to cancel mid-save), written as the
    StateStore contract asks of a store that suspends: through ``finish_shielded``."""

    def __init__(self) -> None:
        super().__init__()
        self.appending = asyncio.Event()
        self.proceed = asyncio.Event()

    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        await finish_shielded(self._write(session_id, token, messages, **kw))

    async def _write(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        self.appending.set()
        await self.proceed.wait()
        await super().end_turn(session_id, token, messages, **kw)


async def test_cancellation_during_save_completes_the_save_then_cancels() -> None:
    store = SlowAppendStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(MockProvider(["reply"])))
    turn = asyncio.create_task(pipe.execute("s", "user", "hi"))
    await store.appending.wait()
    turn.cancel()
    await asyncio.sleep(0)  # one loop step: deliver the cancellation to the turn
    assert not turn.done()  # still saving
    store.proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await turn
    assert [m.content for m in await store.load("s")] == ["hi", "reply"]


async def test_locks_are_released_for_finished_sessions(store: InMemoryStateStore) -> None:
    state = StateMiddleware(store)
    pipe = Pipeline(state, ProviderMiddleware(MockProvider(handler=lambda r: "ok")))
    await asyncio.gather(*(pipe.execute(f"s{i}", "user", "hi") for i in range(50)))
    assert state._holders == {}
    assert state._waiting == {}


async def test_max_history_messages_limits_what_is_loaded(store: InMemoryStateStore) -> None:
    provider = MockProvider(handler=lambda r: "ok")
    pipe = Pipeline(StateMiddleware(store, max_history_messages=2), ProviderMiddleware(provider))
    for i in range(4):
        await pipe.execute("s", "user", f"m{i}")
    assert [m.content for m in provider.requests[-1].messages] == ["m2", "ok", "m3"]
    assert await store.count("s") == 8


def test_negative_history_limit_is_rejected(store: InMemoryStateStore) -> None:
    with pytest.raises(ValueError, match="max_history_messages"):
        StateMiddleware(store, max_history_messages=-1)


async def test_turns_run_in_arrival_order_and_cancelled_waiters_pass_the_session_on(
    store: InMemoryStateStore,
) -> None:
    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []
    turns: dict[str, asyncio.Task[object]] = {}

    async def handler(request: ProviderRequest) -> str:
        text = request.messages[-1].content
        started.append(text)
        await gates[text].wait()
        return f"reply to {text}"

    async def outer(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        async for chunk in next(ctx):
            yield chunk
        if ctx.input.content == "a":
            # "a" has just handed the session to "c" (b left the queue); cancel "c"
            # before it gets to run: it must pass the session on to "d".
            turns["c"].cancel()

    state = StateMiddleware(store)
    pipe = Pipeline(outer, state, ProviderMiddleware(MockProvider(handler=handler)))
    names = ["a", "b", "c", "d"]
    gates.update({name: asyncio.Event() for name in names})
    turns.update({name: asyncio.create_task(pipe.execute("s", "user", name)) for name in names})
    for _ in range(5):
        await asyncio.sleep(0)  # every turn has arrived; only "a" may have started
    assert started == ["a"]

    turns["b"].cancel()  # cancelled while waiting in the queue
    gates["a"].set()
    gates["d"].set()
    await turns["a"]
    await asyncio.wait_for(turns["d"], 10)  # would hang if "c" kept the session
    for name in ("b", "c"):
        with pytest.raises(asyncio.CancelledError):
            await turns[name]
    assert started == ["a", "d"]
    assert [m.content for m in await store.load("s")] == ["a", "reply to a", "d", "reply to d"]
    assert state._holders == {}
    assert state._waiting == {}
