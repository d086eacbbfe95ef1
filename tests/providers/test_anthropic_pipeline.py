"""Whole turns through Pipeline(StateMiddleware, ProviderMiddleware(AnthropicProvider)): a
tool round, then a second turn whose request replays the stored tool_use / tool_result
blocks (and thinking blocks, signatures unchanged), every request checked against the
``anthropic`` SDK's param types."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types as t
import httpx
import pytest

from promptkit_async.errors import InternalServerError, UnsupportedContentError
from promptkit_async.pipeline import Pipeline
from promptkit_async.pipeline.middleware import (
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    StateMiddleware,
)
from promptkit_async.providers import GenerationConfig
from promptkit_async.statestore import InMemoryStateStore
from promptkit_async.statestore.records import decode_message, encode_message
from promptkit_async.tools import tool
from promptkit_async.types import AudioPart, Message, ThinkingPart, ToolCall


@tool
async def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: the city name.
    """
    return {"Paris": "18C", "Oslo": "-3C"}[city]


@tool
async def get_time(tz: str) -> str:
    """The time in a time zone.

    Args:
        tz: an IANA zone name.
    """
    raise RuntimeError(f"no clock for {tz}")


def bodies(route: Any) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


@pytest.fixture
def store() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_round_then_the_next_turn_replays_it(
    anthropic_provider, store, router, afakes, stream
) -> None:
    await store.append("s1", [Message("system", "You are a weather bot.")])
    if stream:
        calls = afakes.sse_response(
            afakes.start(afakes.usage(50, 1))
            + afakes.text_block(0, "Checking.")
            + afakes.tool_block(1, "toolu_1", "get_weather", '{"city": "Paris"}')
            + afakes.tool_block(2, "toolu_2", "get_time", '{"tz": "Europe/Paris"}')
            + afakes.finish("tool_use", 30)
        )
        answer = afakes.sse_response(afakes.hello_stream("Paris: 18C."))
        second = afakes.sse_response(afakes.hello_stream("You're welcome."))
    else:
        calls = httpx.Response(
            200,
            json=afakes.message(
                "Checking.",
                tool_uses=[
                    ("toolu_1", "get_weather", {"city": "Paris"}),
                    ("toolu_2", "get_time", {"tz": "Europe/Paris"}),
                ],
                stop_reason="tool_use",
                usage_=afakes.usage(50, 30),
            ),
        )
        answer = httpx.Response(200, json=afakes.message("Paris: 18C."))
        second = httpx.Response(200, json=afakes.message("You're welcome."))
    route = router.post(afakes.URL).mock(side_effect=[calls, answer, second])
    pipe = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(
            anthropic_provider,
            tools=[get_weather, get_time],
            config=ProviderMiddlewareConfig(stream=stream),
        ),
    )
    async with pipe:
        first = await pipe.execute("s1", "user", "Weather and time in Paris?")
        assert first.response.content == "Paris: 18C."
        # Both calls' usage and cost are summed into the turn.
        assert first.usage.prompt_tokens == 60
        assert first.cost.total_cost == pytest.approx(
            anthropic_provider.calculate_cost(first.usage).total_cost
        )
        result = await pipe.execute("s1", "user", "Thanks!")
    assert result.response.content == "You're welcome."

    sent = bodies(route)
    assert len(sent) == 3
    for body in sent:
        afakes.validate_request(body, stream=stream)
        assert body["system"] == "You are a weather bot."
        assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    tool_round = [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_time",
                    "input": {"tz": "Europe/Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "Error: the tool 'get_time' failed: RuntimeError: "
                    "no clock for Europe/Paris",
                },
            ],
        },
    ]
    # The loop's second request carries the round it just ran...
    assert sent[1]["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        *tool_round,
    ]
    # ...and the next turn replays it from the store, whole and in order.
    assert sent[2]["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        *tool_round,
        {"role": "assistant", "content": "Paris: 18C."},
        {"role": "user", "content": "Thanks!"},
    ]
    history = await store.load("s1")
    assert [m.role for m in history] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert history[2].tool_calls == (
        ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_2", "get_time", '{"tz": "Europe/Paris"}'),
    )


async def test_overloaded_then_success_inside_a_turn(anthropic_provider, store, router, afakes):
    router.post(afakes.URL).mock(
        side_effect=[
            httpx.Response(529, json=afakes.error_body("overloaded_error", "Overloaded")),
            afakes.sse_response(afakes.hello_stream("Hi!")),
        ]
    )
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(anthropic_provider)) as pipe:
        result = await pipe.execute("s2", "user", "Hello")
    assert result.response.content == "Hi!"
    assert [event.kind for event in result.trace] == ["retry"]
    assert result.trace[0].detail["status"] == 529


async def test_overloaded_mid_stream_stores_nothing(anthropic_provider, store, router, afakes):
    body = (
        afakes.start() + afakes.text_block(0, "Hel") + afakes.error_event("overloaded_error", "x")
    )
    router.post(afakes.URL).mock(return_value=afakes.sse_response(body))
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(anthropic_provider)) as pipe:
        with pytest.raises(InternalServerError):
            await pipe.execute("s3", "user", "Hello")
    assert await store.load("s3") == []


SIGNATURE = "EqQBCkgIARABGAIiQL2Z+the/signature=="


@pytest.mark.parametrize("stream", [True, False])
async def test_thinking_is_replayed_across_the_tool_loop_and_stored(
    anthropic_provider, store, router, afakes, stream
) -> None:
    if stream:
        calls = afakes.sse_response(
            afakes.start(afakes.usage(50, 1))
            + afakes.thinking_block(0, "I need ", "the weather tool.", signature=SIGNATURE)
            + afakes.tool_block(1, "toolu_1", "get_weather", '{"city": "Paris"}')
            + afakes.finish("tool_use", 30)
        )
        answer = afakes.sse_response(afakes.hello_stream("Paris: 18C."))
        second = afakes.sse_response(afakes.hello_stream("Bye."))
    else:
        message = afakes.message(
            None,
            tool_uses=[("toolu_1", "get_weather", {"city": "Paris"})],
            stop_reason="tool_use",
        )
        thinking = t.ThinkingBlock(
            type="thinking", thinking="I need the weather tool.", signature=SIGNATURE
        )
        message["content"].insert(0, json.loads(thinking.model_dump_json()))
        calls = httpx.Response(200, json=message)
        answer = httpx.Response(200, json=afakes.message("Paris: 18C."))
        second = httpx.Response(200, json=afakes.message("Bye."))
    route = router.post(afakes.URL).mock(side_effect=[calls, answer, second])
    thinking_on = GenerationConfig(
        extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}}
    )
    pipe = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(
            anthropic_provider,
            tools=[get_weather],
            config=ProviderMiddlewareConfig(thinking_on, stream=stream),
        ),
    )
    async with pipe:
        first = await pipe.execute("s1", "user", "Weather in Paris?")
        assert first.response.content == "Paris: 18C."
        await pipe.execute("s1", "user", "Bye")

    sent = bodies(route)
    for body in sent:
        afakes.validate_request(body, stream=stream)
    tool_round = [
        {
            "role": "assistant",
            "content": [
                # First, and with its signature exactly as Anthropic sent it.
                {
                    "type": "thinking",
                    "thinking": "I need the weather tool.",
                    "signature": SIGNATURE,
                },
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}],
        },
    ]
    question = {"role": "user", "content": "Weather in Paris?"}
    assert sent[1]["messages"] == [question, *tool_round]
    assert sent[2]["messages"] == [
        question,
        *tool_round,
        {"role": "assistant", "content": "Paris: 18C."},
        {"role": "user", "content": "Bye"},
    ]
    history = await store.load("s1")
    thought = ThinkingPart("I need the weather tool.", SIGNATURE, provider="anthropic")
    assert history[1].content == (thought,)
    assert history[1].tool_calls == (ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),)
    assert history[3].content == "Paris: 18C."  # a reply without thinking stays text
    assert [decode_message(encode_message(m)) for m in history] == history


async def test_a_part_anthropic_cannot_take_fails_the_turn_before_sending(
    anthropic_provider, store, router, afakes
) -> None:
    await store.append("s4", [Message("user", "Hi"), Message("assistant", "Hello!")])
    route = router.post(afakes.URL).mock(return_value=afakes.sse_response(afakes.hello_stream()))
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(anthropic_provider)) as pipe:
        with pytest.raises(UnsupportedContentError, match="transcribe it"):
            await pipe.execute("s4", "user", ["Listen:", AudioPart(b"RIFF....WAVE", "wav")])
        # The session is untouched and usable: nothing was sent, nothing stored.
        assert not route.called
        assert await store.load("s4") == [Message("user", "Hi"), Message("assistant", "Hello!")]
        result = await pipe.execute("s4", "user", "Just text, then.")
    assert result.response.content == "Hello there!"
