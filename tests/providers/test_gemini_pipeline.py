"""Whole turns through Pipeline(StateMiddleware, ProviderMiddleware(GeminiProvider)): a
function-calling round, then a second turn whose request replays the stored functionCall /
functionResponse parts (thought signatures and thought summaries included), every request
checked against the ``google-genai`` types."""

from __future__ import annotations

import json
from typing import Any

import google.genai.types as genai_types
import httpx
import pytest

from promptkit_async.pipeline import Pipeline
from promptkit_async.pipeline.middleware import (
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    StateMiddleware,
)
from promptkit_async.statestore import InMemoryStateStore
from promptkit_async.statestore.records import decode_message, encode_message
from promptkit_async.tools import tool
from promptkit_async.types import ThinkingPart


@tool
async def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: the city name.
    """
    return {"Paris": "18C", "Oslo": "-3C"}[city]


def bodies(route: Any) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


@pytest.mark.parametrize("stream", [True, False])
async def test_function_round_then_the_next_turn_replays_it(
    gemini_provider, router, gfakes, stream
) -> None:
    store = InMemoryStateStore()
    calls = gfakes.response(
        gfakes.call("get_weather", {"city": "Paris"}, signature=b"opaque-signature"),
        gfakes.call("get_weather", {"city": "Oslo"}),
        usage_=gfakes.usage(40, 10),
        response_id="R1",
    )
    answer = gfakes.response(gfakes.text("Paris 18C, Oslo -3C."), usage_=gfakes.usage(60, 8))
    thanks = gfakes.response(gfakes.text("You're welcome."), usage_=gfakes.usage(80, 4))
    if stream:
        url = gfakes.STREAM_URL
        replies = [gfakes.sse_response(gfakes.sse(p)) for p in (calls, answer, thanks)]
    else:
        url = gfakes.URL
        replies = [httpx.Response(200, json=p) for p in (calls, answer, thanks)]
    route = router.post(url).mock(side_effect=replies)
    pipe = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(
            gemini_provider, tools=[get_weather], config=ProviderMiddlewareConfig(stream=stream)
        ),
    )
    async with pipe:
        first = await pipe.execute("s1", "user", "Weather in Paris and Oslo?")
        assert first.response.content == "Paris 18C, Oslo -3C."
        assert first.usage.prompt_tokens == 100
        second = await pipe.execute("s1", "user", "Thanks!")
    assert second.response.content == "You're welcome."

    sent = bodies(route)
    assert len(sent) == 3
    for body in sent:
        gfakes.validate_request(body)
    tool_round = [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "b3BhcXVlLXNpZ25hdHVyZQ==",  # as Gemini sent it
                },
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "-3C"}}},
            ],
        },
    ]
    question = {"role": "user", "parts": [{"text": "Weather in Paris and Oslo?"}]}
    assert sent[1]["contents"] == [question, *tool_round]
    assert sent[2]["contents"] == [
        question,
        *tool_round,
        {"role": "model", "parts": [{"text": "Paris 18C, Oslo -3C."}]},
        {"role": "user", "parts": [{"text": "Thanks!"}]},
    ]

    # The stored messages survive the record codec with the signature intact.
    history = await store.load("s1")
    assert [m.role for m in history] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert [decode_message(encode_message(m)) for m in history] == history
    assert history[2].tool_call_id == history[1].tool_calls[0].id
    assert history[1].tool_calls[0].id.startswith("gemini_R1_0~sig~")


@pytest.mark.parametrize("stream", [True, False])
async def test_thoughts_are_replayed_across_the_tool_loop_and_stored(
    gemini_provider, router, gfakes, stream
) -> None:
    store = InMemoryStateStore()
    calls = gfakes.response(
        gfakes.text("The user wants the weather.", thought=True),
        gfakes.call("get_weather", {"city": "Paris"}, signature=b"call-signature-\xfb"),
        usage_=gfakes.usage(40, 10, thoughts=25),
        response_id="R1",
    )
    answer = gfakes.response(
        genai_types.Part(text="Paris: 18C.", thought_signature=b"text-signature"),
        usage_=gfakes.usage(60, 8, thoughts=5),
    )
    thanks = gfakes.response(gfakes.text("Bye."), usage_=gfakes.usage(80, 4))
    if stream:
        url = gfakes.STREAM_URL
        replies = [gfakes.sse_response(gfakes.sse(p)) for p in (calls, answer, thanks)]
    else:
        url = gfakes.URL
        replies = [httpx.Response(200, json=p) for p in (calls, answer, thanks)]
    route = router.post(url).mock(side_effect=replies)
    pipe = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(
            gemini_provider, tools=[get_weather], config=ProviderMiddlewareConfig(stream=stream)
        ),
    )
    async with pipe:
        first = await pipe.execute("s1", "user", "Weather in Paris?")
        assert first.response.content == "Paris: 18C."
        assert first.usage.reasoning_tokens == 30  # summed over the loop's two calls
        await pipe.execute("s1", "user", "Bye")

    sent = bodies(route)
    for body in sent:
        gfakes.validate_request(body)
    call_signature = calls["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    text_signature = answer["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    tool_round = [
        {
            "role": "model",
            "parts": [
                {"text": "The user wants the weather.", "thought": True},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": call_signature,  # unchanged
                },
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}}],
        },
    ]
    question = {"role": "user", "parts": [{"text": "Weather in Paris?"}]}
    assert sent[1]["contents"] == [question, *tool_round]
    assert sent[2]["contents"] == [
        question,
        *tool_round,
        {"role": "model", "parts": [{"text": "Paris: 18C.", "thoughtSignature": text_signature}]},
        {"role": "user", "parts": [{"text": "Bye"}]},
    ]
    history = await store.load("s1")
    assert history[1].content == (ThinkingPart("The user wants the weather.", provider="gemini"),)
    assert [decode_message(encode_message(m)) for m in history] == history
