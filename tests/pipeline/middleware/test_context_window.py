"""ContextWindowMiddleware in a real pipeline: trimmed views, whole stores, summaries, failures."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from promptkit_async import (
    InMemoryStateStore,
    InvalidRequestError,
    Message,
    MockProvider,
    Pipeline,
    PipelineError,
    ProviderMiddleware,
    StateMiddleware,
    TokenBudgetExceededError,
)
from promptkit_async.errors import APIConnectionError
from promptkit_async.pipeline.middleware import ContextWindowMiddleware
from promptkit_async.pipeline.middleware.context_window import RECORD_KEY
from promptkit_async.prompt import (
    TOKENS_METADATA_KEY,
    count_message_tokens,
    get_tokenizer,
)
from promptkit_async.prompt._summary import SUMMARY_PREFIX
from promptkit_async.providers import ProviderRequest

MODEL = "gpt-4o-mini"  # counted exactly with o200k_base
SID = "session-1"
SYSTEM = Message("system", "You are a helpful pirate. Answer briefly.")


class RecordingStore(InMemoryStateStore):
    """An in-memory store that remembers how much each load asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[int | None] = []

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        self.loads.append(last_n)
        return await super().load(session_id, last_n)


def reply(request: ProviderRequest) -> str:
    return f"Arr, about {request.messages[-1].content[:30]}: aye, that be so, matey " * 2


def build(
    store: InMemoryStateStore, window: ContextWindowMiddleware, *, lazy: bool = False
) -> tuple[Pipeline, MockProvider]:
    provider = MockProvider(handler=reply, model=MODEL)
    pipe = Pipeline(
        StateMiddleware(store, load_history=not lazy),
        window,
        ProviderMiddleware(provider),
    )
    return pipe, provider


def question(i: int) -> str:
    return f"Question number {i}: tell me about treasure island and the parrot number {i}."


def roles(messages: Sequence[Message]) -> list[str]:
    return [m.role for m in messages]


async def test_the_provider_gets_a_trimmed_view_while_the_store_keeps_everything() -> None:
    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM])
    window = ContextWindowMiddleware(max_tokens=300, model=MODEL)
    pipe, provider = build(store, window)
    for i in range(12):
        result = await pipe.execute(SID, "user", question(i))
        sent = provider.requests[-1].messages
        assert count_message_tokens(sent, MODEL) <= 300
        assert result.estimated_prompt_tokens == count_message_tokens(sent, MODEL)
        assert result.usage.prompt_tokens > 0  # the provider's own figure, beside ours
        assert sent[0] == SYSTEM
        assert sent[-1].content == question(i)
        assert sent[1].role == "user"  # starts on a user message
        events = [e for e in result.trace if e.kind == "context_window"]
        assert len(events) == 1
        assert events[0].detail["tokens"] == result.estimated_prompt_tokens
        assert result.metadata["context_window"]["budget"] == 300
    stored = await store.load(SID)
    assert len(stored) == 1 + 2 * 12  # nothing was dropped from the store
    assert len(provider.requests[-1].messages) < len(stored)
    assert events[0].detail["dropped"] > 0
    await pipe.shutdown()


async def test_new_messages_can_be_stored_with_their_token_counts() -> None:
    store = InMemoryStateStore()
    pipe, _ = build(store, ContextWindowMiddleware(max_tokens=1000, model=MODEL))
    await pipe.execute(SID, "user", "hello there")
    assert all(not m.metadata for m in await store.load(SID))  # off by default
    await store.delete(SID)
    window = ContextWindowMiddleware(max_tokens=1000, model=MODEL, store_token_counts=True)
    pipe, _ = build(store, window)
    await pipe.execute(SID, "user", "hello there")
    tokenizer = get_tokenizer(MODEL)
    for message in await store.load(SID):
        record = message.metadata[TOKENS_METADATA_KEY]
        assert record["o200k_base"] == tokenizer.count_message(
            Message(message.role, message.content)
        )
        assert record["chars"] == len(message.content)


async def test_windowed_loading_sends_the_same_view_and_loads_only_the_window() -> None:
    full_store = InMemoryStateStore()
    lazy_store = RecordingStore()
    for s in (full_store, lazy_store):
        await s.save(SID, [SYSTEM])
    full, full_provider = build(full_store, ContextWindowMiddleware(max_tokens=250, model=MODEL))
    lazy, lazy_provider = build(
        lazy_store,
        ContextWindowMiddleware(max_tokens=250, model=MODEL, load_history=True),
        lazy=True,
    )
    for i in range(60):
        a = await full.execute(SID, "user", question(i))
        b = await lazy.execute(SID, "user", question(i))
        assert list(lazy_provider.requests[-1].messages) == list(
            full_provider.requests[-1].messages
        )
        assert a.estimated_prompt_tokens == b.estimated_prompt_tokens
    # The system prompt, stored 121 messages back, is still sent.
    assert lazy_provider.requests[-1].messages[0] == SYSTEM
    assert await lazy_store.count(SID) == 121
    # After the first turns, each load covered the window plus a bounded slack, not the
    # whole history.
    window_size = len(lazy_provider.requests[-1].messages)
    assert max(n for n in lazy_store.loads[-20:] if n is not None) <= window_size + 32 + 2
    record = (await lazy_store.get_metadata(SID))[RECORD_KEY]
    assert record["through"] > 0
    await full.shutdown()
    await lazy.shutdown()


async def test_windowed_loading_notices_a_rewritten_history() -> None:
    store = RecordingStore()
    window = ContextWindowMiddleware(max_tokens=250, model=MODEL, load_history=True)
    pipe, provider = build(store, window, lazy=True)
    await store.save(SID, [SYSTEM])
    for i in range(40):
        await pipe.execute(SID, "user", question(i))
    assert (await store.get_metadata(SID))[RECORD_KEY]["through"] > 0
    # The user rewrites the session (metadata is kept by save()).
    other = Message("system", "You are a polite butler.")
    await store.save(
        SID,
        [other, *[Message("user" if k % 2 == 0 else "assistant", f"x{k}") for k in range(80)]],
    )
    await pipe.execute(SID, "user", "Good evening")
    sent = provider.requests[-1].messages
    assert sent[0] == other
    assert SYSTEM not in sent
    assert sent[-1].content == "Good evening"
    await pipe.shutdown()


async def test_windowed_loading_needs_the_state_middleware_to_hold_back() -> None:
    store = InMemoryStateStore()
    window = ContextWindowMiddleware(max_tokens=250, model=MODEL, load_history=True)
    pipe, _ = build(store, window, lazy=False)
    await store.save(SID, [SYSTEM])
    with pytest.raises(PipelineError, match="load_history=False"):
        await pipe.execute(SID, "user", "hi")
    assert await store.count(SID) == 1
    alone = Pipeline(window, ProviderMiddleware(MockProvider(model=MODEL)))
    with pytest.raises(PipelineError, match="StateMiddleware"):
        await alone.execute(SID, "user", "hi")


async def test_fail_strategy_raises_with_counts_and_stores_nothing() -> None:
    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM, Message("user", "long " * 200), Message("assistant", "ok")])
    window = ContextWindowMiddleware(max_tokens=100, model=MODEL, strategy="fail")
    pipe, provider = build(store, window)
    before = await store.load(SID)
    with pytest.raises(TokenBudgetExceededError) as info:
        await pipe.execute(SID, "user", "and now?")
    expected = count_message_tokens([*before, Message("user", "and now?")], MODEL)
    assert info.value.required_tokens == expected
    assert info.value.max_tokens == 100
    assert provider.requests == []
    assert await store.load(SID) == before
    assert await store.get_metadata(SID) == {}
    # Under budget it sends everything.
    roomy, roomy_provider = build(
        store, ContextWindowMiddleware(max_tokens=10_000, model=MODEL, strategy="fail")
    )
    await roomy.execute(SID, "user", "and now?")
    assert len(roomy_provider.requests[-1].messages) == len(before) + 1


async def test_truncate_raises_when_the_newest_message_cannot_fit() -> None:
    store = InMemoryStateStore()
    pipe, provider = build(store, ContextWindowMiddleware(max_tokens=20, model=MODEL))
    with pytest.raises(TokenBudgetExceededError) as info:
        await pipe.execute(SID, "user", "word " * 100)
    assert info.value.required_tokens > 20
    assert provider.requests == []
    assert await store.count(SID) == 0


def summarizer_mock(*replies: str | BaseException) -> MockProvider:
    return MockProvider(list(replies), model="gpt-4o-mini", name="summarizer")


@pytest.mark.parametrize("lazy", [False, True], ids=["full-load", "windowed-load"])
async def test_summaries_are_stored_and_reused_not_recomputed(lazy: bool) -> None:
    store = RecordingStore()
    await store.save(SID, [SYSTEM])
    summarizer = summarizer_mock("SUMMARY-ONE: the user asks about treasure.", "SUMMARY-TWO")
    window = ContextWindowMiddleware(
        max_tokens=400,
        model=MODEL,
        strategy="summarize",
        summarizer=summarizer,
        summary_max_tokens=60,
        summary_chunk_tokens=150,
        load_history=lazy,
    )
    pipe, provider = build(store, window, lazy=lazy)
    first_summary_turn = None
    states = []
    for i in range(30):
        calls_before = len(summarizer.requests)
        result = await pipe.execute(SID, "user", question(i))
        state = result.metadata["context_window"]["summary"]
        states.append(state)
        assert state == ("created" if len(summarizer.requests) > calls_before else state)
        sent = provider.requests[-1].messages
        assert count_message_tokens(sent, MODEL) <= 400
        assert result.estimated_prompt_tokens == count_message_tokens(sent, MODEL)
        if state == "created" and first_summary_turn is None:
            first_summary_turn = i
            assert any(e.kind == "context_window.summary" for e in result.trace)
            # The summary's cost is part of the turn's cost.
            assert result.cost.total_cost > result.response.cost.total_cost > 0
        if state == "reused":
            # Later turns reuse the stored summary without calling the summarizer.
            assert len(summarizer.requests) == 1
            assert sent[0] == SYSTEM
            assert sent[1].role == "system"
            assert sent[1].content == SUMMARY_PREFIX + "SUMMARY-ONE: the user asks about treasure."
        if len(summarizer.requests) == 2:
            break
    # Nothing until the window overflowed, then one summary, reused, then a second one.
    assert states[0] is None
    assert "failed" not in states
    first = states.index("created")
    assert states[:first] == [None] * first
    assert states[first + 1 : -1] == ["reused"] * (len(states) - first - 2)
    assert len(states) - first - 2 >= 1
    assert states[-1] == "created"
    assert first_summary_turn is not None
    # The summary lives in the session's metadata; the history is whole.
    record = (await store.get_metadata(SID))[RECORD_KEY]
    assert record["summary"] == "SUMMARY-TWO"
    assert await store.count(SID) == 1 + 2 * (i + 1)
    # The second summary folded the first in.
    second = summarizer.requests[1].messages[-1].content
    assert "Earlier summary:\nSUMMARY-ONE" in second
    assert "user: Question number" in second
    if lazy:
        # Once summarized, turns load only what is not behind the summary.
        assert max(n for n in store.loads[-3:] if n is not None) < 20
    # The summarizer never saw the system prompt as something to summarize.
    assert SYSTEM.content not in summarizer.requests[0].messages[-1].content
    await pipe.shutdown()


async def test_a_new_pipeline_reuses_the_stored_summary() -> None:
    store = InMemoryStateStore()
    summarizer = summarizer_mock("THE SUMMARY")

    def window(summarizer: MockProvider) -> ContextWindowMiddleware:
        return ContextWindowMiddleware(
            max_tokens=300,
            model=MODEL,
            strategy="summarize",
            summarizer=summarizer,
            summary_max_tokens=40,
            summary_chunk_tokens=100,
        )

    pipe, _ = build(store, window(summarizer))
    while not summarizer.requests:
        await pipe.execute(SID, "user", question(await store.count(SID)))
    # Another process (a new pipeline and summarizer) picks the session up.
    later = summarizer_mock()  # would raise if called: no scripted replies
    pipe2, provider2 = build(store, window(later))
    result = await pipe2.execute(SID, "user", "what did we talk about?")
    assert later.requests == []
    assert result.metadata["context_window"]["summary"] == "reused"
    assert any(m.content == SUMMARY_PREFIX + "THE SUMMARY" for m in provider2.requests[-1].messages)


@pytest.mark.parametrize(
    "failure", [APIConnectionError("summarizer down", provider="summarizer"), RuntimeError("boom")]
)
async def test_a_failing_summarizer_falls_back_to_truncation_and_says_so(
    failure: BaseException,
) -> None:
    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM])
    summarizer = summarizer_mock(*[failure] * 50)
    window = ContextWindowMiddleware(
        max_tokens=300,
        model=MODEL,
        strategy="summarize",
        summarizer=summarizer,
        summary_max_tokens=40,
    )
    pipe, provider = build(store, window)
    for i in range(15):
        result = await pipe.execute(SID, "user", question(i))
        sent = provider.requests[-1].messages
        assert count_message_tokens(sent, MODEL) <= 300
        if summarizer.requests:
            break
    detail = result.metadata["context_window"]
    assert detail["summary"] == "failed"
    assert type(failure).__name__ in detail["summary_error"]
    event = next(e for e in result.trace if e.kind == "context_window")
    assert event.detail["summary"] == "failed"
    assert sent[0] == SYSTEM
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in sent)
    assert RECORD_KEY not in await store.get_metadata(SID)  # nothing half-recorded
    assert await store.count(SID) == 1 + 2 * (i + 1)  # the turn itself was stored


async def test_compacting_the_store_keeps_only_the_window() -> None:
    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM])
    window = ContextWindowMiddleware(max_tokens=250, model=MODEL, compact_store=True)
    pipe, provider = build(store, window)
    for i in range(10):
        result = await pipe.execute(SID, "user", question(i))
    stored = await store.load(SID)
    sent = list(provider.requests[-1].messages)
    # The store is the view that was sent plus the turn's reply.
    assert stored[:-1] == sent
    assert stored[-1] == result.messages[-1]
    assert stored[0] == SYSTEM
    assert any(e.kind == "context_window.compacted" for e in result.trace)


async def test_compacting_with_summaries_keeps_the_summary_in_metadata() -> None:
    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM])
    summarizer = summarizer_mock("COMPACT SUMMARY")
    window = ContextWindowMiddleware(
        max_tokens=300,
        model=MODEL,
        strategy="summarize",
        summarizer=summarizer,
        summary_max_tokens=40,
        compact_store=True,
        load_history=True,
    )
    pipe, provider = build(store, window, lazy=True)
    while not summarizer.requests:
        await pipe.execute(SID, "user", question(await store.count(SID)))
    record = (await store.get_metadata(SID))[RECORD_KEY]
    assert record["summary"] == "COMPACT SUMMARY"
    assert record["through"] == 0
    stored = await store.load(SID)
    assert stored[0] == SYSTEM
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in stored)
    result = await pipe.execute(SID, "user", "go on")
    assert result.metadata["context_window"]["summary"] == "reused"
    assert provider.requests[-1].messages[1].content == SUMMARY_PREFIX + "COMPACT SUMMARY"


def test_budget_defaults_to_the_models_window_minus_the_reply() -> None:
    assert ContextWindowMiddleware(model="gpt-4o-mini").budget == 128_000 - 4096
    assert ContextWindowMiddleware(model="gpt-4", reserve_output_tokens=1000).budget == 7192
    assert ContextWindowMiddleware(model="gpt-5").budget == 272_000  # its input cap
    # Estimated counts (non-OpenAI) keep a safety margin.
    claude = ContextWindowMiddleware(model="claude-sonnet-4-5", reserve_output_tokens=0)
    assert claude.estimated is True
    assert claude.budget == 180_000
    assert (
        ContextWindowMiddleware(max_tokens=1000, model="claude-3-haiku", estimate_margin=0).budget
        == 1000
    )
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        ContextWindowMiddleware(model="my-local-llama")
    with pytest.raises(InvalidRequestError, match="summarizer"):
        ContextWindowMiddleware(max_tokens=100, strategy="summarize")
    with pytest.raises(InvalidRequestError, match="strategy"):
        ContextWindowMiddleware(max_tokens=100, strategy="drop")  # type: ignore[arg-type]


async def test_a_hung_summarizer_times_out_into_the_fallback() -> None:
    import asyncio

    never = asyncio.Event()

    async def hang(request: ProviderRequest) -> str:
        await never.wait()
        return "unreachable"

    store = InMemoryStateStore()
    summarizer = MockProvider(handler=hang, model="gpt-4o-mini")
    window = ContextWindowMiddleware(
        max_tokens=250,
        model=MODEL,
        strategy="summarize",
        summarizer=summarizer,
        summary_max_tokens=40,
        summary_timeout=0.05,
    )
    pipe, provider = build(store, window)
    while not summarizer.requests:
        result = await pipe.execute(SID, "user", question(await store.count(SID)))
    assert result.metadata["context_window"]["summary"] == "failed"
    assert "TimeoutError" in result.metadata["context_window"]["summary_error"]
    assert count_message_tokens(provider.requests[-1].messages, MODEL) <= 250


async def test_windowed_truncation_with_compaction_clears_the_record() -> None:
    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM])
    window = ContextWindowMiddleware(
        max_tokens=250, model=MODEL, load_history=True, compact_store=True
    )
    pipe, provider = build(store, window, lazy=True)
    for i in range(30):
        result = await pipe.execute(SID, "user", question(i))
        stored = await store.load(SID)
        assert stored[:-1] == list(provider.requests[-1].messages)
        assert stored[-1] == result.messages[-1]
    assert RECORD_KEY not in await store.get_metadata(SID)


async def test_cancelling_during_a_summary_records_and_stores_nothing() -> None:
    import asyncio

    entered, never = asyncio.Event(), asyncio.Event()

    async def hang(request: ProviderRequest) -> str:
        entered.set()
        await never.wait()
        return "unreachable"

    store = InMemoryStateStore()
    history = [SYSTEM]
    for i in range(12):
        history += [Message("user", question(i)), Message("assistant", "Arr " * 20)]
    await store.save(SID, history)
    window = ContextWindowMiddleware(
        max_tokens=250,
        model=MODEL,
        strategy="summarize",
        summarizer=MockProvider(handler=hang, model="gpt-4o-mini"),
        summary_max_tokens=40,
        summary_timeout=None,
    )
    pipe, provider = build(store, window)
    turn = asyncio.ensure_future(pipe.execute(SID, "user", "one more"))
    waiting = asyncio.ensure_future(entered.wait())
    await asyncio.wait({turn, waiting}, return_when=asyncio.FIRST_COMPLETED)
    assert not turn.done(), "the summarizer was never called"
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    assert provider.requests == []
    assert await store.load(SID) == history
    assert RECORD_KEY not in await store.get_metadata(SID)


async def test_one_window_serves_many_sessions_at_once() -> None:
    import asyncio

    store = InMemoryStateStore()
    window = ContextWindowMiddleware(max_tokens=200, model=MODEL, load_history=True)
    pipe, provider = build(store, window, lazy=True)
    sessions = [f"user-{k}" for k in range(20)]
    for sid in sessions:
        await store.save(sid, [Message("system", f"You serve {sid}.")])

    async def chat(sid: str) -> None:
        for i in range(8):
            result = await pipe.execute(sid, "user", f"{sid} asks question {i}")
            assert result.estimated_prompt_tokens is not None
            assert result.estimated_prompt_tokens <= 200

    await asyncio.gather(*(chat(sid) for sid in sessions))
    for request in provider.requests:
        owner = request.messages[0].content.split()[-1].rstrip(".")
        assert all(owner in m.content for m in request.messages if m.role == "user")
    for sid in sessions:
        assert await store.count(sid) == 1 + 2 * 8
    await pipe.shutdown()


@pytest.mark.parametrize("lazy", [False, True], ids=["full-load", "windowed-load"])
async def test_tool_rounds_are_never_split_in_what_is_sent(lazy: bool) -> None:
    from itertools import count as counter

    from promptkit_async import ProviderResponse, ToolCall, ToolRegistry, tool

    @tool
    async def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: the city name.
        """
        return f"sunny and 21 C in {city}, light breeze from the west"

    ids = counter()

    def handler(request: ProviderRequest) -> ProviderResponse | str:
        if request.messages[-1].role == "user":
            call = ToolCall(f"call-{next(ids)}", "get_weather", '{"city": "Paris"}')
            return ProviderResponse(tool_calls=(call,))
        return "It is sunny in Paris, the tool says. Enjoy your walk by the river."

    store = InMemoryStateStore()
    await store.save(SID, [SYSTEM])
    provider = MockProvider(handler=handler, model=MODEL)
    window = ContextWindowMiddleware(max_tokens=300, model=MODEL, load_history=lazy)
    pipe = Pipeline(
        StateMiddleware(store, load_history=not lazy),
        window,
        ProviderMiddleware(provider, ToolRegistry([get_weather])),
    )
    for i in range(15):
        await pipe.execute(SID, "user", f"What is the weather in Paris today? ({i})")
    assert len(provider.requests) == 30  # a tool round and a reply per turn
    for request in provider.requests:
        sent = list(request.messages)
        assert sent[0] == SYSTEM
        assert sent[1].role == "user"
        for k, m in enumerate(sent):
            if m.role == "assistant" and m.tool_calls:
                answered = {r.tool_call_id for r in sent[k + 1 : k + 1 + len(m.tool_calls)]}
                assert answered == {c.id for c in m.tool_calls}
            if m.role == "tool":
                j = k
                while sent[j].role == "tool":
                    j -= 1
                assert m.tool_call_id in {c.id for c in sent[j].tool_calls}
    assert await store.count(SID) == 1 + 4 * 15  # user, call, result, reply per turn
    assert len(provider.requests[-1].messages) < 20  # it was trimmed
    await pipe.shutdown()
