"""Whole turns through Pipeline(StateMiddleware, ProviderMiddleware(OpenAIProvider)), with
HTTP served by respx through an injected client."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import pytest
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails

from promptkit_async.errors import (
    IncompleteStreamError,
    InternalServerError,
    RateLimitError,
    TurnInterruptedError,
)
from promptkit_async.pipeline import Pipeline
from promptkit_async.pipeline.middleware import (
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    StateMiddleware,
)
from promptkit_async.providers import GenerationConfig
from promptkit_async.providers.openai import OpenAIProvider
from promptkit_async.statestore import InMemoryStateStore
from promptkit_async.tools import tool
from promptkit_async.types import Message, TextPart, ThinkingPart, ToolCall


@pytest.fixture
def store() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.fixture
def pipe(provider: OpenAIProvider, store: InMemoryStateStore) -> Pipeline:
    return Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(
            provider,
            None,
            None,
            ProviderMiddlewareConfig(GenerationConfig(max_tokens=500, temperature=0.7)),
        ),
    )


async def test_execute_then_stream_a_conversation(pipe, store, router, fakes) -> None:
    # execute drains the same streamed path as stream: both replies arrive via SSE.
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            fakes.sse_response(fakes.hello_stream("Nice to meet you, Alice!")),
            fakes.sse_response(fakes.hello_stream("Your name is Alice.")),
        ]
    )
    async with pipe:
        result = await pipe.execute("user-123", "user", "My name is Alice")
        assert result.response.content == "Nice to meet you, Alice!"
        assert result.response.usage.total_tokens == 17
        assert result.cost.total_cost == pytest.approx(result.response.cost.total_cost)
        assert result.cost.total_cost > 0

        chunks = [c async for c in pipe.stream("user-123", "user", "What's my name?")]
    text = "".join(c.delta for c in chunks)
    assert text == "Your name is Alice."
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.final_result is not None
    assert final.final_result.response.content == text

    history = await store.load("user-123")
    assert [(m.role, m.content) for m in history] == [
        ("user", "My name is Alice"),
        ("assistant", "Nice to meet you, Alice!"),
        ("user", "What's my name?"),
        ("assistant", "Your name is Alice."),
    ]
    second = json.loads(route.calls[1].request.content)
    fakes.validate_request(second, stream=True)
    assert second["messages"] == [
        {"role": "user", "content": "My name is Alice"},
        {"role": "assistant", "content": "Nice to meet you, Alice!"},
        {"role": "user", "content": "What's my name?"},
    ]
    assert second["max_completion_tokens"] == 500
    assert second["temperature"] == 0.7


async def test_non_streaming_config(provider, store, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(200, json=fakes.completion("Hi"))
    )
    async with Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(provider, config=ProviderMiddlewareConfig(stream=False)),
    ) as pipe:
        result = await pipe.execute("s", "user", "Hello")
    assert result.response.content == "Hi"
    fakes.validate_request(json.loads(route.calls.last.request.content), stream=False)
    assert len(await store.load("s")) == 2


async def test_a_cancelled_stream_stores_nothing_and_closes_the_response(
    pipe, store, router, fakes
) -> None:
    stream = fakes.TrackedStream([fakes.sse(fakes.chunk("Hel"), done=False)], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    async with pipe, pipe.stream("user-1", "user", "Tell me a story") as chunks:
        first = await anext(chunks)
        assert first.delta == "Hel"
        # Leaving the block cancelled the turn and waited for its clean-up.
    assert stream.closed
    assert await store.load("user-1") == []


async def test_a_stream_cancelled_by_its_reader_stores_nothing(pipe, store, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.sse(fakes.chunk("Hel"), done=False)], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    got_first = asyncio.Event()

    async def reader() -> None:
        async for _ in pipe.stream("user-2", "user", "Hi"):
            got_first.set()

    async with pipe:
        task = asyncio.create_task(reader())
        await got_first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(stream.close_event.wait(), 10)
    assert await store.load("user-2") == []


async def test_provider_errors_store_nothing(pipe, store, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(429, json={"error": {"message": "Rate limit reached"}})
    )
    async with pipe:
        with pytest.raises(RateLimitError):
            await pipe.execute("user-3", "user", "Hi")
        with pytest.raises(RateLimitError):
            [c async for c in pipe.stream("user-3", "user", "Hi")]
    assert await store.load("user-3") == []


async def test_stream_broken_midway_stores_nothing(pipe, store, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=fakes.sse_response(fakes.sse(fakes.chunk("Hel"), done=False))
    )
    async with pipe:
        with pytest.raises(IncompleteStreamError):
            [c async for c in pipe.stream("user-4", "user", "Hi")]
    assert await store.load("user-4") == []


async def test_retries_show_up_in_the_turn_trace(pipe, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(500, json={}),
            fakes.sse_response(fakes.hello_stream()),
        ]
    )
    async with pipe:
        result = await pipe.execute("user-5", "user", "Hi")
    assert [event.kind for event in result.trace] == ["retry"]
    assert result.trace[0].detail["status"] == 500


async def test_stored_tool_turns_replay_as_valid_openai_messages(
    pipe, store, router, fakes
) -> None:
    await store.append(
        "user-6",
        [
            Message("system", "You are a weather bot."),
            Message("user", "Weather in Oslo?"),
            Message("assistant", "", tool_calls=[ToolCall("c1", "weather", '{"city": "Oslo"}')]),
            Message("tool", "-3C", tool_call_id="c1"),
            Message("assistant", "It is -3C in Oslo."),
        ],
    )
    route = router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(fakes.hello_stream()))
    async with pipe:
        await pipe.execute("user-6", "user", "And tomorrow?")
    body = json.loads(route.calls.last.request.content)
    fakes.validate_request(body, stream=True)
    assert [m["role"] for m in body["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


async def test_server_errors_exhaust_retries_then_store_nothing(pipe, store, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=httpx.Response(503, json={}))
    async with pipe:
        with pytest.raises(InternalServerError):
            await pipe.execute("user-7", "user", "Hi")
    assert route.call_count == 3
    assert await store.load("user-7") == []


@tool
async def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: the city name.
    """
    return {"Paris": "18C"}[city]


def _usage(prompt: int, completion: int, reasoning: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    )


async def test_reasoning_tokens_across_a_tool_loop_and_foreign_thinking_left_out(
    provider, store, router, fakes
) -> None:
    # A history written with Anthropic: its thinking (signature included) is not sent.
    await store.append(
        "s1",
        [
            Message("user", "Hi"),
            Message(
                "assistant",
                [
                    ThinkingPart("Greet.", "sig-from-anthropic", provider="anthropic"),
                    TextPart("Hello!"),
                ],
            ),
        ],
    )
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            fakes.sse_response(
                fakes.sse(
                    fakes.chunk(tool_calls=[(0, "call_1", "get_weather", '{"city": "Paris"}')]),
                    fakes.chunk(finish_reason="tool_calls"),
                    fakes.chunk(usage_=_usage(40, 120, 100)),
                )
            ),
            fakes.sse_response(
                fakes.sse(
                    fakes.chunk("Paris: 18C."),
                    fakes.chunk(finish_reason="stop"),
                    fakes.chunk(usage_=_usage(60, 30, 20)),
                )
            ),
        ]
    )
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider, tools=[get_weather]))
    async with pipe:
        result = await pipe.execute("s1", "user", "Weather in Paris?")
    assert result.response.content == "Paris: 18C."
    assert result.usage.reasoning_tokens == 120
    assert result.usage.completion_tokens == 150
    assert result.cost.output_cost == pytest.approx(
        provider.calculate_cost(result.usage).output_cost
    )
    bodies = [json.loads(call.request.content) for call in route.calls]
    for body in bodies:
        fakes.validate_request(body, stream=True)
        assert body["messages"][1] == {"role": "assistant", "content": "Hello!"}
        assert "sig-from-anthropic" not in json.dumps(body)
    assert bodies[1]["messages"][3] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }


def reasoning_stream(fakes, *pieces: str, answer: str = "9.9") -> bytes:
    return fakes.sse(
        *(fakes.reasoning_chunk(piece) for piece in pieces),
        fakes.chunk(answer),
        fakes.chunk(finish_reason="stop"),
        fakes.chunk(usage_=fakes.usage(10, 30)),
    )


async def test_reasoning_streams_through_the_pipeline_and_is_stored(
    pipe, store, router, fakes
) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=fakes.sse_response(reasoning_stream(fakes, "Compare ", "tenths."))
    )
    async with pipe, pipe.stream("s", "user", "9.11 or 9.9?") as chunks:
        seen = [(c.thinking, c.delta) async for c in chunks if c.final_result is None]
    assert seen == [("Compare ", ""), ("tenths.", ""), ("", "9.9")]
    stored = await store.load("s")
    assert stored[-1].content == (
        ThinkingPart("Compare tenths.", provider="openai"),
        TextPart("9.9"),
    )


async def test_an_interrupt_stops_a_turn_while_it_streams_reasoning(
    pipe, store, router, fakes
) -> None:
    # The interrupted turn notices at its next chunk, a reasoning chunk here: it does not
    # run on to the end of a long reasoning phase, and stores nothing.
    router.post(fakes.CHAT_URL).mock(
        side_effect=[
            fakes.sse_response(reasoning_stream(fakes, "one ", "two ", "three", answer="late")),
            fakes.sse_response(fakes.hello_stream("Interrupting.")),
        ]
    )
    async with pipe:
        first = pipe.stream("s", "user", "Think long.")
        chunk = await first.__anext__()
        assert chunk.thinking == "one "
        result = await pipe.execute("s", "user", "Never mind.", on_busy="interrupt")
        assert result.response.content == "Interrupting."
        with pytest.raises(TurnInterruptedError):
            await first.__anext__()  # the next reasoning chunk
        await first.aclose()
    assert [m.text for m in await store.load("s")] == ["Never mind.", "Interrupting."]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Task.uncancel")
async def test_an_interrupt_closes_a_non_streamed_calls_response_at_once(
    provider, store, router, fakes
) -> None:
    # The model has sent its headers, never its body: the interrupted turn stops without
    # waiting for it, and its HTTP response is closed.
    stalled = fakes.TrackedStream([b'{"id": '], after="hang")
    router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(200, headers={"content-type": "application/json"}, stream=stalled),
            httpx.Response(200, json=fakes.completion("Interrupting.")),
        ]
    )
    async with Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(provider, config=ProviderMiddlewareConfig(stream=False)),
    ) as pipe:
        first = asyncio.ensure_future(pipe.execute("s", "user", "Think long."))
        await stalled.stalled.wait()
        result = await pipe.execute("s", "user", "Never mind.", on_busy="interrupt")
        assert result.response.content == "Interrupting."
        with pytest.raises(TurnInterruptedError):
            await asyncio.wait_for(first, 5)
    assert stalled.closed
    assert [m.text for m in await store.load("s")] == ["Never mind.", "Interrupting."]
