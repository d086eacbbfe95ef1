"""OpenTelemetryListener through real pipelines and the real OpenTelemetry SDK (in-memory
exporters): the span tree and its attributes for each kind of turn, and the metrics."""

from __future__ import annotations

import asyncio
import itertools
import re

import httpx
import pytest
import respx
from opentelemetry.trace import SpanKind, StatusCode

from promptkit_async import (
    InMemoryStateStore,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    ProviderResponse,
    StateMiddleware,
    StreamChunk,
    ToolCall,
)
from promptkit_async.errors import InternalServerError, RateLimitError
from promptkit_async.providers import OpenAIProvider
from tests._otel import CHAT_URL, Otel, children, completion, sse_response

NOT_STREAMED = ProviderMiddlewareConfig(stream=False)


def pipeline(provider: object, otel: Otel, **kwargs: object) -> Pipeline:
    config = kwargs.pop("config", None)
    tools = kwargs.pop("tools", None)
    return Pipeline(
        StateMiddleware(InMemoryStateStore()),
        ProviderMiddleware(provider, tools, config=config),  # type: ignore[arg-type]
        listeners=[otel.listener(**kwargs)],
    )


async def test_plain_turn_span_tree_and_attributes(otel: Otel) -> None:
    provider = MockProvider(["Hi Alice"], model="gpt-4o-mini")
    pipe = pipeline(provider, otel, config=NOT_STREAMED)
    result = await pipe.execute("alice", "user", "Hello")

    spans = otel.finished()
    turn = otel.one("invoke_agent promptkit")
    assert turn.parent is None
    assert turn.kind is SpanKind.INTERNAL
    assert children(turn, spans) == [
        "promptkit.store.load",
        "chat gpt-4o-mini",
        "promptkit.store.append",
    ]
    assert turn.attributes is not None
    assert turn.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert turn.attributes["gen_ai.conversation.id"] == "alice"
    assert turn.attributes["session.id"] == "alice"
    assert turn.attributes["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert turn.attributes["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert turn.attributes["promptkit.cost"] == pytest.approx(result.cost.total_cost)
    assert turn.status.status_code is StatusCode.UNSET

    chat = otel.one("chat gpt-4o-mini")
    assert chat.kind is SpanKind.CLIENT
    attrs = dict(chat.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "mock"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == result.response.model
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert attrs["gen_ai.conversation.id"] == "alice"
    assert attrs["session.id"] == "alice"
    assert attrs["promptkit.cost"] == pytest.approx(result.cost.total_cost)
    assert attrs["promptkit.streaming"] is False
    assert "promptkit.time_to_first_chunk" not in attrs
    # Children lie within their parent.
    assert turn.start_time is not None
    assert turn.end_time is not None
    assert chat.start_time is not None
    assert chat.end_time is not None
    assert turn.start_time <= chat.start_time <= chat.end_time <= turn.end_time

    store = otel.one("promptkit.store.append")
    assert store.attributes is not None
    assert store.attributes["promptkit.store.messages"] == 2
    assert store.attributes["promptkit.store.type"] == "InMemoryStateStore"

    # Metrics with the GenAI names.
    tokens = otel.points("gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: p.sum for p in tokens}
    assert by_type == {
        "input": result.usage.prompt_tokens,
        "output": result.usage.completion_tokens,
    }
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 1
    # The bucket boundaries the GenAI conventions ask for.
    assert tuple(duration.explicit_bounds)[:3] == (0.01, 0.02, 0.04)
    assert tuple(duration.explicit_bounds)[-1] == 81.92
    token_bounds = {tuple(p.explicit_bounds)[-1] for p in tokens}
    assert token_bounds == {67108864}
    assert duration.attributes["gen_ai.provider.name"] == "mock"
    assert "session.id" not in duration.attributes  # no per-session cardinality
    assert otel.points("gen_ai.client.operation.time_to_first_chunk") == []
    [cost] = otel.points("promptkit.client.cost")
    assert cost.value == pytest.approx(result.cost.total_cost)
    [active] = otel.points("promptkit.turns.active")
    assert active.value == 0
    stores = {p.attributes["promptkit.store.operation"] for p in otel.points(
        "promptkit.store.operation.duration"
    )}  # fmt: skip
    assert stores == {"load", "append"}


async def test_streamed_turn_records_first_chunk(otel: Otel) -> None:
    provider = MockProvider(["a reply in several chunks"], model="gpt-4o-mini", chunk_size=4)
    pipe = pipeline(provider, otel)
    async with pipe.stream("bob", "user", "Hi") as chunks:
        texts = [c.delta async for c in chunks]
    assert "".join(texts) == "a reply in several chunks"

    chat = otel.one("chat gpt-4o-mini")
    attrs = dict(chat.attributes or {})
    assert attrs["promptkit.streaming"] is True
    ttfc = attrs["promptkit.time_to_first_chunk"]
    assert isinstance(ttfc, float)
    assert chat.start_time is not None
    assert chat.end_time is not None
    assert 0 <= ttfc * 1e9 <= chat.end_time - chat.start_time
    [point] = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert point.count == 1
    assert point.sum == pytest.approx(ttfc)
    turn = otel.one("invoke_agent promptkit")
    assert children(turn, otel.finished()) == [
        "promptkit.store.load",
        "chat gpt-4o-mini",
        "promptkit.store.append",
    ]


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_retried_call_has_one_span_per_attempt(
    otel: Otel, router: respx.MockRouter, openai: OpenAIProvider, streamed: bool
) -> None:
    ok = sse_response() if streamed else httpx.Response(200, json=completion())
    router.post(CHAT_URL).mock(
        side_effect=[
            httpx.Response(429, json={"error": {"message": "slow down"}}),
            httpx.Response(503, json={"error": {"message": "busy"}}),
            ok,
        ]
    )
    config = None if streamed else NOT_STREAMED
    pipe = pipeline(openai, otel, config=config)
    result = await pipe.execute("carol", "user", "Hello")
    assert result.response.content == "Hello!"

    spans = otel.finished()
    chat = otel.one("chat gpt-4o-mini")
    assert chat.attributes is not None
    assert chat.attributes["promptkit.attempts"] == 3
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert chat.attributes["gen_ai.response.id"] == "chatcmpl-1"
    assert chat.status.status_code is StatusCode.UNSET  # the call succeeded in the end
    assert children(chat, spans) == ["POST", "POST", "POST"]
    attempts = sorted(otel.by_name("POST"), key=lambda s: s.start_time or 0)
    first, second, third = (dict(s.attributes or {}) for s in attempts)
    assert first["http.response.status_code"] == 429
    assert first["error.type"] == "RateLimitError"
    assert first["promptkit.retry.wait"] > 0
    assert "http.request.resend_count" not in first
    assert second["http.response.status_code"] == 503
    assert second["error.type"] == "InternalServerError"
    assert second["http.request.resend_count"] == 1
    assert third["http.request.resend_count"] == 2
    assert "error.type" not in third
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    # Attempts follow each other inside the call's span.
    assert chat.start_time is not None
    assert chat.end_time is not None
    for before, after in itertools.pairwise(attempts):
        assert before.end_time is not None
        assert after.start_time is not None
        assert before.end_time <= after.start_time
    assert all(chat.start_time <= (s.start_time or 0) for s in attempts)
    assert all((s.end_time or 0) <= chat.end_time for s in attempts)
    # Retries on the turn span too, and counted.
    turn = otel.one("invoke_agent promptkit")
    retry_events = [e for e in turn.events if e.name == "promptkit.retry"]
    assert [e.attributes["error.type"] for e in retry_events] == [  # type: ignore[index]
        "RateLimitError",
        "InternalServerError",
    ]
    retries = {p.attributes["error.type"]: p.value for p in otel.points("promptkit.client.retries")}
    assert retries == {"RateLimitError": 1, "InternalServerError": 1}


async def test_tool_loop_turn(otel: Otel) -> None:
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return f"rainy in {city}"

    provider = MockProvider(
        [
            ProviderResponse(
                tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
                finish_reason="tool_calls",
            ),
            "It is rainy in Paris.",
        ],
        model="gpt-4o-mini",
    )
    pipe = pipeline(provider, otel, tools=[get_weather])
    result = await pipe.execute("dave", "user", "Weather in Paris?")
    assert result.response.content == "It is rainy in Paris."

    spans = otel.finished()
    turn = otel.one("invoke_agent promptkit")
    assert children(turn, spans) == [
        "promptkit.store.load",
        "chat gpt-4o-mini",
        "execute_tool get_weather",
        "chat gpt-4o-mini",
        "promptkit.store.append",
    ]
    tool_span = otel.one("execute_tool get_weather")
    assert tool_span.kind is SpanKind.INTERNAL
    attrs = dict(tool_span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "get_weather"
    assert attrs["gen_ai.tool.call.id"] == "call_1"
    assert "gen_ai.tool.call.result" not in attrs  # content is opt-in
    chats = sorted(otel.by_name("chat gpt-4o-mini"), key=lambda s: s.start_time or 0)
    assert [c.attributes["gen_ai.response.finish_reasons"] for c in chats] == [  # type: ignore[index]
        ("tool_calls",),
        ("stop",),
    ]
    assert turn.attributes is not None
    assert turn.attributes["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    [tool_time] = otel.points("gen_ai.execute_tool.duration")
    assert tool_time.attributes == {"gen_ai.tool.name": "get_weather"}
    assert sum(p.count for p in otel.points("gen_ai.client.operation.duration")) == 2


async def test_failed_turn_records_the_error(otel: Otel) -> None:
    provider = MockProvider([RateLimitError("quota exhausted", provider="mock", status_code=429)])
    pipe = pipeline(provider, otel)
    with pytest.raises(RateLimitError):
        await pipe.execute("erin", "user", "Hello")

    spans = otel.finished()
    turn = otel.one("invoke_agent promptkit")
    assert children(turn, spans) == ["promptkit.store.load", "chat mock-model"]  # no append
    for span in (turn, otel.one("chat mock-model")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "RateLimitError"
        [exception] = [e for e in span.events if e.name == "exception"]
        assert exception.attributes is not None
        assert exception.attributes["exception.type"].endswith("RateLimitError")
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "RateLimitError"
    [turn_time] = otel.points("promptkit.turn.duration")
    assert turn_time.attributes == {
        "promptkit.turn.outcome": "failed",
        "error.type": "RateLimitError",
    }
    assert otel.points("gen_ai.client.token.usage") == []
    [active] = otel.points("promptkit.turns.active")
    assert active.value == 0


async def test_cancelled_stream(otel: Otel) -> None:
    class Hanging(MockProvider):
        """Sends one chunk, then hangs (until cancelled)."""

        async def stream(self, request):  # type: ignore[no-untyped-def,override]
            yield StreamChunk(delta="first ")
            await asyncio.Event().wait()
            raise AssertionError("not reached")  # pragma: no cover

    pipe = pipeline(Hanging(model="gpt-4o-mini"), otel)
    async with pipe.stream("frank", "user", "Hi") as chunks:
        first = await chunks.__anext__()
        assert first.delta == "first "
    # Leaving the block cancelled the turn.
    spans = otel.finished()
    turn = otel.one("invoke_agent promptkit")
    chat = otel.one("chat gpt-4o-mini")
    for span in (turn, chat):
        assert span.attributes is not None
        assert span.attributes["promptkit.cancelled"] is True
        assert span.status.status_code is StatusCode.UNSET  # a cancellation is not an error
        assert span.end_time is not None
    assert children(turn, spans) == ["promptkit.store.load", "chat gpt-4o-mini"]
    assert chat.attributes is not None
    assert "promptkit.time_to_first_chunk" in chat.attributes
    [turn_time] = otel.points("promptkit.turn.duration")
    assert turn_time.attributes == {"promptkit.turn.outcome": "cancelled"}
    [active] = otel.points("promptkit.turns.active")
    assert active.value == 0
    # A cancelled call is not a model duration sample.
    assert otel.points("gen_ai.client.operation.duration") == []


async def test_cancelled_execute_ends_spans(otel: Otel) -> None:
    started = asyncio.Event()

    async def hang(request: object) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"  # pragma: no cover

    pipe = pipeline(MockProvider(handler=hang), otel, config=NOT_STREAMED)
    task = asyncio.create_task(pipe.execute("gina", "user", "Hi"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    turn = otel.one("invoke_agent promptkit")
    assert turn.attributes is not None
    assert turn.attributes["promptkit.cancelled"] is True


async def test_turn_joins_the_callers_trace(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    pipe = pipeline(MockProvider(["ok", "ok again"]), otel)
    with tracer.start_as_current_span("POST /chat") as request_span:
        await pipe.execute("hank", "user", "Hi")
        async with pipe.stream("hank", "user", "Again") as chunks:
            async for _ in chunks:
                pass
    parent = request_span.get_span_context()
    turns = otel.by_name("invoke_agent promptkit")
    assert len(turns) == 2
    for turn in turns:
        assert turn.parent is not None
        assert turn.parent.span_id == parent.span_id
        assert turn.context is not None
        assert turn.context.trace_id == parent.trace_id
    # Every span of both turns is in the request's trace.
    assert {s.context.trace_id for s in otel.finished() if s.context} == {parent.trace_id}


async def test_no_span_is_left_current_between_chunks(otel: Otel) -> None:
    from opentelemetry import trace

    pipe = pipeline(MockProvider(["one two three"], chunk_size=4), otel)
    seen = []
    async with pipe.stream("ivan", "user", "Hi") as chunks:
        async for _ in chunks:
            seen.append(trace.get_current_span().get_span_context().is_valid)
    assert seen
    assert not any(seen)


async def test_concurrent_turns_keep_their_own_trees(otel: Otel) -> None:
    async def reply(request: object) -> str:
        await asyncio.sleep(0)
        return "ok"

    pipe = pipeline(MockProvider(handler=reply), otel)
    await asyncio.gather(*(pipe.execute(f"user-{i}", "user", "Hi") for i in range(20)))
    spans = otel.finished()
    turns = otel.by_name("invoke_agent promptkit")
    assert len(turns) == 20
    for turn in turns:
        assert children(turn, spans) == [
            "promptkit.store.load",
            "chat mock-model",
            "promptkit.store.append",
        ]
        session = turn.attributes["session.id"]  # type: ignore[index]
        for span in spans:
            if span.parent is not None and span.parent.span_id == turn.context.span_id:  # type: ignore[union-attr]
                assert span.attributes["session.id"] == session  # type: ignore[index]


async def test_traces_and_metrics_can_be_turned_off(otel: Otel) -> None:
    pipe = pipeline(MockProvider(["ok"]), otel, traces=False)
    await pipe.execute("judy", "user", "Hi")
    assert otel.finished() == []
    assert otel.points("gen_ai.client.operation.duration")
    pipe = pipeline(MockProvider(["ok"]), otel, metrics=False)
    await pipe.execute("judy", "user", "Hi")
    assert otel.finished()


async def test_content_is_recorded_only_on_request(otel: Otel) -> None:
    pipe = pipeline(MockProvider(["the answer is 42"]), otel, capture_content=True)
    await pipe.execute("kate", "user", "what is the answer")
    chat = otel.one("chat mock-model")
    assert chat.attributes is not None
    assert "what is the answer" in str(chat.attributes["gen_ai.input.messages"])
    assert "the answer is 42" in str(chat.attributes["gen_ai.output.messages"])


async def test_a_provider_failure_after_retries(
    otel: Otel, router: respx.MockRouter, openai
) -> None:  # type: ignore[no-untyped-def]
    router.post(CHAT_URL).mock(return_value=httpx.Response(500, json={"error": {"message": "x"}}))
    pipe = pipeline(openai, otel, config=NOT_STREAMED)
    with pytest.raises(InternalServerError):
        await pipe.execute("liam", "user", "Hi")
    chat = otel.one("chat gpt-4o-mini")
    attempts = otel.by_name("POST")
    assert chat.attributes is not None
    assert chat.attributes["promptkit.attempts"] == len(attempts) == openai.max_retries + 1
    assert chat.status.status_code is StatusCode.ERROR
    # The last attempt is not retried: it ends with the call.
    last = max(attempts, key=lambda s: s.start_time or 0)
    assert last.end_time == chat.end_time
    assert last.attributes is not None
    assert "promptkit.retry.wait" not in last.attributes


async def test_no_span_or_turn_state_leaks_under_mixed_outcomes(otel: Otel) -> None:
    """Many concurrent turns that succeed, fail, or are cancelled mid-stream: every turn
    span ends, the listener forgets every turn, and in-flight is back to zero."""

    class Mixed(MockProvider):
        async def stream(self, request):  # type: ignore[no-untyped-def,override]
            text = request.messages[-1].content
            if text.startswith("fail"):
                raise ValueError("scripted failure")
            for part in ("a", "b", "c"):
                yield StreamChunk(delta=part)
                await asyncio.sleep(0)
            if text.startswith("hang"):
                await asyncio.Event().wait()
            async for chunk in super().stream(request):
                if chunk.response is not None:
                    yield chunk

    listener = otel.listener()
    pipe = Pipeline(
        StateMiddleware(InMemoryStateStore()),
        ProviderMiddleware(Mixed(handler=lambda r: "done")),
        listeners=[listener],
    )

    async def one(i: int) -> str:
        kind = ("ok", "fail", "hang")[i % 3]
        try:
            async with pipe.stream(f"s{i % 7}", "user", f"{kind} {i}") as chunks:
                async for chunk in chunks:
                    if kind == "hang" and chunk.delta == "c":
                        break  # leaving the block cancels the hanging turn
        except ValueError:
            return "failed"
        return kind

    outcomes = await asyncio.gather(*(one(i) for i in range(60)))
    assert outcomes.count("ok") == outcomes.count("hang") == outcomes.count("failed") == 20
    turns = otel.by_name("invoke_agent promptkit")
    assert len(turns) == 60
    assert all(t.end_time is not None for t in turns)
    cancelled = [t for t in turns if (t.attributes or {}).get("promptkit.cancelled")]
    failed = [t for t in turns if t.status.status_code is StatusCode.ERROR]
    assert (len(cancelled), len(failed)) == (20, 20)
    assert listener._turns == {}
    [active] = otel.points("promptkit.turns.active")
    assert active.value == 0
    outcome_counts = {
        p.attributes["promptkit.turn.outcome"]: p.count
        for p in otel.points("promptkit.turn.duration")
    }
    assert outcome_counts == {"completed": 20, "failed": 20, "cancelled": 20}


async def test_the_benchmark_variants_run() -> None:
    from bench.observability import _turns

    for variant in ("none", "otel", "logging"):
        assert await _turns(3, 2, "stream", variant) > 0


async def test_console_tracing_prints_the_tree(
    router: respx.MockRouter, openai: OpenAIProvider
) -> None:
    import io

    from promptkit_async.telemetry import OpenTelemetryListener, console_tracing

    router.post(CHAT_URL).mock(
        side_effect=[httpx.Response(429, json={}), httpx.Response(200, json=completion())]
    )
    out = io.StringIO()
    provider = console_tracing(out)
    pipe = Pipeline(
        StateMiddleware(InMemoryStateStore()),
        ProviderMiddleware(openai, config=NOT_STREAMED),
        listeners=[OpenTelemetryListener(tracer_provider=provider, metrics=False)],
    )
    await pipe.execute("s", "user", "Hi")
    provider.shutdown()
    lines = out.getvalue().splitlines()
    names = [re.match(r"\[trace\] +\S+(?: \S+)?", line) for line in lines]
    assert [m.group(0) if m else line for m, line in zip(names, lines, strict=True)] == [
        "[trace]   promptkit.store.load",
        "[trace]     POST",
        "[trace]     POST",
        "[trace]   chat gpt-4o-mini",
        "[trace]   promptkit.store.append",
        "[trace] invoke_agent promptkit",
    ]
    assert "http.response.status_code=429" in lines[1]
    assert "error.type=RateLimitError" in lines[1]
    assert "http.request.resend_count=1" in lines[2]
    assert "promptkit.attempts=2" in lines[3]
