"""AnthropicProvider over respx: bodies checked against the ``anthropic`` SDK's param types,
answers built from its response types; streaming, tool calls, usage with cache tokens,
costs, errors, retries and secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import respx

from promptkit_async.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from promptkit_async.pricing import lookup_pricing
from promptkit_async.providers import AnthropicProvider, GenerationConfig, ProviderRequest
from promptkit_async.types import Message, StreamChunk, ToolCall, ToolDefinition, Usage

HELLO = ProviderRequest([Message("user", "Hi")])
WEATHER = ToolDefinition(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def sent_body(route: respx.Route, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


async def collect(provider: AnthropicProvider, request: ProviderRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(request)]


async def drain(chunks: AsyncIterator[StreamChunk], seen: list[str]) -> None:
    """Read a stream to its end (or error), keeping the text deltas in ``seen``."""
    async for chunk in chunks:
        seen.append(chunk.delta)


# --- streaming ----------------------------------------------------------------------------


async def test_streamed_answer(anthropic_provider, router, afakes) -> None:
    route = router.post(afakes.URL).mock(
        return_value=afakes.sse_response(afakes.hello_stream("Hello", " there", "!"))
    )
    chunks = await collect(anthropic_provider, HELLO)

    assert [c.delta for c in chunks[:-1]] == ["Hello", " there", "!"]
    final = chunks[-1]
    response = final.response
    assert response is not None
    assert response.content == "Hello there!"
    assert response.finish_reason == final.finish_reason == "stop"
    assert response.usage == final.usage == Usage(10, 5, 15)
    assert response.model == "claude-sonnet-4-5-20250929"
    assert response.response_id == "msg_01ABC"
    assert response.request_id == "req_a1"
    assert response.time_to_first_chunk is not None
    assert response.tool_calls == ()

    body = sent_body(route)
    afakes.validate_request(body, stream=True)
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    headers = route.calls.last.request.headers
    assert headers["x-api-key"] == afakes.API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers


async def test_cache_read_and_write_tokens_in_usage_and_cost(
    anthropic_provider, router, afakes
) -> None:
    usage = afakes.usage(100, 1, cache_read=1000, cache_write=200)
    router.post(afakes.URL).mock(
        return_value=afakes.sse_response(afakes.hello_stream(usage_=usage, output_tokens=50))
    )
    response = (await collect(anthropic_provider, HELLO))[-1].response
    assert response is not None
    # prompt = input + cache reads + cache writes; the final output count wins.
    assert response.usage == Usage(
        prompt_tokens=1300,
        completion_tokens=50,
        total_tokens=1350,
        cached_tokens=1000,
        cache_write_tokens=200,
    )
    price = lookup_pricing("claude-sonnet-4-5")
    assert price is not None
    assert price.cached_input_per_mtok is not None
    assert price.cache_write_per_mtok is not None
    cost = response.cost
    assert cost.input_cost == pytest.approx(100 * price.input_per_mtok / 1e6)
    assert cost.cached_cost == pytest.approx(1000 * price.cached_input_per_mtok / 1e6)
    assert cost.cache_write_cost == pytest.approx(200 * price.cache_write_per_mtok / 1e6)
    assert cost.output_cost == pytest.approx(50 * price.output_per_mtok / 1e6)
    assert cost.total_cost == pytest.approx(
        cost.input_cost + cost.cached_cost + cost.cache_write_cost + cost.output_cost
    )
    # Cache reads are cheaper than plain input, cache writes dearer.
    assert cost.cached_cost < 1000 * price.input_per_mtok / 1e6 < cost.cache_write_cost * 5


async def test_message_delta_usage_is_cumulative_and_wins(
    anthropic_provider, router, afakes
) -> None:
    late = (
        b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": '
        b'"end_turn", "stop_sequence": null}, "usage": {"input_tokens": 12, '
        b'"cache_read_input_tokens": 30, "output_tokens": 7}}\n\n'
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )
    body = afakes.start(afakes.usage(10, 1, cache_read=0)) + afakes.text_block(0, "Hi") + late
    router.post(afakes.URL).mock(return_value=afakes.sse_response(body))
    response = (await collect(anthropic_provider, HELLO))[-1].response
    assert response is not None
    assert response.usage == Usage(42, 7, 49, cached_tokens=30)


async def test_streamed_tool_calls_two_in_one_message(anthropic_provider, router, afakes) -> None:
    body = (
        afakes.start(afakes.usage(30, 1))
        + afakes.text_block(0, "Let me check.")
        + afakes.tool_block(1, "toolu_A", "get_weather", '{"city":', ' "Paris"}')
        + afakes.tool_block(2, "toolu_B", "get_weather", "", '{"city": "Oslo"}')
        + afakes.finish("tool_use", 40)
    )
    route = router.post(afakes.URL).mock(return_value=afakes.sse_response(body))
    request = ProviderRequest([Message("user", "Weather in Paris and Oslo?")], tools=[WEATHER])
    chunks = await collect(anthropic_provider, request)

    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, "toolu_A", "get_weather", ""),
        (0, None, None, '{"city":'),
        (0, None, None, ' "Paris"}'),
        (1, "toolu_B", "get_weather", ""),
        (1, None, None, '{"city": "Oslo"}'),
    ]
    response = chunks[-1].response
    assert response is not None
    assert response.content == "Let me check."
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall("toolu_A", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_B", "get_weather", '{"city": "Oslo"}'),
    )
    sent = sent_body(route)
    afakes.validate_request(sent, stream=True)
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER.parameters,
        }
    ]

    # The assistant turn and both results replay as tool_use / tool_result blocks.
    history = [
        *request.messages,
        response.to_message(),
        Message("tool", "18C", tool_call_id="toolu_A", name="get_weather"),
        Message("tool", "-3C", tool_call_id="toolu_B", name="get_weather"),
    ]
    router.post(afakes.URL).mock(return_value=afakes.sse_response(afakes.hello_stream()))
    await collect(anthropic_provider, ProviderRequest(history, tools=[WEATHER]))
    replay = sent_body(route)
    afakes.validate_request(replay, stream=True)
    assert replay["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_A",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_B",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_B", "content": "-3C"},
            ],
        },
    ]


async def test_pings_and_unknown_events_are_skipped_and_thinking_streams_apart(
    anthropic_provider, router, afakes
) -> None:
    thinking = (
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
        b'"content_block": {"type": "thinking", "thinking": "", "signature": ""}}\n\n'
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "thinking_delta", "thinking": "hmm"}}\n\n'
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "signature_delta", "signature": "EqQB"}}\n\n'
        b'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}\n\n'
        b'event: future_event\ndata: {"type": "future_event", "x": 1}\n\n'
    )
    body = (
        afakes.start()
        + afakes.ping()
        + thinking
        + afakes.text_block(1, "Answer")
        + afakes.ping()
        + afakes.finish()
    )
    router.post(afakes.URL).mock(return_value=afakes.sse_response(body))
    chunks = await collect(anthropic_provider, HELLO)
    assert [(c.thinking, c.delta) for c in chunks[:-1]] == [("hmm", ""), ("", "Answer")]
    assert chunks[-1].response is not None
    assert chunks[-1].response.content == "Answer"
    assert [t.text for t in chunks[-1].response.thinking] == ["hmm"]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_stop_reasons_are_normalised(
    anthropic_provider, router, afakes, stop_reason, finish
) -> None:
    body = afakes.start() + afakes.text_block(0, "x") + afakes.finish(stop_reason)
    router.post(afakes.URL).mock(return_value=afakes.sse_response(body))
    response = (await collect(anthropic_provider, HELLO))[-1].response
    assert response is not None
    assert response.finish_reason == finish


async def test_stream_without_message_stop_is_incomplete(
    anthropic_provider, router, afakes
) -> None:
    body = afakes.start() + afakes.text_block(0, "Hel")
    router.post(afakes.URL).mock(return_value=afakes.sse_response(body))
    seen: list[str] = []
    with pytest.raises(IncompleteStreamError) as caught:
        await drain(anthropic_provider.stream(HELLO), seen)
    assert seen == ["Hel"]
    assert caught.value.request_id == "req_a1"


async def test_include_raw_output_keeps_every_event(http_client, router, afakes) -> None:
    router.post(afakes.URL).mock(return_value=afakes.sse_response(afakes.hello_stream()))
    async with AnthropicProvider(
        "anthropic", afakes.MODEL, afakes.API_KEY, include_raw_output=True, http_client=http_client
    ) as provider:
        response = (await collect(provider, HELLO))[-1].response
    assert response is not None
    kinds = [event["type"] for event in response.raw]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "ping" in kinds


async def test_closing_the_stream_early_closes_the_response(
    anthropic_provider, router, afakes
) -> None:
    stream = afakes.TrackedStream([afakes.start() + afakes.text_block(0, "first")], after="hang")
    router.post(afakes.URL).mock(return_value=afakes.sse_response(stream))
    async with aclosing(anthropic_provider.stream(HELLO)) as chunks:
        first = await anext(chunks)
    assert first.delta == "first"
    assert stream.closed


# --- non-streaming ------------------------------------------------------------------------


async def test_non_streamed_answer_with_cache_usage(anthropic_provider, router, afakes) -> None:
    route = router.post(afakes.URL).mock(
        return_value=httpx.Response(
            200,
            json=afakes.message(
                "Hi Alice", usage_=afakes.usage(20, 3, cache_read=100, cache_write=50)
            ),
            headers={"request-id": "req_json"},
        )
    )
    response = await anthropic_provider.complete(HELLO)
    assert response.content == "Hi Alice"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(170, 3, 173, cached_tokens=100, cache_write_tokens=50)
    assert response.cost == anthropic_provider.calculate_cost(response.usage)
    assert response.cost.cache_write_cost > 0
    assert response.cost.cached_cost > 0
    assert response.request_id == "req_json"
    assert response.response_id == "msg_01XYZ"
    assert response.model == "claude-sonnet-4-5-20250929"
    assert response.time_to_first_chunk is None
    body = sent_body(route)
    afakes.validate_request(body, stream=False)
    assert "stream" not in body


async def test_non_streamed_tool_calls(http_client, router, afakes) -> None:
    payload = afakes.message(
        None,
        tool_uses=[("toolu_1", "lookup", {"q": "x"}), ("toolu_2", "lookup", {"q": "ü"})],
        stop_reason="tool_use",
    )
    router.post(afakes.URL).mock(return_value=httpx.Response(200, json=payload))
    async with AnthropicProvider(
        "anthropic", afakes.MODEL, afakes.API_KEY, include_raw_output=True, http_client=http_client
    ) as provider:
        response = await provider.complete(HELLO)
    assert response.content == ""
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall("toolu_1", "lookup", '{"q": "x"}'),
        ToolCall("toolu_2", "lookup", '{"q": "ü"}'),
    )
    assert response.raw == payload


# --- request building ---------------------------------------------------------------------


async def test_system_merging_and_request_fields(http_client, router, afakes) -> None:
    route = router.post(afakes.URL).mock(return_value=httpx.Response(200, json=afakes.message()))
    defaults = GenerationConfig(temperature=0.3, max_tokens=100, top_p=0.9)
    messages = [
        Message("system", "You are terse."),
        Message("system", "Answer in English."),
        Message("user", "Weather?", name="alice"),
        Message("user", "In Oslo."),
        Message("assistant", "", tool_calls=[ToolCall("c1", "get_weather", '{"city": "Oslo"}')]),
        Message("tool", "-3C", tool_call_id="c1"),
        Message("user", "Thanks"),
        Message("assistant", ""),  # an empty reply (e.g. its calls were dropped): skipped
        Message("user", "And tomorrow?"),
    ]
    request = ProviderRequest(
        messages,
        tools=[WEATHER],
        tool_choice="get_weather",
        generation=GenerationConfig(stop=("END",), seed=7),
    )
    async with AnthropicProvider(
        "anthropic", afakes.MODEL, afakes.API_KEY, generation=defaults, http_client=http_client
    ) as provider:
        await provider.complete(request)
    body = sent_body(route)
    afakes.validate_request(body, stream=False)
    assert body["system"] == "You are terse.\n\nAnswer in English."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Weather?"}, {"type": "text", "text": "In Oslo."}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "-3C"},
                {"type": "text", "text": "Thanks"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["max_tokens"] == 100
    # Deprecated by the Messages API (and absent from the SDK's params): never sent.
    assert "temperature" not in body
    assert "top_p" not in body
    assert body["stop_sequences"] == ["END"]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert "seed" not in body  # no Anthropic equivalent


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_mapping(afakes, choice, expected) -> None:
    provider = AnthropicProvider("anthropic", afakes.MODEL, afakes.API_KEY)
    request = ProviderRequest([Message("user", "Hi")], tools=[WEATHER], tool_choice=choice)
    body = provider.build_body(request, stream=True)
    afakes.validate_request(body, stream=True)
    assert body["tool_choice"] == expected


def test_malformed_stored_arguments_replay_as_an_empty_input(afakes) -> None:
    provider = AnthropicProvider("anthropic", afakes.MODEL, afakes.API_KEY)
    messages = [
        Message("user", "Hi"),
        Message("assistant", "", tool_calls=[ToolCall("c1", "get_weather", '{"city": ')]),
        Message("tool", "Error: the arguments are not valid JSON", tool_call_id="c1"),
    ]
    body = provider.build_body(ProviderRequest(messages, tools=[WEATHER]), stream=False)
    afakes.validate_request(body, stream=False)
    assert body["messages"][1]["content"][0]["input"] == {}


def test_max_tokens_request_and_constructor_default(afakes) -> None:
    provider = AnthropicProvider("anthropic", afakes.MODEL, afakes.API_KEY, default_max_tokens=64)
    assert provider.build_body(HELLO, stream=False)["max_tokens"] == 64
    request = ProviderRequest([Message("user", "Hi")], generation=GenerationConfig(max_tokens=9))
    assert provider.build_body(request, stream=False)["max_tokens"] == 9
    with pytest.raises(InvalidRequestError):
        AnthropicProvider("anthropic", afakes.MODEL, default_max_tokens=0)


def test_sampling_defaults_are_not_sent_and_say_so(afakes, caplog) -> None:
    with caplog.at_level(logging.WARNING, "promptkit_async.providers"):
        provider = AnthropicProvider(
            "anthropic", afakes.MODEL, generation=GenerationConfig(temperature=0.2)
        )
    assert "temperature/top_p are not sent" in caplog.text
    request = ProviderRequest(
        [Message("user", "Hi")], generation=GenerationConfig(temperature=0.5, top_p=0.9)
    )
    body = provider.build_body(request, stream=True)
    afakes.validate_request(body, stream=True)
    assert "temperature" not in body
    # An older model that still takes it: extra_body passes it through as given.
    request = ProviderRequest(
        [Message("user", "Hi")], generation=GenerationConfig(extra_body={"temperature": 0.2})
    )
    assert provider.build_body(request, stream=True)["temperature"] == 0.2


def test_extra_body_and_version_header(afakes) -> None:
    provider = AnthropicProvider(
        "anthropic",
        afakes.MODEL,
        afakes.API_KEY,
        default_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    extra = {"metadata": {"user_id": "u-1"}, "service_tier": "auto"}
    request = ProviderRequest(
        [Message("user", "Hi")], generation=GenerationConfig(extra_body=extra)
    )
    body = provider.build_body(request, stream=True)
    afakes.validate_request(body, stream=True)
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["service_tier"] == "auto"


@pytest.mark.parametrize(
    "messages", [[], [Message("system", "Only a system prompt")], [Message("user", "")]]
)
async def test_nothing_to_send_is_rejected_before_io(anthropic_provider, router, afakes, messages):
    route = router.post(afakes.URL)
    with pytest.raises(InvalidRequestError, match="no user or assistant message"):
        await anthropic_provider.complete(ProviderRequest(messages))
    assert route.call_count == 0


async def test_base_url_and_key_from_environment(http_client, router, afakes, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://proxy.example/anthropic")
    route = router.post("https://proxy.example/anthropic/v1/messages").mock(
        return_value=httpx.Response(200, json=afakes.message())
    )
    async with AnthropicProvider("anthropic", afakes.MODEL, http_client=http_client) as provider:
        await provider.complete(HELLO)
    assert route.calls.last.request.headers["x-api-key"] == "sk-ant-from-env"


async def test_missing_key_401_says_how_to_fix_it(http_client, router, afakes) -> None:
    router.post(afakes.URL).mock(
        return_value=httpx.Response(
            401, json=afakes.error_body("authentication_error", "x-api-key header is required")
        )
    )
    async with AnthropicProvider("anthropic", afakes.MODEL, http_client=http_client) as provider:
        with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
            await provider.complete(HELLO)
    assert "x-api-key" not in router.calls.last.request.headers


# --- errors -------------------------------------------------------------------------------

CASES = [
    (400, "invalid_request_error", "messages: roles must alternate", BadRequestError),
    (
        400,
        "invalid_request_error",
        "prompt is too long: 210000 tokens > 200000 maximum",
        ContextLengthExceededError,
    ),
    (401, "authentication_error", "invalid x-api-key", AuthenticationError),
    (403, "permission_error", "not allowed", PermissionDeniedError),
    (404, "not_found_error", "model: claude-9", NotFoundError),
    (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your rate limit",
        RateLimitError,
    ),
    (500, "api_error", "Internal server error", InternalServerError),
    (529, "overloaded_error", "Overloaded", InternalServerError),
]


@pytest.mark.parametrize(("status", "kind", "message", "error"), CASES)
@pytest.mark.parametrize("streaming", [False, True])
async def test_status_errors_are_typed(
    http_client, router, afakes, status, kind, message, error, streaming
) -> None:
    body = afakes.error_body(kind, message)
    router.post(afakes.URL).mock(
        return_value=httpx.Response(status, json=body, headers={"request-id": f"req_{status}"})
    )
    async with AnthropicProvider(
        "anthropic", afakes.MODEL, afakes.API_KEY, http_client=http_client, max_retries=0
    ) as provider:
        with pytest.raises(error) as caught:
            await (collect(provider, HELLO) if streaming else provider.complete(HELLO))
    exc = caught.value
    assert type(exc) is error
    assert exc.status_code == status
    assert exc.request_id == f"req_{status}"
    assert exc.provider == "anthropic"
    assert exc.message == message
    assert exc.body == body


@pytest.mark.parametrize(
    ("kind", "message", "error", "status"),
    [
        ("overloaded_error", "Overloaded", InternalServerError, 529),
        ("rate_limit_error", "Rate limited", RateLimitError, 429),
        ("api_error", "Internal server error", InternalServerError, 500),
        ("invalid_request_error", "prompt is too long", ContextLengthExceededError, 400),
        ("request_too_large", "Request exceeds the maximum size", APIStatusError, 413),
    ],
)
async def test_error_event_inside_the_stream(
    anthropic_provider, router, afakes, kind, message, error, status
) -> None:
    if kind == "request_too_large":  # no SDK model for this one: the documented shape
        event = (
            b'event: error\ndata: {"type": "error", "error": {"type": "request_too_large", '
            b'"message": "Request exceeds the maximum size"}}\n\n'
        )
    else:
        event = afakes.error_event(kind, message)
    body = afakes.start() + afakes.text_block(0, "Hi") + event
    stream = afakes.TrackedStream([body])
    router.post(afakes.URL).mock(return_value=afakes.sse_response(stream))
    seen: list[str] = []
    with pytest.raises(error) as caught:
        await drain(anthropic_provider.stream(HELLO), seen)
    assert type(caught.value) is error
    assert caught.value.status_code == status
    assert caught.value.message == message
    assert caught.value.request_id == "req_a1"
    assert seen == ["Hi"]
    assert stream.closed


async def test_error_body_in_a_2xx_non_streamed_answer(anthropic_provider, router, afakes) -> None:
    router.post(afakes.URL).mock(
        return_value=httpx.Response(200, json=afakes.error_body("overloaded_error", "Overloaded"))
    )
    with pytest.raises(InternalServerError) as caught:
        await anthropic_provider.complete(HELLO)
    assert caught.value.status_code == 529


# --- retries (the shared loop) --------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"), (529, "overloaded_error")])
async def test_one_failure_then_success_is_retried(
    anthropic_provider, router, afakes, streaming, status, kind
) -> None:
    failure = httpx.Response(
        status, json=afakes.error_body(kind, "slow down"), headers={"retry-after": "0.001"}
    )
    success = (
        afakes.sse_response(afakes.hello_stream())
        if streaming
        else httpx.Response(200, json=afakes.message())
    )
    route = router.post(afakes.URL).mock(side_effect=[failure, success])
    if streaming:
        response = (await collect(anthropic_provider, HELLO))[-1].response
    else:
        response = await anthropic_provider.complete(HELLO)
    assert response is not None
    assert response.content == "Hello there!"
    assert route.call_count == 2
    assert [event.kind for event in response.trace] == ["retry"]
    assert response.trace[0].detail["status"] == status
    assert response.trace[0].detail["retry_after"] == 0.001


# --- secrets ------------------------------------------------------------------------------


async def test_api_key_never_in_errors_reprs_or_logs(
    anthropic_provider, router, afakes, caplog
) -> None:
    key = afakes.API_KEY
    echo = afakes.error_body("authentication_error", f"invalid x-api-key: {key}")
    router.post(afakes.URL).mock(
        side_effect=[
            httpx.Response(529, json=echo),  # retried: shows up in trace and logs
            httpx.Response(401, json=echo, headers={"request-id": "req_401"}),
        ]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as caught:
        await anthropic_provider.complete(HELLO)
    error = caught.value
    texts = [str(error), repr(error), error.message, json.dumps(error.body)]
    texts.append(repr(anthropic_provider))
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.__dict__) for record in caplog.records]
    assert any("retry" in t for t in texts)
    for text in texts:
        assert key not in text
    assert "[REDACTED]" in error.message
    assert error.request_id == "req_401"


async def test_api_key_never_in_stream_error_events(anthropic_provider, router, afakes) -> None:
    event = afakes.error_event("invalid_request_error", f"bad key {afakes.API_KEY}")
    router.post(afakes.URL).mock(return_value=afakes.sse_response(afakes.start() + event))
    with pytest.raises(BadRequestError) as caught:
        await collect(anthropic_provider, HELLO)
    assert afakes.API_KEY not in str(caught.value)
    assert afakes.API_KEY not in json.dumps(caught.value.body)


def test_repr_shows_identity_only(afakes) -> None:
    provider = AnthropicProvider("anthropic", afakes.MODEL, afakes.API_KEY)
    assert afakes.API_KEY not in repr(provider)
    assert repr(provider).startswith("AnthropicProvider(name='anthropic'")


def test_exported_names() -> None:
    import promptkit_async
    import promptkit_async.providers as providers
    from promptkit_async.providers import anthropic, gemini

    assert promptkit_async.AnthropicProvider is providers.AnthropicProvider
    assert providers.AnthropicProvider is anthropic.AnthropicProvider
    assert promptkit_async.GeminiProvider is providers.GeminiProvider is gemini.GeminiProvider
    assert {"AnthropicProvider", "GeminiProvider"} <= set(promptkit_async.__all__)
    assert {"AnthropicProvider", "GeminiProvider"} <= set(providers.__all__)


async def test_a_silent_tail_after_message_stop_ends_after_the_grace(
    anthropic_provider, router, afakes
) -> None:
    # The answer is complete at message_stop: a server that then keeps the body open
    # does not hold the turn (the read timeout would be minutes).
    stream = afakes.TrackedStream([afakes.hello_stream()], after="hang")
    router.post(afakes.URL).mock(return_value=afakes.sse_response(stream))
    anthropic_provider.end_grace = 0.02
    response = (await collect(anthropic_provider, HELLO))[-1].response
    assert response is not None
    assert response.content == "Hello there!"
    assert stream.closed
